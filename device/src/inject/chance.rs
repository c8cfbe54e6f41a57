//! How often a fault mode fires: every N-th call (deterministic) or with a probability drawn
//! from the mode's own seeded random stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand_core::{Rng, SeedableRng};
use rand_xorshift::XorShiftRng;

/// A mode's rate as its argument wrote it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Every N-th call fires (N ≥ 1; 1 is every call).
    Every(u64),
    /// Each call fires with this probability, in (0, 1].
    Ratio(f64),
}

impl Rate {
    /// Parses `N` (an integer ≥ 1: every N-th), `P` (a probability in (0, 1] written with a
    /// decimal point, `0.25`) or `A/B` (a fraction in (0, 1], `1/8`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{text}' is not a rate: write N (every N-th), a probability such as 0.25, or a fraction such as 1/8")
        };
        let ratio = if let Some((a, b)) = text.split_once('/') {
            let a: u64 = a.parse().map_err(|_| bad())?;
            let b: u64 = b.parse().map_err(|_| bad())?;
            if b == 0 {
                return Err(bad());
            }
            // CAST: a ratio needs no more precision than f64 has.
            a as f64 / b as f64
        } else if text.contains('.') {
            text.parse::<f64>().map_err(|_| bad())?
        } else {
            return match text.parse::<u64>() {
                Ok(every) if every >= 1 => Ok(Self::Every(every)),
                _ => Err(bad()),
            };
        };
        if ratio > 0.0 && ratio <= 1.0 {
            Ok(Self::Ratio(ratio))
        } else {
            Err(bad())
        }
    }
}

/// The random stream of the mode at `position` in a `--fault` list under `seed`: each mode
/// has its own, so adding a mode to the list does not change the decisions of the others.
pub fn stream(seed: u64, position: usize) -> XorShiftRng {
    // The golden-ratio increment spreads positions over the seed space; seed_from_u64 then
    // expands the value with a PCG, so neighbouring streams are unrelated.
    // CAST: a position in a list fits u64.
    XorShiftRng::seed_from_u64(
        seed.wrapping_add((position as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    )
}

/// Decides, call by call, whether a mode fires.
#[derive(Debug)]
pub struct Chance {
    rate: Rate,
    calls: AtomicU64,
    rng: Mutex<XorShiftRng>,
}

impl Chance {
    /// Fires at `rate`, drawing from `rng` for ratios.
    pub fn new(rate: Rate, rng: XorShiftRng) -> Self {
        Self {
            rate,
            calls: AtomicU64::new(0),
            rng: Mutex::new(rng),
        }
    }

    /// Whether this call fires. The n-th call's answer depends only on n and the stream,
    /// not on timing (which thread makes the n-th call can).
    pub fn fires(&self) -> bool {
        match self.rate {
            Rate::Every(every) => {
                let call = self.calls.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                call % every == 0
            }
            Rate::Ratio(ratio) => {
                let draw = self
                    .rng
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .next_u64();
                // The top 53 bits as a uniform value in [0, 1).
                // CAST: 53 bits are exact in f64.
                let uniform = (draw >> 11) as f64 / (1u64 << 53) as f64;
                uniform < ratio
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decisions(seed: u64, position: usize, rate: Rate) -> Vec<bool> {
        let chance = Chance::new(rate, stream(seed, position));
        (0..64).map(|_| chance.fires()).collect()
    }

    #[test]
    fn rates_parse_as_written() {
        assert_eq!(Rate::parse("3"), Ok(Rate::Every(3)));
        assert_eq!(Rate::parse("0.25"), Ok(Rate::Ratio(0.25)));
        assert_eq!(Rate::parse("1/8"), Ok(Rate::Ratio(0.125)));
        assert_eq!(Rate::parse("1.0"), Ok(Rate::Ratio(1.0)));
        for bad in ["0", "0.0", "1.5", "2/1", "1/0", "x", "", "-0.5", "NaN"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_decisions_and_another_seed_others() {
        let half = Rate::Ratio(0.5);
        assert_eq!(decisions(7, 0, half), decisions(7, 0, half));
        assert_ne!(decisions(7, 0, half), decisions(8, 0, half));
        assert_ne!(decisions(7, 0, half), decisions(7, 1, half));
        let fired = decisions(7, 0, half).iter().filter(|f| **f).count();
        assert!((16..=48).contains(&fired), "{fired} of 64 at 0.5");
        assert!(decisions(1, 0, Rate::Ratio(1.0)).iter().all(|f| *f));
    }

    #[test]
    fn every_nth_is_deterministic_whatever_the_seed() {
        let expected: Vec<bool> = (1..=64).map(|n| n % 3 == 0).collect();
        assert_eq!(decisions(1, 0, Rate::Every(3)), expected);
        assert_eq!(decisions(2, 5, Rate::Every(3)), expected);
    }
}
