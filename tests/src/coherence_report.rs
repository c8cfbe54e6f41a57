//! The coherence suite's report: one row per group (scenario) from a boot's console (the
//! guest's `CHECK` lines, grouped by the `coherence group NAME` lines) and the device's text
//! trace (device operations, faults, drop-ins, invalidations and violations between the
//! group markers the guest writes to the scratch register). `cargo xtask coherence` prints
//! it; the booted tests assert on it.

use std::path::PathBuf;

use crate::{GuestRun, HostMode, Images, LaunchError, Outcome};

/// The scratch-register value that marks the start of group `index` (`GROUP_MARKER` in the
/// guest's coherence.rs).
pub const GROUP_MARKER: u32 = 0x5c00_0000;
/// How the trace shows a write of the scratch register.
const SCRATCH_WRITE: &str = " marker ";

/// One group's row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// Group (scenario) name.
    pub group: String,
    /// Checks that passed.
    pub passed: usize,
    /// Names of the checks that failed.
    pub failed: Vec<String>,
    /// Commands the device completed.
    pub commands: u64,
    /// Fault records.
    pub faults: u64,
    /// Drop-ins installed.
    pub dropins: u64,
    /// Invalidation descriptors executed.
    pub invalidations: u64,
    /// Coherence violations.
    pub violations: u64,
    /// Seconds, from the trace's group markers.
    pub seconds: f64,
    /// The scratch-register value that marked the group's start.
    pub marker: Option<u32>,
}

/// A whole run.
#[derive(Debug)]
pub struct Report {
    /// One row per group, in run order.
    pub rows: Vec<Row>,
    /// Violations the oracle counted over the whole run (its summary line).
    pub violations_total: Option<u64>,
    /// Events the bounded trace lost (then the per-group counts are lower bounds).
    pub events_lost: u64,
    /// The boot itself.
    pub outcome: Outcome,
}

impl Report {
    /// Whether every check passed and the oracle found nothing.
    pub fn clean(&self) -> bool {
        self.rows.iter().all(|r| r.failed.is_empty()) && self.violations_total == Some(0)
    }

    /// The table, for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<10} {:<7} {:>6} {:>8} {:>7} {:>8} {:>7} {:>10} {:>8}\n",
            "group",
            "result",
            "checks",
            "dev ops",
            "faults",
            "drop-ins",
            "invals",
            "violations",
            "seconds"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<10} {:<7} {:>6} {:>8} {:>7} {:>8} {:>7} {:>10} {:>8.2}\n",
                r.group,
                if r.failed.is_empty() { "ok" } else { "FAILED" },
                r.passed + r.failed.len(),
                r.commands,
                r.faults,
                r.dropins,
                r.invalidations,
                r.violations,
                r.seconds
            ));
            for name in &r.failed {
                out.push_str(&format!("           FAILED check: {name}\n"));
            }
        }
        out.push_str(&format!(
            "oracle: {} violations in all{}\n",
            self.violations_total
                .map_or("no summary,".to_string(), |v| v.to_string()),
            if self.events_lost > 0 {
                format!(
                    "; the trace lost {} events, per-group counts are lower bounds",
                    self.events_lost
                )
            } else {
                String::new()
            }
        ));
        out
    }
}

/// Per-group check results from the console.
fn checks_by_group(console: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for line in console.lines() {
        if let Some(rest) = line.strip_prefix("rmnic-guest: coherence group ") {
            let name = rest.split_whitespace().next().unwrap_or(rest);
            let marker = rest.split("(marker ").nth(1).and_then(|m| {
                u32::from_str_radix(m.trim_end_matches(')').trim_start_matches("0x"), 16).ok()
            });
            rows.push(Row {
                group: name.to_string(),
                marker,
                ..Row::default()
            });
        } else if let Some(rest) = line.strip_prefix("CHECK ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(result)) = (words.next(), words.next()) else {
                continue;
            };
            if rows.is_empty() {
                rows.push(Row {
                    group: "(before groups)".into(),
                    ..Row::default()
                });
            }
            let Some(row) = rows.last_mut() else { continue };
            if result == "ok" {
                row.passed += 1;
            } else {
                row.failed.push(name.to_string());
            }
        }
    }
    rows
}

/// Adds the trace's per-group device counts to `rows` (matched by order of the markers).
fn add_trace(rows: &mut [Row], trace: &str) -> u64 {
    let mut lost = 0;
    let mut current: Option<usize> = None;
    let mut started = 0.0;
    let mut last_time = 0.0;
    for line in trace.lines() {
        if let Some(rest) = line.strip_prefix("# rmnic device events: ") {
            lost = rest
                .split(", ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            continue;
        }
        let time: f64 = line
            .split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(last_time);
        last_time = time;
        if let Some(at) = line.find(SCRATCH_WRITE) {
            let value = line[at + SCRATCH_WRITE.len()..].trim();
            let value = u32::from_str_radix(value.trim_start_matches("0x"), 16).unwrap_or(0);
            if value & 0xffff_ff00 == GROUP_MARKER {
                if let Some(i) = current {
                    if let Some(r) = rows.get_mut(i) {
                        r.seconds = time - started;
                    }
                }
                // Matched by value: the oldest markers may have left the bounded log.
                current = rows.iter().position(|r| r.marker == Some(value));
                started = time;
            }
            continue;
        }
        let Some(row) = current.and_then(|i| rows.get_mut(i)) else {
            continue;
        };
        if line.contains(" completion ctx ") {
            row.commands += 1;
        } else if line.contains(" fault record ctx ") {
            row.faults += 1;
        } else if line.contains(" drop-in ctx ") {
            row.dropins += 1;
        } else if line.contains(" invalidation #") || line.contains(" invalidation dropped #") {
            row.invalidations += 1;
        } else if line.contains("COHERENCE VIOLATION") {
            row.violations += 1;
        }
    }
    if let Some(r) = current.and_then(|i| rows.get_mut(i)) {
        r.seconds = last_time - started;
    }
    lost
}

/// The oracle's total from its summary line.
fn oracle_total(console: &str) -> Option<u64> {
    let line = console
        .lines()
        .find(|l| l.contains("oracle (") && l.contains(" violations"))?;
    let at = line.find(" violations")?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Where a run's trace goes.
fn trace_file(tag: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "rmnic-coherence-{tag}-{}-{stamp}.txt",
        std::process::id()
    ))
}

/// Boots `guest` (a `coherence` run, maybe followed by `random`) with a text trace and builds
/// the report.
pub fn run(mode: HostMode, images: &Images, mut guest: GuestRun) -> Result<Report, LaunchError> {
    let trace = trace_file(&mode.to_string());
    guest.trace = Some(trace.clone());
    // Hits, register writes and interrupts are most of the events; the report needs none.
    guest.device_args.push("--trace-lean".into());
    let outcome = crate::launch::run_in(mode, images, &guest)?;
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    Ok(report(outcome, &text))
}

/// The report of a finished boot and its text trace.
pub fn report(outcome: Outcome, trace: &str) -> Report {
    let mut rows = checks_by_group(&outcome.console);
    let events_lost = add_trace(&mut rows, trace);
    Report {
        rows,
        violations_total: oracle_total(&outcome.console),
        events_lost,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_checks_and_the_trace_between_markers() {
        let console = "rmnic-guest: coherence group ops (marker 0x5c000000)\n\
                       CHECK op-fill ok x\nCHECK op-copy FAILED y\n\
                       rmnic-guest: coherence group munmap (marker 0x5c000002)\n\
                       CHECK munmap-shootdown ok 1\n\
                       rmnic-vmm: oracle (Full): 10 translated accesses checked, 0 skipped (no page-table root), 2 violations, 0 writes through clean PTEs\n";
        let trace = "# rmnic device events: 9 shown, 0 lost (the log is a bounded ring)\n\
             1.0 s  #1  mmio  marker 0x5c000000\n\
             1.1 s  #2  worker 0  fault record ctx 0 va 0x1000 (record 0)\n\
             1.2 s  #3  mmio  drop-in ctx 0 asid 1 va 0x1000 -> 0x2000 size 0x1000 perms 0x3 (fill 1)\n\
             1.3 s  #4  worker 1  completion ctx 0 command 0 Ok\n\
             2.0 s  #5  mmio  marker 0x5c000002\n\
             2.1 s  #6  worker 0  invalidation #1 asid 1 [0x1000, 0x2000) removed 1\n\
             2.2 s  #7  worker 0  COHERENCE VIOLATION ctx 0 asid 1 read va 0x1000 through 0x2000\n\
             2.5 s  #8  worker 1  completion ctx 0 command 1 DeviceError\n";
        let mut rows = checks_by_group(console);
        add_trace(&mut rows, trace);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].passed, rows[0].failed.clone()),
            (1, vec!["op-copy".to_string()])
        );
        assert_eq!(
            (rows[0].faults, rows[0].dropins, rows[0].commands),
            (1, 1, 1)
        );
        assert!((rows[0].seconds - 1.0).abs() < 1e-9);
        assert_eq!(
            (rows[1].invalidations, rows[1].violations, rows[1].commands),
            (1, 1, 1)
        );
        assert_eq!(oracle_total(console), Some(2));
    }
}
