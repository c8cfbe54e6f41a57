//! `cargo xtask soak`: boots the guest many times with one workload and one platform
//! configuration, classifies every boot (passed, guest failure, stall, triple fault, host crash,
//! timeout, ...) without retrying any, and prints the tally. This is how the platform's failure
//! rate is measured and how configurations are compared (docs/platform.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmnic_tests::launch::run_once;
use rmnic_tests::verdict::{host_crash_line, stall_line};
use rmnic_tests::{EmulatedHost, GuestRun, HostMode, Images, Verdict};

use crate::progress;

/// What each boot runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Workload {
    /// `rmnic-guest stress`: exit storm, mprotect next to device ops, context and fork churn.
    Stress,
    /// The same load shape with the rmnic device unused.
    StressNoDevice,
    /// The full coherence checks.
    Coherence,
    /// The boot `cargo xtask test` shares: probe, then the coherence checks, with slab
    /// poisoning.
    Suite,
    /// Boot, probe and power off: the platform with almost no load.
    Probe,
    /// `rmnic-guest random` with a new seed every boot (each console names its seed for a
    /// replay): how often the seeded stress finds something.
    Random,
}

/// Options of one soak run.
pub struct Soak {
    pub boots: u32,
    pub workload: Workload,
    pub seconds: u64,
    pub host: EmulatedHost,
    /// Extra guest kernel words; `None` keeps `RMNIC_GUEST_APPEND`.
    pub guest_append: Option<String>,
    /// More options for whatever hosts the device (e.g. `--doorbells exit`).
    pub device_args: Vec<String>,
}

impl Soak {
    fn command(&self) -> Vec<String> {
        let secs = self.seconds.to_string();
        let words: Vec<&str> = match self.workload {
            Workload::Stress => vec!["stress", "--seconds", &secs],
            Workload::StressNoDevice => vec!["stress", "--no-device", "--seconds", &secs],
            Workload::Coherence => vec!["coherence"],
            Workload::Suite => vec!["probe", "--cpus", "2", "+", "coherence"],
            Workload::Probe => vec!["probe", "--cpus", "2"],
            Workload::Random => vec!["random"],
        };
        words.into_iter().map(String::from).collect()
    }

    /// Runs the boots; exits non-zero if any boot did not pass.
    pub fn run(&self) -> Result<ExitCode> {
        let images = Images::locate()?;
        let mode = HostMode::from_env()?;
        let command = self.command();
        let words: Vec<&str> = command.iter().map(String::as_str).collect();
        let mut guest = GuestRun::new(&words);
        guest.host = Some(self.host.clone());
        guest.device_args = self.device_args.clone();
        if let Some(append) = &self.guest_append {
            guest.guest_append = append.clone();
        }
        if matches!(self.workload, Workload::Suite) {
            guest.guest_append = format!("{} slub_debug=P,kmalloc-*", guest.guest_append);
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let logs = crate::cache::root().join("soak").join(stamp.to_string());
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("Cannot create {}", logs.display()))?;
        let start = progress::step(&format!(
            "Soak: {} boots of `rmnic-guest {}` ({mode} mode{})",
            self.boots,
            command.join(" "),
            if mode == HostMode::Emulated {
                format!(", {}", self.host.describe())
            } else {
                String::new()
            }
        ));
        if !guest.guest_append.is_empty() {
            eprintln!("    guest kernel gets: {}", guest.guest_append);
        }
        if !guest.device_args.is_empty() {
            eprintln!(
                "    the device's host gets: {}",
                guest.device_args.join(" ")
            );
        }
        eprintln!("    consoles of failed boots go to {}", logs.display());
        let mut results: Vec<(Verdict, Duration)> = Vec::new();
        for boot in 1..=self.boots {
            let began = Instant::now();
            let result = run_once(mode, &images, &guest);
            let took = began.elapsed();
            let verdict = Verdict::of(&result);
            let mut line = format!(
                "    [{boot:>3}/{}] {verdict:<14} {:>6.1} s",
                self.boots,
                took.as_secs_f64()
            );
            if verdict != Verdict::Passed {
                let (console, detail) = match &result {
                    Ok(o) => (
                        o.console.clone(),
                        host_crash_line(&o.console)
                            .or_else(|| stall_line(&o.console))
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("status {:#x}", o.status)),
                    ),
                    Err(e) => (
                        e.to_string(),
                        e.to_string().lines().next().unwrap_or("").to_string(),
                    ),
                };
                let file: PathBuf = logs.join(format!("boot-{boot:03}-{verdict}.log"));
                let _ = std::fs::write(&file, console);
                line.push_str(&format!("  {}  ({})", detail.trim(), file.display()));
            }
            eprintln!("{line}");
            results.push((verdict, took));
            if boot == 1 && verdict == Verdict::LaunchFailed {
                anyhow::bail!(
                    "the first boot could not start the VM; not trying {} more",
                    self.boots - 1
                );
            }
        }
        let passed = results
            .iter()
            .filter(|(v, _)| *v == Verdict::Passed)
            .count();
        let platform = results
            .iter()
            .filter(|(v, _)| v.is_platform_failure())
            .count();
        let mut kinds: Vec<Verdict> = results.iter().map(|(v, _)| *v).collect();
        kinds.sort();
        kinds.dedup();
        let secs: Vec<f64> = results.iter().map(|(_, d)| d.as_secs_f64()).collect();
        let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
        let min = secs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = secs.iter().copied().fold(0.0, f64::max);
        progress::done("soak", start);
        println!(
            "soak: {} boots, {passed} passed, {platform} platform failures; boot time mean {mean:.1} s, min {min:.1} s, max {max:.1} s",
            results.len()
        );
        for kind in kinds {
            let n = results.iter().filter(|(v, _)| *v == kind).count();
            println!("soak:   {kind:<14} {n}");
        }
        Ok(if passed == results.len() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
