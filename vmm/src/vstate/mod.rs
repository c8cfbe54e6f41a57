//! The machine as KVM sees it: the VM (memory slots, irqchip, PIT) and the vCPUs (boot
//! state, CPUID, run loop).

pub mod cpuid;
pub mod dump;
pub mod vcpu;
pub mod vm;

pub use vcpu::{CpuTemplate, Vcpu, VcpuError, VcpuExitContext};
pub use vm::{Vm, VmError};
