//! `rmnic-guest remote-export` and `rmnic-guest remote-import`: segments across two guests
//! whose devices are joined by a fabric link (device 1.3, spec §20; `docs/fabric.md`). The
//! exporter runs on one guest, the importer on the other, started by the host once the exporter
//! printed its segment ids (`rmnic_tests::pair`).
//!
//! The exporter exports three remote segments: a one-page **mailbox** (writable), an 8-page
//! **data** segment (writable, filled with [`word`]s of [`DATA_SEED`]) and a one-page
//! **read-only** one. The two programs step through the scenario by setting words of the
//! mailbox ([`Signal`]): the exporter with its CPU, the importer with remote WRITE64s; each
//! waits for the other's word by polling (the exporter with its CPU, the importer with remote
//! READ64s), every wait bounded.
//!
//! | step | exporter | importer |
//! | --- | --- | --- |
//! | 1 | exports, sets `ExporterReady`, prints `remote-export: segid --mailbox M --data D --readonly R` | attaches the three (retrying while ENOENT), waits for `ExporterReady` |
//! | 2 | | reads the data (READ64, COPY out), writes it (WRITE64, FETCH_ADD, CAS, COPY in, FILL), tries the read-only segment, sets `ImporterWrote` |
//! | 3 | checks the writes with its CPU, munmaps data page 2 (the remote shootdown completes before munmap returns), sets `PageUnmapped` | |
//! | 4 | | page 2 completes FAULT_UNRESOLVED, page 3 still reads right; sets `ImporterSawUnmap` |
//! | 5 | removes the data segment, sets `DataRemoved` | |
//! | 6 | | the data segment completes SEGMENT_INVALID and cannot be attached again; detaches; sets `ImporterDone` |
//! | 7 | removes the read-only segment and the mailbox, closes its context | waits until the mailbox completes SEGMENT_INVALID (or REMOTE_UNREACHABLE: the exporter's host is gone), detaches it, closes |
//!
//! Step 7 keeps the link up while any remote export is open: the importer's guest (and its
//! device server, the link's other end) ends only after the exporter closed every remote
//! export, so no invalidation of the exporter's can find the peer gone and fence it (a broken
//! link is not a fence by itself; the next forwarded invalidation is, `docs/fabric.md`).
//!
//! Every refused remote attach answers ENOENT: the device tells the driver that the other node
//! refused, not why (unknown id, permission, or no answer; `attach_remote` in the driver).
//!
//! Each check prints `CHECK remote-<name> ok|FAILED <detail>`; a program that cannot go on
//! prints `CHECK remote-export-stopped` (or `remote-import-stopped`) `FAILED <why>`, runs its
//! leak check and exits non-zero.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rmnic_abi::{opcode, status, Address, Attachment, Context};
use rmnic_guest::Mapping;

use crate::scenarios::{driver_counter, munmap};
use crate::segments::{fill_words, settle, word, Reply};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
/// A page, as a segment offset or length.
const P: u64 = PAGE as u64;

/// Pages of the data segment.
const DATA_PAGES: usize = 8;
/// The data segment's words at the start: `word(DATA_SEED, index)`.
const DATA_SEED: u64 = 0x7e;
/// The read-only segment's words: `word(READONLY_SEED, index)`.
const READONLY_SEED: u64 = 0x7f;
/// Mode of the three exports: read and write for the exporter's user and for the other guest
/// (only the `OTHER_*` bits apply to remote importers; a writable remote export needs
/// `OTHER_WRITE`). The read-only segment has the write bit too, so that a writable attach of
/// it is refused for the segment's sake, not the mode's.
const MODE: u32 = 0o606;

/// What the importer writes into the data segment (step 2), for the exporter to find.
const WRITE_AT: u64 = 8;
/// The WRITE64 value.
const WRITE_VALUE: u64 = 0x5e6_0001;
/// Offset of the FETCH_ADD.
const ADD_AT: u64 = 16;
/// The FETCH_ADD addend.
const ADDEND: u64 = 5;
/// Offset of the CAS.
const CAS_AT: u64 = 24;
/// The value the CAS swaps in.
const CAS_NEW: u64 = 0xca5;
/// Where the COPY into the segment starts: page 4 + 100, 5000 bytes, so it crosses into page 5
/// (two remote steps, neither page aligned).
const COPY_IN_AT: usize = 4 * PAGE + 100;
/// Bytes of the COPY into the segment.
const COPY_IN_LEN: usize = 5000;
/// The page the importer FILLs.
const FILL_PAGE: usize = 6;
/// The FILL pattern.
const FILL_PATTERN: u64 = 0xf111_f111;
/// The page the exporter munmaps (step 3).
const UNMAPPED_PAGE: u64 = 2;

/// How long either side waits for the other's next mailbox word.
const PEER_WAIT: Duration = Duration::from_secs(60);
/// How long the exporter waits for the importer's first word: the host starts the importer's
/// guest only after the exporter printed its ids, so this covers that boot too.
pub(crate) const IMPORTER_START_WAIT: Duration = Duration::from_secs(120);
/// How long the importer retries an attach refused with ENOENT.
const ATTACH_RETRY: Duration = Duration::from_secs(30);
/// Pause between two CPU reads of the exporter's own mailbox (the vCPU idles meanwhile, so the
/// host's threads that answer the fabric are not starved).
const LOCAL_POLL: Duration = Duration::from_millis(1);
/// Pause between two remote READ64s of the mailbox.
const REMOTE_POLL: Duration = Duration::from_millis(5);
/// The line the exporter prints its ids on; the host appends what follows it to the
/// importer's command line.
pub const IDS_LINE_PREFIX: &str = "remote-export: segid ";
/// Seconds after which the guest's watchdog dumps the kernel's task stacks and ends the VM:
/// after every bounded wait of either program could have run out (120 + 2 × 60 s), before
/// the host's boot timeout (300 s).
pub const WATCHDOG_SECS: u64 = 270;

/// The mailbox words, each set to 1 once by one side.
#[derive(Clone, Copy, Debug)]
enum Signal {
    /// Exporter: the segments are exported (set before the ids are printed).
    ExporterReady = 0,
    /// Importer: it read and wrote the data segment.
    ImporterWrote = 1,
    /// Exporter: data page [`UNMAPPED_PAGE`] is unmapped.
    PageUnmapped = 2,
    /// Importer: it saw the unmap.
    ImporterSawUnmap = 3,
    /// Exporter: the data segment is removed.
    DataRemoved = 4,
    /// Importer: done with the data and read-only segments (detached).
    ImporterDone = 5,
}

/// A word of a mailbox segment that one side sets to 1, once; each two-guest program has its
/// own list of them.
pub(crate) trait MailboxWord: Copy + std::fmt::Debug {
    /// Byte offset of the word in the mailbox.
    fn offset(self) -> u64;
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
    /// The read-only segment.
    pub readonly: u64,
}

/// The data segment's bytes: as exported, or once the importer's writes of step 2 landed.
fn data_image(after_importer: bool) -> Vec<u8> {
    let mut image: Vec<u8> = (0..DATA_PAGES * PAGE / 8)
        .flat_map(|i| word(DATA_SEED, i).to_ne_bytes())
        .collect();
    if after_importer {
        let mut put = |offset: u64, value: u64| {
            // CAST: offsets inside the 8-page segment.
            let at = offset as usize;
            image[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        };
        put(WRITE_AT, WRITE_VALUE);
        put(ADD_AT, word(DATA_SEED, ADD_AT as usize / 8) + ADDEND);
        put(CAS_AT, CAS_NEW);
        for w in 0..PAGE / 8 {
            put((FILL_PAGE * PAGE + w * 8) as u64, FILL_PATTERN);
        }
        for i in 0..COPY_IN_LEN {
            image[COPY_IN_AT + i] = copy_in_byte(i);
        }
    }
    image
}

/// Byte `i` of what the importer copies into the data segment.
fn copy_in_byte(i: usize) -> u8 {
    // CAST: a byte pattern.
    (i * 13 + 5) as u8
}

/// The first offset where `a` and `b` differ, if any.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

/// Describes a [`first_difference`] result.
fn difference(at: Option<usize>) -> String {
    at.map_or("matches".to_string(), |at| {
        format!("DIFFERS at byte {at:#x}")
    })
}

/// Driver counters and their values.
pub(crate) fn counters(names: &[&'static str]) -> Result<Vec<(&'static str, u64)>> {
    names
        .iter()
        .map(|&name| Ok((name, driver_counter(name)?)))
        .collect()
}

/// Waits until every counter is back at its `baseline` value (or the settle time passed) and
/// reports it as check `name`.
pub(crate) fn no_leaks(name: &str, baseline: &[(&'static str, u64)], c: &mut Checks) -> Result<()> {
    let mut now = Vec::new();
    for &(counter, value) in baseline {
        now.push((counter, settle(counter, |v| v == value)?));
    }
    let describe = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    c.check(
        name,
        now == baseline,
        format!("start: {}; end: {}", describe(baseline), describe(&now)),
    );
    Ok(())
}

/// The exporter's side (`rmnic-guest remote-export`).
pub fn export(c: &mut Checks) -> Result<()> {
    let baseline = counters(&["segments_live", "contexts_live"])?;
    if let Err(e) = export_steps(c) {
        stopped(c, "remote", "export", &e);
    }
    no_leaks("remote-export-no-leaks", &baseline, c)
}

/// Reports that the `role` side (`export`, `import`) of the programs `family` (`remote`,
/// `changes`, `fence`) could not go on: check `<family>-<role>-stopped`, one of its own, not in
/// the host's lists.
pub(crate) fn stopped(c: &mut Checks, family: &str, role: &str, error: &anyhow::Error) {
    c.check(
        &format!("{family}-{role}-stopped"),
        false,
        format!("{error:#}"),
    );
}

/// Polls the exporter's own mailbox word `signal` with the CPU until it is set, at most
/// `limit`; how long it took.
pub(crate) fn wait_local(
    mailbox: &Mapping,
    signal: impl MailboxWord,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    // CAST: an offset within the page.
    while mailbox.read_u64(signal.offset() as usize) == 0 {
        if start.elapsed() > limit {
            bail!(
                "the importer did not set {signal:?} within {} s",
                limit.as_secs()
            );
        }
        std::thread::sleep(LOCAL_POLL);
    }
    Ok(start.elapsed())
}

/// Sets the exporter's own mailbox word `signal`.
pub(crate) fn signal_local(mailbox: &Mapping, signal: impl MailboxWord) {
    // CAST: an offset within the page.
    mailbox.write_u64(signal.offset() as usize, 1);
}

fn export_steps(c: &mut Checks) -> Result<()> {
    const DATA_LEN: u64 = (DATA_PAGES * PAGE) as u64;
    let dev = Context::open()?;
    let mailbox = Mapping::new(PAGE, false)?;
    let data = Mapping::new(DATA_PAGES * PAGE, false)?;
    let readonly = Mapping::new(PAGE, false)?;
    fill_words(&data, DATA_SEED);
    fill_words(&readonly, READONLY_SEED);

    // ABI 4: a remote export needs the other guest's read bit, a writable one its write bit.
    let no_other_read = Reply::of_ioctl(dev.export_remote(readonly.addr(), P, false, 0o660));
    let no_other_write = Reply::of_ioctl(dev.export_remote(data.addr(), DATA_LEN, true, 0o604));
    c.check(
        "remote-export-needs-other-bits",
        no_other_read.errno() == Some(libc::EINVAL) && no_other_write.errno() == Some(libc::EINVAL),
        format!(
            "read-only remote export with mode 0660: {no_other_read}; writable with mode 0604: {no_other_write}"
        ),
    );

    let live = driver_counter("segments_live")?;
    let ids = Ids {
        mailbox: dev
            .export_remote(mailbox.addr(), P, true, MODE)
            .context("remote export of the mailbox")?,
        data: dev
            .export_remote(data.addr(), DATA_LEN, true, MODE)
            .context("remote export of the data segment")?,
        readonly: dev
            .export_remote(readonly.addr(), P, false, MODE)
            .context("remote export of the read-only segment")?,
    };
    let exported = driver_counter("segments_live")?;
    let distinct =
        ids.mailbox != ids.data && ids.data != ids.readonly && ids.mailbox != ids.readonly;
    c.check(
        "remote-export-segments",
        distinct && exported == live + 3,
        format!(
            "mailbox {}, data {} ({DATA_PAGES} pages), read-only {}; segments_live {live} -> {exported}",
            ids.mailbox, ids.data, ids.readonly
        ),
    );
    signal_local(&mailbox, Signal::ExporterReady);
    println!(
        "{IDS_LINE_PREFIX}--mailbox {} --data {} --readonly {}",
        ids.mailbox, ids.data, ids.readonly
    );

    let waited = wait_local(&mailbox, Signal::ImporterWrote, IMPORTER_START_WAIT)?;
    let landed = first_difference(data.bytes(), &data_image(true));
    c.check(
        "remote-export-importer-writes-landed",
        landed.is_none(),
        format!(
            "after {:.1} s, the data segment as the CPU reads it (WRITE64, FETCH_ADD, CAS, COPY into pages 4-5, FILL of page {FILL_PAGE}, nothing else): {}",
            waited.as_secs_f64(),
            difference(landed)
        ),
    );

    // The importer holds grants of every page (its COPY out): the munmap's invalidation is
    // forwarded, and munmap returns only once the importer acknowledged it (or was fenced).
    let before = dev.stats()?;
    let start = Instant::now();
    munmap(data.addr() + UNMAPPED_PAGE * P, PAGE)?;
    let took = start.elapsed();
    let after = dev.stats()?;
    c.check(
        "remote-export-munmap-invalidates",
        after.invalidations_sent > before.invalidations_sent,
        format!(
            "munmap of data page {UNMAPPED_PAGE} returned after {:.3} ms with {} device invalidation(s) sent",
            took.as_secs_f64() * 1e3,
            after.invalidations_sent - before.invalidations_sent
        ),
    );
    signal_local(&mailbox, Signal::PageUnmapped);

    wait_local(&mailbox, Signal::ImporterSawUnmap, PEER_WAIT)?;
    let live = driver_counter("segments_live")?;
    let removed = Reply::of_ioctl(dev.remove_segment(ids.data).map(|()| 0));
    let after = driver_counter("segments_live")?;
    c.check(
        "remote-export-remove",
        removed.status() == status::OK && after + 1 == live,
        format!("remove of the data segment: {removed}; segments_live {live} -> {after}"),
    );
    signal_local(&mailbox, Signal::DataRemoved);

    let done = wait_local(&mailbox, Signal::ImporterDone, PEER_WAIT);
    c.check(
        "remote-export-importer-done",
        done.is_ok(),
        match &done {
            Ok(took) => format!("after {:.1} s", took.as_secs_f64()),
            Err(e) => format!("{e:#}"),
        },
    );
    // The mailbox last: the importer waits for its revocation before its guest ends.
    dev.remove_segment(ids.readonly)
        .context("removing the read-only segment")?;
    dev.remove_segment(ids.mailbox)
        .context("removing the mailbox")?;
    Ok(())
}

/// The importer's side (`rmnic-guest remote-import`).
pub fn import(ids: Ids, c: &mut Checks) -> Result<()> {
    let baseline = counters(&["attachments_live", "contexts_live"])?;
    if let Err(e) = import_steps(ids, c) {
        stopped(c, "remote", "import", &e);
    }
    no_leaks("remote-import-no-leaks", &baseline, c)
}

/// A one-word command (READ64, WRITE64, the atomics) at segment address `addr`.
pub(crate) fn word_op(dev: &Context, op: u8, addr: u64, operand0: u64, operand1: u64) -> Reply {
    Reply::of_command(dev.word_op(op, Address::Segment(addr), operand0, operand1))
}

/// READ64 at segment address `addr`.
pub(crate) fn read64(dev: &Context, addr: u64) -> Reply {
    word_op(dev, opcode::READ64, addr, 0, 0)
}

/// A COPY or FILL result as a [`Reply`].
fn moved(result: Result<Result<(), rmnic_abi::CommandError>, rmnic_abi::Error>) -> Reply {
    Reply::of_command(result.map(|r| r.map(|()| 0)))
}

/// Attaches remote segment `segid`, retrying while the answer is ENOENT (the other guest's
/// segment not there yet, or the link still coming up: the driver cannot tell these apart) for
/// at most [`ATTACH_RETRY`].
pub(crate) fn attach_retrying(
    dev: &Context,
    segid: u64,
    writable: bool,
) -> Result<(Attachment, u32)> {
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match dev.attach_remote(segid, writable) {
            Ok(att) => return Ok((att, tries)),
            Err(e) if e.errno() == Some(libc::ENOENT) && start.elapsed() < ATTACH_RETRY => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!(
                "remote attach of segment {segid}: {} at try {tries}, after {:.1} s",
                Reply::of_attach(Err(e)),
                start.elapsed().as_secs_f64()
            ),
        }
    }
}

/// What one remote poll of the mailbox made of a reply.
pub(crate) enum Poll {
    /// What was waited for.
    Done,
    /// Not yet.
    Again,
}

/// READ64s segment address `addr` every [`REMOTE_POLL`] until `judge` says done, at most
/// `limit`; a reply `judge` refuses stops the wait. How long it took.
pub(crate) fn poll_remote(
    dev: &Context,
    addr: u64,
    what: &str,
    limit: Duration,
    judge: impl Fn(Reply) -> Result<Poll>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let reply = read64(dev, addr);
        match judge(reply).with_context(|| format!("waiting for {what}: READ64 {reply}"))? {
            Poll::Done => return Ok(start.elapsed()),
            Poll::Again if start.elapsed() > limit => bail!(
                "waiting for {what}: not within {} s; last READ64 {reply}",
                limit.as_secs()
            ),
            Poll::Again => std::thread::sleep(REMOTE_POLL),
        }
    }
}

/// Waits for the exporter to set mailbox word `signal`, at most `limit`.
pub(crate) fn wait_remote(
    dev: &Context,
    mailbox: &Attachment,
    signal: impl MailboxWord,
    limit: Duration,
) -> Result<Duration> {
    poll_remote(
        dev,
        mailbox.address(signal.offset()),
        &format!("{signal:?}"),
        limit,
        |reply| match reply {
            Reply::Done(0, _) => Ok(Poll::Again),
            Reply::Done(..) => Ok(Poll::Done),
            other => bail!("the mailbox read failed: {other}"),
        },
    )
}

/// Sets mailbox word `signal` with a remote WRITE64.
pub(crate) fn signal_remote(
    dev: &Context,
    mailbox: &Attachment,
    signal: impl MailboxWord,
) -> Result<()> {
    let reply = word_op(dev, opcode::WRITE64, mailbox.address(signal.offset()), 1, 0);
    if reply.status() != status::OK {
        bail!("setting {signal:?} in the mailbox: WRITE64 {reply}");
    }
    Ok(())
}

fn import_steps(ids: Ids, c: &mut Checks) -> Result<()> {
    const DATA_LEN: u64 = (DATA_PAGES * PAGE) as u64;
    let dev = Context::open()?;
    let live = driver_counter("attachments_live")?;
    let (mailbox, tries) = attach_retrying(&dev, ids.mailbox, true)?;
    let data = dev
        .attach_remote(ids.data, true)
        .context("remote attach of the data segment")?;
    let readonly = dev
        .attach_remote(ids.readonly, false)
        .context("remote attach of the read-only segment")?;
    let attached = driver_counter("attachments_live")?;
    let ready = wait_remote(&dev, &mailbox, Signal::ExporterReady, PEER_WAIT)?;
    let mut slots = vec![mailbox.slot, data.slot, readonly.slot];
    slots.sort_unstable();
    slots.dedup();
    c.check(
        "remote-import-attach",
        mailbox.length == P
            && data.length == DATA_LEN
            && readonly.length == P
            && slots.len() == 3
            && attached == live + 3,
        format!(
            "mailbox {mailbox:?} (after {tries} tries), data {data:?}, read-only {readonly:?}; attachments_live {live} -> {attached}; the exporter's ready word read after {:.1} ms",
            ready.as_secs_f64() * 1e3
        ),
    );

    // An id the exporter does not export (it exports exactly the three).
    let unknown = (1..)
        .find(|id| ![ids.mailbox, ids.data, ids.readonly].contains(id))
        .unwrap_or(0);
    let refused = Reply::of_attach(dev.attach_remote(unknown, false));
    c.check(
        "remote-import-unknown-segid-enoent",
        refused.errno() == Some(libc::ENOENT),
        format!("remote attach of segment {unknown}: {refused}"),
    );

    read_and_write(&dev, &data, c)?;
    read_only(&dev, &ids, &readonly, c)?;
    signal_remote(&dev, &mailbox, Signal::ImporterWrote)?;

    wait_remote(&dev, &mailbox, Signal::PageUnmapped, PEER_WAIT)?;
    let at = data.address(UNMAPPED_PAGE * P + 8);
    let gone = read64(&dev, at);
    let page_before = read64(&dev, data.address((UNMAPPED_PAGE - 1) * P + 8));
    let page_after = read64(&dev, data.address((UNMAPPED_PAGE + 1) * P + 8));
    let word_at = |offset: u64| Reply::Done(word(DATA_SEED, offset as usize / 8), 0);
    c.check(
        "remote-import-munmap-fault",
        gone == Reply::Status {
            status: status::FAULT_UNRESOLVED,
            fault_va: at,
        } && page_before == word_at((UNMAPPED_PAGE - 1) * P + 8)
            && page_after == word_at((UNMAPPED_PAGE + 1) * P + 8),
        format!(
            "after the exporter's munmap of page {UNMAPPED_PAGE}: READ64 there {gone} (want fault_va {at:#x}); pages {} and {}: {page_before}, {page_after}",
            UNMAPPED_PAGE - 1,
            UNMAPPED_PAGE + 1
        ),
    );
    signal_remote(&dev, &mailbox, Signal::ImporterSawUnmap)?;

    wait_remote(&dev, &mailbox, Signal::DataRemoved, PEER_WAIT)?;
    let invalid = read64(&dev, data.address(P));
    c.check(
        "remote-import-removed-invalid",
        invalid.status() == status::SEGMENT_INVALID,
        format!("READ64 of the removed data segment: {invalid}"),
    );
    let again = Reply::of_attach(dev.attach_remote(ids.data, false));
    c.check(
        "remote-import-attach-removed-enoent",
        again.errno() == Some(libc::ENOENT),
        format!("remote attach of the removed segment {}: {again}", ids.data),
    );
    let mut detached = vec![
        ("data", Reply::of_ioctl(dev.detach(data.slot).map(|()| 0))),
        (
            "read-only",
            Reply::of_ioctl(dev.detach(readonly.slot).map(|()| 0)),
        ),
    ];
    signal_remote(&dev, &mailbox, Signal::ImporterDone)?;

    // The exporter removes the mailbox last, once it saw ImporterDone: from then on it has no
    // remote export open, and this guest may end (module docs, step 7). Its host gone (the
    // link broke: REMOTE_UNREACHABLE) means the same: it ends only after the removals.
    let last = std::cell::Cell::new(Reply::Done(0, 0));
    let finished = poll_remote(
        &dev,
        mailbox.address(0),
        "the mailbox's removal",
        PEER_WAIT,
        |reply| {
            last.set(reply);
            match reply.status() {
                status::OK => Ok(Poll::Again),
                status::SEGMENT_INVALID | status::REMOTE_UNREACHABLE => Ok(Poll::Done),
                _ => bail!("the mailbox read failed"),
            }
        },
    );
    c.check(
        "remote-import-exporter-finished",
        finished.is_ok(),
        match &finished {
            Ok(took) => format!(
                "the mailbox's READ64 completed {} {:.1} ms after ImporterDone",
                last.get(),
                took.as_secs_f64() * 1e3
            ),
            Err(e) => format!("{e:#}"),
        },
    );
    detached.push((
        "mailbox",
        Reply::of_ioctl(dev.detach(mailbox.slot).map(|()| 0)),
    ));
    let after = driver_counter("attachments_live")?;
    c.check(
        "remote-import-detach",
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

/// Step 2 on the data segment: READ64 and COPY out see the exporter's words; WRITE64,
/// FETCH_ADD, CAS, COPY in and FILL land (read back through the device; the exporter checks
/// them with its CPU).
fn read_and_write(dev: &Context, data: &Attachment, c: &mut Checks) -> Result<()> {
    let image = data_image(false);
    let offsets = [
        0,
        3 * P + 8,
        (DATA_PAGES as u64) * P - 8,
        UNMAPPED_PAGE * P + 8,
    ];
    let reads: Vec<(u64, Reply)> = offsets
        .iter()
        .map(|&offset| (offset, read64(dev, data.address(offset))))
        .collect();
    let right = reads
        .iter()
        .all(|&(offset, r)| r == Reply::Done(word(DATA_SEED, offset as usize / 8), 0));
    c.check(
        "remote-import-read64",
        right,
        reads
            .iter()
            .map(|(offset, r)| format!("READ64 at {offset:#x}: {r}"))
            .collect::<Vec<_>>()
            .join("; "),
    );

    // Every page, so the importer holds a grant of the page the exporter will unmap.
    let mut local = Mapping::new(DATA_PAGES * PAGE, false)?;
    local.bytes_mut().fill(0xee);
    let copy_out = moved(dev.copy_between(
        Address::Local(local.addr()),
        Address::Segment(data.address(0)),
        data.length,
    ));
    let same = first_difference(local.bytes(), &image);
    c.check(
        "remote-import-copy-out",
        copy_out.status() == status::OK && same.is_none(),
        format!(
            "COPY of the {DATA_PAGES} pages out of the segment: {copy_out}, data {}",
            difference(same)
        ),
    );

    let write = word_op(dev, opcode::WRITE64, data.address(WRITE_AT), WRITE_VALUE, 0);
    let back = read64(dev, data.address(WRITE_AT));
    c.check(
        "remote-import-write64",
        write.status() == status::OK && back == Reply::Done(WRITE_VALUE, 0),
        format!("WRITE64 {WRITE_VALUE:#x}: {write}; READ64 back {back}"),
    );

    let old = word(DATA_SEED, ADD_AT as usize / 8);
    let add = word_op(dev, opcode::FETCH_ADD, data.address(ADD_AT), ADDEND, 0);
    let back = read64(dev, data.address(ADD_AT));
    c.check(
        "remote-import-fetch-add",
        add == Reply::Done(old, 0) && back == Reply::Done(old + ADDEND, 0),
        format!("FETCH_ADD {ADDEND} on {old:#x}: {add}; READ64 back {back}"),
    );

    let expect = word(DATA_SEED, CAS_AT as usize / 8);
    let hit = word_op(dev, opcode::CAS, data.address(CAS_AT), expect, CAS_NEW);
    let miss = word_op(dev, opcode::CAS, data.address(CAS_AT), expect, 0xbad);
    let back = read64(dev, data.address(CAS_AT));
    c.check(
        "remote-import-cas",
        hit == Reply::Done(expect, 0)
            && miss == Reply::Done(CAS_NEW, 0)
            && back == Reply::Done(CAS_NEW, 0),
        format!(
            "CAS {expect:#x}->{CAS_NEW:#x}: {hit}; the same CAS again: {miss}; READ64 back {back}"
        ),
    );

    let mut src = Mapping::new(2 * PAGE, false)?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = copy_in_byte(i);
    }
    let copy_in = moved(dev.copy_between(
        Address::Segment(data.address(COPY_IN_AT as u64)),
        Address::Local(src.addr()),
        COPY_IN_LEN as u64,
    ));
    let mut check = Mapping::new(2 * PAGE, false)?;
    check.bytes_mut().fill(0);
    let copy_back = moved(dev.copy_between(
        Address::Local(check.addr()),
        Address::Segment(data.address(COPY_IN_AT as u64)),
        COPY_IN_LEN as u64,
    ));
    let same = first_difference(&check.bytes()[..COPY_IN_LEN], &src.bytes()[..COPY_IN_LEN]);
    c.check(
        "remote-import-copy-in",
        copy_in.status() == status::OK && copy_back.status() == status::OK && same.is_none(),
        format!(
            "COPY of {COPY_IN_LEN} bytes into pages 4-5 at {COPY_IN_AT:#x}: {copy_in}; COPY back out: {copy_back}, data {}",
            difference(same)
        ),
    );

    let fill = moved(dev.fill_at(
        Address::Segment(data.address((FILL_PAGE * PAGE) as u64)),
        P,
        FILL_PATTERN,
    ));
    let first = read64(dev, data.address((FILL_PAGE * PAGE) as u64));
    let last = read64(dev, data.address(((FILL_PAGE + 1) * PAGE - 8) as u64));
    c.check(
        "remote-import-fill",
        fill.status() == status::OK
            && first == Reply::Done(FILL_PATTERN, 0)
            && last == Reply::Done(FILL_PATTERN, 0),
        format!("FILL of page {FILL_PAGE}: {fill}; its first and last words {first}, {last}"),
    );
    Ok(())
}

/// The read-only segment: a writable attach is refused (ENOENT, module docs), writes through
/// the read-only attachment complete PERMISSION and change nothing.
fn read_only(dev: &Context, ids: &Ids, readonly: &Attachment, c: &mut Checks) -> Result<()> {
    let writable = dev.attach_remote(ids.readonly, true);
    if let Ok(att) = &writable {
        // Not expected; give the slot back so the slot and leak accounting stay right.
        dev.detach(att.slot)
            .context("detaching an unexpected writable attachment")?;
    }
    let writable = Reply::of_attach(writable);
    c.check(
        "remote-import-readonly-attach-writable-refused",
        writable.errno() == Some(libc::ENOENT),
        format!("writable remote attach of the read-only segment: {writable}"),
    );
    let write = word_op(dev, opcode::WRITE64, readonly.address(8), 0xbad, 0);
    let add = word_op(dev, opcode::FETCH_ADD, readonly.address(16), 1, 0);
    let first = read64(dev, readonly.address(8));
    let second = read64(dev, readonly.address(16));
    c.check(
        "remote-import-readonly-write-permission",
        write.status() == status::PERMISSION
            && add.status() == status::PERMISSION
            && first == Reply::Done(word(READONLY_SEED, 1), 0)
            && second == Reply::Done(word(READONLY_SEED, 2), 0),
        format!(
            "through the read-only attachment: WRITE64 {write}, FETCH_ADD {add}; READ64 of both words after: {first}, {second}"
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_image_holds_every_importer_write_and_nothing_else() {
        let before = data_image(false);
        let after = data_image(true);
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        let expected = |i: usize| {
            (WRITE_AT as usize..WRITE_AT as usize + 8).contains(&i)
                || (ADD_AT as usize..ADD_AT as usize + 8).contains(&i)
                || (CAS_AT as usize..CAS_AT as usize + 8).contains(&i)
                || (COPY_IN_AT..COPY_IN_AT + COPY_IN_LEN).contains(&i)
                || (FILL_PAGE * PAGE..(FILL_PAGE + 1) * PAGE).contains(&i)
        };
        assert!(changed.iter().all(|&i| expected(i)));
        // The writes stay clear of the page the exporter unmaps.
        let unmapped = UNMAPPED_PAGE as usize * PAGE..(UNMAPPED_PAGE as usize + 1) * PAGE;
        assert!(!changed.iter().any(|i| unmapped.contains(i)));
        assert_eq!(first_difference(&before, &before), None);
        assert_eq!(first_difference(&before, &after), changed.first().copied());
        assert_eq!(first_difference(&before, &before[..8]), Some(8));
    }

    #[test]
    fn mailbox_words_are_distinct_and_in_the_page() {
        let signals = [
            Signal::ExporterReady,
            Signal::ImporterWrote,
            Signal::PageUnmapped,
            Signal::ImporterSawUnmap,
            Signal::DataRemoved,
            Signal::ImporterDone,
        ];
        for (i, s) in signals.iter().enumerate() {
            assert_eq!(s.offset(), i as u64 * 8);
            assert!(s.offset() + 8 <= P);
        }
    }
}
