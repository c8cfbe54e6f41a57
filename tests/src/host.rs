//! Which way guests run here: directly on a host with hardware virtualization, or inside a
//! QEMU TCG machine that emulates an AMD CPU with SVM and so provides a working nested
//! `/dev/kvm` (see ../shared/platform.md: this project's CI machines have a `/dev/kvm` that
//! cannot boot an ordinary kernel).

use std::fmt;

/// How `rmnic-vmm` gets a KVM that can boot Linux.
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

    /// Direct when the CPU advertises SVM or VMX and `/dev/kvm` opens read-write; emulated
    /// otherwise. A PVM-style KVM (no svm/vmx flag) answers ioctls but cannot boot Linux, so
    /// the flag, not the device node, decides.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_hw_virt = cpuinfo_has_hw_virt(&cpuinfo);
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if has_hw_virt && kvm_usable {
            Self::Direct
        } else {
            Self::Emulated
        }
    }
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
