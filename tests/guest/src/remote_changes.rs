//! `rmnic-guest changes-export` and `rmnic-guest changes-import`: the exporter's page-table
//! changes across two guests (`docs/segments.md`, "Across two guests"; `docs/fabric.md`),
//! each seen by the importer's next access. Started as a pair by the host like
//! `remote-export`/`remote-import` (`rmnic_tests::pair`, the same ids line).
//!
//! The exporting process exports a one-page **mailbox** (left out of forks) and a 3-page
//! **data** segment (filled with [`word`]s of [`DATA_SEED`]); page 0 is the one it mprotects,
//! page 1 the one whose copy-on-write its CPU breaks after a fork, page 2 the one only the
//! importer's device write touches after the fork. The steps go through the mailbox as in
//! `remote.rs` ([`Signal`]), every wait bounded.
//!
//! | step | exporter | importer |
//! | --- | --- | --- |
//! | 1 | exports, sets `ExporterReady`, prints `remote-export: segid --mailbox M --data D` | attaches both writable (retrying while ENOENT), waits for `ExporterReady`; WRITE64 on page 0, sets `ImporterWrote` |
//! | 2 | its CPU sees the write; mprotects page 0 read-only (a remote shootdown), sets `Protected` | |
//! | 3 | | WRITE64 on page 0 completes PERMISSION, READ64 still works, WRITE64 again PERMISSION; sets `ImporterRefused` |
//! | 4 | its CPU sees page 0 unchanged; mprotects it read-write again, sets `Unprotected` | |
//! | 5 | | WRITE64 on page 0 lands (permission upgrade); WRITE64 on pages 1 and 2; sets `ImporterUpgraded` |
//! | 6 | its CPU sees all three; forks a child (a remote shootdown: the pages become copy-on-write), then its CPU writes page 1 (COW broken in the parent); sets `Forked` | |
//! | 7 | | WRITE64 on pages 1 and 2 again, READ64 of the parent's CPU write; sets `ImporterWroteAfterFork` |
//! | 8 | its CPU sees the importer's new words, the child (asked over a pipe) still the old ones; the child exits; then the exporting process **exits with both segments exported** | polls both segments until an access completes SEGMENT_INVALID (its context closed at exit: revoked) or REMOTE_UNREACHABLE (its host already gone); detaches both |
//!
//! The program's own process only supervises: the exporting process is its fork child, so
//! that after the exit the program can check that the exporter's segments, context and
//! notifier are gone (the kernel closed the context at exit, not the program). The exporter's
//! host may end right after that (the guest's init ends the VM once the program returned), so
//! the importer's last accesses may find the link closed: both answers count, and the check
//! says which it saw.
//!
//! Each check prints `CHECK changes-<name> ok|FAILED <detail>`; a side that cannot go on
//! prints `CHECK changes-export-stopped` (or `changes-import-stopped`) `FAILED <why>`.

use std::cell::Cell;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rmnic_abi::{opcode, status, Context};
use rmnic_guest::Mapping;

use crate::remote::{
    attach_retrying, counters, no_leaks, poll_remote, read64, signal_local, signal_remote, stopped,
    wait_local, wait_remote, word_op, MailboxWord, Poll, IDS_LINE_PREFIX, IMPORTER_START_WAIT,
};
use crate::scenarios::{driver_counter, wait};
use crate::segments::{fill_words, word, Agent, Reply};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
/// A page, as a segment offset or length.
const P: u64 = PAGE as u64;

/// Pages of the data segment.
const DATA_PAGES: usize = 3;
/// The data segment's words at the start: `word(DATA_SEED, index)`.
const DATA_SEED: u64 = 0xc4;
/// Mode of both exports: read and write for the exporter's user and for the other guest (only
/// the `OTHER_*` bits apply to remote importers).
const MODE: u32 = 0o606;

/// The word of page 0 (the mprotected page) the importer writes.
const PROTECTED_AT: u64 = 8;
/// What the importer writes there first (step 1).
const FIRST_VALUE: u64 = 0x3b0_0001;
/// What it tries to write while the page is read-only (step 3): must never land.
const REFUSED_VALUE: u64 = 0xbad;
/// What it writes once the page is read-write again (step 5).
const UPGRADED_VALUE: u64 = 0x3b0_0002;

/// The words the importer writes before and after the fork: on page 1 (whose COW the
/// exporter's CPU breaks) and on page 2 (whose COW only the device's write breaks).
const FORK_WORDS: [u64; 2] = [P + 16, 2 * P + 24];
/// What the importer writes there before the fork (step 5): the fork child's copies keep it.
const BEFORE_FORK: [u64; 2] = [0xaaaa_0001, 0xaaaa_0002];
/// What it writes after the fork (step 7): only the exporting (parent) process sees it.
const AFTER_FORK: [u64; 2] = [0xbbbb_0001, 0xbbbb_0002];
/// The word of page 1 the exporter's CPU writes after the fork, breaking COW in the parent.
const CPU_WRITE_AT: u64 = P + 64;
/// The value it writes.
const CPU_WRITE_VALUE: u64 = 0xc0c0;

/// How long either side waits for the other's next step once both run (a step takes
/// milliseconds; this leaves room for a loaded host and keeps the exporter's waits,
/// 120 + 4 × 20 s, inside the watchdog's 270 s).
const STEP_WAIT: Duration = Duration::from_secs(20);

/// The mailbox words, each set to 1 once by one side.
#[derive(Clone, Copy, Debug)]
enum Signal {
    /// Exporter: both segments are exported (set before the ids are printed).
    ExporterReady = 0,
    /// Importer: it wrote page 0.
    ImporterWrote = 1,
    /// Exporter: page 0 is read-only.
    Protected = 2,
    /// Importer: its writes to page 0 were refused.
    ImporterRefused = 3,
    /// Exporter: page 0 is read-write again.
    Unprotected = 4,
    /// Importer: it wrote page 0 again, and the words of pages 1 and 2.
    ImporterUpgraded = 5,
    /// Exporter: it forked, and its CPU wrote page 1.
    Forked = 6,
    /// Importer: it wrote pages 1 and 2 after the fork.
    ImporterWroteAfterFork = 7,
}

impl MailboxWord for Signal {
    fn offset(self) -> u64 {
        self as u64 * 8
    }
}

/// The segment ids the exporter printed, given to the importer on its command line.
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    /// The mailbox segment.
    pub mailbox: u64,
    /// The data segment.
    pub data: u64,
}

/// Counters the exporter's exit must bring back to their start values.
const EXPORTER_COUNTERS: [&str; 3] = ["segments_live", "contexts_live", "notifiers_live"];

/// The exporter's side (`rmnic-guest changes-export`): forks the exporting process, waits for
/// it to exit, and checks that its exit released what it held.
pub fn export(c: &mut Checks) -> Result<()> {
    let baseline = counters(&EXPORTER_COUNTERS)?;
    let pid = spawn_exporter(c)?;
    // Bounded by the exporting process's own bounded waits (and the watchdog).
    let exit_status = wait(pid)?;
    c.check(
        "changes-export-exporter-exited",
        exit_status == 0,
        format!(
            "the exporting process {pid} exited with status {exit_status} (0: every check of it passed)"
        ),
    );
    no_leaks("changes-export-exit-releases", &baseline, c)
}

/// Forks the exporting process; its pid. The child never returns from here.
fn spawn_exporter(c: &mut Checks) -> Result<i32> {
    // Nothing buffered may be printed twice.
    std::io::stdout().flush()?;
    // SAFETY: the child runs `exporting_process`, which ends in `_exit`. The program forks from
    // its main thread; the only other thread is the watchdog, asleep and holding no lock the
    // child needs (as for `Agent`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        exporting_process(c);
    }
    Ok(pid)
}

/// The exporting process: the steps, then an exit that leaves its segments exported and its
/// context open, for the kernel to close (after tearing down the mm, as at any exit).
fn exporting_process(c: &mut Checks) -> ! {
    // A panic must not unwind into the supervising program's frames, which this process
    // shares up to the fork.
    let held = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| export_steps(c)));
    let status = match &held {
        Ok(Ok(_)) => i32::from(c.failed() != 0),
        Ok(Err(e)) => {
            // Everything was dropped on the way out: the context closed before the exit.
            stopped(c, "changes", "export", e);
            1
        }
        Err(_) => {
            stopped(
                c,
                "changes",
                "export",
                &anyhow::anyhow!("the exporting process panicked"),
            );
            101
        }
    };
    let _ = std::io::stdout().flush();
    // SAFETY: ends the fork child without running destructors: none of the supervising
    // program's, and not `held`'s, so the context and both exported mappings are still open
    // when the kernel tears the process down.
    unsafe { libc::_exit(status) }
}

/// What the exporting process holds when it exits.
struct Held {
    _dev: Context,
    _mailbox: Mapping,
    _data: Mapping,
}

fn export_steps(c: &mut Checks) -> Result<Held> {
    const DATA_LEN: u64 = (DATA_PAGES * PAGE) as u64;
    let dev = Context::open()?;
    let mailbox = Mapping::new(PAGE, false)?;
    // The fork of step 6 is about the data: the mailbox stays out of it.
    mailbox.advise(libc::MADV_DONTFORK)?;
    let data = Mapping::new(DATA_PAGES * PAGE, false)?;
    fill_words(&data, DATA_SEED);

    let live = driver_counter("segments_live")?;
    let ids = Ids {
        mailbox: dev
            .export_remote(mailbox.addr(), P, true, MODE)
            .context("remote export of the mailbox")?,
        data: dev
            .export_remote(data.addr(), DATA_LEN, true, MODE)
            .context("remote export of the data segment")?,
    };
    let exported = driver_counter("segments_live")?;
    c.check(
        "changes-export-segments",
        ids.mailbox != ids.data && exported == live + 2,
        format!(
            "mailbox {}, data {} ({DATA_PAGES} pages); segments_live {live} -> {exported}",
            ids.mailbox, ids.data
        ),
    );
    signal_local(&mailbox, Signal::ExporterReady);
    println!(
        "{IDS_LINE_PREFIX}--mailbox {} --data {}",
        ids.mailbox, ids.data
    );

    let waited = wait_local(&mailbox, Signal::ImporterWrote, IMPORTER_START_WAIT)?;
    let seen = data.read_u64(PROTECTED_AT as usize);
    c.check(
        "changes-export-sees-importer-write",
        seen == FIRST_VALUE,
        format!(
            "after {:.1} s, the CPU reads {seen:#x} where the importer wrote {FIRST_VALUE:#x}",
            waited.as_secs_f64()
        ),
    );

    // The importer holds a writable grant of page 0: mprotect must take it away before it
    // returns.
    let before = dev.stats()?;
    let start = Instant::now();
    data.protect_range(0, PAGE, libc::PROT_READ)?;
    let took = start.elapsed();
    let after = dev.stats()?;
    c.check(
        "changes-export-mprotect-invalidates",
        after.invalidations_sent > before.invalidations_sent,
        format!(
            "mprotect(PROT_READ) of page 0 returned after {:.3} ms with {} device invalidation(s) sent",
            took.as_secs_f64() * 1e3,
            after.invalidations_sent - before.invalidations_sent
        ),
    );
    signal_local(&mailbox, Signal::Protected);

    wait_local(&mailbox, Signal::ImporterRefused, STEP_WAIT)?;
    let unchanged = data.read_u64(PROTECTED_AT as usize);
    c.check(
        "changes-export-readonly-unchanged",
        unchanged == FIRST_VALUE,
        format!(
            "after the importer's refused writes of {REFUSED_VALUE:#x}, the CPU reads {unchanged:#x} (want {FIRST_VALUE:#x})"
        ),
    );
    data.protect_range(0, PAGE, libc::PROT_READ | libc::PROT_WRITE)?;
    signal_local(&mailbox, Signal::Unprotected);

    wait_local(&mailbox, Signal::ImporterUpgraded, STEP_WAIT)?;
    let upgraded = data.read_u64(PROTECTED_AT as usize);
    let fork_words = FORK_WORDS.map(|at| data.read_u64(at as usize));
    c.check(
        "changes-export-upgrade-landed",
        upgraded == UPGRADED_VALUE && fork_words == BEFORE_FORK,
        format!(
            "page 0 read-write again: the CPU reads {upgraded:#x} (want {UPGRADED_VALUE:#x}); pages 1 and 2: {fork_words:#x?} (want {BEFORE_FORK:#x?})"
        ),
    );

    fork_step(&dev, &mailbox, &data, c)?;
    Ok(Held {
        _dev: dev,
        _mailbox: mailbox,
        _data: data,
    })
}

/// Steps 6 and 8 of the exporter: fork, break COW on page 1 with the CPU, and after the
/// importer's writes compare the parent's pages with the child's.
fn fork_step(dev: &Context, mailbox: &Mapping, data: &Mapping, c: &mut Checks) -> Result<()> {
    // The importer holds writable grants of pages 1 and 2: the fork makes them copy-on-write,
    // so it must take the grants away.
    let before = dev.stats()?;
    // A child that keeps its copy of the data and nothing else (it closes the context's file),
    // until asked to exit or dropped (killed).
    let mut child = Agent::spawn_without_context()?;
    let after = dev.stats()?;
    c.check(
        "changes-export-fork-invalidates",
        after.invalidations_sent > before.invalidations_sent,
        format!(
            "fork (child {}) with {} device invalidation(s) sent",
            child.pid(),
            after.invalidations_sent - before.invalidations_sent
        ),
    );
    data.write_u64(CPU_WRITE_AT as usize, CPU_WRITE_VALUE);
    signal_local(mailbox, Signal::Forked);

    wait_local(mailbox, Signal::ImporterWroteAfterFork, STEP_WAIT)?;
    let parent = FORK_WORDS.map(|at| data.read_u64(at as usize));
    let parent_cpu = data.read_u64(CPU_WRITE_AT as usize);
    c.check(
        "changes-export-fork-parent-sees-importer",
        parent == AFTER_FORK && parent_cpu == CPU_WRITE_VALUE,
        format!(
            "the exporter (parent) reads {parent:#x?} on pages 1 and 2 (want the importer's {AFTER_FORK:#x?}) and {parent_cpu:#x} where its CPU wrote {CPU_WRITE_VALUE:#x}"
        ),
    );
    let mut kept = [0; 2];
    for (k, at) in kept.iter_mut().zip(FORK_WORDS) {
        *k = child.peek(data.addr() + at)?;
    }
    let kept_cpu = child.peek(data.addr() + CPU_WRITE_AT)?;
    let old_cpu = word(DATA_SEED, CPU_WRITE_AT as usize / 8);
    // The child must be gone before the exit step: it holds no context file, but its copies
    // are the pages the test is about.
    let child_pid = child.pid();
    let child_status = child.exit()?;
    c.check(
        "changes-export-fork-child-keeps-old",
        kept == BEFORE_FORK && kept_cpu == old_cpu && child_status == 0,
        format!(
            "the fork child {child_pid} reads {kept:#x?} on pages 1 and 2 (want {BEFORE_FORK:#x?}) and {kept_cpu:#x} where the parent's CPU wrote (want {old_cpu:#x}); it exited with {child_status}"
        ),
    );
    Ok(())
}

/// The importer's side (`rmnic-guest changes-import`).
pub fn import(ids: Ids, c: &mut Checks) -> Result<()> {
    let baseline = counters(&["attachments_live", "contexts_live"])?;
    if let Err(e) = import_steps(ids, c) {
        stopped(c, "changes", "import", &e);
    }
    no_leaks("changes-import-no-leaks", &baseline, c)
}

/// WRITE64 of `value` at segment address `addr`.
fn write64(dev: &Context, addr: u64, value: u64) -> Reply {
    word_op(dev, opcode::WRITE64, addr, value, 0)
}

fn import_steps(ids: Ids, c: &mut Checks) -> Result<()> {
    const DATA_LEN: u64 = (DATA_PAGES * PAGE) as u64;
    let dev = Context::open()?;
    let live = driver_counter("attachments_live")?;
    let (mailbox, tries) = attach_retrying(&dev, ids.mailbox, true)?;
    let data = dev
        .attach_remote(ids.data, true)
        .context("remote attach of the data segment")?;
    let attached = driver_counter("attachments_live")?;
    let ready = wait_remote(&dev, &mailbox, Signal::ExporterReady, STEP_WAIT)?;
    c.check(
        "changes-import-attach",
        mailbox.length == P
            && data.length == DATA_LEN
            && mailbox.slot != data.slot
            && attached == live + 2,
        format!(
            "mailbox {mailbox:?} (after {tries} tries), data {data:?}; attachments_live {live} -> {attached}; the exporter's ready word read after {:.1} ms",
            ready.as_secs_f64() * 1e3
        ),
    );

    let at = data.address(PROTECTED_AT);
    let first = write64(&dev, at, FIRST_VALUE);
    let back = read64(&dev, at);
    c.check(
        "changes-import-write",
        first.status() == status::OK && back == Reply::Done(FIRST_VALUE, 0),
        format!("WRITE64 {FIRST_VALUE:#x} on page 0: {first}; READ64 back {back}"),
    );
    signal_remote(&dev, &mailbox, Signal::ImporterWrote)?;

    wait_remote(&dev, &mailbox, Signal::Protected, STEP_WAIT)?;
    // The first write misses (mprotect took the grant away) and finds the page read-only; the
    // read then leaves a read-only grant, which the second write must not use.
    let denied = write64(&dev, at, REFUSED_VALUE);
    let read = read64(&dev, at);
    let denied_after_read = write64(&dev, at, REFUSED_VALUE);
    c.check(
        "changes-import-mprotect-write-permission",
        denied.status() == status::PERMISSION
            && read == Reply::Done(FIRST_VALUE, 0)
            && denied_after_read.status() == status::PERMISSION,
        format!(
            "page 0 read-only at the exporter: WRITE64 {denied}, READ64 {read} (want {FIRST_VALUE:#x}), WRITE64 again {denied_after_read}"
        ),
    );
    signal_remote(&dev, &mailbox, Signal::ImporterRefused)?;

    wait_remote(&dev, &mailbox, Signal::Unprotected, STEP_WAIT)?;
    let upgraded = write64(&dev, at, UPGRADED_VALUE);
    let back = read64(&dev, at);
    c.check(
        "changes-import-mprotect-upgrade",
        upgraded.status() == status::OK && back == Reply::Done(UPGRADED_VALUE, 0),
        format!(
            "page 0 read-write again: WRITE64 {UPGRADED_VALUE:#x} {upgraded}; READ64 back {back}"
        ),
    );
    let writes: Vec<Reply> = FORK_WORDS
        .iter()
        .zip(BEFORE_FORK)
        .map(|(&offset, value)| write64(&dev, data.address(offset), value))
        .collect();
    c.check(
        "changes-import-write-before-fork",
        writes.iter().all(|w| w.status() == status::OK),
        format!(
            "WRITE64 {BEFORE_FORK:#x?} on pages 1 and 2: {}",
            joined(&writes)
        ),
    );
    signal_remote(&dev, &mailbox, Signal::ImporterUpgraded)?;

    wait_remote(&dev, &mailbox, Signal::Forked, STEP_WAIT)?;
    // Page 1's grant went at the fork and the parent's CPU broke its COW; page 2's went at the
    // fork and only this write breaks it, in the parent.
    let writes: Vec<Reply> = FORK_WORDS
        .iter()
        .zip(AFTER_FORK)
        .map(|(&offset, value)| write64(&dev, data.address(offset), value))
        .collect();
    let backs: Vec<Reply> = FORK_WORDS
        .iter()
        .map(|&offset| read64(&dev, data.address(offset)))
        .collect();
    let cpu = read64(&dev, data.address(CPU_WRITE_AT));
    let want: Vec<Reply> = AFTER_FORK.iter().map(|&v| Reply::Done(v, 0)).collect();
    c.check(
        "changes-import-fork-writes",
        writes.iter().all(|w| w.status() == status::OK)
            && backs == want
            && cpu == Reply::Done(CPU_WRITE_VALUE, 0),
        format!(
            "after the exporter's fork: WRITE64 {AFTER_FORK:#x?} on pages 1 and 2: {}; READ64 back {}; READ64 of the word the exporter's CPU wrote after the fork: {cpu} (want {CPU_WRITE_VALUE:#x})",
            joined(&writes),
            joined(&backs)
        ),
    );
    signal_remote(&dev, &mailbox, Signal::ImporterWroteAfterFork)?;

    // The exporting process now checks the fork and exits with both segments exported.
    let mailbox_end = await_exporter_exit(&dev, mailbox.address(0), "the mailbox");
    let data_end = await_exporter_exit(&dev, data.address(PROTECTED_AT), "the data segment");
    c.check(
        "changes-import-exporter-exit-revokes",
        mailbox_end.is_ok() && data_end.is_ok(),
        format!(
            "after the exporter's exit: {}; {}",
            describe_end("the mailbox", &mailbox_end),
            describe_end("the data segment", &data_end)
        ),
    );

    let detached = [
        (
            "mailbox",
            Reply::of_ioctl(dev.detach(mailbox.slot).map(|()| 0)),
        ),
        ("data", Reply::of_ioctl(dev.detach(data.slot).map(|()| 0))),
    ];
    let after = driver_counter("attachments_live")?;
    c.check(
        "changes-import-detach",
        detached.iter().all(|(_, r)| r.status() == status::OK) && after == live,
        format!(
            "{}; attachments_live {after} (before attaching: {live})",
            detached
                .iter()
                .map(|(what, r)| format!("detach of the {what} slot {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(())
}

/// How the importer's accesses ended once the exporter exited.
struct ExitSeen {
    /// The last reply: SEGMENT_INVALID or REMOTE_UNREACHABLE.
    last: Reply,
    /// Replies FAULT_UNRESOLVED before it (the exporter's mm was gone, its file not yet
    /// closed: `docs/segments.md`).
    unresolved: u32,
    /// How long the wait took.
    took: Duration,
}

/// READ64s `addr` until it completes SEGMENT_INVALID (revoked: the exporter's context closed
/// at its exit) or REMOTE_UNREACHABLE (the exporter's host is gone), at most [`STEP_WAIT`].
/// OK (the exporter not gone yet) and FAULT_UNRESOLVED (its exit half done) mean wait on.
fn await_exporter_exit(dev: &Context, addr: u64, what: &str) -> Result<ExitSeen> {
    let last = Cell::new(Reply::Done(0, 0));
    let unresolved = Cell::new(0);
    let took = poll_remote(
        dev,
        addr,
        &format!("the end of {what}"),
        STEP_WAIT,
        |reply| {
            last.set(reply);
            match reply.status() {
                status::OK => Ok(Poll::Again),
                status::FAULT_UNRESOLVED => {
                    unresolved.set(unresolved.get() + 1);
                    Ok(Poll::Again)
                }
                status::SEGMENT_INVALID | status::REMOTE_UNREACHABLE => Ok(Poll::Done),
                _ => bail!("neither revoked nor unreachable"),
            }
        },
    )?;
    Ok(ExitSeen {
        last: last.get(),
        unresolved: unresolved.get(),
        took,
    })
}

/// Says how `what`'s accesses ended, and which of the two ends it was.
fn describe_end(what: &str, end: &Result<ExitSeen>) -> String {
    match end {
        Ok(seen) => {
            let meaning = if seen.last.status() == status::SEGMENT_INVALID {
                "revoked: the exporter's context closed at its exit"
            } else {
                "the exporter's host was already gone"
            };
            format!(
                "{what}'s READ64 completed {} ({meaning}) after {:.1} ms, with {} FAULT_UNRESOLVED before",
                seen.last,
                seen.took.as_secs_f64() * 1e3,
                seen.unresolved
            )
        }
        Err(e) => format!("{what}: {e:#}"),
    }
}

/// Replies, comma-separated.
fn joined(replies: &[Reply]) -> String {
    replies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_words_are_distinct_and_in_the_page() {
        let signals = [
            Signal::ExporterReady,
            Signal::ImporterWrote,
            Signal::Protected,
            Signal::ImporterRefused,
            Signal::Unprotected,
            Signal::ImporterUpgraded,
            Signal::Forked,
            Signal::ImporterWroteAfterFork,
        ];
        for (i, s) in signals.iter().enumerate() {
            assert_eq!(s.offset(), i as u64 * 8);
            assert!(s.offset() + 8 <= P);
        }
    }

    #[test]
    fn each_page_has_its_own_change() {
        let page = |offset: u64| offset / P;
        // Page 0 is mprotected; the fork words are on pages 1 and 2, the CPU's COW write on
        // page 1 next to the importer's word, and nothing is outside the segment.
        assert_eq!(page(PROTECTED_AT), 0);
        assert_eq!(FORK_WORDS.map(page), [1, 2]);
        assert_eq!(page(CPU_WRITE_AT), 1);
        assert_ne!(CPU_WRITE_AT, FORK_WORDS[0]);
        for at in [PROTECTED_AT, CPU_WRITE_AT, FORK_WORDS[0], FORK_WORDS[1]] {
            assert_eq!(at % 8, 0);
            assert!(at + 8 <= (DATA_PAGES * PAGE) as u64);
        }
        // Every value written differs from what was there before it.
        assert_ne!(FIRST_VALUE, word(DATA_SEED, PROTECTED_AT as usize / 8));
        assert_ne!(CPU_WRITE_VALUE, word(DATA_SEED, CPU_WRITE_AT as usize / 8));
        for i in 0..2 {
            assert_ne!(BEFORE_FORK[i], AFTER_FORK[i]);
            assert_ne!(BEFORE_FORK[i], word(DATA_SEED, FORK_WORDS[i] as usize / 8));
        }
        assert!(![FIRST_VALUE, UPGRADED_VALUE].contains(&REFUSED_VALUE));
    }
}
