//! Two guests at once, their rmnic devices joined by a fabric link (`docs/fabric.md`), for
//! segments across guests (`rmnic-guest remote-export` and `remote-import`).
//!
//! Side by side on this machine ([`run_pair`], qemu mode; direct mode through [`run_pair_in`]):
//! each guest's device runs in its own host process (`rmnic-device-server` in qemu mode, the
//! guest's own rmnic-vmm in direct mode), and the two processes are the link's ends. The
//! exporter's host listens on a Unix socket of this
//! machine, unique per run (`--node 1 --fabric-listen SOCK`); the exporter's guest prints its
//! segment ids ([`IDS_LINE_PREFIX`]); only then does the importer boot, its server connecting
//! to the socket (`--node 2 --fabric-connect SOCK`) and its guest program getting the ids on
//! its command line. Nothing is retried; every wait is bounded ([`IDS_WAIT`], each guest's
//! own timeout).
//!
//! The two boots hold the harness's boot lock together: no other boot of the test binary runs
//! beside them. Each is classified and recorded like any other boot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host::HostMode;
use crate::images::Images;
use crate::launch::{self, GuestRun, LaunchError, Outcome, Stop};

/// Node id of the exporter's device on the fabric.
pub const EXPORTER_NODE: u8 = 1;
/// Node id of the importer's device.
pub const IMPORTER_NODE: u8 = 2;
/// The line the exporter's guest program prints its ids on (`rmnic-guest remote-export`,
/// `tests/guest/src/remote.rs`); the words after it are appended to the importer's command.
pub const IDS_LINE_PREFIX: &str = "remote-export: segid ";
/// How long the exporter may take from launch to printing its ids (its boot included).
pub const IDS_WAIT: Duration = Duration::from_secs(120);

/// What the two boots produced.
#[derive(Debug)]
pub struct PairOutcome {
    /// The exporter's boot (its console includes its device server's lines).
    pub exporter: Outcome,
    /// The importer's boot.
    pub importer: Outcome,
    /// The importer's guest program and its arguments, ids included.
    pub importer_command: Vec<String>,
}

/// A device server's end-of-run fabric line (`rmnic-device-server: fabric: node N peer M: S
/// remote shootdowns (mean U us), F fences, R remote accesses served`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FabricSummary {
    /// This server's node.
    pub node: u8,
    /// The node it linked to (None: the link never came up).
    pub peer: Option<u8>,
    /// Forwarded invalidations the peer acknowledged.
    pub shootdowns: u64,
    /// Their mean round trip, in microseconds.
    pub mean_us: f64,
    /// Times the peer was fenced.
    pub fences: u64,
    /// The peer's accesses this node served.
    pub accesses_served: u64,
}

/// Where a device host's fabric line starts after its program name (`rmnic-device-server: `
/// in qemu mode, `rmnic-vmm: ` in emulated mode).
pub const FABRIC_LINE_PREFIX: &str = ": fabric: node ";

impl FabricSummary {
    /// The fabric line on `console`, if there is one and it parses.
    pub fn from_console(console: &str) -> Option<Self> {
        console.lines().find_map(|line| {
            let at = line.find(FABRIC_LINE_PREFIX)?;
            Self::parse(&line[at + FABRIC_LINE_PREFIX.len()..])
        })
    }

    /// `N peer M: S remote shootdowns (mean U us), F fences, R remote accesses served`.
    fn parse(text: &str) -> Option<Self> {
        let (node, rest) = text.split_once(" peer ")?;
        let (peer, rest) = rest.split_once(": ")?;
        let (shootdowns, rest) = rest.split_once(" remote shootdowns (mean ")?;
        let (mean_us, rest) = rest.split_once(" us), ")?;
        let (fences, rest) = rest.split_once(" fences, ")?;
        let accesses_served = rest.trim_end().strip_suffix(" remote accesses served")?;
        Some(Self {
            node: node.trim().parse().ok()?,
            peer: match peer {
                "none" => None,
                peer => Some(peer.parse().ok()?),
            },
            shootdowns: shootdowns.parse().ok()?,
            mean_us: mean_us.parse().ok()?,
            fences: fences.parse().ok()?,
            accesses_served: accesses_served.parse().ok()?,
        })
    }
}

/// Why the pair did not produce a [`PairOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The exporter printed no ids in time; it was stopped.
    #[error(
        "The exporter printed no {IDS_LINE_PREFIX:?} line within {} s and was stopped; last console lines:\n{tail}",
        IDS_WAIT.as_secs()
    )]
    NoIds {
        /// The exporter's last console lines.
        tail: String,
    },
    /// The exporter's boot ended before it printed its ids.
    #[error("The exporter ended before printing its segment ids: {0}")]
    ExporterEnded(String),
    /// The ids line is not `--name number` pairs; the exporter was stopped.
    #[error("The exporter's ids line {line:?} is not `--name number` pairs")]
    BadIds {
        /// The line.
        line: String,
    },
    /// The exporter's boot failed.
    #[error("Exporter: {0}")]
    Exporter(LaunchError),
    /// The importer's boot failed (the exporter was stopped).
    #[error("Importer: {0}")]
    Importer(LaunchError),
    /// The emulated host's boot of the pair failed, or its console does not show both guests.
    #[error("Emulated pair: {0}")]
    Emulated(String),
}

/// Memory of each guest of a pair in emulated mode: both live in the emulated host's 3 GiB.
pub const EMULATED_PAIR_GUEST_MIB: u32 = 512;

/// Runs the pair in `mode`: qemu mode as [`run_pair`]; emulated mode with both guests inside
/// one emulated host (its init starts the exporter's rmnic-vmm, waits for the ids line and
/// starts the importer's; `images/initramfs/host-init`), the combined console split back
/// into one outcome per guest by the `exporter | ` / `importer | ` prefixes.
pub fn run_pair_in(
    mode: HostMode,
    images: &Images,
    exporter: GuestRun,
    importer: GuestRun,
) -> Result<PairOutcome, PairError> {
    match mode {
        HostMode::Emulated => run_pair_emulated(images, exporter, importer),
        HostMode::Qemu | HostMode::Direct => run_side_by_side(mode, images, exporter, importer),
    }
}

fn run_pair_emulated(
    images: &Images,
    exporter: GuestRun,
    importer: GuestRun,
) -> Result<PairOutcome, PairError> {
    let mut combined = exporter;
    combined.memory_mib = EMULATED_PAIR_GUEST_MIB;
    let mut host = match combined.host.clone() {
        Some(host) => host,
        None => crate::emulated::EmulatedHost::from_env()
            .map_err(|e| PairError::Emulated(e.to_string()))?,
    };
    host.kernel_append
        .push_str(&format!(" rmnic_pair_run={}", importer.command.join(",")));
    if !importer.device_args.is_empty() {
        host.kernel_append.push_str(&format!(
            " rmnic_pair_vmm_args={}",
            importer.device_args.join(",")
        ));
    }
    combined.host = Some(host);
    let outcome = launch::run_in(HostMode::Emulated, images, &combined)
        .map_err(|e| PairError::Emulated(e.to_string()))?;
    let part = |role: &str| -> String {
        let prefix = format!("{role} | ");
        outcome
            .console
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|line| format!("{}\n", line.trim_end_matches('\r')))
            .collect()
    };
    let statuses = outcome
        .lines_with("rmnic-host: pair: exporter status ")
        .find_map(|line| {
            let rest = line.split("exporter status ").nth(1)?;
            let (exporter, importer) = rest.split_once(", importer status ")?;
            Some((
                exporter.trim().parse::<i32>().ok()?,
                importer.trim().parse::<i32>().ok()?,
            ))
        })
        .ok_or_else(|| {
            PairError::Emulated(format!(
                "no pair status line; last console lines:\n{}",
                outcome.tail()
            ))
        })?;
    let exporter_console = part("exporter");
    let ids: Vec<String> = exporter_console
        .lines()
        .find_map(|line| line.split(IDS_LINE_PREFIX).nth(1))
        .map(|ids| ids.split_whitespace().map(ToString::to_string).collect())
        .unwrap_or_default();
    let mut importer_command = importer.command;
    importer_command.extend(ids);
    let split = |console: String, status: i32| Outcome {
        status,
        console,
        mode: HostMode::Emulated,
        elapsed: outcome.elapsed,
        timeline: Vec::new(),
    };
    Ok(PairOutcome {
        importer: split(part("importer"), statuses.1),
        exporter: split(exporter_console, statuses.0),
        importer_command,
    })
}

/// Runs `exporter` and `importer` as a pair in qemu mode (module docs) and returns both
/// outcomes, whatever statuses the guests chose. Each guest's `echo` echoes its console with
/// an `exporter | ` or `importer | ` prefix.
pub fn run_pair(
    images: &Images,
    exporter: GuestRun,
    importer: GuestRun,
) -> Result<PairOutcome, PairError> {
    run_side_by_side(HostMode::Qemu, images, exporter, importer)
}

/// [`run_pair`] in `mode`, qemu or direct: two VMs of this machine, whose device hosts
/// (device servers, or the two rmnic-vmms themselves) are joined by a Unix socket.
fn run_side_by_side(
    mode: HostMode,
    images: &Images,
    mut exporter: GuestRun,
    mut importer: GuestRun,
) -> Result<PairOutcome, PairError> {
    let socket = SocketPath::unique();
    exporter
        .device_args
        .extend(fabric_args(EXPORTER_NODE, "--fabric-listen", socket.path()));
    importer.device_args.extend(fabric_args(
        IMPORTER_NODE,
        "--fabric-connect",
        socket.path(),
    ));
    let exporter_command = exporter.command.clone();
    let stop = Stop::new();
    exporter.stop = Some(stop.clone());
    let (exporter_lines, exporter_echo) = tap(&mut exporter);
    let (importer_lines, importer_echo) = tap(&mut importer);

    let _serial = launch::boot_lock();
    let started = Instant::now();
    let exporter_boot = {
        let images = images.clone();
        // The closure owns the exporter's run, and with it the tap's last sender: when the
        // boot ends, the receiver sees the channel close.
        std::thread::spawn(move || launch::boot_unserialised(mode, &images, &exporter))
    };
    let ids = wait_for_ids(&exporter_lines, exporter_echo);
    let ids = match ids {
        Ok(ids) => ids,
        Err(waited) => {
            stop.stop();
            let outcome = join(exporter_boot);
            launch::record_boot(images, &exporter_command, started, false, &outcome);
            return Err(match (waited, outcome) {
                (IdsWait::TimedOut, Err(LaunchError::Stopped { tail, .. })) => {
                    PairError::NoIds { tail }
                }
                (IdsWait::Malformed(line), _) => PairError::BadIds { line },
                (_, Ok(outcome)) => PairError::ExporterEnded(format!(
                    "status {}; last console lines:\n{}",
                    outcome.status,
                    outcome.tail()
                )),
                (_, Err(e)) => PairError::ExporterEnded(e.to_string()),
            });
        }
    };
    let exporter_echoing = echo_lines(exporter_lines, "exporter", exporter_echo, None);
    let importer_stop = Stop::new();
    importer.stop = Some(importer_stop.clone());
    let killed = Arc::new(AtomicBool::new(false));
    let importer_echoing = echo_lines(
        importer_lines,
        "importer",
        importer_echo,
        Some((importer_stop, killed.clone())),
    );

    importer.command.extend(ids);
    let importer_started = Instant::now();
    let importer_outcome = launch::boot_unserialised(mode, images, &importer);
    if importer_outcome.is_err() && !killed.load(Ordering::Relaxed) {
        // Nothing will answer the exporter: do not let it wait out its own bounds. (An
        // importer killed on purpose is the test: the exporter runs on.)
        stop.stop();
    }
    let importer_command = importer.command.clone();
    drop(importer);
    let exporter_outcome = join(exporter_boot);
    launch::record_boot(images, &exporter_command, started, false, &exporter_outcome);
    let _ = exporter_echoing.join();
    let _ = importer_echoing.join();
    // An importer killed on purpose: its console up to the kill, and a status saying so.
    let importer_outcome = match importer_outcome {
        Err(LaunchError::Stopped { tail, mode }) if killed.load(Ordering::Relaxed) => Ok(Outcome {
            status: KILLED_STATUS,
            console: tail,
            mode,
            elapsed: importer_started.elapsed(),
            timeline: Vec::new(),
        }),
        other => other,
    };
    // Recorded once the kill is known: an importer killed on purpose is a guest that ended
    // as the test wanted, not a platform failure (a timeout) in the tally.
    launch::record_boot(
        images,
        &importer_command,
        importer_started,
        false,
        &importer_outcome,
    );
    Ok(PairOutcome {
        importer: importer_outcome.map_err(PairError::Importer)?,
        exporter: exporter_outcome.map_err(PairError::Exporter)?,
        importer_command,
    })
}

/// A line an importer prints to be killed there and then (with its device host: the link
/// breaks as it would when a peer dies).
pub const KILL_IMPORTER_LINE: &str = "remote-pair: kill the importer now";
/// The status a [`PairOutcome`]'s importer carries when the harness killed it on
/// [`KILL_IMPORTER_LINE`].
pub const KILLED_STATUS: i32 = -9;

/// The device server's options for node `node` at `socket`'s end of the link.
fn fabric_args(node: u8, role: &str, socket: &Path) -> [String; 4] {
    [
        "--node".to_string(),
        node.to_string(),
        role.to_string(),
        socket.display().to_string(),
    ]
}

/// Gives `guest` a console tap; takes over its echo (the pair echoes with a prefix, so the
/// two consoles can be told apart). The receiver and whether to echo.
fn tap(guest: &mut GuestRun) -> (Receiver<String>, bool) {
    let (sender, receiver) = mpsc::channel();
    guest.console_tap = Some(sender);
    (receiver, std::mem::take(&mut guest.echo))
}

/// Prints `line` as one of `role`'s console lines.
fn echo(role: &str, line: &str) {
    println!("{role} | {line}");
}

/// Echoes (or only drains) `lines` until the boot feeding them ends; with `kill`, stops that
/// boot when a line says [`KILL_IMPORTER_LINE`] (and records that it did).
fn echo_lines(
    lines: Receiver<String>,
    role: &'static str,
    echoing: bool,
    kill: Option<(Stop, Arc<AtomicBool>)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in lines {
            if let Some((stop, killed)) = &kill {
                if line.contains(KILL_IMPORTER_LINE) {
                    killed.store(true, Ordering::Relaxed);
                    stop.stop();
                }
            }
            if echoing {
                echo(role, &line);
            }
        }
    })
}

/// Why [`wait_for_ids`] came back without ids.
#[derive(Debug, PartialEq, Eq)]
enum IdsWait {
    /// [`IDS_WAIT`] passed.
    TimedOut,
    /// The exporter's boot ended (its tap closed).
    Ended,
    /// The ids line did not parse.
    Malformed(String),
}

/// Reads the exporter's console lines until its ids line, at most [`IDS_WAIT`]; the words to
/// append to the importer's command.
fn wait_for_ids(lines: &Receiver<String>, echoing: bool) -> Result<Vec<String>, IdsWait> {
    let deadline = Instant::now() + IDS_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => return Err(IdsWait::TimedOut),
            Err(RecvTimeoutError::Disconnected) => return Err(IdsWait::Ended),
        };
        if echoing {
            echo("exporter", &line);
        }
        if let Some(at) = line.find(IDS_LINE_PREFIX) {
            let words = &line[at + IDS_LINE_PREFIX.len()..];
            return parse_ids(words).ok_or(IdsWait::Malformed(line));
        }
    }
}

/// `--name number` pairs, at least one, as command words; None for anything else (the words
/// end up on the importer's kernel command line, so nothing but these goes through).
fn parse_ids(words: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = words.split_whitespace().collect();
    let pairs = words.chunks_exact(2);
    if words.is_empty() || !pairs.remainder().is_empty() {
        return None;
    }
    for pair in pairs {
        let name = pair[0].strip_prefix("--")?;
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok || pair[1].parse::<u64>().is_err() {
            return None;
        }
    }
    Some(words.into_iter().map(str::to_string).collect())
}

/// The exporter's boot, once it ended; a panic in it is the caller's.
fn join(boot: JoinHandle<Result<Outcome, LaunchError>>) -> Result<Outcome, LaunchError> {
    boot.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The fabric socket's path, unique per run, removed (if the listener left it) when dropped.
struct SocketPath(PathBuf);

impl SocketPath {
    fn unique() -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self(std::env::temp_dir().join(format!("rmnic-fabric-{}-{stamp}.sock", std::process::id())))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_name_number_pairs_and_nothing_else() {
        assert_eq!(
            parse_ids("--mailbox 1 --data 22 --readonly 3"),
            Some(
                ["--mailbox", "1", "--data", "22", "--readonly", "3"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            parse_ids(" --mailbox 7  "),
            Some(vec!["--mailbox".into(), "7".into()])
        );
        for bad in [
            "",
            "--mailbox",
            "--mailbox x",
            "mailbox 1",
            "--mailbox 1 --data",
            "--Mailbox 1",
            "--mail,box 1",
            "--mailbox 1+reboot",
            "-- 1",
            "--mailbox -1",
        ] {
            assert_eq!(parse_ids(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_ids_line_is_found_among_the_console_lines() {
        let (sender, lines) = mpsc::channel();
        for line in [
            "rmnic-guest: running: rmnic-guest remote-export",
            "CHECK remote-export-segments ok ...",
            "remote-export: segid --mailbox 4 --data 5 --readonly 6",
            "after",
        ] {
            sender.send(line.to_string()).expect("receiver alive");
        }
        assert_eq!(
            wait_for_ids(&lines, false),
            Ok(["--mailbox", "4", "--data", "5", "--readonly", "6"]
                .map(String::from)
                .to_vec())
        );
        sender
            .send(format!("{IDS_LINE_PREFIX}--mailbox four"))
            .expect("receiver alive");
        assert!(matches!(
            wait_for_ids(&lines, false),
            Err(IdsWait::Malformed(_))
        ));
        drop(sender);
        assert_eq!(wait_for_ids(&lines, false), Err(IdsWait::Ended));
    }

    #[test]
    fn the_fabric_line_parses_and_others_do_not() {
        let console = "rmnic-device-server: oracle (Full): 12 translated accesses checked, 0 violations\n\
             rmnic-device-server: fabric: node 1 peer 2: 3 remote shootdowns (mean 412.5 us), 0 fences, 57 remote accesses served\n";
        assert_eq!(
            FabricSummary::from_console(console),
            Some(FabricSummary {
                node: 1,
                peer: Some(2),
                shootdowns: 3,
                mean_us: 412.5,
                fences: 0,
                accesses_served: 57,
            })
        );
        let lonely = "rmnic-device-server: fabric: node 2 peer none: 0 remote shootdowns (mean 0.0 us), 1 fences, 0 remote accesses served";
        assert_eq!(
            FabricSummary::from_console(lonely).map(|s| (s.peer, s.fences)),
            Some((None, 1))
        );
        assert_eq!(
            FabricSummary::from_console(
                "rmnic-device-server: fabric: node 1 linked to node 2 over /tmp/x"
            ),
            None
        );
        assert_eq!(FabricSummary::from_console(""), None);
    }

    #[test]
    fn each_run_gets_its_own_socket_and_both_nodes_name_it() {
        let (a, b) = (SocketPath::unique(), SocketPath::unique());
        assert_ne!(a.path(), b.path());
        assert!(a.path().starts_with(std::env::temp_dir()));
        let listen = fabric_args(EXPORTER_NODE, "--fabric-listen", a.path());
        let connect = fabric_args(IMPORTER_NODE, "--fabric-connect", a.path());
        assert_eq!(listen[..2], ["--node", "1"]);
        assert_eq!(connect[..2], ["--node", "2"]);
        assert_eq!(listen[3], connect[3]);
    }
}
