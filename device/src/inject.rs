//! Hook points for a verification oracle and for fault injection: one trait, installed per
//! device, whose default methods do nothing.
//!
//! The hooks sit on the device's single paths: every DMA (rings, records, data) passes
//! [`FaultInjector::dma`]; every translated access of the engine passes
//! [`FaultInjector::translated`] (while the translation it used is still guaranteed present);
//! every TLB hit may be turned into a forced eviction; every invalidation descriptor may be
//! dropped or delayed; every interrupt may be lost. What an injected fault does to the device
//! is what the same fault in hardware would do, so the driver's recovery paths get exercised.

use std::fmt::Debug;
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

/// The outcome an injector chooses for an invalidation descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationVerdict {
    /// Execute it.
    Perform,
    /// Report it complete without removing anything (a lost invalidation).
    Drop,
    /// Wait, then execute it (later descriptors wait too: completion stays in order).
    Delay(Duration),
}

/// Oracle and fault-injection hooks. Called from the device's worker threads and MMIO paths,
/// with device locks held: implementations must be quick and must not call into the device.
pub trait FaultInjector: Send + Sync + Debug {
    /// Every DMA the device is about to perform.
    fn dma(&self, _access: &DmaAccess) -> DmaVerdict {
        DmaVerdict::Proceed
    }

    /// Every translated access, after the data moved (see [`TranslatedAccess`]), with the
    /// guest memory the access went to (where the CPU's page tables are too).
    fn translated(&self, _access: &TranslatedAccess, _memory: &GuestRam) {}

    /// A TLB hit for `ctx` at `va`: return true to evict the entry and take the miss path.
    fn evict_on_hit(&self, _ctx: u8, _va: VirtAddr) -> bool {
        false
    }

    /// A TLB hit for `ctx` at `va` whose entry does not allow the access (a write through a
    /// read-only entry): return true to use it anyway (a device bug the oracle must catch).
    fn ignore_permission(&self, _ctx: u8, _va: VirtAddr) -> bool {
        false
    }

    /// An invalidation descriptor about to execute.
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        InvalidationVerdict::Perform
    }

    /// An interrupt about to be raised: return false to lose it.
    fn interrupt(&self, _vector: u16) -> bool {
        true
    }
}

/// The injector of a device without fault injection.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFaults;

impl FaultInjector for NoFaults {}

/// `drop-invalidate`: every invalidation is reported complete while the entries it names stay
/// in the TLB: a device that acknowledges shootdowns without doing them. The driver believes
/// the device coherent; only the oracle can tell (the proof that it works).
#[derive(Clone, Copy, Debug, Default)]
pub struct DropInvalidations;

impl FaultInjector for DropInvalidations {
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        InvalidationVerdict::Drop
    }
}

/// `ignore-permission`: the device uses an entry for an access its permissions do not allow
/// (a write through a read-only entry) instead of taking the permission miss. The CPU's PTE
/// does not allow it either, so the oracle must report it.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnorePermissions;

impl FaultInjector for IgnorePermissions {
    fn ignore_permission(&self, _ctx: u8, _va: VirtAddr) -> bool {
        true
    }
}

/// The injector a host's `--fault MODE` names (`none`, `drop-invalidate`,
/// `ignore-permission`).
pub fn injector_named(mode: &str) -> Result<std::sync::Arc<dyn FaultInjector>, String> {
    match mode {
        "none" => Ok(std::sync::Arc::new(NoFaults)),
        "drop-invalidate" => Ok(std::sync::Arc::new(DropInvalidations)),
        "ignore-permission" => Ok(std::sync::Arc::new(IgnorePermissions)),
        other => Err(format!(
            "'{other}' is not a fault mode: use none, drop-invalidate or ignore-permission"
        )),
    }
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
        assert!(injector.interrupt(3));
        let descriptor = InvalidationDescriptor::global(1);
        assert_eq!(
            injector.invalidation(&descriptor),
            InvalidationVerdict::Perform
        );
    }
}
