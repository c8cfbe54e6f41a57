//! Command-line interface of the `rmnic-vmm` binary (clap derive), kept in the library so
//! its validation is unit-tested.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{
    default_image_dir, validate_cpus, validate_memory, ConfigError, DeviceSource, VmConfig,
    DEFAULT_CMDLINE,
};

/// Kernel file name inside the image directory.
pub const DEFAULT_KERNEL_NAME: &str = "bzImage";
/// Initramfs file name inside the image directory.
pub const DEFAULT_INITRD_NAME: &str = "guest-initramfs.cpio";

/// Boot a Linux guest with the rmnic device on its PCI bus.
///
/// Exit status: the guest's (0..=127, written to I/O port 0xF4), 128+ for VMM-side
/// reasons (reset, triple fault, KVM errors, timeout), 2 if the VM could not start.
#[derive(Debug, Parser)]
#[command(name = "rmnic-vmm", version, about, long_about)]
pub struct Cli {
    /// bzImage to boot [default: $RMNIC_IMAGES/bzImage, RMNIC_IMAGES defaulting to
    /// $HOME/.cache/rmnic/images].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs [default: $RMNIC_IMAGES/guest-initramfs.cpio].
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Number of vCPUs (1..=64).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = parse_cpus)]
    pub cpus: u8,

    /// Guest memory in MiB (64..=1048576).
    #[arg(long, value_name = "MIB", default_value_t = 512, value_parser = parse_memory)]
    pub memory: u64,

    /// Stop the VM after this many seconds (exit status 0x85).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<u64>,

    /// Forward stdin to the guest's serial console.
    #[arg(long)]
    pub serial_input: bool,

    /// Device TLB sets (a power of two, up to 32768).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_TLB_SETS)]
    pub tlb_sets: u32,

    /// Device TLB ways (2..=16).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_TLB_WAYS)]
    pub tlb_ways: u32,

    /// Device worker threads (1..=16).
    #[arg(long, value_name = "N", default_value_t = rmnic_device::rmnic::DEFAULT_WORKERS)]
    pub device_workers: usize,

    /// How the in-process device's command-queue doorbells reach it: `ioeventfd` (KVM
    /// signals an eventfd and a relay thread rings the device; the vCPU does not leave the
    /// kernel) or `exit` (an MMIO exit to this process, like every other register).
    #[arg(long, value_enum, default_value = "ioeventfd")]
    pub doorbells: crate::config::DoorbellPath,

    /// Where the rmnic function's model runs: `rmnic` (in this process) or
    /// `vfio-user:SOCKET` (another process serving it over vfio-user, e.g.
    /// `rmnic-device-server --socket SOCKET`).
    #[arg(long, value_name = "DEVICE", default_value = "rmnic")]
    pub device: DeviceSource,

    /// What the coherence oracle checks: `off`, `full` (every translated device access) or
    /// `sample:N` (one in N), against the guest's page tables (docs/oracle.md).
    #[arg(long, value_name = "MODE", default_value = "full")]
    pub coherence_check: rmnic_device::oracle::CheckMode,

    /// What violations do: `fail` (exit status 0x87 after a normal guest exit) or `report`
    /// (printed only; the guest's status stands).
    #[arg(long, value_name = "POLICY", default_value = "fail", value_parser = ["fail", "report"])]
    pub violations: String,

    /// Device-TLB faults to inject into the in-process device (repeatable, or
    /// comma-separated), e.g. `drop-invalidate`, `evict:0.1`, `delay-invalidate:20ms`.
    /// docs/fault-injection.md lists every mode; `fault set` changes them at run time.
    #[arg(long, value_name = "MODE")]
    pub fault: Vec<String>,

    /// Seed of every random choice fault injection makes [default: from the clock]; the VMM
    /// prints the seed it used, so a failing run can be replayed with it.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Serve the control API on this Unix socket (`rmnic-vmm ctl --socket PATH ...`).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Write the device's event trace here when the VM stops: Chrome/Perfetto trace JSON if
    /// the name ends in `.json`, text otherwise.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// A lean event log: leave out TLB hits, register writes and interrupts (most of the events;
    /// scratch-register markers stay), so a long run's trace keeps misses, drop-ins,
    /// invalidations, completions and violations.
    #[arg(long)]
    pub trace_lean: bool,

    /// The fabric link to another rmnic device (remote segments; docs/fabric.md), for the
    /// in-process device.
    #[command(flatten)]
    pub fabric: rmnic_device_server::fabric_link::FabricArgs,
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let n: u64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    validate_cpus(n).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of MiB"))?;
    validate_memory(n).map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err(ConfigError::ZeroTimeout.to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of seconds")),
    }
}

impl Cli {
    /// Resolves defaults (image paths from `env`) and validates the result.
    pub fn into_config(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<VmConfig, ConfigError> {
        let dir = || default_image_dir(&env);
        let kernel = match self.kernel {
            Some(k) => k,
            None => dir()?.join(DEFAULT_KERNEL_NAME),
        };
        let initrd = match self.initrd {
            Some(i) => i,
            None => dir()?.join(DEFAULT_INITRD_NAME),
        };
        let config = VmConfig {
            kernel,
            initrd: Some(initrd),
            cmdline: self.cmdline,
            cpus: self.cpus,
            memory_mib: self.memory,
            timeout: self.timeout.map(Duration::from_secs),
            serial_input: self.serial_input,
            tlb_sets: self.tlb_sets,
            tlb_ways: self.tlb_ways,
            device_workers: self.device_workers,
            doorbells: self.doorbells,
            device: self.device,
            coherence_check: self.coherence_check,
            violations_fail: self.violations == "fail",
            fault: if self.fault.is_empty() {
                "none".to_owned()
            } else {
                self.fault.join(",")
            },
            seed: self.seed.unwrap_or_else(rmnic_device::inject::clock_seed),
            api_socket: self.api_socket,
            trace: self.trace,
            trace_lean: self.trace_lean,
            fabric: self.fabric,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rmnic-vmm").chain(args.iter().copied()))
    }

    fn manifest() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_owned()
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).expect("no args parse");
        assert_eq!((cli.cpus, cli.memory, cli.timeout), (2, 512, None));
        assert_eq!(cli.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn zero_cpus_is_rejected_with_the_range() {
        let e = parse(&["--cpus", "0"]).expect_err("0 cpus");
        assert!(e.to_string().contains("1..=64"), "{e}");
        assert!(parse(&["--cpus", "65"]).is_err());
        assert!(parse(&["--cpus", "two"]).is_err());
        assert_eq!(parse(&["--cpus", "64"]).expect("64").cpus, 64);
    }

    #[test]
    fn too_little_memory_is_rejected() {
        let e = parse(&["--memory", "32"]).expect_err("32 MiB");
        assert!(e.to_string().contains("at least 64 MiB"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn zero_timeout_is_rejected() {
        assert!(parse(&["--timeout", "0"]).is_err());
        assert_eq!(parse(&["--timeout", "30"]).expect("30").timeout, Some(30));
    }

    #[test]
    fn missing_kernel_file_is_reported_with_its_path() {
        let cli = parse(&["--kernel", "/nope/bzImage", "--initrd", &manifest()]).expect("parse");
        assert_eq!(
            cli.into_config(|_| None),
            Err(ConfigError::KernelMissing("/nope/bzImage".into()))
        );
    }

    #[test]
    fn default_paths_come_from_rmnic_images() {
        let cli = parse(&[]).expect("parse");
        let env = |k: &str| (k == "RMNIC_IMAGES").then(|| "/imgs".to_owned());
        assert_eq!(
            cli.into_config(env),
            Err(ConfigError::KernelMissing("/imgs/bzImage".into()))
        );
        let cli = parse(&["--kernel", &manifest()]).expect("parse");
        assert_eq!(
            cli.into_config(env),
            Err(ConfigError::InitrdMissing(
                "/imgs/guest-initramfs.cpio".into()
            ))
        );
    }

    #[test]
    fn explicit_files_give_a_config() {
        let m = manifest();
        let cli = parse(&[
            "--kernel",
            &m,
            "--initrd",
            &m,
            "--cpus",
            "4",
            "--timeout",
            "9",
        ])
        .expect("parse");
        let c = cli.into_config(|_| None).expect("valid");
        assert_eq!(c.cpus, 4);
        assert_eq!(c.timeout, Some(Duration::from_secs(9)));
        assert_eq!(c.initrd.as_deref(), Some(std::path::Path::new(&m)));
    }
}
