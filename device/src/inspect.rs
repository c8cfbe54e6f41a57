//! A read-only view of a running device for its host: the TLB, the contexts, the counters and
//! the event log, as a control API or a debugger shows them.
//!
//! The view is a cloneable handle on the device's shared state, so a host's control thread can
//! hold one without holding the PCI function (whose lock the vCPUs take for every MMIO). Every
//! read takes the device lock it needs for a moment, in the device's lock order, and returns a
//! copy: a view never blocks the engine for longer than one copy.

use std::sync::Arc;

use crate::addr::VirtAddr;
use crate::context::ContextState;
use crate::engine::{lock, Shared};
use crate::events::EventLog;
use crate::regs::{CTX_PTROOT_LO, NUM_CONTEXTS};
use crate::stats::{CONTEXT_COUNTERS, GLOBAL_COUNTERS};
use crate::tlb::{TlbEntry, Translation};
use crate::GuestRam;

/// A context as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextView {
    /// Context number.
    pub index: u8,
    /// State.
    pub state: ContextState,
    /// ASID latched at enable (meaningful unless FREE).
    pub asid: u16,
    /// Page-table root the driver registered (`CTX_PTROOT`, 0 if none).
    pub pt_root: u64,
}

/// The read-only view (see the module documentation).
#[derive(Clone, Debug)]
pub struct DeviceInspector {
    shared: Arc<Shared>,
}

impl DeviceInspector {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The event log.
    pub fn event_log(&self) -> Arc<EventLog> {
        self.shared.events.clone()
    }

    /// The guest memory the device reaches now.
    pub fn memory(&self) -> Arc<GuestRam> {
        self.shared.memory()
    }

    /// A copy of every valid TLB entry.
    pub fn tlb_entries(&self) -> Vec<TlbEntry> {
        self.shared.tlb_read().entries().copied().collect()
    }

    /// What the TLB translates `va` of `asid` to, if anything (no side effects: no counter,
    /// no event, no replacement state touched).
    pub fn lookup(&self, asid: u16, va: VirtAddr) -> Option<Translation> {
        self.shared.tlb_read().lookup(asid, va)
    }

    /// Context `index`, or `None` if there is no such context.
    pub fn context(&self, index: usize) -> Option<ContextView> {
        let ctx = lock(self.shared.contexts.get(index)?);
        Some(ContextView {
            index: ctx.index,
            state: ctx.state,
            asid: ctx.asid,
            pt_root: ctx.regs.value64(CTX_PTROOT_LO),
        })
    }

    /// Every context that is not FREE.
    pub fn live_contexts(&self) -> Vec<ContextView> {
        (0..NUM_CONTEXTS)
            .filter_map(|i| self.context(i))
            .filter(|c| c.state != ContextState::Free)
            .collect()
    }

    /// Every global counter, by its specification name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        GLOBAL_COUNTERS
            .iter()
            .enumerate()
            .map(|(i, spec)| (spec.name, self.shared.stats.get(i)))
            .collect()
    }

    /// Every counter of context `index` by name (all 0 for a context that does not exist).
    pub fn context_counters(&self, index: usize) -> Vec<(&'static str, u64)> {
        CONTEXT_COUNTERS
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let value = self.shared.ctx_stats.get(index).map_or(0, |s| s.get(i));
                (spec.name, value)
            })
            .collect()
    }
}
