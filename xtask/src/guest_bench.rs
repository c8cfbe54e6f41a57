//! Benchmarks that boot the guest, as rows of `cargo xtask bench`: `rmnic-guest bench` in a
//! host mode (`tests/guest/src/bench.rs`: each figure and its baseline measured in the same
//! guest process), and the coherence oracle's cost on a device workload in a real guest
//! (docs/oracle.md, "Cost"; alternating boots with the oracle off and full). Nothing here is
//! asserted.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use rmnic_tests::{GuestRun, HostMode, Images, Level1};

use crate::bench::{notes_text, Better, Goal, Notes, Row};
use crate::progress;

/// Guest memory of the bench boot: the largest region (1 GiB) and the kernel.
const BENCH_GUEST_MIB: u32 = 1536;

/// How long a bench boot in emulated mode may take (it measures for minutes, where a test
/// boot takes seconds).
const EMULATED_BENCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// rmnic-vmm's resident memory beyond guest RAM (`RssAnon + RssFile`, MiB) in each
/// `rmnic-host: footprint` line of an emulated host's console, split into the samples before
/// the guest's first benchmark figure (idle: booted, nothing running) and after it (load).
fn footprint(console: &str) -> (Vec<f64>, Vec<f64>) {
    let (mut idle, mut load) = (Vec::new(), Vec::new());
    let mut loaded = false;
    for line in console.lines() {
        if line.starts_with("BENCH") {
            loaded = true;
        }
        let Some(rest) = line.split("rmnic-host: footprint ").nth(1) else {
            continue;
        };
        let kb = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(anon), Some(file)) = (kb("RssAnon="), kb("RssFile=")) {
            let mib = (anon + file) / 1024.0;
            if loaded {
                load.push(mib);
            } else {
                idle.push(mib);
            }
        }
    }
    (idle, load)
}

/// What the guest bench measures (passed to `rmnic-guest bench`).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Samples of each metric.
    pub samples: u32,
    /// Largest munmap/mprotect (and exit) region in MiB.
    pub max_region_mib: usize,
    /// Device COPY buffer in MiB.
    pub copy_mib: usize,
}

/// The baseline, goal and direction of a guest metric, by name (and mode: under rmnic-vmm
/// some baselines come from a boot under QEMU in the same host, [`level1_baselines`]).
fn describe(metric: &str, mode: HostMode) -> (&'static str, Option<Goal>) {
    let large_region = ["-2m", "-64m", "-1g"].iter().any(|s| metric.ends_with(s));
    match metric {
        "boot" => (
            "QEMU -enable-kvm in the same emulated host, same kernel, initramfs and RAM (separate boot)",
            Some(Goal::AtMost(0.5)),
        ),
        "mmio-read" if mode == HostMode::Qemu => (
            "a register read of QEMU's edu device, same guest",
            Some(Goal::AtMost(1.0)),
        ),
        "mmio-read" => (
            "a register read of edu under QEMU -enable-kvm in the same emulated host (separate boot)",
            Some(Goal::AtMost(1.0)),
        ),
        "doorbell" => (
            "an ordinary MMIO write (REG_SCRATCH)",
            Some(Goal::AtMost(0.3)),
        ),
        "copy-2m" => ("CPU memcpy of the same buffers", Some(Goal::AtLeast(0.8))),
        m if m.starts_with("copy-") => ("CPU memcpy of the same buffers", None),
        m if m.starts_with("submit-batch-") => ("a bare ioctl (RMNIC_IOC_STATS), per call", None),
        m if m.starts_with("user-submit-batch-") => (
            "the same batch through the kernel (RMNIC_IOC_SUBMIT + RMNIC_IOC_WAIT), same process",
            None,
        ),
        m if m.starts_with("miss-service-") => {
            ("the CPU's first-touch fault, per 4 KiB page", None)
        }
        m if m.starts_with("shootdown-") && large_region => (
            "the same call with no device context",
            Some(Goal::AtMost(1.3)),
        ),
        m if m.starts_with("shootdown-") => ("the same call with no device context", None),
        m if m.starts_with("exit-") => ("a child with no device context", None),
        m if m.starts_with("peer-") => (
            "Linux's dmirror (lib/test_hmm.c), same guest, same pages",
            Some(Goal::AtMost(1.0)),
        ),
        "footprint-idle" => (
            "QEMU -enable-kvm in the same emulated host, idle (separate boot)",
            None,
        ),
        m if m.starts_with("footprint-") => (
            "QEMU -enable-kvm in the same emulated host, guest reading edu registers (separate boot)",
            None,
        ),
        m if m.starts_with("fault-ahead-") => (
            "the same first-touch copy with fault-ahead off (window 1)",
            None,
        ),
        _ => ("-", None),
    }
}

/// One `BENCH name unit=U rmnic=X baseline=Y` line.
fn parse_sample(line: &str) -> Option<(String, String, f64, Option<f64>)> {
    let mut words = line.strip_prefix("BENCH ")?.split_whitespace();
    let name = words.next()?.to_string();
    let mut unit = None;
    let mut rmnic = None;
    let mut baseline = None;
    for word in words {
        match word.split_once('=')? {
            ("unit", u) => unit = Some(u.to_string()),
            ("rmnic", v) => rmnic = v.parse().ok(),
            ("baseline", v) => baseline = v.parse().ok(),
            _ => {}
        }
    }
    Some((name, unit?, rmnic?, baseline))
}

/// One `BENCHBASE name unit=U baseline=Y` line: a baseline sample measured without rmnic.
fn parse_baseline(line: &str) -> Option<(String, String, f64)> {
    let mut words = line.strip_prefix("BENCHBASE ")?.split_whitespace();
    let name = words.next()?.to_string();
    let (mut unit, mut baseline) = (None, None);
    for word in words {
        match word.split_once('=')? {
            ("unit", u) => unit = Some(u.to_string()),
            ("baseline", v) => baseline = v.parse().ok(),
            _ => {}
        }
    }
    Some((name, unit?, baseline?))
}

/// What one `rmnic-guest bench` boot printed.
#[derive(Default)]
pub struct Samples {
    /// Metric names in the order they first appeared.
    order: Vec<String>,
    /// name -> (unit, rmnic samples, baseline samples).
    metrics: BTreeMap<String, (String, Vec<f64>, Vec<f64>)>,
    /// name -> `BENCHINFO` figures.
    notes: BTreeMap<String, Notes>,
}

impl Samples {
    fn parse(console: &str) -> Self {
        let mut out = Self::default();
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            if let Some((name, unit, baseline)) = parse_baseline(line) {
                out.add_baseline(&name, &unit, vec![baseline]);
            } else if let Some((name, unit, rmnic, baseline)) = parse_sample(line) {
                let entry = out.entry(&name, &unit);
                entry.1.push(rmnic);
                entry.2.extend(baseline);
            } else if let Some(rest) = line.strip_prefix("BENCHINFO ") {
                let mut words = rest.split_whitespace();
                let Some(name) = words.next() else { continue };
                let into = out.notes.entry(name.to_string()).or_default();
                for (key, value) in words.filter_map(|w| w.split_once('=')) {
                    if let Ok(v) = value.parse::<f64>() {
                        into.entry(key.to_string()).or_default().push(v);
                    }
                }
            }
        }
        out
    }

    /// `metric`'s (unit, rmnic samples, baseline samples), created (and put in order) if new.
    fn entry(&mut self, metric: &str, unit: &str) -> &mut (String, Vec<f64>, Vec<f64>) {
        if !self.metrics.contains_key(metric) {
            self.order.push(metric.to_string());
        }
        self.metrics
            .entry(metric.to_string())
            .or_insert_with(|| (unit.to_string(), Vec::new(), Vec::new()))
    }

    /// Adds rmnic samples of `metric` measured by the harness rather than the guest.
    fn push(&mut self, metric: &str, unit: &str, values: Vec<f64>) {
        self.entry(metric, unit).1.extend(values);
    }

    /// Adds baseline samples of `metric` measured elsewhere (another boot, another VMM).
    fn add_baseline(&mut self, metric: &str, unit: &str, values: Vec<f64>) {
        self.entry(metric, unit).2.extend(values);
    }

    /// rmnic's samples of `metric` (empty when it was not measured).
    fn rmnic(&self, metric: &str) -> &[f64] {
        self.metrics.get(metric).map_or(&[], |m| &m.1)
    }

    /// One row per metric, each against its own baseline.
    pub fn rows(&self, mode: HostMode) -> Vec<Row> {
        let mut rows = Vec::new();
        for name in &self.order {
            let (unit, ours, theirs) = &self.metrics[name];
            let better = if unit == "MiB/s" {
                Better::Higher
            } else {
                Better::Lower
            };
            let (baseline_is, goal) = describe(name, mode);
            if let Some(mut row) = Row::new(
                name,
                &mode.to_string(),
                unit,
                better,
                baseline_is,
                ours,
                theirs,
                goal,
            ) {
                if let Some(n) = self.notes.get(name) {
                    row.notes = notes_text(n);
                }
                rows.push(row);
            }
        }
        rows
    }
}

/// Boots `rmnic-guest bench` in `mode` (`only`: its groups; `device_args`: more options for
/// the device's host) and returns what it printed.
pub fn sample(
    images: &Images,
    mode: HostMode,
    plan: Plan,
    only: &[&str],
    device_args: &[&str],
) -> Result<Samples> {
    let start = progress::step(&format!(
        "guest benchmarks ({mode} mode{}{}): rmnic-guest bench, {} samples, regions up to {} MiB, copies of {} MiB",
        if only.is_empty() { String::new() } else { format!(", only {}", only.join(",")) },
        if device_args.is_empty() { String::new() } else { format!(", device {}", device_args.join(" ")) },
        plan.samples, plan.max_region_mib, plan.copy_mib
    ));
    let samples = plan.samples.to_string();
    let region = plan.max_region_mib.to_string();
    let copy = plan.copy_mib.to_string();
    let mut words = vec![
        "bench",
        "--samples",
        &samples,
        "--max-region-mib",
        &region,
        "--copy-mib",
        &copy,
    ];
    // One flag per group: the guest's command line turns commas into spaces.
    for group in only {
        words.extend(["--only", group]);
    }
    let mut guest = GuestRun::new(&words);
    guest.memory_mib = BENCH_GUEST_MIB;
    guest.device_args = device_args.iter().map(ToString::to_string).collect();
    if mode == HostMode::Qemu {
        guest.qemu_devices = vec!["edu".into()];
    }
    if mode == HostMode::Emulated {
        // A bench boot is long by design: no vCPU dump at 110 s (a symptom in a test boot,
        // noise here), the host's watchdog later, and rmnic-vmm's resident memory sampled.
        let mut host = rmnic_tests::emulated::EmulatedHost::from_env()?;
        host.kernel_append
            .push_str(" rmnic_dump=100000 rmnic_footprint=1");
        guest.host = Some(host);
        guest.timeout = EMULATED_BENCH_TIMEOUT;
    }
    let outcome = rmnic_tests::launch::run_in(mode, images, &guest)
        .with_context(|| format!("guest bench boot ({mode} mode)"))?;
    if outcome.status != 0 {
        bail!(
            "rmnic-guest bench failed in {mode} mode (status {}):\n{}",
            outcome.status,
            outcome.tail()
        );
    }
    let mut parsed = Samples::parse(&outcome.console);
    if matches!(mode, HostMode::Emulated | HostMode::Direct) {
        if let Some(boot) = outcome.vmm_start_to_guest_init() {
            parsed.push("boot", "ms", vec![boot.as_secs_f64() * 1e3]);
        }
    }
    if mode == HostMode::Emulated {
        let (idle, load) = footprint(&outcome.console);
        // Idle: the last samples before the first figure (the VMM grows while it boots).
        let idle: Vec<f64> = idle.iter().rev().take(3).copied().collect();
        for (name, values) in [("footprint-idle", idle), ("footprint-load", load)] {
            if !values.is_empty() {
                parsed.push(name, "MiB", values);
            }
        }
    }
    if parsed.metrics.is_empty() {
        bail!(
            "rmnic-guest bench printed no BENCH line:\n{}",
            outcome.tail()
        );
    }
    progress::done("guest benchmarks", start);
    Ok(parsed)
}

/// Samples of edu's register reads in the baseline boot: each is 2000 MMIO exits to QEMU
/// (about 0.3 s in the emulated host), so they also keep QEMU under load long enough for the
/// footprint sampler (every 5 s) to see it a few times.
const LEVEL1_MMIO_SAMPLES: &str = "50";

/// The baselines that need another VMM at rmnic-vmm's level: one emulated boot of the same
/// guest under `qemu-system-x86_64 -enable-kvm` in the same emulated host, with `edu` and no
/// rmnic device. Its VMM-start-to-init time is the `boot` baseline, its edu register reads
/// (`BENCHBASE mmio-read`) the `mmio-read` baseline, and QEMU's resident memory beyond guest
/// RAM the `footprint-*` baselines (idle, then while the guest reads edu's registers). They are
/// added to `samples`, rmnic-vmm's boot.
pub fn level1_baselines(images: &Images, samples: &mut Samples) -> Result<()> {
    let start = progress::step(
        "level-1 baselines: the same guest under QEMU -enable-kvm in the emulated host (boot, edu reads, footprint)",
    );
    crate::images::qemu_host_initramfs(images.dir())?;
    let mut guest = GuestRun::new(&["bench", "--samples", LEVEL1_MMIO_SAMPLES, "--only", "mmio"]);
    guest.memory_mib = BENCH_GUEST_MIB;
    guest.level1 = Level1::Qemu;
    guest.qemu_devices = vec!["edu".into()];
    let mut host = rmnic_tests::emulated::EmulatedHost::from_env()?;
    host.kernel_append
        .push_str(" rmnic_dump=100000 rmnic_footprint=1");
    guest.host = Some(host);
    guest.timeout = EMULATED_BENCH_TIMEOUT;
    let outcome = rmnic_tests::launch::run_in(HostMode::Emulated, images, &guest)
        .context("baseline boot under QEMU in the emulated host")?;
    if outcome.status != 0 {
        bail!(
            "the baseline boot under QEMU failed (status {}):\n{}",
            outcome.status,
            outcome.tail()
        );
    }
    let parsed = Samples::parse(&outcome.console);
    let mmio = parsed
        .metrics
        .get("mmio-read")
        .map(|m| m.2.clone())
        .unwrap_or_default();
    if mmio.is_empty() {
        bail!(
            "the baseline boot printed no BENCHBASE mmio-read line:\n{}",
            outcome.tail()
        );
    }
    samples.add_baseline("mmio-read", "ns", mmio);
    let boot = outcome
        .vmm_start_to_guest_init()
        .context("the baseline boot's console has no VMM start or no guest init line")?;
    samples.add_baseline("boot", "ms", vec![boot.as_secs_f64() * 1e3]);
    let (idle, load) = footprint(&outcome.console);
    let idle: Vec<f64> = idle.iter().rev().take(3).copied().collect();
    for (name, values) in [("footprint-idle", idle), ("footprint-load", load)] {
        if values.is_empty() {
            bail!("the baseline boot printed no QEMU footprint for {name}");
        }
        samples.add_baseline(name, "MiB", values);
    }
    progress::done("level-1 baselines", start);
    Ok(())
}

/// The doorbell fast path under rmnic-vmm, before and after: the doorbell and submission
/// figures of `with` (the default, `--doorbells ioeventfd`) against a boot with
/// `--doorbells exit` (every doorbell an MMIO exit to rmnic-vmm, as before).
pub fn doorbell_path_rows(
    images: &Images,
    mode: HostMode,
    plan: Plan,
    with: &Samples,
) -> Result<Vec<Row>> {
    let without = sample(
        images,
        mode,
        plan,
        &["doorbell", "submission"],
        &["--doorbells", "exit"],
    )?;
    let mut rows = Vec::new();
    for metric in [
        "doorbell",
        "submit-batch-1",
        "submit-batch-16",
        "submit-batch-256",
    ] {
        rows.extend(Row::new(
            &format!("{metric}-via-ioeventfd"),
            &mode.to_string(),
            "ns",
            Better::Lower,
            "the same with --doorbells exit (an MMIO exit to rmnic-vmm), separate boot",
            with.rmnic(metric),
            without.rmnic(metric),
            None,
        ));
    }
    Ok(rows)
}

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

/// The oracle off versus `full` on `rmnic-guest copy-bench` (device COPY of 4 KiB pages, first
/// touch then warm rounds), in qemu mode (the device in rmnic-device-server), `rounds` boots
/// of each, alternating.
pub fn oracle_cost(images: &Images, rounds: usize) -> Result<Vec<Row>> {
    let start = progress::step(&format!(
        "rmnic oracle cost in a guest workload: {rounds} boots each with --coherence-check off and full (qemu mode)"
    ));
    // results[workload][check]: (first-touch ms, warm MiB/s) per round.
    let mut results = vec![[Vec::new(), Vec::new()]; WORKLOADS.len()];
    for round in 0..rounds {
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
    let mut rows = Vec::new();
    for (w, (label, _, _, what)) in WORKLOADS.iter().enumerate() {
        let first = |c: usize| results[w][c].iter().map(|r| r.0).collect::<Vec<f64>>();
        let warm = |c: usize| results[w][c].iter().map(|r| r.1).collect::<Vec<f64>>();
        let baseline_is = format!("the oracle off ({what})");
        rows.extend(Row::new(
            &format!("oracle-{label}-warm"),
            "qemu",
            "MiB/s",
            Better::Higher,
            &baseline_is,
            &warm(1),
            &warm(0),
            None,
        ));
        rows.extend(Row::new(
            &format!("oracle-{label}-first-touch"),
            "qemu",
            "ms",
            Better::Lower,
            &baseline_is,
            &first(1),
            &first(0),
            None,
        ));
    }
    progress::done("guest oracle benchmark", start);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_lines_split_at_the_first_figure() {
        let console = "rmnic-host: footprint VmRSS=900 RssAnon=1024 RssFile=1024 RssShmem=100\n\
                       rmnic-guest: init reached\n\
                       BENCH mmio-read unit=ns rmnic=1 baseline=none\n\
                       rmnic-host: footprint VmRSS=900 RssAnon=3072 RssFile=1024 RssShmem=900\n\
                       rmnic-host: footprint VmRSS=900 RssShmem=900\n";
        assert_eq!(footprint(console), (vec![2.0], vec![4.0]));
    }

    #[test]
    fn baselines_from_another_boot_join_rmnic_samples() {
        let mut ours = Samples::parse("BENCH mmio-read unit=ns rmnic=100 baseline=none\n");
        let theirs = Samples::parse(
            "BENCHBASE mmio-read unit=ns baseline=150\n\
             BENCHBASE mmio-read unit=ns baseline=250\n\
             BENCHBASE broken unit=ns\n",
        );
        assert!(theirs.rmnic("mmio-read").is_empty());
        ours.add_baseline("mmio-read", "ns", theirs.metrics["mmio-read"].2.clone());
        ours.add_baseline("boot", "ms", vec![14000.0]);
        ours.push("boot", "ms", vec![7000.0]);
        let rows = ours.rows(HostMode::Emulated);
        let mmio = rows
            .iter()
            .find(|r| r.name == "mmio-read")
            .expect("mmio row");
        assert_eq!(mmio.baseline, Some(200.0));
        assert_eq!(mmio.goal_met, Some(true), "100 / 200 is at most 1.0");
        assert!(!theirs.metrics.contains_key("broken"));
        let boot = rows.iter().find(|r| r.name == "boot").expect("boot row");
        assert_eq!((boot.rmnic, boot.baseline), (7000.0, Some(14000.0)));
    }

    #[test]
    fn samples_parse_figures_and_counts() {
        let parsed = Samples::parse(
            "BENCH doorbell unit=ns rmnic=2.5 baseline=5\r\n\
             BENCH doorbell unit=ns rmnic=3.5 baseline=none\n\
             BENCHINFO doorbell writes=5\n\
             BENCH garbage\n",
        );
        assert_eq!(parsed.rmnic("doorbell"), [2.5, 3.5]);
        let rows = parsed.rows(HostMode::Qemu);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].baseline, Some(5.0));
        assert_eq!(rows[0].notes, "writes=5.00");
        assert_eq!(rows[0].goal_met, Some(false), "3.0 / 5 is above 0.3");
    }
}
