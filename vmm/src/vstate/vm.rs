//! The KVM VM: opening /dev/kvm, checking the capabilities the VMM relies on, registering
//! guest RAM as memory slots, and creating the in-kernel irqchip (PIC + IOAPIC + LAPICs)
//! and PIT.

use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::GuestMemory;

/// Path of the KVM device.
pub const KVM_PATH: &str = "/dev/kvm";

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing or not accessible.
    #[error("Cannot open {KVM_PATH}")]
    OpenKvm(#[source] std::io::Error),
    /// A KVM capability the VMM needs is missing.
    #[error("KVM lacks required capability {0}")]
    MissingCap(&'static str),
    /// A VM-level ioctl failed.
    #[error("KVM {op} failed")]
    Ioctl {
        /// What was attempted.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The host cannot run as many vCPUs as asked.
    #[error("KVM supports at most {max} vCPUs, {asked} requested")]
    TooManyVcpus {
        /// Requested count.
        asked: u8,
        /// KVM's limit.
        max: usize,
    },
}

fn ioctl_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Ioctl {
        op,
        source: e.into(),
    }
}

/// An open KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
}

impl Vm {
    /// Opens /dev/kvm, checks capabilities, and creates an empty VM.
    pub fn new() -> Result<Self, VmError> {
        if !Path::new(KVM_PATH).exists() {
            return Err(VmError::OpenKvm(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            )));
        }
        let kvm = Kvm::new().map_err(|e| VmError::OpenKvm(e.into()))?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
        })
    }

    /// The VM file descriptor, shared with the interrupt router.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Fails if KVM cannot run `n` vCPUs.
    pub fn check_vcpu_count(&self, n: u8) -> Result<(), VmError> {
        let max = self.kvm.get_max_vcpus();
        if usize::from(n) > max {
            return Err(VmError::TooManyVcpus { asked: n, max });
        }
        Ok(())
    }

    /// Whether KVM emulates the LAPIC TSC-deadline timer (to be advertised in CPUID).
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// CPUID leaves KVM can virtualise on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Registers every region of `mem` as a KVM memory slot, slot n for region n.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Ioctl {
                    op: "KVM_SET_USER_MEMORY_REGION (host address)",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })?;
            let region_desc = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by
            // `mem`; the caller keeps `mem` alive for as long as the VM (both are dropped
            // together in `Vmm`), and no other slot covers the same guest range because
            // vm-memory regions never overlap.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// TSS and identity-map pages, in-kernel PIC/IOAPIC/LAPIC and PIT. Must run before any
    /// vCPU is created (KVM makes vCPUs created later start as APs waiting for SIPI).
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl_err("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(ioctl_err("KVM_CREATE_IRQCHIP"))?;
        // Without KVM_PIT_SPEAKER_DUMMY KVM also emulates port 0x61 (channel 2 gate and
        // output), which Linux's PIT-based TSC calibration polls; a dummy speaker would
        // leave that loop spinning on an unclaimed port.
        let pit = kvm_pit_config::default();
        self.fd
            .create_pit2(pit)
            .map_err(ioctl_err("KVM_CREATE_PIT2"))?;
        Ok(())
    }
}
