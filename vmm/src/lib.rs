//! rmnic-vmm: a minimal VMM on rust-vmm crates that boots an x86-64 Linux bzImage with
//! the rmnic device model on a PCI bus.
//!
//! Layout by role: [`vstate`] is the machine as KVM sees it (VM, vCPUs, CPUID), [`boot`]
//! what is written into guest memory before the first instruction, [`bus`] and [`pci`]
//! route exits to devices, [`devices`] holds the legacy platform devices, [`interrupts`]
//! delivers MSIs, and [`vmm`] wires it all together.
//!
//! Library entry point for other crates (e.g. the test harness):
//!
//! ```no_run
//! use rmnic_vmm::{run_vm, VmConfig};
//! let mut config = VmConfig::new("/path/to/bzImage");
//! config.initrd = Some("/path/to/initramfs.cpio".into());
//! let reason = run_vm(&config, Box::new(std::io::stdout())).expect("VM starts");
//! std::process::exit(i32::from(reason.status()));
//! ```

pub mod boot;
pub mod bus;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod devices;
pub mod exit;
pub mod interrupts;
pub mod memory;
pub mod pci;
pub mod vmm;
pub mod vstate;

pub use config::{ConfigError, VmConfig};
pub use exit::ExitReason;
pub use vmm::{run_vm, Vmm, VmmError};

/// Process exit status for "the VM could not be started" (bad arguments, missing files,
/// no usable /dev/kvm, setup failure).
pub const STATUS_START_FAILURE: u8 = 2;
