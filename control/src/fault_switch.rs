//! The injector a host installs under its oracle so that faults can be set and cleared while
//! the guest runs (`fault set|clear` in the control API).
//!
//! Every hook reads the current injector under a read lock (uncontended: a few nanoseconds on
//! the device's paths); a change swaps it under the write lock, so each hook call sees either
//! the old or the new set of faults, never a mix.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rmnic_device::addr::VirtAddr;
use rmnic_device::inject::{
    injector_named, DmaAccess, DmaVerdict, DropIn, FaultInjector, InvalidationVerdict, NoFaults,
    TranslatedAccess,
};
use rmnic_device::invalidation::InvalidationDescriptor;
use rmnic_device::GuestRam;

#[derive(Debug)]
struct Active {
    injector: Arc<dyn FaultInjector>,
    modes: String,
    seed: u64,
}

/// Faults that can be changed at run time.
#[derive(Debug)]
pub struct FaultSwitch {
    active: RwLock<Active>,
}

impl FaultSwitch {
    /// Injecting `modes` (the `--fault` syntax) with `seed`.
    pub fn new(modes: &str, seed: u64) -> Result<Self, String> {
        Ok(Self {
            active: RwLock::new(Active {
                injector: injector_named(modes, seed)?,
                modes: modes.to_string(),
                seed,
            }),
        })
    }

    /// Runs `f` on the current injector under the read lock (no reference count traffic on
    /// the device's hot paths; injectors never call back into the switch).
    fn with<R>(&self, f: impl FnOnce(&dyn FaultInjector) -> R) -> R {
        f(&*self
            .active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .injector)
    }

    /// Replaces the faults; `seed` defaults to the current one. On a bad mode nothing changes.
    pub fn set(&self, modes: &str, seed: Option<u64>) -> Result<(), String> {
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        let seed = seed.unwrap_or(active.seed);
        active.injector = injector_named(modes, seed)?;
        active.modes = modes.to_string();
        active.seed = seed;
        Ok(())
    }

    /// Stops injecting (the seed stays for the next `set`).
    pub fn clear(&self) {
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        active.injector = Arc::new(NoFaults);
        active.modes = "none".to_string();
    }

    /// The active modes as given, and the seed.
    pub fn describe(&self) -> (String, u64) {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        (active.modes.clone(), active.seed)
    }
}

impl FaultInjector for FaultSwitch {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        self.with(|i| i.dma(access))
    }

    fn translated(&self, access: &TranslatedAccess, memory: &GuestRam) {
        self.with(|i| i.translated(access, memory));
    }

    fn dropped_in(&self, dropin: &DropIn, memory: &GuestRam) {
        self.with(|i| i.dropped_in(dropin, memory));
    }

    fn evict_on_hit(&self, ctx: u8, va: VirtAddr) -> bool {
        self.with(|i| i.evict_on_hit(ctx, va))
    }

    fn spurious_miss(&self, ctx: u8, va: VirtAddr) -> bool {
        self.with(|i| i.spurious_miss(ctx, va))
    }

    fn parity_error(&self, ctx: u8, va: VirtAddr) -> bool {
        self.with(|i| i.parity_error(ctx, va))
    }

    fn ignore_permission(&self, ctx: u8, va: VirtAddr) -> bool {
        self.with(|i| i.ignore_permission(ctx, va))
    }

    fn access_delay(&self, ctx: u8) -> Duration {
        self.with(|i| i.access_delay(ctx))
    }

    fn invalidation(&self, descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        self.with(|i| i.invalidation(descriptor))
    }

    fn stale_dropins(&self, descriptor: &InvalidationDescriptor) -> Vec<DropIn> {
        self.with(|i| i.stale_dropins(descriptor))
    }

    fn reset_on_command(&self, ctx: u8) -> bool {
        self.with(|i| i.reset_on_command(ctx))
    }

    fn interrupt(&self, vector: u16) -> bool {
        self.with(|i| i.interrupt(vector))
    }

    fn duplicate_interrupt(&self, vector: u16) -> bool {
        self.with(|i| i.duplicate_interrupt(vector))
    }

    fn fault_interrupt_delay(&self, ctx: u8) -> Duration {
        self.with(|i| i.fault_interrupt_delay(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_change_at_run_time_and_bad_modes_change_nothing() {
        let switch = FaultSwitch::new("none", 5).expect("mode");
        let descriptor = InvalidationDescriptor::global(1);
        assert_eq!(
            switch.invalidation(&descriptor),
            InvalidationVerdict::Perform
        );
        switch.set("drop-invalidate", None).expect("mode");
        assert_eq!(switch.invalidation(&descriptor), InvalidationVerdict::Drop);
        assert_eq!(switch.describe(), ("drop-invalidate".to_string(), 5));
        assert!(switch.set("bogus", Some(9)).is_err());
        assert_eq!(switch.describe(), ("drop-invalidate".to_string(), 5));
        switch.clear();
        assert_eq!(
            switch.invalidation(&descriptor),
            InvalidationVerdict::Perform
        );
        assert_eq!(switch.describe().0, "none");
    }
}
