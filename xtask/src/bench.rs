//! `cargo xtask bench`: every figure side by side with its baseline, measured in the same run
//! (issue 12). Three sources feed one table:
//!
//! - the device model on this machine (`cargo bench -p rmnic-device`, criterion), read back
//!   from criterion's own sample files ([`model_bench`](crate::model_bench));
//! - a booted guest running `rmnic-guest bench` in each host mode, with QEMU's `edu` device as
//!   the MMIO baseline in qemu mode ([`guest_bench`](crate::guest_bench));
//! - the coherence oracle's cost on a guest workload (oracle off against full).
//!
//! The table goes to the terminal, to `BENCHMARKS.md` (with the machine, modes and date) and,
//! with `--json FILE`, to a JSON list of rows. Each row's ratio is rmnic over baseline; goals
//! from the issue are judged against it. Nothing here fails on a figure: a missed goal is
//! reported, not asserted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Which way is better for a row's figure.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Times, costs.
    Lower,
    /// Throughputs.
    Higher,
}

/// Median, minimum and maximum of a set of samples.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples`; None when there are none.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// One row of the table and of the JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Metric name, e.g. `shootdown-munmap-2m`.
    pub name: String,
    /// Where it was measured: `host` (the device model), `qemu`, `emulated` or `direct`.
    pub mode: String,
    /// Unit of `rmnic` and `baseline`.
    pub unit: String,
    /// rmnic's median.
    pub rmnic: f64,
    /// The baseline's median (None: no baseline in this mode).
    pub baseline: Option<f64>,
    /// `rmnic / baseline`.
    pub ratio: Option<f64>,
    /// Samples behind each median.
    pub runs: usize,
    /// rmnic's spread.
    pub rmnic_spread: Spread,
    /// The baseline's spread.
    pub baseline_spread: Option<Spread>,
    /// Which way is better.
    pub better: Better,
    /// What rmnic is compared with.
    pub baseline_is: String,
    /// The goal for the ratio, if it sets one.
    pub goal: Option<Goal>,
    /// Whether the goal is met (None: no goal, or no ratio).
    pub goal_met: Option<bool>,
    /// Counts that go with the metric (`BENCHINFO` lines: each key's values as min..max).
    pub notes: String,
}

/// A goal on a row's ratio.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Goal {
    /// The ratio must be at most this.
    AtMost(f64),
    /// The ratio must be at least this.
    AtLeast(f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
        match self {
            Self::AtMost(limit) => ratio <= limit,
            Self::AtLeast(limit) => ratio >= limit,
        }
    }

    fn text(self) -> String {
        match self {
            Self::AtMost(limit) => format!("<= {limit}x"),
            Self::AtLeast(limit) => format!(">= {limit}x"),
        }
    }
}

impl Row {
    /// A row from samples (rmnic's and the baseline's).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        mode: &str,
        unit: &str,
        better: Better,
        baseline_is: &str,
        rmnic: &[f64],
        baseline: &[f64],
        goal: Option<Goal>,
    ) -> Option<Self> {
        let rmnic_spread = Spread::of(rmnic)?;
        let baseline_spread = Spread::of(baseline);
        let ratio = baseline_spread
            .filter(|b| b.median != 0.0)
            .map(|b| rmnic_spread.median / b.median);
        Some(Self {
            name: name.to_string(),
            mode: mode.to_string(),
            unit: unit.to_string(),
            rmnic: rmnic_spread.median,
            baseline: baseline_spread.map(|b| b.median),
            ratio,
            runs: rmnic.len(),
            rmnic_spread,
            baseline_spread,
            better,
            baseline_is: baseline_is.to_string(),
            goal,
            goal_met: goal.zip(ratio).map(|(g, r)| g.met(r)),
            notes: String::new(),
        })
    }
}

/// A figure for the table: 3 significant digits or so.
fn fig(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn spread_text(s: &Spread) -> String {
    format!("{} ({}..{})", fig(s.median), fig(s.min), fig(s.max))
}

/// The baseline's spread, or `-` without a baseline.
fn baseline_text(row: &Row) -> String {
    row.baseline_spread
        .as_ref()
        .map_or_else(|| "-".to_string(), spread_text)
}

/// The ratio as `0.42x`, or `-` without a baseline.
fn ratio_text(row: &Row) -> String {
    row.ratio
        .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

fn goal_text(row: &Row) -> String {
    match (row.goal, row.goal_met) {
        (Some(goal), Some(true)) => format!("{} met", goal.text()),
        (Some(goal), Some(false)) => format!("{} MISSED", goal.text()),
        (Some(goal), None) => format!("{} (no baseline)", goal.text()),
        (None, _) => String::new(),
    }
}

/// The table as plain text for the terminal.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<8} {:>22} {:>22} {:>8} {:<6} {:<5} goal",
        "metric", "mode", "rmnic (min..max)", "baseline (min..max)", "ratio", "unit", "runs"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<28} {:<8} {:>22} {:>22} {:>8} {:<6} {:<5} {}",
            row.name,
            row.mode,
            spread_text(&row.rmnic_spread),
            baseline_text(row),
            ratio_text(row),
            row.unit,
            row.runs,
            goal_text(row)
        );
    }
    out
}

/// What the Markdown report says about the run besides the rows.
pub struct Report<'a> {
    /// The rows.
    pub rows: &'a [Row],
    /// Host modes the guest figures come from.
    pub modes: &'a [String],
    /// `uname`, CPU model and count of this machine.
    pub machine: String,
    /// Date and time of the run (UTC).
    pub date: String,
    /// The command that made it.
    pub command: String,
    /// Metrics the issue asks for that this run does not measure, with why.
    pub not_measured: &'a [(&'a str, &'a str)],
}

/// `BENCHMARKS.md`.
pub fn markdown(report: &Report<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# rmnic benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `{}` on {} (UTC). Machine: {}. Guest figures from: {}.\n",
        report.command,
        report.date,
        report.machine,
        report.modes.join(", ")
    );
    let _ = writeln!(
        out,
        "Every row is rmnic side by side with its baseline **in the same run** (alternating where \
         both run in one guest); the ratio is rmnic / baseline, and `better` says which way is \
         good. Absolute times from emulation (TCG) are not comparable to real hardware; ratios \
         are. Medians, with minimum and maximum, of `runs` samples. Nothing here is asserted by \
         a test; goals are the issue's (issue 12) and a missed one is explained in the notes of \
         the issue and in docs/benchmarks.md.\n"
    );
    let _ = writeln!(
        out,
        "| metric | mode | rmnic (min..max) | baseline (min..max) | ratio | unit | better | runs | baseline is | goal | counts |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in report.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            row.mode,
            spread_text(&row.rmnic_spread),
            baseline_text(row),
            ratio_text(row),
            row.unit,
            match row.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
            },
            row.runs,
            row.baseline_is,
            goal_text(row),
            row.notes
        );
    }
    if !report.not_measured.is_empty() {
        let _ = writeln!(out, "\n## Not measured by this run\n");
        for (what, why) in report.not_measured {
            let _ = writeln!(out, "- **{what}**: {why}");
        }
    }
    out
}

/// Writes the rows as JSON to `path`.
pub fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

/// `BENCHINFO` figures of one metric: key → values seen.
pub type Notes = BTreeMap<String, Vec<f64>>;

/// `key=min..max` (or `key=v` when all agree) for each key.
pub fn notes_text(notes: &Notes) -> String {
    notes
        .iter()
        .filter_map(|(key, values)| {
            let s = Spread::of(values)?;
            Some(if s.min == s.max {
                format!("{key}={}", fig(s.min))
            } else {
                format!("{key}={}..{}", fig(s.min), fig(s.max))
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// This machine in one line: kernel, CPU model, CPU count.
pub fn machine() -> String {
    let uname = std::process::Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{uname}, {model}, {cpus} CPUs")
}

/// `BENCHMARKS.md` in the repository.
pub fn markdown_path(repo: &Path) -> PathBuf {
    repo.join("BENCHMARKS.md")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_the_median_and_the_extremes() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("samples");
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn a_row_judges_its_goal_on_the_ratio_of_medians() {
        let row = Row::new(
            "doorbell",
            "qemu",
            "ns",
            Better::Lower,
            "an MMIO write",
            &[1.0, 2.0, 3.0],
            &[10.0, 10.0, 10.0],
            Some(Goal::AtMost(0.3)),
        )
        .expect("row");
        assert_eq!(row.ratio, Some(0.2));
        assert_eq!(row.goal_met, Some(true));
        let row = Row::new(
            "copy-2m",
            "qemu",
            "MiB/s",
            Better::Higher,
            "memcpy",
            &[7.0],
            &[10.0],
            Some(Goal::AtLeast(0.8)),
        )
        .expect("row");
        assert_eq!(row.goal_met, Some(false));
        let row = Row::new("x", "qemu", "ns", Better::Lower, "-", &[1.0], &[], None).expect("row");
        assert_eq!((row.ratio, row.goal_met), (None, None));
        assert!(table(&[row])
            .lines()
            .any(|l| l.starts_with("x ") && l.contains(" - ")));
    }

    #[test]
    fn notes_show_ranges_and_single_values() {
        let mut notes = Notes::new();
        notes.insert("a".into(), vec![1.0, 1.0]);
        notes.insert("b".into(), vec![2.0, 5.0]);
        assert_eq!(notes_text(&notes), "a=1.00 b=2.00..5.00");
    }
}
