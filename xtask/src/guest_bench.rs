//! Benchmarks that boot the guest: the coherence oracle's cost on a device workload in a real
//! guest (docs/oracle.md, "Cost"). Side by side in one run, alternating, medians reported with
//! their ratio; nothing here is asserted.

use anyhow::{bail, Context as _, Result};
use rmnic_tests::{GuestRun, HostMode, Images};

use crate::progress;

/// Rounds of each configuration (alternating, so drift in the host hits both alike).
const ROUNDS: usize = 3;

/// The two workloads: (label, MiB per buffer, warm rounds, what it shows). The device TLB
/// holds 1024 entries by default: two 1 MiB buffers of 4 KiB pages fit (every warm access hits
/// and is checked), two 16 MiB buffers do not (every access misses: fault, interrupt, drop-in).
const WORKLOADS: [(&str, &str, &str, &str); 2] = [
    ("copy-4k-resident", "1", "32", "TLB-resident, 2 x 1 MiB"),
    ("copy-4k-thrashing", "16", "2", "TLB-thrashing, 2 x 16 MiB"),
];

/// One `BENCH <label>` line's figures: (first-touch ms, warm MiB/s).
fn parse(console: &str, label: &str) -> Option<(f64, f64)> {
    let prefix = format!("BENCH {label} ");
    let line = console.lines().find(|l| l.starts_with(&prefix))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((field("first_touch_ms=")?, field("warm_mib_s=")?))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The oracle off versus `full` on `rmnic-guest copy-bench` (device COPY of 16 MiB of 4 KiB
/// pages, first touch then 8 warm rounds), in qemu mode (the device in rmnic-device-server).
pub fn oracle_cost(images: &Images) -> Result<()> {
    let start = progress::step(&format!(
        "rmnic oracle cost in a guest workload: {ROUNDS} boots each with --coherence-check off and full (qemu mode)"
    ));
    // results[workload][check]: (first-touch ms, warm MiB/s) per round.
    let mut results = vec![[Vec::new(), Vec::new()]; WORKLOADS.len()];
    for round in 0..ROUNDS {
        for (c, check) in ["off", "full"].iter().enumerate() {
            let words =
                |(label, mib, rounds, _): &(&'static str, &'static str, &'static str, &str)| {
                    [
                        "copy-bench",
                        "--label",
                        *label,
                        "--mib",
                        *mib,
                        "--rounds",
                        *rounds,
                    ]
                };
            let mut guest = GuestRun::new(&words(&WORKLOADS[0]));
            for workload in &WORKLOADS[1..] {
                guest = guest.then(&words(workload));
            }
            guest.device_args = vec!["--coherence-check".into(), (*check).into()];
            let outcome = rmnic_tests::launch::run_in(HostMode::Qemu, images, &guest)
                .with_context(|| format!("copy-bench boot, oracle {check}"))?;
            for (w, (label, ..)) in WORKLOADS.iter().enumerate() {
                let Some(figures) = parse(&outcome.console, label) else {
                    bail!(
                        "copy-bench printed no BENCH {label} line:\n{}",
                        outcome.tail()
                    );
                };
                eprintln!(
                    "    round {} oracle {check:>4} {label}: first touch {:.1} ms, warm {:.1} MiB/s",
                    round + 1,
                    figures.0,
                    figures.1
                );
                results[w][c].push(figures);
            }
        }
    }
    println!("rmnic oracle cost, guest workload (device COPY of 4 KiB pages in a qemu-mode guest, median of {ROUNDS} boots each):");
    println!(
        "  {:<44} {:>12} {:>12} {:>8}",
        "metric", "oracle off", "oracle full", "ratio"
    );
    for (w, (_, _, _, what)) in WORKLOADS.iter().enumerate() {
        let first = |c: usize| median(results[w][c].iter().map(|r| r.0).collect());
        let warm = |c: usize| median(results[w][c].iter().map(|r| r.1).collect());
        println!(
            "  {:<44} {:>12.1} {:>12.1} {:>7.2}x",
            format!("{what}: warm copy (MiB/s)"),
            warm(0),
            warm(1),
            warm(1) / warm(0)
        );
        println!(
            "  {:<44} {:>12.1} {:>12.1} {:>7.2}x",
            format!("{what}: first-touch copy (ms)"),
            first(0),
            first(1),
            first(1) / first(0)
        );
    }
    progress::done("guest oracle benchmark", start);
    Ok(())
}
