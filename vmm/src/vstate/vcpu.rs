//! One vCPU: its boot-time register state (64-bit long mode at the kernel's entry for the
//! boot CPU; APs wait for INIT/SIPI in the in-kernel LAPIC), CPUID, MSRs and LAPIC LINT
//! wiring, and the exit loop that runs on the vCPU's own thread.

use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::gdt::{segment_from_gdt, BOOT_GDT, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::boot::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};
use crate::boot::BootInfo;
use crate::bus::Bus;
use crate::exit::{ExitLatch, ExitReason};
use crate::pci::PciRoot;

use super::cpuid::fixup_for_vcpu;
use super::dump::ExitCounts;
use super::vm::Vm;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// LAPIC local vector table registers for LINT0/LINT1 and their delivery-mode field.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("KVM {op} failed on vCPU {id}")]
    Ioctl {
        /// vCPU index.
        id: u8,
        /// What was attempted.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Everything a vCPU thread needs to handle exits.
#[derive(Clone)]
pub struct VcpuExitContext {
    /// Port-I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices other than PCI BARs.
    pub mmio: Arc<Bus>,
    /// PCI BAR routing.
    pub pci: Arc<PciRoot>,
    /// Where stop requests go and are observed.
    pub latch: Arc<ExitLatch>,
}

/// What every vCPU's CPUID is derived from.
pub struct CpuTemplate {
    /// KVM_GET_SUPPORTED_CPUID.
    pub supported_cpuid: CpuId,
    /// KVM_CAP_TSC_DEADLINE_TIMER.
    pub tsc_deadline: bool,
}

/// A configured vCPU, ready to move to its thread.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` (its APIC ID is the same number).
    pub fn new(vm: &Vm, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(ioctl_err(id, "KVM_CREATE_VCPU"))?;
        Ok(Self { id, fd })
    }

    /// vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU; registers and segments only for the boot
    /// CPU (`boot` is `Some` for vCPU 0).
    pub fn configure(
        &self,
        cpu: &CpuTemplate,
        num_cpus: u8,
        boot: Option<&BootInfo>,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let mut cpuid = cpu.supported_cpuid.clone();
        fixup_for_vcpu(cpuid.as_mut_slice(), id, num_cpus, cpu.tsc_deadline);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(ioctl_err(id, "KVM_SET_CPUID2"))?;
        self.setup_msrs()?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(ioctl_err(id, "KVM_SET_FPU"))?;
        self.setup_lapic()?;
        if let Some(boot) = boot {
            self.setup_boot_registers(boot)?;
        }
        Ok(())
    }

    fn setup_msrs(&self) -> Result<(), VcpuError> {
        let msrs = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
        ];
        // One at a time: KVM_SET_MSRS stops at the first MSR it refuses, and a host that
        // lacks one (MISC_ENABLE on some AMD setups) should not cost the others.
        for (index, data) in msrs {
            let entry = kvm_msr_entry {
                index,
                data,
                ..Default::default()
            };
            let list = Msrs::from_entries(&[entry]).map_err(|_| VcpuError::Ioctl {
                id: self.id,
                op: "KVM_SET_MSRS (building the list)",
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })?;
            match self.fd.set_msrs(&list) {
                Ok(1) => {}
                Ok(_) => tracing::debug!(vcpu = self.id, "KVM refused MSR {index:#x}"),
                Err(e) => {
                    return Err(VcpuError::Ioctl {
                        id: self.id,
                        op: "KVM_SET_MSRS",
                        source: e.into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as a BIOS leaves them.
    fn setup_lapic(&self) -> Result<(), VcpuError> {
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(ioctl_err(self.id, "KVM_GET_LAPIC"))?;
        for (reg, mode) in [
            (APIC_LVT_LINT0, APIC_MODE_EXTINT),
            (APIC_LVT_LINT1, APIC_MODE_NMI),
        ] {
            let bytes = &mut lapic.regs[reg..reg + 4];
            let mut raw = [0u8; 4];
            for (d, s) in raw.iter_mut().zip(bytes.iter()) {
                *d = *s as u8;
            }
            let value = (u32::from_le_bytes(raw) & !APIC_DELIVERY_MODE_MASK) | (mode << 8);
            for (d, s) in bytes.iter_mut().zip(value.to_le_bytes()) {
                *d = s as std::os::raw::c_char;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(ioctl_err(self.id, "KVM_SET_LAPIC"))
    }

    /// 64-bit mode with paging on, at the kernel's 64-bit entry, RSI = zero page.
    fn setup_boot_registers(&self, boot: &BootInfo) -> Result<(), VcpuError> {
        let id = self.id;
        let regs = kvm_regs {
            rflags: 0x2,
            rip: boot.entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: boot.zero_page,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(ioctl_err(id, "KVM_SET_REGS"))?;

        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(ioctl_err(id, "KVM_GET_SREGS"))?;
        sregs.gdt.base = BOOT_GDT_START;
        sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
        sregs.idt.base = BOOT_IDT_START;
        sregs.idt.limit = 7;
        let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
        let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
        let tss = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = tss;
        // Caches on (reset CR0 has CD|NW set), protected mode, paging.
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.cr3 = boot.cr3;
        sregs.cr4 = X86_CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
        self.fd
            .set_sregs(&sregs)
            .map_err(ioctl_err(id, "KVM_SET_SREGS"))
    }

    /// Runs the vCPU until a stop is requested (by this vCPU, another, a device, or the
    /// VMM's timeout). Guest-caused conditions become an [`ExitReason`] on the latch; this
    /// never panics on guest input.
    pub fn run(mut self, ctx: VcpuExitContext) {
        let id = u32::from(self.id);
        let mut counts = ExitCounts::default();
        while !ctx.latch.is_set() {
            let step = match self.fd.run() {
                Ok(exit) => {
                    count_exit(&mut counts, &exit);
                    handle_exit(id, exit, &ctx)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    counts.interrupted += 1;
                    Step::Continue
                }
                Err(e) => Step::Stop(ExitReason::VmmError(format!(
                    "KVM_RUN failed on vCPU {id}: {e}"
                ))),
            };
            counts.maybe_dump(id, &self.fd);
            match step {
                Step::Continue => {}
                Step::Stop(reason) => {
                    if matches!(reason, ExitReason::TripleFault { .. }) {
                        // The registers at the reset tell a guest bug (guest RIP and CR3)
                        // from the emulated host's state mix-up (the host's, docs/platform.md).
                        eprintln!("{}", crate::vstate::dump::describe(id, &self.fd, &counts));
                    }
                    ctx.latch.trigger(reason);
                }
                Step::InternalError => {
                    let suberror = self.internal_error_suberror();
                    ctx.latch
                        .trigger(ExitReason::KvmInternalError { vcpu: id, suberror });
                }
            }
        }
        tracing::debug!(vcpu = id, "vCPU thread stops");
    }

    /// KVM's suberror for the KVM_EXIT_INTERNAL_ERROR just returned.
    fn internal_error_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, for
        // which the kernel fills the `internal` member of the exit union; the struct is
        // plain integers, valid for any bit pattern.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}

fn count_exit(counts: &mut ExitCounts, exit: &VcpuExit<'_>) {
    match exit {
        VcpuExit::MmioRead(..) => counts.mmio_read += 1,
        VcpuExit::MmioWrite(..) => counts.mmio_write += 1,
        VcpuExit::IoIn(..) => counts.pio_in += 1,
        VcpuExit::IoOut(..) => counts.pio_out += 1,
        _ => counts.other += 1,
    }
}

/// What the loop does after an exit, with the borrow of the vCPU's run area released.
enum Step {
    Continue,
    Stop(ExitReason),
    InternalError,
}

fn handle_exit(id: u32, exit: VcpuExit<'_>, ctx: &VcpuExitContext) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            for_each_access(u64::from(port), data.len(), |addr, range| {
                let chunk = &mut data[range];
                if !ctx.pio.read(addr, chunk) {
                    chunk.fill(0xff);
                }
            });
            Step::Continue
        }
        VcpuExit::IoOut(port, data) => {
            for_each_access(u64::from(port), data.len(), |addr, range| {
                ctx.pio.write(addr, &data[range]);
            });
            Step::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) && !ctx.pci.mmio_read(addr, data) {
                tracing::trace!("unclaimed MMIO read at {addr:#x}");
                data.fill(0xff);
            }
            Step::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) && !ctx.pci.mmio_write(addr, data) {
                tracing::trace!("unclaimed MMIO write at {addr:#x}");
            }
            Step::Continue
        }
        // With the in-kernel irqchip HLT stays in the kernel; these are harmless if seen.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Step::Continue,
        VcpuExit::Shutdown => Step::Stop(ExitReason::TripleFault { vcpu: id }),
        VcpuExit::FailEntry(reason, _cpu) => Step::Stop(ExitReason::FailEntry { vcpu: id, reason }),
        VcpuExit::InternalError => Step::InternalError,
        VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_RESET => {
            Step::Stop(ExitReason::TripleFault { vcpu: id })
        }
        VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(
            ExitReason::VmmError(format!("guest requested power-off on vCPU {id}")),
        ),
        other => Step::Stop(ExitReason::VmmError(format!(
            "unhandled exit on vCPU {id}: {other:?}"
        ))),
    }
}

/// Splits a port access into device accesses. A single IN/OUT is one access of 1, 2 or
/// 4 bytes; a string instruction (`rep outsb`) arrives as `count * size` bytes, which we
/// can only tell apart by length, so any other length is replayed byte by byte (correct
/// for `rep ins/outsb`, the only string port I/O Linux does on these devices).
fn for_each_access(port: u64, len: usize, mut f: impl FnMut(u64, std::ops::Range<usize>)) {
    if matches!(len, 1 | 2 | 4) {
        f(port, 0..len);
    } else {
        for i in 0..len {
            f(port, i..i + 1);
        }
    }
}

fn ioctl_err(id: u8, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |e| VcpuError::Ioctl {
        id,
        op,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_port_access_is_one_dispatch() {
        for len in [1, 2, 4] {
            let mut seen = Vec::new();
            for_each_access(0x3f8, len, |a, r| seen.push((a, r)));
            assert_eq!(seen, vec![(0x3f8, 0..len)]);
        }
    }

    #[test]
    fn string_io_is_replayed_byte_by_byte_on_the_same_port() {
        let mut seen = Vec::new();
        for_each_access(0x3f8, 3, |a, r| seen.push((a, r)));
        assert_eq!(seen, vec![(0x3f8, 0..1), (0x3f8, 1..2), (0x3f8, 2..3)]);
    }
}
