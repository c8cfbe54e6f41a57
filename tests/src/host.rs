//! Which way guests run here: rmnic-vmm directly on a host with hardware virtualization;
//! rmnic-vmm inside a QEMU TCG machine that emulates an AMD CPU with SVM and so provides a
//! working nested `/dev/kvm` (this project's CI machines have a `/dev/kvm` that cannot boot an
//! ordinary kernel); or QEMU booting the guest itself with the device served over vfio-user.

use std::fmt;

/// How the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMode {
    /// `rmnic-vmm` runs on this machine's `/dev/kvm`.
    Direct,
    /// `rmnic-vmm` runs inside `qemu-system-x86_64 -accel tcg -cpu max`.
    Emulated,
    /// QEMU boots the guest itself (TCG, or KVM where usable) with the rmnic device served
    /// by `rmnic-device-server` over vfio-user; rmnic-vmm is not involved.
    Qemu,
}

impl fmt::Display for HostMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Emulated => "emulated",
            Self::Qemu => "qemu",
        })
    }
}

/// Bad value in `RMNIC_HOST`.
#[derive(Debug, thiserror::Error)]
#[error("RMNIC_HOST must be `direct`, `emulated`, `qemu` or `auto`, not `{0}`")]
pub struct BadHostMode(String);

impl HostMode {
    /// `RMNIC_HOST` if set (`direct`, `emulated`, `qemu`, `auto`), else
    /// [`HostMode::detect`].
    pub fn from_env() -> Result<Self, BadHostMode> {
        match std::env::var("RMNIC_HOST").as_deref() {
            Ok("auto") | Ok("") | Err(_) => Ok(Self::detect()),
            Ok(other) => other.parse(),
        }
    }

    /// `RMNIC_HOST` if set to a mode, else [`HostMode::detect_vmm`]: how the tests that need
    /// rmnic-vmm boot.
    pub fn vmm_from_env() -> Result<Self, BadHostMode> {
        match std::env::var("RMNIC_HOST").as_deref() {
            Ok("auto") | Ok("") | Err(_) => Ok(Self::detect_vmm()),
            Ok(other) => other.parse(),
        }
    }

    /// What `auto` means: direct where `/dev/kvm` can boot Linux; elsewhere `qemu`, which
    /// boots and runs the suite about four times faster than `emulated` and needs no nested
    /// virtualization (the measurements are in README.md).
    pub fn detect() -> Self {
        if hardware_virtualization() {
            Self::Direct
        } else {
            Self::Qemu
        }
    }

    /// How rmnic-vmm runs here: directly where `/dev/kvm` can boot Linux, inside the emulated
    /// host elsewhere.
    pub fn detect_vmm() -> Self {
        if hardware_virtualization() {
            Self::Direct
        } else {
            Self::Emulated
        }
    }
}

/// Whether the CPU advertises SVM or VMX and `/dev/kvm` opens read-write. A PVM-style KVM (no
/// svm/vmx flag) answers ioctls but cannot boot Linux, so the flag, not the device node,
/// decides.
pub fn hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    cpuinfo_has_hw_virt(&cpuinfo) && kvm_usable
}

impl std::str::FromStr for HostMode {
    type Err = BadHostMode;

    fn from_str(s: &str) -> Result<Self, BadHostMode> {
        match s {
            "direct" => Ok(Self::Direct),
            "emulated" => Ok(Self::Emulated),
            "qemu" => Ok(Self::Qemu),
            "auto" => Ok(Self::detect()),
            other => Err(BadHostMode(other.to_string())),
        }
    }
}

fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "svm" || f == "vmx"))
}

#[cfg(test)]
mod tests {
    use super::cpuinfo_has_hw_virt;

    #[test]
    fn svm_or_vmx_flag_means_hardware_virtualization() {
        assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vme svm lm\n"));
        assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vmx\n"));
        assert!(!cpuinfo_has_hw_virt(
            "flags\t\t: fpu vme lm\nmodel name : svm-like\n"
        ));
    }
}
