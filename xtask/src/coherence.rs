//! `cargo xtask coherence`: boots the guest, runs the coherence suite (and the seeded random
//! stress) with the oracle on and the faults asked for, prints one row per scenario group, and
//! fails on any failed check or violation. `--all-faults` runs the whole fault matrix: clean
//! under every mode that must keep coherence, and failing with violations named under the three
//! planted device bugs.

use std::process::ExitCode;

use anyhow::Result;
use rmnic_tests::coherence_report::{self, Report};
use rmnic_tests::{GuestRun, HostMode, Images};

use crate::progress;

/// Fault modes that must keep the device coherent (docs/fault-injection.md).
pub const COHERENT_MODES: &[&str] = &[
    "evict:0.1",
    "spurious-miss:0.1",
    "delay-invalidate:5ms",
    "slow-engine:50us",
    "slow-fault:2ms",
    "lost-irq:0.1",
    "duplicate-irq:0.5",
];
/// Planted device bugs the oracle must catch.
pub const DETECTION_MODES: &[&str] = &["drop-invalidate", "ignore-permission", "stale-dropin"];

/// Operations per thread of the random stress in a suite run.
const RANDOM_OPS: &str = "400";

/// Groups left out under `fault`: the `faults` group counts faults per page, which modes
/// that add misses change on purpose.
fn skipped_under(faults: &[String]) -> Vec<String> {
    let adds_misses = faults.iter().any(|f| {
        f.starts_with("evict") || f.starts_with("spurious-miss") || f.starts_with("reset")
    });
    if adds_misses {
        vec!["faults".to_string()]
    } else {
        Vec::new()
    }
}

/// The guest run of one suite: `coherence [--only ...]`, then (whole suite only) `random`.
pub fn suite_run(faults: &[String], seed: u64, only: &[String]) -> GuestRun {
    let mut words = vec!["coherence".to_string()];
    for group in only {
        words.push("--only".into());
        words.push(group.clone());
    }
    for group in skipped_under(faults) {
        words.push("--skip".into());
        words.push(group);
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut guest = GuestRun::new(&words);
    if only.is_empty() {
        let seed = seed.to_string();
        guest = guest.then(&[
            "random", "--seed", &seed, "--ops", RANDOM_OPS, "--procs", "3",
        ]);
    }
    for fault in faults {
        guest
            .device_args
            .extend(["--fault".to_string(), fault.clone()]);
    }
    guest
        .device_args
        .extend(["--seed".to_string(), seed.to_string()]);
    guest
}

fn one(
    mode: HostMode,
    images: &Images,
    faults: &[String],
    seed: u64,
    only: &[String],
) -> Result<Report> {
    let label = if faults.is_empty() {
        "no faults".to_string()
    } else {
        faults.join(",")
    };
    let start = progress::step(&format!(
        "coherence suite ({mode} mode, {label}, seed {seed})"
    ));
    let report = coherence_report::run(mode, images, suite_run(faults, seed, only))?;
    progress::done("coherence suite", start);
    print!("{}", report.table());
    for line in report
        .outcome
        .console
        .lines()
        .filter(|l| l.starts_with("rmnic-guest: random"))
    {
        println!("{line}");
    }
    Ok(report)
}

/// The command.
pub fn run(
    faults: &[String],
    seed: Option<u64>,
    only: &[String],
    all_faults: bool,
) -> Result<ExitCode> {
    let images = Images::locate()?;
    let mode = HostMode::from_env()?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    if !all_faults {
        let report = one(mode, &images, faults, seed, only)?;
        return Ok(if report.clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut summary = Vec::new();
    let mut ok = true;
    for fault in std::iter::once("none").chain(COHERENT_MODES.iter().copied()) {
        let faults = if fault == "none" {
            vec![]
        } else {
            vec![fault.to_string()]
        };
        let report = one(mode, &images, &faults, seed, only)?;
        let pass = report.clean();
        ok &= pass;
        summary.push(format!(
            "{fault:<24} must stay coherent: {}",
            if pass { "ok" } else { "FAILED" }
        ));
    }
    for fault in DETECTION_MODES {
        let report = one(mode, &images, &[fault.to_string()], seed, only)?;
        let caught = report.violations_total.is_some_and(|v| v > 0);
        ok &= caught;
        summary.push(format!(
            "{fault:<24} must be caught: {} ({} violations)",
            if caught { "caught" } else { "MISSED" },
            report.violations_total.unwrap_or(0)
        ));
    }
    println!("fault matrix (seed {seed}; the faults group is left out under evict and spurious-miss: it counts faults):");
    for line in summary {
        println!("  {line}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
