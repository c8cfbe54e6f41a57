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

    /// Every drop-in, once installed, with the guest memory (an oracle checks it against the
    /// CPU's page tables).
    fn dropped_in(&self, _dropin: &DropIn, _memory: &GuestRam) {}

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

/// `evict:N`: every N-th TLB hit evicts its entry and takes the miss path instead (capacity
/// pressure, or a TLB that drops entries early). More misses, still coherent.
#[derive(Debug)]
pub struct EvictEvery {
    every: u64,
    hits: std::sync::atomic::AtomicU64,
}

impl FaultInjector for EvictEvery {
    fn evict_on_hit(&self, _ctx: u8, _va: VirtAddr) -> bool {
        let hit = self
            .hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        hit % self.every == 0
    }
}

/// `dma-error:N`: every N-th data DMA (the bytes a command moves at a translated address)
/// fails, as a bus error would. That command completes with `DEVICE_ERROR`; the context goes on.
#[derive(Debug)]
pub struct DataDmaErrorEvery {
    every: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl FaultInjector for DataDmaErrorEvery {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        if access.purpose != DmaPurpose::Data {
            return DmaVerdict::Proceed;
        }
        let n = self
            .seen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        if n % self.every == 0 {
            DmaVerdict::Fail
        } else {
            DmaVerdict::Proceed
        }
    }
}

/// `delay-invalidate:MS`: every invalidation waits MS milliseconds before it executes (a slow
/// invalidation engine). Still coherent; the driver's notifier waits longer.
#[derive(Clone, Copy, Debug)]
pub struct DelayInvalidations(pub Duration);

impl FaultInjector for DelayInvalidations {
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        InvalidationVerdict::Delay(self.0)
    }
}

/// Several injectors at once: a DMA fails, an entry is evicted, a permission is ignored or an
/// interrupt is lost if any of them says so; an invalidation takes the first verdict that is
/// not `Perform`.
#[derive(Debug)]
pub struct Combined(pub Vec<std::sync::Arc<dyn FaultInjector>>);

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

    fn ignore_permission(&self, ctx: u8, va: VirtAddr) -> bool {
        self.0.iter().any(|i| i.ignore_permission(ctx, va))
    }

    fn invalidation(&self, descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        self.0
            .iter()
            .map(|i| i.invalidation(descriptor))
            .find(|v| *v != InvalidationVerdict::Perform)
            .unwrap_or(InvalidationVerdict::Perform)
    }

    fn interrupt(&self, vector: u16) -> bool {
        self.0.iter().all(|i| i.interrupt(vector))
    }
}

/// Fault modes a host's `--fault` accepts, for error messages.
pub const FAULT_MODES: &str = "none, drop-invalidate, ignore-permission, evict:N (N >= 2), \
     delay-invalidate:MS, dma-error:N (N >= 1)";

/// The injector a host's `--fault MODES` names: one mode or several separated by commas
/// (`docs/fault-injection.md`).
pub fn injector_named(modes: &str) -> Result<std::sync::Arc<dyn FaultInjector>, String> {
    let mut parts: Vec<std::sync::Arc<dyn FaultInjector>> = Vec::new();
    for mode in modes.split(',') {
        let (name, argument) = match mode.split_once(':') {
            Some((name, argument)) => (name, Some(argument)),
            None => (mode, None),
        };
        let bad = || format!("'{mode}' is not a fault mode: use {FAULT_MODES}");
        let number = || argument.and_then(|a| a.parse::<u64>().ok()).ok_or_else(bad);
        let injector: std::sync::Arc<dyn FaultInjector> = match (name, argument) {
            ("none", None) => std::sync::Arc::new(NoFaults),
            ("drop-invalidate", None) => std::sync::Arc::new(DropInvalidations),
            ("ignore-permission", None) => std::sync::Arc::new(IgnorePermissions),
            // Every hit evicted would never let an access finish: at least every second.
            ("evict", Some(_)) => match number()? {
                every if every >= 2 => std::sync::Arc::new(EvictEvery {
                    every,
                    hits: std::sync::atomic::AtomicU64::new(0),
                }),
                _ => return Err(bad()),
            },
            ("dma-error", Some(_)) => match number()? {
                0 => return Err(bad()),
                every => std::sync::Arc::new(DataDmaErrorEvery {
                    every,
                    seen: std::sync::atomic::AtomicU64::new(0),
                }),
            },
            ("delay-invalidate", Some(_)) => std::sync::Arc::new(DelayInvalidations(
                Duration::from_millis(number()?.min(60_000)),
            )),
            _ => return Err(bad()),
        };
        parts.push(injector);
    }
    Ok(match parts.len() {
        1 => parts.remove(0),
        _ => std::sync::Arc::new(Combined(parts)),
    })
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

    #[test]
    fn fault_modes_parse_and_combine() {
        let descriptor = InvalidationDescriptor::global(1);
        let drop = injector_named("drop-invalidate").expect("mode");
        assert_eq!(drop.invalidation(&descriptor), InvalidationVerdict::Drop);
        let evict = injector_named("evict:3").expect("mode");
        let evicted: Vec<bool> = (0..6).map(|_| evict.evict_on_hit(0, VirtAddr(0))).collect();
        assert_eq!(evicted, [false, false, true, false, false, true]);
        let both = injector_named("delay-invalidate:20,ignore-permission").expect("modes");
        assert_eq!(
            both.invalidation(&descriptor),
            InvalidationVerdict::Delay(Duration::from_millis(20))
        );
        assert!(both.ignore_permission(0, VirtAddr(0)));
        assert!(!both.evict_on_hit(0, VirtAddr(0)));
        for bad in [
            "evict",
            "evict:1",
            "evict:x",
            "delay-invalidate",
            "bogus",
            "none:3",
            "",
        ] {
            assert!(injector_named(bad).is_err(), "{bad}");
        }
    }
}
