//! On-demand vCPU state dumps: `kill -USR1 <rmnic-vmm>` makes every vCPU thread print where
//! its guest CPU is (registers, control registers, pending events) and what it has exited for
//! since the VM started. A stalled guest CPU then shows whether it is stuck in one place, and
//! whether its thread is still cycling through KVM_RUN and the VMM (exit counters moving between
//! two dumps) or sitting in guest mode.
//!
//! The signal handler only sets a flag. The VMM's main thread notices it, bumps the dump
//! generation and kicks the vCPU threads out of KVM_RUN (KVM's registers can only be read while
//! the vCPU is not running); each thread prints its state the next time its loop turns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvm_ioctls::VcpuFd;

/// Set by the SIGUSR1 handler.
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Bumped once per request the main thread serves; vCPU threads compare with what they saw.
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn request_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: one atomic store.
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Installs the SIGUSR1 handler.
pub fn install() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, request_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Main thread: true (once) if a dump was requested since the last call; the generation is
/// bumped so every vCPU thread prints once. The caller then kicks the vCPU threads.
pub fn take_request() -> bool {
    if REQUESTED.swap(false, Ordering::Relaxed) {
        GENERATION.fetch_add(1, Ordering::Release);
        true
    } else {
        false
    }
}

/// What one vCPU thread has exited for, by kind.
#[derive(Default, Debug)]
pub struct ExitCounts {
    /// KVM_EXIT_MMIO reads.
    pub mmio_read: u64,
    /// KVM_EXIT_MMIO writes.
    pub mmio_write: u64,
    /// KVM_EXIT_IO in.
    pub pio_in: u64,
    /// KVM_EXIT_IO out.
    pub pio_out: u64,
    /// KVM_RUN returned EINTR/EAGAIN (a signal, such as a kick).
    pub interrupted: u64,
    /// Every other exit.
    pub other: u64,
    seen_generation: u64,
}

impl ExitCounts {
    /// vCPU thread, after each KVM_RUN return: prints the state if a dump is pending.
    pub fn maybe_dump(&mut self, id: u32, fd: &VcpuFd) {
        let generation = GENERATION.load(Ordering::Acquire);
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        eprintln!("{}", describe(id, fd, self));
    }
}

/// vCPU `id`'s registers, pending events and exit counts, as printed lines.
pub fn describe(id: u32, fd: &VcpuFd, counts: &ExitCounts) -> String {
    let mut text = format!(
        "rmnic-vmm: vCPU {id} state: exits mmio-read {} mmio-write {} pio-in {} pio-out {} interrupted {} other {}",
        counts.mmio_read, counts.mmio_write, counts.pio_in, counts.pio_out, counts.interrupted, counts.other
    );
    match fd.get_regs() {
        Ok(r) => text.push_str(&format!(
            "\nrmnic-vmm: vCPU {id} rip {:#018x} rsp {:#018x} rflags {:#x} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
        )),
        Err(e) => text.push_str(&format!("\nrmnic-vmm: vCPU {id} KVM_GET_REGS failed: {e}")),
    }
    match fd.get_sregs() {
        Ok(s) => text.push_str(&format!(
            "\nrmnic-vmm: vCPU {id} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} apic_base {:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.apic_base
        )),
        Err(e) => text.push_str(&format!("\nrmnic-vmm: vCPU {id} KVM_GET_SREGS failed: {e}")),
    }
    match fd.get_vcpu_events() {
        Ok(ev) => text.push_str(&format!(
            "\nrmnic-vmm: vCPU {id} events: exception injected {} nr {} pending {}; interrupt injected {} nr {} shadow {}; nmi injected {} pending {} masked {}",
            ev.exception.injected,
            ev.exception.nr,
            ev.exception.pending,
            ev.interrupt.injected,
            ev.interrupt.nr,
            ev.interrupt.shadow,
            ev.nmi.injected,
            ev.nmi.pending,
            ev.nmi.masked
        )),
        Err(e) => text.push_str(&format!("\nrmnic-vmm: vCPU {id} KVM_GET_VCPU_EVENTS failed: {e}")),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_served_once_per_signal() {
        let before = GENERATION.load(Ordering::Relaxed);
        assert!(!take_request());
        REQUESTED.store(true, Ordering::Relaxed);
        assert!(take_request());
        assert!(!take_request());
        assert_eq!(GENERATION.load(Ordering::Relaxed), before + 1);
    }
}
