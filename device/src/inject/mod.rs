//! Hook points for a verification oracle and for fault injection: one trait, installed per
//! device, whose default methods do nothing.
//!
//! The hooks sit on the device's single paths: every DMA (rings, records, data) passes
//! [`FaultInjector::dma`]; every translated access of the engine passes
//! [`FaultInjector::translated`] (while the translation it used is still guaranteed present);
//! every TLB hit may be turned into a forced eviction, a spurious miss or a parity error;
//! every invalidation descriptor may be dropped, delayed or stalled, and followed by stale
//! drop-ins; every interrupt may be lost or duplicated; a command start may reset the device.
//! What an injected fault does to the device is what the same fault in hardware would do, so
//! the driver's recovery paths get exercised.
//!
//! The fault modes a host's `--fault` names are in [`modes`], the parser in [`parse`], their
//! seeded decisions in [`chance`].

pub mod chance;
pub mod modes;
pub mod parse;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestAddress;

use crate::addr::VirtAddr;
use crate::engine::dma::GuestRam;
use crate::invalidation::InvalidationDescriptor;

/// What a DMA is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaPurpose {
    /// Command queue rings and command records (virtio descriptor table, avail and used rings).
    CommandQueue,
    /// A completion record.
    Completion,
    /// A fault record.
    FaultRecord,
    /// An invalidation descriptor or the invalidation done word.
    Invalidation,
    /// Data of a command, at a translated address.
    Data,
    /// A drop-in list (`CTX_CMD_DROPIN_LIST`, since 1.4).
    DropInList,
}

/// One DMA the device is about to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAccess {
    /// Guest-physical address.
    pub gpa: GuestAddress,
    /// Bytes.
    pub len: usize,
    /// Device writes guest memory (else reads it).
    pub write: bool,
    /// What for.
    pub purpose: DmaPurpose,
}

/// The outcome an injector chooses for a DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaVerdict {
    /// Perform it.
    Proceed,
    /// Fail it as if the address were outside guest RAM (nothing is transferred).
    Fail,
}

/// One chunk of a translated access (data moved through one page of each translation),
/// reported after the data moved and before the TLB read section ends: no invalidation of
/// the entry it used can have completed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslatedAccess {
    /// Context.
    pub ctx: u8,
    /// ASID.
    pub asid: u16,
    /// First virtual address accessed.
    pub va: VirtAddr,
    /// Guest-physical address it translated to.
    pub gpa: GuestAddress,
    /// Bytes (never crossing a page).
    pub len: u64,
    /// Access bits (`FAULT_ACCESS_READ`, `FAULT_ACCESS_WRITE`).
    pub access: u8,
    /// Fill that created the entry used.
    pub fill_id: u64,
    /// The context's page-table root as the driver registered it (`CTX_PTROOT`; 0 if none),
    /// for an oracle that compares the access with the CPU's page tables.
    pub pt_root: u64,
}

/// A translation the device has just installed (CTX_COMMAND DROPIN), reported after the TLB
/// took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropIn {
    /// Context.
    pub ctx: u8,
    /// ASID the entry carries.
    pub asid: u16,
    /// Virtual address of the page.
    pub va: VirtAddr,
    /// Guest-physical address of the page.
    pub gpa: GuestAddress,
    /// Page size in bytes.
    pub size: u64,
    /// The entry allows writes.
    pub writable: bool,
    /// Fill id the TLB gave it.
    pub fill_id: u64,
    /// The context's page-table root (`CTX_PTROOT`; 0 if none).
    pub pt_root: u64,
}

/// The outcome an injector chooses for an invalidation descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationVerdict {
    /// Execute it.
    Perform,
    /// Report it complete without removing anything (a lost invalidation).
    Drop,
    /// Wait, then execute it (later descriptors wait too: completion stays in order).
    Delay(Duration),
    /// Never execute or complete it: it and every later descriptor wait until a function
    /// reset abandons them.
    Stall,
}

/// Oracle and fault-injection hooks. Called from the device's worker threads and MMIO paths,
/// with device locks held: implementations must be quick and must not call into the device.
/// The hooks that return a [`Duration`] only say how long the device waits; the device
/// sleeps itself, where it holds as few locks as it can.
pub trait FaultInjector: Send + Sync + Debug {
    /// Every DMA the device is about to perform.
    fn dma(&self, _access: &DmaAccess) -> DmaVerdict {
        DmaVerdict::Proceed
    }

    /// Every translated access, after the data moved (see [`TranslatedAccess`]), with the
    /// guest memory the access went to (where the CPU's page tables are too).
    fn translated(&self, _access: &TranslatedAccess, _memory: &GuestRam) {}

    /// Every drop-in, once installed, with the guest memory (an oracle checks it against the
    /// CPU's page tables). Stale drop-ins ([`FaultInjector::stale_dropins`]) come here too.
    fn dropped_in(&self, _dropin: &DropIn, _memory: &GuestRam) {}

    /// A TLB hit for `ctx` at `va`: return true to evict the entry and take the miss path.
    fn evict_on_hit(&self, _ctx: u8, _va: VirtAddr) -> bool {
        false
    }

    /// A TLB hit for `ctx` at `va`: return true to report a miss while keeping the entry.
    fn spurious_miss(&self, _ctx: u8, _va: VirtAddr) -> bool {
        false
    }

    /// A TLB hit for `ctx` at `va`: return true to find the entry corrupt (parity error):
    /// the device drops it and fails the command with DEVICE_ERROR.
    fn parity_error(&self, _ctx: u8, _va: VirtAddr) -> bool {
        false
    }

    /// A TLB hit for `ctx` at `va` whose entry does not allow the access (a write through a
    /// read-only entry): return true to use it anyway (a device bug the oracle must catch).
    fn ignore_permission(&self, _ctx: u8, _va: VirtAddr) -> bool {
        false
    }

    /// A chunk of a translated access of `ctx` just moved: how much longer it takes.
    fn access_delay(&self, _ctx: u8) -> Duration {
        Duration::ZERO
    }

    /// An invalidation descriptor about to execute.
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        InvalidationVerdict::Perform
    }

    /// An invalidation descriptor has just removed its entries: translations to install
    /// again before its completion is reported (a drop-in path that raced past the
    /// invalidation: a device bug the oracle must catch).
    fn stale_dropins(&self, _descriptor: &InvalidationDescriptor) -> Vec<DropIn> {
        Vec::new()
    }

    /// The engine has started a command of `ctx`: return true to perform a function reset.
    fn reset_on_command(&self, _ctx: u8) -> bool {
        false
    }

    /// An interrupt about to be raised: return false to lose it.
    fn interrupt(&self, _vector: u16) -> bool {
        true
    }

    /// An interrupt just raised: return true to raise it a second time.
    fn duplicate_interrupt(&self, _vector: u16) -> bool {
        false
    }

    /// A fault record of `ctx` was written: how long to hold back its interrupt.
    fn fault_interrupt_delay(&self, _ctx: u8) -> Duration {
        Duration::ZERO
    }
}

/// The injector of a device without fault injection.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFaults;

impl FaultInjector for NoFaults {}

/// Several injectors at once: a DMA fails, an entry is evicted, missed or corrupt, a
/// permission is ignored, an interrupt is lost or duplicated, a reset happens if any of them
/// says so (asked in list order, stopping at the first yes); delays add up; an invalidation
/// takes the first verdict that is not `Perform`; stale drop-ins are collected from all.
#[derive(Debug)]
pub struct Combined(pub Vec<Arc<dyn FaultInjector>>);

impl FaultInjector for Combined {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        if self.0.iter().any(|i| i.dma(access) == DmaVerdict::Fail) {
            DmaVerdict::Fail
        } else {
            DmaVerdict::Proceed
        }
    }

    fn translated(&self, access: &TranslatedAccess, memory: &GuestRam) {
        self.0.iter().for_each(|i| i.translated(access, memory));
    }

    fn dropped_in(&self, dropin: &DropIn, memory: &GuestRam) {
        self.0.iter().for_each(|i| i.dropped_in(dropin, memory));
    }

    fn evict_on_hit(&self, ctx: u8, va: VirtAddr) -> bool {
        self.0.iter().any(|i| i.evict_on_hit(ctx, va))
    }

    fn spurious_miss(&self, ctx: u8, va: VirtAddr) -> bool {
        self.0.iter().any(|i| i.spurious_miss(ctx, va))
    }

    fn parity_error(&self, ctx: u8, va: VirtAddr) -> bool {
        self.0.iter().any(|i| i.parity_error(ctx, va))
    }

    fn ignore_permission(&self, ctx: u8, va: VirtAddr) -> bool {
        self.0.iter().any(|i| i.ignore_permission(ctx, va))
    }

    fn access_delay(&self, ctx: u8) -> Duration {
        self.0.iter().map(|i| i.access_delay(ctx)).sum()
    }

    fn invalidation(&self, descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        self.0
            .iter()
            .map(|i| i.invalidation(descriptor))
            .find(|v| *v != InvalidationVerdict::Perform)
            .unwrap_or(InvalidationVerdict::Perform)
    }

    fn stale_dropins(&self, descriptor: &InvalidationDescriptor) -> Vec<DropIn> {
        self.0
            .iter()
            .flat_map(|i| i.stale_dropins(descriptor))
            .collect()
    }

    fn reset_on_command(&self, ctx: u8) -> bool {
        self.0.iter().any(|i| i.reset_on_command(ctx))
    }

    fn interrupt(&self, vector: u16) -> bool {
        self.0.iter().all(|i| i.interrupt(vector))
    }

    fn duplicate_interrupt(&self, vector: u16) -> bool {
        self.0.iter().any(|i| i.duplicate_interrupt(vector))
    }

    fn fault_interrupt_delay(&self, ctx: u8) -> Duration {
        self.0.iter().map(|i| i.fault_interrupt_delay(ctx)).sum()
    }
}

pub use self::parse::{injector_named, FAULT_MODES};

/// A seed from the clock, for hosts whose user named none (they print it, so the run can be
/// replayed with it).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // CAST: the low 64 bits of nanoseconds are what a seed needs.
        .map_or(1, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_hooks_inject_nothing() {
        let injector = NoFaults;
        let access = DmaAccess {
            gpa: GuestAddress(0),
            len: 8,
            write: true,
            purpose: DmaPurpose::Data,
        };
        assert_eq!(injector.dma(&access), DmaVerdict::Proceed);
        assert!(!injector.evict_on_hit(0, VirtAddr(0)));
        assert!(!injector.spurious_miss(0, VirtAddr(0)));
        assert!(!injector.parity_error(0, VirtAddr(0)));
        assert!(!injector.reset_on_command(0));
        assert!(injector.interrupt(3));
        assert!(!injector.duplicate_interrupt(3));
        assert_eq!(injector.access_delay(0), Duration::ZERO);
        assert_eq!(injector.fault_interrupt_delay(0), Duration::ZERO);
        let descriptor = InvalidationDescriptor::global(1);
        assert_eq!(
            injector.invalidation(&descriptor),
            InvalidationVerdict::Perform
        );
        assert!(injector.stale_dropins(&descriptor).is_empty());
    }
}
