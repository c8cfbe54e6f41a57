//! The `--fault MODES` syntax: which injector a host's command line names
//! (`docs/fault-injection.md`).

use std::sync::Arc;
use std::time::Duration;

use super::chance::{stream, Chance, Rate};
use super::modes::{
    DataDmaError, DelayInvalidations, DropInvalidations, DuplicateInterrupts, EvictOnHit,
    IgnorePermissions, LostInterrupts, ParityError, ResetOnCommand, SlowEngine,
    SlowFaultInterrupts, SpuriousMiss, StaleDropIns, StallInvalidation,
};
use super::{Combined, FaultInjector, NoFaults};

/// Fault modes a host's `--fault` accepts, for help and error messages.
pub const FAULT_MODES: &str = "none, drop-invalidate[:RATE], ignore-permission, evict:RATE \
     (N >= 2), dma-error:RATE, spurious-miss[:RATE] (default 2, N >= 2), parity-error[:RATE], lost-irq[:RATE], \
     duplicate-irq[:RATE], delay-invalidate:DURATION, slow-engine:DURATION, \
     slow-fault:DURATION, stall-invalidate[:N], stale-dropin, reset:N; several separated by \
     commas. RATE is N (every N-th), a probability with a decimal point (0.25) or a fraction \
     (1/8), drawn from --seed; DURATION is 20ms, 500us, 2s or plain milliseconds, at most 60s";

/// Longest delay a mode may ask for.
const MAX_DURATION: Duration = Duration::from_secs(60);

/// The injector a host's `--fault MODES` names: one mode or several separated by commas.
/// Random rates draw from a stream derived from `seed` and the mode's position in the list,
/// so the same seed gives the same decisions for the same sequence of hook calls.
pub fn injector_named(modes: &str, seed: u64) -> Result<Arc<dyn FaultInjector>, String> {
    let mut parts: Vec<Arc<dyn FaultInjector>> = Vec::new();
    for (position, mode) in modes.split(',').enumerate() {
        parts.push(mode_named(mode, seed, position)?);
    }
    Ok(match parts.len() {
        1 => parts.remove(0),
        _ => Arc::new(Combined(parts)),
    })
}

/// One mode of the list, at `position`.
fn mode_named(mode: &str, seed: u64, position: usize) -> Result<Arc<dyn FaultInjector>, String> {
    let (name, argument) = match mode.split_once(':') {
        Some((name, argument)) => (name, Some(argument)),
        None => (mode, None),
    };
    let bad = |why: String| format!("Fault mode '{mode}': {why}; modes are {FAULT_MODES}");
    let rate = |default: Option<Rate>| match (argument, default) {
        (Some(text), _) => Rate::parse(text).map_err(bad),
        (None, Some(rate)) => Ok(rate),
        (None, None) => Err(bad("needs a rate".into())),
    };
    let chance = |default: Option<Rate>| -> Result<Chance, String> {
        Ok(Chance::new(rate(default)?, stream(seed, position)))
    };
    let duration = || match argument {
        Some(text) => parse_duration(text).map_err(bad),
        None => Err(bad("needs a duration".into())),
    };
    let nth = |default: Option<u64>| match (argument, default) {
        (Some(text), _) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(bad(format!("'{text}' is not a count from 1"))),
        },
        (None, Some(n)) => Ok(n),
        (None, None) => Err(bad("needs a count".into())),
    };
    let no_argument = |injector: Arc<dyn FaultInjector>| match argument {
        None => Ok(injector),
        Some(_) => Err(bad("takes no argument".into())),
    };
    let all = Some(Rate::Every(1));
    Ok(match name {
        "none" => no_argument(Arc::new(NoFaults))?,
        "ignore-permission" => no_argument(Arc::new(IgnorePermissions))?,
        "stale-dropin" => no_argument(Arc::new(StaleDropIns::default()))?,
        "drop-invalidate" => Arc::new(DropInvalidations(chance(all)?)),
        "evict" => match rate(None)? {
            // Every hit evicted would never let an access finish.
            Rate::Every(1) => return Err(bad("would evict every hit: use N >= 2".into())),
            Rate::Ratio(ratio) if ratio >= 1.0 => {
                return Err(bad("would evict every hit: use a ratio below 1".into()))
            }
            rate => Arc::new(EvictOnHit(Chance::new(rate, stream(seed, position)))),
        },
        "dma-error" => Arc::new(DataDmaError(chance(None)?)),
        // Every hit a miss would never let an access finish: by default every second.
        "spurious-miss" => match rate(Some(Rate::Every(2)))? {
            Rate::Every(1) => return Err(bad("would miss on every hit: use N >= 2".into())),
            Rate::Ratio(ratio) if ratio >= 1.0 => {
                return Err(bad("would miss on every hit: use a ratio below 1".into()))
            }
            rate => Arc::new(SpuriousMiss(Chance::new(rate, stream(seed, position)))),
        },
        "parity-error" => Arc::new(ParityError(chance(all)?)),
        "lost-irq" => Arc::new(LostInterrupts(chance(all)?)),
        "duplicate-irq" => Arc::new(DuplicateInterrupts(chance(all)?)),
        "delay-invalidate" => Arc::new(DelayInvalidations(duration()?)),
        "slow-engine" => Arc::new(SlowEngine(duration()?)),
        "slow-fault" => Arc::new(SlowFaultInterrupts(duration()?)),
        "stall-invalidate" => Arc::new(StallInvalidation::new(nth(Some(1))?)),
        "reset" => Arc::new(ResetOnCommand::new(nth(None)?)),
        _ => return Err(bad("unknown mode".into())),
    })
}

/// Parses `20ms`, `500us`, `2s` or a plain number of milliseconds, at most 60 s.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit): (&str, fn(u64) -> Duration) = if let Some(d) = text.strip_suffix("ms") {
        (d, Duration::from_millis)
    } else if let Some(d) = text.strip_suffix("us") {
        (d, Duration::from_micros)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, Duration::from_secs)
    } else {
        (text, Duration::from_millis)
    };
    let value: u64 = digits.parse().map_err(|_| {
        format!("'{text}' is not a duration: write 20ms, 500us, 2s or plain milliseconds")
    })?;
    let duration = unit(value);
    if duration > MAX_DURATION {
        return Err(format!("'{text}' is longer than the 60 s a delay may last"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::VirtAddr;
    use crate::inject::InvalidationVerdict;
    use crate::invalidation::InvalidationDescriptor;

    #[test]
    fn fault_modes_parse_and_combine() {
        let descriptor = InvalidationDescriptor::global(1);
        let drop = injector_named("drop-invalidate", 0).expect("mode");
        assert_eq!(drop.invalidation(&descriptor), InvalidationVerdict::Drop);
        let evict = injector_named("evict:3", 0).expect("mode");
        let evicted: Vec<bool> = (0..6).map(|_| evict.evict_on_hit(0, VirtAddr(0))).collect();
        assert_eq!(evicted, [false, false, true, false, false, true]);
        let both = injector_named("delay-invalidate:20,ignore-permission", 0).expect("modes");
        assert_eq!(
            both.invalidation(&descriptor),
            InvalidationVerdict::Delay(Duration::from_millis(20))
        );
        assert!(both.ignore_permission(0, VirtAddr(0)));
        assert!(!both.evict_on_hit(0, VirtAddr(0)));
        let stall = injector_named("stall-invalidate:2", 0).expect("mode");
        assert_eq!(
            stall.invalidation(&descriptor),
            InvalidationVerdict::Perform
        );
        assert_eq!(stall.invalidation(&descriptor), InvalidationVerdict::Stall);
        assert_eq!(
            stall.invalidation(&descriptor),
            InvalidationVerdict::Perform
        );
        for good in [
            "evict:0.5",
            "evict:1/8",
            "dma-error:1",
            "spurious-miss",
            "parity-error:0.01",
            "lost-irq:1/2",
            "duplicate-irq",
            "slow-engine:500us",
            "slow-fault:2s",
            "stall-invalidate",
            "stale-dropin",
            "reset:5",
            "none",
        ] {
            assert!(injector_named(good, 1).is_ok(), "{good}");
        }
        for bad in [
            "evict",
            "evict:1",
            "evict:1.0",
            "spurious-miss:1",
            "spurious-miss:1/1",
            "evict:x",
            "dma-error:0",
            "delay-invalidate",
            "delay-invalidate:61s",
            "slow-engine:5m",
            "stall-invalidate:0",
            "reset",
            "stale-dropin:3",
            "bogus",
            "none:3",
            "",
        ] {
            let error = injector_named(bad, 0).err().unwrap_or_default();
            assert!(error.contains("Fault mode"), "{bad}: {error}");
        }
    }

    #[test]
    fn durations_parse_with_units_and_plain_milliseconds() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_millis(15)));
        assert_eq!(parse_duration("60s"), Ok(MAX_DURATION));
        assert!(parse_duration("60001").is_err());
        assert!(parse_duration("ms").is_err());
    }

    /// Each mode draws from its own stream: putting another mode before it changes its
    /// position, hence its stream, but adding one after it does not.
    #[test]
    fn a_seeded_mode_decides_the_same_whatever_follows_it() {
        let hits = |modes: &str, seed: u64| -> Vec<bool> {
            let injector = injector_named(modes, seed).expect("modes");
            (0..64)
                .map(|_| injector.spurious_miss(0, VirtAddr(0)))
                .collect()
        };
        let alone = hits("spurious-miss:0.5", 42);
        assert_eq!(alone, hits("spurious-miss:0.5", 42));
        assert_eq!(alone, hits("spurious-miss:0.5,lost-irq:0.5", 42));
        assert_ne!(alone, hits("spurious-miss:0.5", 43));
    }
}
