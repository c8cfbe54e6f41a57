//! Running external commands with progress output: long steps print what they do and how
//! long they have been at it, and their full output goes to a log file that errors point at.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a long-running command reports that it is still alive.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Prints a step header and returns its start time.
pub fn step(what: &str) -> Instant {
    eprintln!("==> {what}");
    Instant::now()
}

/// Prints how long the step that started at `start` took.
pub fn done(what: &str, start: Instant) {
    eprintln!("    {what} done in {}", fmt_duration(start.elapsed()));
}

/// Formats a duration as `1m05s` or `12.3s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Runs `cmd` with its output inherited (short commands whose output the user wants to see).
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("Cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` with stdout and stderr sent to `log`, printing a heartbeat with the elapsed time
/// and the log's last line every 30 s. On failure the error shows the log's tail.
pub fn run_logged(what: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    let file = File::create(log).with_context(|| format!("Cannot create {}", log.display()))?;
    let err_file = file.try_clone()?;
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err_file))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("Cannot start {cmd:?}"))?;
    let mut next_beat = HEARTBEAT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
        if start.elapsed() >= next_beat {
            next_beat += HEARTBEAT;
            let last = tail(log, 1);
            eprintln!(
                "    {what}: {} elapsed | {}",
                fmt_duration(start.elapsed()),
                last.trim()
            );
        }
    };
    if !status.success() {
        bail!(
            "{what} failed with {status}; full log: {}\n--- last lines ---\n{}",
            log.display(),
            tail(log, 40)
        );
    }
    Ok(())
}

/// The last `n` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` and returns its stdout, trimmed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("Cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
