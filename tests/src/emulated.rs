//! The emulated host's settings: which QEMU runs it, how TCG threads it, which CPU it
//! emulates, and what the emulated host's kernel gets on its command line. Defaults are the
//! configuration `docs/platform.md` chose with the soak numbers behind it; every field can be
//! overridden from the environment, which is how `cargo xtask soak` compares configurations.

use std::path::PathBuf;

/// QEMU binary (`RMNIC_QEMU` overrides).
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// How TCG maps emulated CPUs to host threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcgThreads {
    /// One host thread per emulated CPU (MTTCG).
    Multi,
    /// All emulated CPUs round-robin on one host thread.
    Single,
}

impl TcgThreads {
    fn as_str(self) -> &'static str {
        match self {
            Self::Multi => "multi",
            Self::Single => "single",
        }
    }
}

impl std::str::FromStr for TcgThreads {
    type Err = BadSetting;

    fn from_str(s: &str) -> Result<Self, BadSetting> {
        match s {
            "multi" => Ok(Self::Multi),
            "single" => Ok(Self::Single),
            _ => Err(BadSetting {
                var: "RMNIC_TCG (--tcg)",
                expected: "`multi` or `single`",
                value: s.to_string(),
            }),
        }
    }
}

/// Settings of the QEMU machine that plays the emulated host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedHost {
    /// QEMU binary (`RMNIC_QEMU`).
    pub qemu: PathBuf,
    /// Firmware directory passed as `-L` (`RMNIC_QEMU_DATA`); QEMU's built-in search path when
    /// `None`. Needed only for a QEMU unpacked outside the system (an older build kept for
    /// comparison).
    pub data_dir: Option<PathBuf>,
    /// TCG threading (`RMNIC_TCG=multi|single`).
    pub tcg: TcgThreads,
    /// `-cpu` model (`RMNIC_HOST_CPU`).
    pub cpu: String,
    /// Extra words for the emulated host kernel's command line (`RMNIC_HOST_APPEND`), e.g.
    /// `kvm_amd` module options.
    pub kernel_append: String,
}

/// A bad value in one of the variables above.
#[derive(Debug, thiserror::Error)]
#[error("{var} must be {expected}, not `{value}`")]
pub struct BadSetting {
    /// The variable.
    pub var: &'static str,
    /// What it may hold.
    pub expected: &'static str,
    /// What it held.
    pub value: String,
}

impl Default for EmulatedHost {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from(DEFAULT_QEMU),
            data_dir: None,
            tcg: TcgThreads::Multi,
            cpu: "max".to_string(),
            kernel_append: String::new(),
        }
    }
}

impl EmulatedHost {
    /// The defaults, with every `RMNIC_*` override above applied.
    pub fn from_env() -> Result<Self, BadSetting> {
        Self::default().with_env()
    }

    fn with_env(self) -> Result<Self, BadSetting> {
        let mut host = self;
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(qemu) = var("RMNIC_QEMU") {
            host.qemu = PathBuf::from(qemu);
        }
        if let Some(dir) = var("RMNIC_QEMU_DATA") {
            host.data_dir = Some(PathBuf::from(dir));
        }
        if let Some(tcg) = var("RMNIC_TCG") {
            host.tcg = tcg.parse()?;
        }
        if let Some(cpu) = var("RMNIC_HOST_CPU") {
            host.cpu = cpu;
        }
        if let Some(append) = var("RMNIC_HOST_APPEND") {
            host.kernel_append = append;
        }
        Ok(host)
    }

    /// QEMU's arguments for the machine itself (accelerator, CPU, firmware path).
    pub fn machine_args(&self) -> Vec<String> {
        let mut args = vec![
            "-accel".to_string(),
            format!("tcg,thread={}", self.tcg.as_str()),
            "-M".to_string(),
            "q35".to_string(),
            "-cpu".to_string(),
            self.cpu.clone(),
        ];
        if let Some(dir) = &self.data_dir {
            args.push("-L".to_string());
            args.push(dir.display().to_string());
        }
        args
    }

    /// One line naming this configuration, for logs and soak reports.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} tcg,thread={} -cpu {}",
            self.qemu.display(),
            self.tcg.as_str(),
            self.cpu
        );
        if !self.kernel_append.is_empty() {
            text.push_str(&format!(" host-append \"{}\"", self.kernel_append));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_args_carry_threading_cpu_and_firmware_dir() {
        let host = EmulatedHost {
            tcg: TcgThreads::Single,
            cpu: "EPYC".into(),
            data_dir: Some(PathBuf::from("/opt/q/share")),
            ..EmulatedHost::default()
        };
        assert_eq!(
            host.machine_args(),
            [
                "-accel",
                "tcg,thread=single",
                "-M",
                "q35",
                "-cpu",
                "EPYC",
                "-L",
                "/opt/q/share"
            ]
        );
        assert!(EmulatedHost::default()
            .machine_args()
            .contains(&"tcg,thread=multi".to_string()));
    }
}
