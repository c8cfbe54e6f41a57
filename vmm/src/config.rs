//! What a VM is made of, independent of how it was asked for (CLI or library caller),
//! and the checks that turn a bad request into one clear error before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default kernel command line: serial console, `reboot=k` so a reboot (and, with
/// `panic=-1`, a panic) reaches the i8042 reset the VMM turns into an exit status, and no
/// IO-APIC timer check (slow and flaky under nested virtualisation).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 no_timer_check";
/// Default device TLB sets (256 x 4 ways = 1024 entries).
pub const DEFAULT_TLB_SETS: u32 = 256;
/// Default device TLB ways.
pub const DEFAULT_TLB_WAYS: u32 = 4;
/// Default vCPU count.
pub const DEFAULT_CPUS: u8 = 2;
/// Most vCPUs accepted.
pub const MAX_CPUS: u8 = 64;
/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Least guest RAM in MiB: room for a decompressed kernel plus a small initramfs.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most guest RAM in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// How doorbell writes reach the in-process device (`--doorbells`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DoorbellPath {
    /// KVM ioeventfd: the write signals an eventfd in the kernel; a relay thread rings the
    /// device (`crate::pci::doorbells`).
    #[default]
    Ioeventfd,
    /// An MMIO exit to user space on the vCPU thread, like every other register.
    Exit,
}

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The kernel image does not exist.
    #[error("Kernel image {0} not found (use --kernel or set RMNIC_IMAGES)")]
    KernelMissing(PathBuf),
    /// The initrd does not exist.
    #[error("Initrd {0} not found (use --initrd or set RMNIC_IMAGES)")]
    InitrdMissing(PathBuf),
    /// vCPU count out of range.
    #[error("{0} vCPUs requested; 1..={MAX_CPUS} are supported")]
    Cpus(u64),
    /// Memory below the minimum.
    #[error("{0} MiB of memory is too little; at least {MIN_MEMORY_MIB} MiB are needed")]
    MemoryTooSmall(u64),
    /// Memory above the maximum.
    #[error("{0} MiB of memory is too much; at most {MAX_MEMORY_MIB} MiB are supported")]
    MemoryTooLarge(u64),
    /// Timeout of zero seconds.
    #[error("A timeout of 0 s would stop the VM before it starts")]
    ZeroTimeout,
    /// The device TLB shape is not supported.
    #[error("Device TLB of {sets} sets x {ways} ways is not supported: {reason}")]
    Tlb {
        /// Sets asked for.
        sets: u32,
        /// Ways asked for.
        ways: u32,
        /// Why the device model refused it.
        reason: rmnic_device::tlb::TlbError,
    },
    /// Device worker count out of range.
    #[error("{0} device worker threads requested; 1..={max} are supported", max = rmnic_device::rmnic::MAX_WORKERS)]
    Workers(usize),
    /// An unknown `--fault` mode.
    #[error("{0}")]
    Fault(String),
    /// The control API and the trace need the device in this process.
    #[error(
        "--api-socket, --trace and the fabric options serve an in-process device; with \
         --device vfio-user give them to rmnic-device-server"
    )]
    OutOfProcessControl,
    /// No home directory to derive the default image directory from.
    #[error("Neither RMNIC_IMAGES nor HOME is set; pass --kernel and --initrd")]
    NoImageDir,
}

/// Where the rmnic function's device model runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeviceSource {
    /// In this process (`rmnic_device::RmnicDevice`).
    #[default]
    InProcess,
    /// In another process, reached over vfio-user at this socket (`rmnic-device-server`, or
    /// any vfio-user server of a PCI device).
    VfioUser(PathBuf),
}

impl std::str::FromStr for DeviceSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            _ if s == "rmnic" => Ok(Self::InProcess),
            Some(("vfio-user", path)) if !path.is_empty() => {
                Ok(Self::VfioUser(PathBuf::from(path)))
            }
            _ => Err(format!(
                "'{s}' is not a device: use `rmnic` (in process) or `vfio-user:SOCKET`"
            )),
        }
    }
}

/// A VM to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// bzImage to boot.
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (1..=64).
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Stop the VM with [`ExitReason::Timeout`](crate::ExitReason::Timeout) after this.
    pub timeout: Option<Duration>,
    /// Forward the VMM's stdin to the guest's serial port.
    pub serial_input: bool,
    /// Device TLB sets (a power of two).
    pub tlb_sets: u32,
    /// Device TLB ways.
    pub tlb_ways: u32,
    /// Device worker threads executing commands and invalidations.
    pub device_workers: usize,
    /// How command-queue doorbells reach the in-process device.
    pub doorbells: DoorbellPath,
    /// Where the device model runs.
    pub device: DeviceSource,
    /// What the coherence oracle checks (in-process device only).
    pub coherence_check: rmnic_device::oracle::CheckMode,
    /// Whether violations change the exit status (0x87) or are only reported.
    pub violations_fail: bool,
    /// Fault to inject (`rmnic_device::inject::injector_named`).
    pub fault: String,
    /// Seed of every random choice fault injection makes.
    pub seed: u64,
    /// Where to serve the control API (in-process device only).
    pub api_socket: Option<PathBuf>,
    /// Where to write the device's event trace when the VM stops (`.json`: Chrome trace
    /// JSON; anything else: text).
    pub trace: Option<PathBuf>,
    /// A lean event log (no hits, register writes or interrupts).
    pub trace_lean: bool,
    /// The fabric link of the in-process device (spec §20).
    pub fabric: rmnic_device_server::fabric_link::FabricArgs,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_owned(),
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            timeout: None,
            serial_input: false,
            tlb_sets: DEFAULT_TLB_SETS,
            tlb_ways: DEFAULT_TLB_WAYS,
            device_workers: rmnic_device::rmnic::DEFAULT_WORKERS,
            doorbells: DoorbellPath::Ioeventfd,
            device: DeviceSource::InProcess,
            coherence_check: rmnic_device::oracle::CheckMode::Full,
            violations_fail: true,
            fault: "none".to_owned(),
            seed: 0,
            api_socket: None,
            trace: None,
            trace_lean: false,
            fabric: Default::default(),
        }
    }

    /// Checks ranges and that the files exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cpus(u64::from(self.cpus))?;
        validate_memory(self.memory_mib)?;
        if self.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout);
        }
        self.tlb_geometry()?;
        if !(1..=rmnic_device::rmnic::MAX_WORKERS).contains(&self.device_workers) {
            return Err(ConfigError::Workers(self.device_workers));
        }
        rmnic_device::inject::injector_named(&self.fault, self.seed).map_err(ConfigError::Fault)?;
        if self.device != DeviceSource::InProcess
            && (self.api_socket.is_some() || self.trace.is_some() || self.fabric.enabled())
        {
            return Err(ConfigError::OutOfProcessControl);
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        Ok(())
    }

    /// The device TLB shape, checked by the device model.
    pub fn tlb_geometry(&self) -> Result<rmnic_device::TlbGeometry, ConfigError> {
        rmnic_device::TlbGeometry::new(self.tlb_sets, self.tlb_ways).map_err(|reason| {
            ConfigError::Tlb {
                sets: self.tlb_sets,
                ways: self.tlb_ways,
                reason,
            }
        })
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// Checks a vCPU count.
pub fn validate_cpus(n: u64) -> Result<u8, ConfigError> {
    match u8::try_from(n) {
        Ok(c) if (1..=MAX_CPUS).contains(&c) => Ok(c),
        _ => Err(ConfigError::Cpus(n)),
    }
}

/// Checks a memory size in MiB.
pub fn validate_memory(mib: u64) -> Result<u64, ConfigError> {
    if mib < MIN_MEMORY_MIB {
        Err(ConfigError::MemoryTooSmall(mib))
    } else if mib > MAX_MEMORY_MIB {
        Err(ConfigError::MemoryTooLarge(mib))
    } else {
        Ok(mib)
    }
}

/// The default image directory: `$RMNIC_IMAGES`, else `$HOME/.cache/rmnic/images`.
pub fn default_image_dir(env: impl Fn(&str) -> Option<String>) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = env("RMNIC_IMAGES").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(ConfigError::NoImageDir)?;
    Ok(Path::new(&home).join(".cache/rmnic/images"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing_file() -> PathBuf {
        // The crate's own manifest certainly exists.
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
    }

    #[test]
    fn defaults_validate_with_existing_files() {
        let mut c = VmConfig::new(existing_file());
        c.initrd = Some(existing_file());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.memory_bytes(), 512 << 20);
    }

    #[test]
    fn missing_kernel_and_initrd_are_named() {
        let c = VmConfig::new("/nonexistent/bzImage");
        assert_eq!(
            c.validate(),
            Err(ConfigError::KernelMissing("/nonexistent/bzImage".into()))
        );
        let mut c = VmConfig::new(existing_file());
        c.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(c.validate(), Err(ConfigError::InitrdMissing(_))));
    }

    #[test]
    fn cpu_and_memory_bounds() {
        assert_eq!(validate_cpus(0), Err(ConfigError::Cpus(0)));
        assert_eq!(validate_cpus(65), Err(ConfigError::Cpus(65)));
        assert_eq!(validate_cpus(300), Err(ConfigError::Cpus(300)));
        assert_eq!(validate_cpus(64), Ok(64));
        assert_eq!(validate_memory(63), Err(ConfigError::MemoryTooSmall(63)));
        assert_eq!(
            validate_memory(MAX_MEMORY_MIB + 1),
            Err(ConfigError::MemoryTooLarge(MAX_MEMORY_MIB + 1))
        );
        let mut c = VmConfig::new(existing_file());
        c.timeout = Some(Duration::ZERO);
        assert_eq!(c.validate(), Err(ConfigError::ZeroTimeout));
    }

    #[test]
    fn image_dir_prefers_rmnic_images_then_home() {
        let env = |k: &str| match k {
            "RMNIC_IMAGES" => Some("/imgs".to_owned()),
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        assert_eq!(default_image_dir(env), Ok(PathBuf::from("/imgs")));
        let env = |k: &str| (k == "HOME").then(|| "/home/u".to_owned());
        assert_eq!(
            default_image_dir(env),
            Ok(PathBuf::from("/home/u/.cache/rmnic/images"))
        );
        assert_eq!(default_image_dir(|_| None), Err(ConfigError::NoImageDir));
    }
}
