//! `rmnic-guest segments`: XPMEM-style segments within one guest. This process exports ranges
//! of its memory (or an [`agent`] does), other processes attach them through contexts of their
//! own and name (slot, offset) in device commands; the checks cover the ABI's error paths, the
//! permission rules, and the exporter's page-table changes (munmap, mprotect, fork/COW, exit)
//! as importers see them.
//!
//! Each check prints `CHECK segment-<name> ok|FAILED <detail>`; a scenario that cannot go on
//! prints `CHECK segment-<scenario>-scenario FAILED <why>` and the next one runs.

mod agent;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rmnic_abi::{
    command, opcode, segment_address, status, Address, Attachment, Command, Context,
    MAX_ATTACHMENTS,
};
use rmnic_guest::Mapping;

use self::agent::{fnv1a, Creds};
pub use self::agent::{Agent, Reply};
use crate::scenarios::{driver_counter, mmap, munmap, poke};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
/// A page, as a segment offset or length.
const P: u64 = PAGE as u64;

/// Driver counters that must be back at their start values once everything is closed.
const LIVE_COUNTERS: [&str; 5] = [
    "segments_live",
    "attachments_live",
    "contexts_live",
    "notifiers_live",
    "dma_buffers_live",
];

/// How long counters the driver updates as processes go away may take to settle.
const SETTLE: Duration = Duration::from_secs(5);

/// An unprivileged user and group (the guest has no /etc/passwd; ids are enough).
const NOBODY: Creds = Creds {
    uid: 1000,
    gid: 1000,
};

type Scenario = fn(&mut Checks) -> Result<()>;

/// The scenarios, in the order they run.
const SCENARIOS: [(&str, Scenario); 11] = [
    ("access", access),
    ("read-only", read_only),
    ("credentials", credentials),
    ("limits", limits),
    ("munmap", exporter_munmap),
    ("mprotect", exporter_mprotect),
    ("fork", exporter_fork),
    ("remove", remove),
    ("exporter-exit", exporter_exit),
    ("exporter-close", exporter_close),
    ("importer-exit", importer_exit),
];

/// Runs every scenario (or those named in `only`), then the leak check.
pub fn run(only: &[String], c: &mut Checks) -> Result<()> {
    if let Some(unknown) = only
        .iter()
        .find(|name| !SCENARIOS.iter().any(|(known, _)| known == name))
    {
        let known: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        anyhow::bail!(
            "no segment scenario {unknown:?}; scenarios: {}",
            known.join(", ")
        );
    }
    let baseline = live_counters()?;
    for (name, scenario) in SCENARIOS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        println!("rmnic-guest: segments: {name}");
        if let Err(e) = scenario(c) {
            c.check(
                &format!("segment-{name}-scenario"),
                false,
                format!("stopped: {e:#}"),
            );
        }
    }
    leaks(&baseline, c)
}

/// The word at index `i` of a buffer filled by [`fill_words`] with `seed`.
pub fn word(seed: u64, i: usize) -> u64 {
    // CAST: buffers are far smaller than 2^32 words.
    seed << 32 | i as u64
}

/// Fills `m` with words naming `seed` and their index.
pub fn fill_words(m: &Mapping, seed: u64) {
    for i in 0..m.bytes().len() / 8 {
        m.write_u64(i * 8, word(seed, i));
    }
}

/// `pages` pages filled by [`fill_words`] with `seed`, left out of forks (MADV_DONTFORK):
/// spawning an agent then leaves them alone instead of making them copy-on-write, so only the
/// fork scenario depends on COW.
fn exporter_pages(pages: usize, seed: u64) -> Result<Mapping> {
    let m = Mapping::new(pages * PAGE, false)?;
    m.advise(libc::MADV_DONTFORK)?;
    fill_words(&m, seed);
    Ok(m)
}

/// The attachment `reply` reports, or why the scenario cannot go on.
fn attached(reply: Reply, what: &str) -> Result<Attachment> {
    reply
        .attachment()
        .with_context(|| format!("attach {what}: {reply}"))
}

/// Exports `m` whole through `dev`, or says why the scenario cannot go on.
fn export(dev: &Context, m: &Mapping, writable: bool, mode: u32) -> Result<u64> {
    let len = m.bytes().len() as u64;
    dev.export(m.addr(), len, writable, mode)
        .with_context(|| format!("export {len} bytes at {:#x} mode {mode:o}", m.addr()))
}

/// Polls `name` until `done` holds or [`SETTLE`] passes; the last value read.
pub fn settle(name: &str, done: impl Fn(u64) -> bool) -> Result<u64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = driver_counter(name)?;
        if done(v) || Instant::now() > deadline {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn live_counters() -> Result<Vec<(&'static str, u64)>> {
    LIVE_COUNTERS
        .iter()
        .map(|&name| Ok((name, driver_counter(name)?)))
        .collect()
}

/// Every access kind through a writable attachment: COPY out of the segment, READ64, WRITE64,
/// FILL, COPY into the segment, FETCH_ADD, CAS, each checked against the exporter's memory.
fn access(c: &mut Checks) -> Result<()> {
    const LEN: u64 = 4 * P;
    let dev = Context::open()?;
    let seg = exporter_pages(4, 0xa0)?;
    // The importer's own buffers (inherited at the fork; private to it afterwards).
    let dst = Mapping::new(4 * PAGE, false)?;
    let mut src = Mapping::new(2 * PAGE, false)?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = (i * 13 + 5) as u8;
    }
    let (segments0, attachments0, faults0) = (
        driver_counter("segments_live")?,
        driver_counter("attachments_live")?,
        driver_counter("segment_faults")?,
    );
    let segid = export(&dev, &seg, true, 0o600)?;
    let mut imp = Agent::spawn()?;
    let reply = imp.attach(segid, true)?;
    let (segments1, attachments1) = (
        driver_counter("segments_live")?,
        driver_counter("attachments_live")?,
    );
    let att = reply.attachment();
    c.check(
        "segment-export-attach",
        segid != 0
            && att.is_some_and(|a| a.slot < MAX_ATTACHMENTS && a.length == LEN)
            && segments1 == segments0 + 1
            && attachments1 == attachments0 + 1,
        format!(
            "segid {segid:#x}, attach {reply}; segments_live {segments0} -> {segments1}, attachments_live {attachments0} -> {attachments1}"
        ),
    );
    let att = attached(reply, "writable, mode 0600, as the exporter's user")?;

    let copy_out = imp.run(Command {
        length: LEN,
        ..command(
            opcode::COPY,
            Address::Local(dst.addr()),
            Address::Segment(att.address(0)),
        )
    })?;
    let hash = imp.hash(dst.addr(), LEN)?;
    let faults1 = driver_counter("segment_faults")?;
    c.check(
        "segment-importer-copy-out",
        copy_out.status() == status::OK && hash == fnv1a(seg.bytes()) && faults1 > faults0,
        format!(
            "COPY of 4 pages out of the segment: {copy_out}, data {}; segment_faults {faults0} -> {faults1}",
            if hash == fnv1a(seg.bytes()) { "matches" } else { "DIFFERS" }
        ),
    );

    let read = imp.read64_seg(att.address(3 * P + 8))?;
    c.check(
        "segment-importer-read64",
        read == Reply::Done(word(0xa0, 3 * PAGE / 8 + 1), 0),
        format!("READ64 at offset 3 pages + 8: {read}"),
    );

    let write = imp.write64_seg(att.address(8), 0x5e6_0001)?;
    c.check(
        "segment-importer-write64",
        write.status() == status::OK && seg.read_u64(8) == 0x5e6_0001,
        format!(
            "WRITE64: {write}; the exporter reads {:#x}",
            seg.read_u64(8)
        ),
    );

    let fill = imp.run(Command {
        length: P,
        operand0: 0xf111_f111,
        ..command(
            opcode::FILL,
            Address::Segment(att.address(P)),
            Address::Local(0),
        )
    })?;
    let filled = (0..PAGE / 8).all(|w| seg.read_u64(PAGE + w * 8) == 0xf111_f111);
    c.check(
        "segment-importer-fill",
        fill.status() == status::OK && filled && seg.read_u64(2 * PAGE) == word(0xa0, 2 * PAGE / 8),
        format!("FILL of page 1: {fill}, page filled {filled}, page 2 untouched"),
    );

    // 5000 bytes from offset 100 of page 2: crosses into page 3.
    let at = 2 * PAGE + 100;
    let (before, after) = (seg.bytes()[at - 1], seg.bytes()[at + 5000]);
    let copy_in = imp.run(Command {
        length: 5000,
        ..command(
            opcode::COPY,
            Address::Segment(att.address(at as u64)),
            Address::Local(src.addr()),
        )
    })?;
    let landed = seg.bytes()[at..at + 5000] == src.bytes()[..5000];
    let edges = seg.bytes()[at - 1] == before && seg.bytes()[at + 5000] == after;
    c.check(
        "segment-importer-copy-in",
        copy_in.status() == status::OK && landed && edges,
        format!("COPY of 5000 bytes into pages 2-3: {copy_in}, data landed {landed}, edges kept {edges}"),
    );

    seg.write_u64(16, 40);
    let add = imp.run(Command {
        operand0: 2,
        ..command(
            opcode::FETCH_ADD,
            Address::Segment(att.address(16)),
            Address::Local(0),
        )
    })?;
    c.check(
        "segment-importer-fetch-add",
        add == Reply::Done(40, 0) && seg.read_u64(16) == 42,
        format!(
            "FETCH_ADD 2 on 40: {add}, the exporter reads {}",
            seg.read_u64(16)
        ),
    );

    let cas = |imp: &mut Agent, expect: u64, new: u64| {
        imp.run(Command {
            operand0: expect,
            operand1: new,
            ..command(
                opcode::CAS,
                Address::Segment(att.address(16)),
                Address::Local(0),
            )
        })
    };
    let hit = cas(&mut imp, 42, 7)?;
    let after_hit = seg.read_u64(16);
    let miss = cas(&mut imp, 42, 9)?;
    c.check(
        "segment-importer-cas",
        hit == Reply::Done(42, 0)
            && after_hit == 7
            && miss == Reply::Done(7, 0)
            && seg.read_u64(16) == 7,
        format!(
            "CAS 42->7: {hit} (word {after_hit}); CAS 42->9: {miss} (word {})",
            seg.read_u64(16)
        ),
    );
    Ok(())
}

/// A read-only segment, and a read-only attachment of a writable one: writes complete
/// PERMISSION and change nothing; reads work.
fn read_only(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let ro = exporter_pages(2, 0xb0)?;
    let rw = exporter_pages(1, 0xb1)?;
    let dst = Mapping::new(2 * PAGE, false)?;
    let ro_segid = export(&dev, &ro, false, 0o666)?;
    let rw_segid = export(&dev, &rw, true, 0o600)?;
    let mut imp = Agent::spawn()?;

    let writable = imp.attach(ro_segid, true)?;
    c.check(
        "segment-readonly-attach-writable-eperm",
        writable.errno() == Some(libc::EPERM),
        format!("writable attach of a read-only segment: {writable}"),
    );

    let att = attached(imp.attach(ro_segid, false)?, "read-only segment")?;
    let write = imp.write64_seg(att.address(8), 0xbad)?;
    let add = imp.run(Command {
        operand0: 1,
        ..command(
            opcode::FETCH_ADD,
            Address::Segment(att.address(16)),
            Address::Local(0),
        )
    })?;
    let rw_att = attached(imp.attach(rw_segid, false)?, "writable segment, read-only")?;
    let rw_write = imp.write64_seg(rw_att.address(0), 0xbad)?;
    let unchanged = ro.read_u64(8) == word(0xb0, 1)
        && ro.read_u64(16) == word(0xb0, 2)
        && rw.read_u64(0) == word(0xb1, 0);
    c.check(
        "segment-readonly-write-permission",
        write.status() == status::PERMISSION
            && add.status() == status::PERMISSION
            && rw_write.status() == status::PERMISSION
            && unchanged,
        format!(
            "read-only segment: WRITE64 {write}, FETCH_ADD {add}; read-only attachment of a writable segment: WRITE64 {rw_write}; exporter's data unchanged {unchanged}"
        ),
    );

    let read = imp.read64_seg(att.address(P + 24))?;
    let copy = imp.run(Command {
        length: 2 * P,
        ..command(
            opcode::COPY,
            Address::Local(dst.addr()),
            Address::Segment(att.address(0)),
        )
    })?;
    let hash = imp.hash(dst.addr(), 2 * P)?;
    c.check(
        "segment-readonly-read-works",
        read == Reply::Done(word(0xb0, PAGE / 8 + 3), 0)
            && copy.status() == status::OK
            && hash == fnv1a(ro.bytes()),
        format!(
            "READ64 {read}; COPY out {copy}, data {}",
            if hash == fnv1a(ro.bytes()) {
                "matches"
            } else {
                "DIFFERS"
            }
        ),
    );
    Ok(())
}

/// The mode's bits against the importer's credentials: owner bits for the exporter's euid,
/// else group bits for its egid, else the other bits.
fn credentials(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let pages: Vec<Mapping> = (0..4)
        .map(|i| exporter_pages(1, 0xc0 + i))
        .collect::<Result<_>>()?;
    let owner_only = export(&dev, &pages[0], true, 0o600)?;
    let other_read = export(&dev, &pages[1], true, 0o604)?;
    let group_rw = export(&dev, &pages[2], true, 0o460)?;
    let other_rw_not_group = export(&dev, &pages[3], true, 0o406)?;

    let mut nobody = Agent::spawn_as(NOBODY)?;
    let read = nobody.attach(owner_only, false)?;
    let write = nobody.attach(owner_only, true)?;
    c.check(
        "segment-credentials-owner-only",
        read.errno() == Some(libc::EACCES) && write.errno() == Some(libc::EACCES),
        format!("mode 0600, uid/gid 1000: read attach {read}, writable attach {write}"),
    );

    let read = nobody.attach(other_read, false)?;
    let value = match read.attachment() {
        Some(att) => nobody.read64_seg(att.address(8))?,
        None => read,
    };
    let write = nobody.attach(other_read, true)?;
    c.check(
        "segment-credentials-other-read",
        read.attachment().is_some()
            && value == Reply::Done(word(0xc1, 1), 0)
            && write.errno() == Some(libc::EACCES),
        format!(
            "mode 0604, uid/gid 1000: read attach {read}, READ64 {value}; writable attach {write}"
        ),
    );

    // uid 1000 in the exporter's group (gid 0): the group bits apply, and only they.
    let mut member = Agent::spawn_as(Creds { uid: 1000, gid: 0 })?;
    let group = member.attach(group_rw, true)?;
    let wrote = match group.attachment() {
        Some(att) => member.write64_seg(att.address(0), 0x960)?,
        None => group,
    };
    let not_other = member.attach(other_rw_not_group, false)?;
    c.check(
        "segment-credentials-group-bits",
        wrote.status() == status::OK
            && pages[2].read_u64(0) == 0x960
            && not_other.errno() == Some(libc::EACCES),
        format!(
            "uid 1000 gid 0: mode 0460 writable attach {group}, WRITE64 {wrote} (exporter reads {:#x}); mode 0406 read attach {not_other}",
            pages[2].read_u64(0)
        ),
    );
    Ok(())
}

/// Bounds, unattached slots, unknown segments, malformed exports, empty slots, all slots in
/// use, a full export table.
fn limits(c: &mut Checks) -> Result<()> {
    const LEN: u64 = 2 * P;
    let dev = Context::open()?;
    let seg = exporter_pages(2, 0xd0)?;
    let dst = Mapping::new(PAGE, false)?;
    let segid = export(&dev, &seg, true, 0o600)?;
    let mut imp = Agent::spawn()?;
    let att = attached(imp.attach(segid, true)?, "writable")?;

    let last = imp.read64_seg(att.address(LEN - 8))?;
    let past = imp.read64_seg(att.address(LEN))?;
    let straddle = imp.run(Command {
        length: 16,
        ..command(
            opcode::COPY,
            Address::Local(dst.addr()),
            Address::Segment(att.address(LEN - 8)),
        )
    })?;
    let fill = imp.run(Command {
        length: 2 * P,
        operand0: 0xbad,
        ..command(
            opcode::FILL,
            Address::Segment(att.address(P)),
            Address::Local(0),
        )
    })?;
    c.check(
        "segment-bounds",
        last == Reply::Done(word(0xd0, PAGE * 2 / 8 - 1), 0)
            && past.status() == status::SEGMENT_BOUNDS
            && straddle.status() == status::SEGMENT_BOUNDS
            && fill.status() == status::SEGMENT_BOUNDS
            && seg.read_u64(PAGE) == word(0xd0, PAGE / 8),
        format!(
            "2-page segment: READ64 of the last word {last}; READ64 at the end {past}; COPY of 16 bytes from 8 before the end {straddle}; FILL of 2 pages from page 1 {fill}"
        ),
    );

    let empty = (att.slot + 1) % MAX_ATTACHMENTS;
    let unattached = imp.read64_seg(segment_address(empty, 0))?;
    c.check(
        "segment-unattached-slot-invalid",
        unattached.status() == status::SEGMENT_INVALID,
        format!("READ64 through empty slot {empty}: {unattached}"),
    );

    let zero = imp.attach(0, false)?;
    let unknown = imp.attach(u64::MAX, false)?;
    c.check(
        "segment-attach-unknown-enoent",
        zero.errno() == Some(libc::ENOENT) && unknown.errno() == Some(libc::ENOENT),
        format!("attach segid 0: {zero}; segid {:#x}: {unknown}", u64::MAX),
    );

    let cases = [
        ("va not page aligned", seg.addr() + 8, P, 0o600),
        ("length not page aligned", seg.addr(), 100, 0o600),
        ("length 0", seg.addr(), 0, 0o600),
        ("range wraps", u64::MAX - P + 1, 2 * P, 0o600),
        ("beyond user space", 0xffff_8000_0000_0000, P, 0o600),
        ("mode has execute bits", seg.addr(), P, 0o700),
        ("mode has set-id bits", seg.addr(), P, 0o4600),
    ];
    let mut wrong = Vec::new();
    for (what, va, len, mode) in cases {
        let r = Reply::of_ioctl(dev.export(va, len, true, mode));
        if r.errno() != Some(libc::EINVAL) {
            wrong.push(format!("{what}: {r}"));
        }
    }
    c.check(
        "segment-export-invalid",
        wrong.is_empty(),
        if wrong.is_empty() {
            format!("{} malformed exports refused with EINVAL", cases.len())
        } else {
            wrong.join("; ")
        },
    );

    let detach_empty = imp.detach(empty)?;
    let detach_beyond = imp.detach(MAX_ATTACHMENTS)?;
    c.check(
        "segment-detach-errors",
        detach_empty.errno() == Some(libc::ENOENT) && detach_beyond.errno() == Some(libc::EINVAL),
        format!(
            "detach empty slot {empty}: {detach_empty}; slot {MAX_ATTACHMENTS}: {detach_beyond}"
        ),
    );

    slots_full(&dev, c)?;
    export_table_full(&dev, c)
}

/// Attaching more segments than a context has slots: ENOSPC, and a detached slot is reused.
fn slots_full(dev: &Context, c: &mut Checks) -> Result<()> {
    let n = MAX_ATTACHMENTS as usize + 1;
    let pages = exporter_pages(n, 0xd1)?;
    let segids: Vec<u64> = (0..n)
        .map(|i| {
            let va = pages.addr() + (i * PAGE) as u64;
            dev.export(va, P, false, 0o600)
                .with_context(|| format!("export of page {i}"))
        })
        .collect::<Result<_>>()?;
    let mut imp = Agent::spawn()?;
    let mut slots = Vec::new();
    for &segid in &segids[..n - 1] {
        slots.push(attached(imp.attach(segid, false)?, "while filling the slots")?.slot);
    }
    let over = imp.attach(segids[n - 1], false)?;
    let mut distinct = slots.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let freed = slots[3];
    let detach = imp.detach(freed)?;
    let again = imp.attach(segids[n - 1], false)?;
    c.check(
        "segment-slots-full",
        distinct.len() == n - 1
            && distinct.iter().all(|&s| s < MAX_ATTACHMENTS)
            && over.errno() == Some(libc::ENOSPC)
            && detach.status() == status::OK
            && again.attachment().is_some_and(|a| a.slot == freed),
        format!(
            "slots {slots:?}; attach number {n}: {over}; after detaching slot {freed} ({detach}): {again}"
        ),
    );
    for segid in segids {
        dev.remove_segment(segid)
            .context("removing the slot test's segments")?;
    }
    Ok(())
}

/// Exporting until the device's table (64 entries) is full: ENOSPC after exactly as many as
/// were free; removing them frees the entries.
fn export_table_full(dev: &Context, c: &mut Checks) -> Result<()> {
    const TABLE: u64 = 64;
    let live = driver_counter("segments_live")?;
    let pages = exporter_pages(TABLE as usize + 1, 0xd2)?;
    let mut segids = Vec::new();
    let mut refusal = None;
    for i in 0..=TABLE {
        match dev.export(pages.addr() + i * P, P, false, 0o600) {
            Ok(segid) => segids.push(segid),
            Err(e) => {
                refusal = Some(Reply::of_ioctl(Err(e)));
                break;
            }
        }
    }
    let exported = segids.len() as u64;
    let full = driver_counter("segments_live")?;
    let mut removal_errors = Vec::new();
    for segid in segids {
        if let Err(e) = dev.remove_segment(segid) {
            removal_errors.push(format!("{segid:#x}: {}", Reply::of_ioctl(Err(e))));
        }
    }
    let after = driver_counter("segments_live")?;
    c.check(
        "segment-export-table-full",
        exported + live == TABLE
            && refusal.is_some_and(|r| r.errno() == Some(libc::ENOSPC))
            && full == TABLE
            && after == live
            && removal_errors.is_empty(),
        format!(
            "{live} segments live before, {exported} more exported, then {}; segments_live {full} full, {after} after removing them {}",
            refusal.map_or("no refusal".to_string(), |r| r.to_string()),
            removal_errors.join(" ")
        ),
    );
    Ok(())
}

/// The exporter munmaps part of the segment: the importer's next access fails before munmap
/// has returned (its translation was cached); a new mapping at the same address is seen.
fn exporter_munmap(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let seg = exporter_pages(4, 0xe0)?;
    let segid = export(&dev, &seg, true, 0o600)?;
    let mut imp = Agent::spawn()?;
    let att = attached(imp.attach(segid, true)?, "writable")?;
    let at = att.address(P + 8);
    let cached = imp.read64_seg(at)?;
    munmap(seg.addr() + P, PAGE)?;
    let gone = imp.read64_seg(at)?;
    let neighbour = imp.read64_seg(att.address(2 * P))?;
    c.check(
        "segment-munmap-fault",
        cached == Reply::Done(word(0xe0, PAGE / 8 + 1), 0)
            && gone
                == Reply::Status {
                    status: status::FAULT_UNRESOLVED,
                    fault_va: at,
                }
            && neighbour == Reply::Done(word(0xe0, 2 * PAGE / 8), 0),
        format!(
            "READ64 of page 1 before munmap {cached}, after {gone} (want fault_va {at:#x}); page 2 {neighbour}"
        ),
    );

    mmap(
        seg.addr() + P,
        PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_FIXED,
        -1,
        0,
    )?;
    poke(seg.addr() + P + 8, 0x0e11_0e11);
    let fresh = imp.read64_seg(at)?;
    c.check(
        "segment-munmap-remap-new-data",
        fresh == Reply::Done(0x0e11_0e11, 0),
        format!("READ64 after mmap(MAP_FIXED) of a new page there: {fresh}"),
    );
    Ok(())
}

/// The exporter mprotects the segment read-only: importer writes complete PERMISSION (also
/// after a read left a read-only translation), reads work; read-write again: writes land.
fn exporter_mprotect(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let seg = exporter_pages(2, 0xf0)?;
    let segid = export(&dev, &seg, true, 0o600)?;
    let mut imp = Agent::spawn()?;
    let att = attached(imp.attach(segid, true)?, "writable")?;
    // A writable translation in the device first: mprotect must take it away.
    let first = imp.write64_seg(att.address(0), 1)?;
    seg.protect(libc::PROT_READ)?;
    let denied = imp.write64_seg(att.address(0), 2)?;
    let read = imp.read64_seg(att.address(0))?;
    let denied_after_read = imp.write64_seg(att.address(0), 3)?;
    c.check(
        "segment-mprotect-write-denied",
        first.status() == status::OK
            && denied.status() == status::PERMISSION
            && read == Reply::Done(1, 0)
            && denied_after_read.status() == status::PERMISSION
            && seg.read_u64(0) == 1,
        format!(
            "WRITE64 before mprotect {first}; after PROT_READ: WRITE64 {denied}, READ64 {read}, WRITE64 {denied_after_read}; exporter reads {}",
            seg.read_u64(0)
        ),
    );
    seg.protect(libc::PROT_READ | libc::PROT_WRITE)?;
    let upgraded = imp.write64_seg(att.address(0), 4)?;
    c.check(
        "segment-mprotect-upgrade",
        upgraded.status() == status::OK && seg.read_u64(0) == 4,
        format!(
            "WRITE64 after PROT_READ|PROT_WRITE again: {upgraded}; exporter reads {}",
            seg.read_u64(0)
        ),
    );
    Ok(())
}

/// The exporter forks: its pages become copy-on-write. After the exporter's CPU breaks COW,
/// and after a device write breaks it, importer writes land in the exporter's new pages; the
/// fork child keeps the old ones.
fn exporter_fork(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    // The importer first: its fork must not make the pages copy-on-write before the one
    // under test.
    let mut imp = Agent::spawn()?;
    let seg = Mapping::new(2 * PAGE, false)?;
    fill_words(&seg, 0x1f0);
    let segid = export(&dev, &seg, true, 0o600)?;
    let att = attached(imp.attach(segid, true)?, "writable")?;
    let first = imp.write64_seg(att.address(0), 0xaaaa)?;
    // The exporter's fork child: it keeps running, with copies of the pages, until dropped.
    let mut child = Agent::spawn_without_context()?;
    // The exporter's CPU breaks COW on page 0 (another word of the page).
    seg.write_u64(64, 0xc0c0);
    let second = imp.write64_seg(att.address(0), 0xbbbb)?;
    let (parent0, parent64) = (seg.read_u64(0), seg.read_u64(64));
    let (child0, child64) = (child.peek(seg.addr())?, child.peek(seg.addr() + 64)?);
    c.check(
        "segment-fork-cow-exporter-sees-write",
        first.status() == status::OK
            && second.status() == status::OK
            && parent0 == 0xbbbb
            && parent64 == 0xc0c0,
        format!(
            "WRITE64 before fork {first}, after the exporter's CPU write {second}; exporter reads {parent0:#x}, {parent64:#x}"
        ),
    );
    c.check(
        "segment-fork-cow-child-keeps-old",
        child0 == 0xaaaa && child64 == word(0x1f0, 8),
        format!("fork child {} reads {child0:#x}, {child64:#x}", child.pid()),
    );
    // Page 1: no CPU write; the device write itself must break COW in the exporter.
    let device_first = imp.write64_seg(att.address(P), 0xdddd)?;
    let parent = seg.read_u64(PAGE);
    let kept = child.peek(seg.addr() + P)?;
    c.check(
        "segment-fork-device-write-breaks-cow",
        device_first.status() == status::OK && parent == 0xdddd && kept == word(0x1f0, PAGE / 8),
        format!(
            "WRITE64 to page 1 {device_first}: exporter reads {parent:#x}, fork child {kept:#x}"
        ),
    );
    Ok(())
}

/// IOC_REMOVE: importers' next access completes SEGMENT_INVALID (one revocation per
/// attachment); the slot stays occupied until detached, and detach works. Only the exporting
/// context can remove, once.
fn remove(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let seg = exporter_pages(1, 0x2f0)?;
    let segid = export(&dev, &seg, true, 0o600)?;
    let mut imp = Agent::spawn()?;
    let att = attached(imp.attach(segid, true)?, "writable")?;
    let before = imp.read64_seg(att.address(0))?;
    let by_importer = imp.remove_segment(segid)?;
    let revocations = driver_counter("segment_revocations")?;
    let removed = Reply::of_ioctl(dev.remove_segment(segid).map(|()| 0));
    let after = imp.read64_seg(att.address(0))?;
    let revoked = driver_counter("segment_revocations")? - revocations;
    c.check(
        "segment-remove-invalidates",
        before == Reply::Done(word(0x2f0, 0), 0)
            && removed.status() == status::OK
            && after.status() == status::SEGMENT_INVALID
            && revoked == 1,
        format!("READ64 before {before}; remove {removed}; READ64 after {after}; {revoked} revocation(s)"),
    );
    let twice = Reply::of_ioctl(dev.remove_segment(segid).map(|()| 0));
    c.check(
        "segment-remove-errors",
        by_importer.errno() == Some(libc::ENOENT) && twice.errno() == Some(libc::ENOENT),
        format!("remove by an importer {by_importer}; second remove {twice}"),
    );
    let detach = imp.detach(att.slot)?;
    let detach_again = imp.detach(att.slot)?;
    let reattach = imp.attach(segid, false)?;
    c.check(
        "segment-remove-detach-works",
        detach.status() == status::OK
            && detach_again.errno() == Some(libc::ENOENT)
            && reattach.errno() == Some(libc::ENOENT),
        format!("detach of the revoked slot {detach}, again {detach_again}; attach of the removed segid {reattach}"),
    );
    Ok(())
}

/// How many VMAs of process `pid` overlap `[start, start + len)` (from /proc/PID/maps).
fn vmas_in(pid: i32, start: u64, len: u64) -> Result<usize> {
    let path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut n = 0;
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, b) = (u64::from_str_radix(a, 16)?, u64::from_str_radix(b, 16)?);
        if a < start + len && b > start {
            n += 1;
        }
    }
    Ok(n)
}

/// A segment spanning 3 VMAs (private, shared, private) of the exporter's: the same layout
/// in this process, which an exporter agent inherits.
fn three_vmas() -> Result<Mapping> {
    let m = Mapping::new(3 * PAGE, false)?;
    mmap(
        m.addr() + P,
        PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_ANONYMOUS | libc::MAP_SHARED | libc::MAP_FIXED,
        -1,
        0,
    )?;
    fill_words(&m, 0x3f0);
    Ok(m)
}

/// Each importer reads the first word of each of the 3 pages.
fn read_all_pages(importers: &mut [(Agent, Attachment)]) -> Result<Vec<Reply>> {
    let mut replies = Vec::new();
    for (imp, att) in importers.iter_mut() {
        for page in 0..3 {
            replies.push(imp.read64_seg(att.address(page * P))?);
        }
    }
    Ok(replies)
}

/// The exporter exits with two importers attached to a segment over 3 VMAs: both importers'
/// next access completes SEGMENT_INVALID; exactly one revocation per attachment.
fn exporter_exit(c: &mut Checks) -> Result<()> {
    // The importers first, so they do not share the exporter's pages.
    let mut agents = vec![Agent::spawn()?, Agent::spawn()?];
    let seg = three_vmas()?;
    let mut exporter = Agent::spawn()?;
    let vmas = vmas_in(exporter.pid(), seg.addr(), 3 * P)?;
    let reply = exporter.export(seg.addr(), 3 * P, true, 0o600)?;
    let segid = reply.value().with_context(|| format!("export: {reply}"))?;
    let mut importers = Vec::new();
    for mut imp in agents.drain(..) {
        let att = attached(imp.attach(segid, true)?, "writable")?;
        importers.push((imp, att));
    }
    let reads = read_all_pages(&mut importers)?;
    let want: Vec<Reply> = (0..2)
        .flat_map(|_| (0..3).map(|p| Reply::Done(word(0x3f0, p * PAGE / 8), 0)))
        .collect();
    let revocations = driver_counter("segment_revocations")?;
    let exit_status = exporter.exit()?;
    // The exporter's file is released on its way out; give a deferred release a moment.
    settle("segment_revocations", |v| v >= revocations + 2)?;
    let mut after = Vec::new();
    for (imp, att) in importers.iter_mut() {
        after.push(imp.read64_seg(att.address(P))?);
    }
    let revoked = driver_counter("segment_revocations")? - revocations;
    c.check(
        "segment-exporter-exit-invalidates",
        vmas == 3
            && reads == want
            && exit_status == 0
            && after.iter().all(|r| r.status() == status::SEGMENT_INVALID),
        format!(
            "segment over {vmas} VMAs, importers read all pages {}; exporter exited with {exit_status}; then importers: {}",
            if reads == want { "right" } else { "WRONG" },
            after.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
    );
    c.check(
        "segment-exporter-exit-revocations",
        revoked == 2,
        format!("{revoked} revocations for 2 attachments to a segment over {vmas} VMAs"),
    );
    Ok(())
}

/// The exporter closes its context but lives on: importers' next access completes
/// SEGMENT_INVALID.
fn exporter_close(c: &mut Checks) -> Result<()> {
    let mut imp = Agent::spawn()?;
    let seg = Mapping::new(PAGE, false)?;
    fill_words(&seg, 0x4f0);
    let mut exporter = Agent::spawn()?;
    let reply = exporter.export(seg.addr(), P, true, 0o600)?;
    let segid = reply.value().with_context(|| format!("export: {reply}"))?;
    let att = attached(imp.attach(segid, false)?, "read-only")?;
    let before = imp.read64_seg(att.address(0))?;
    let revocations = driver_counter("segment_revocations")?;
    let closed = exporter.close_context()?;
    let after = imp.read64_seg(att.address(0))?;
    let revoked = driver_counter("segment_revocations")? - revocations;
    let alive = exporter.peek(seg.addr()).is_ok();
    c.check(
        "segment-exporter-close-invalidates",
        before == Reply::Done(word(0x4f0, 0), 0)
            && closed.status() == status::OK
            && after.status() == status::SEGMENT_INVALID
            && revoked == 1
            && alive,
        format!("READ64 before {before}; exporter closed its context ({closed}, still running {alive}); READ64 after {after}; {revoked} revocation(s)"),
    );
    Ok(())
}

/// An importer exits with its attachment in place: the exporter's segment and data are
/// untouched (no revocation), and a new importer attaches and reads.
fn importer_exit(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let seg = exporter_pages(2, 0x5f0)?;
    let segid = export(&dev, &seg, true, 0o600)?;
    let mut imp = Agent::spawn()?;
    let att = attached(imp.attach(segid, true)?, "writable")?;
    let read = imp.read64_seg(att.address(P))?;
    let write = imp.write64_seg(att.address(8), 0x1e)?;
    let (segments, attachments, revocations) = (
        driver_counter("segments_live")?,
        driver_counter("attachments_live")?,
        driver_counter("segment_revocations")?,
    );
    let exit_status = imp.exit()?;
    let attachments_after = settle("attachments_live", |v| v + 1 == attachments)?;
    let intact = (0..2 * PAGE / 8)
        .all(|i| seg.read_u64(i * 8) == if i == 1 { 0x1e } else { word(0x5f0, i) });
    let own = dev.read64(seg.addr() + 8)?;
    let segments_after = driver_counter("segments_live")?;
    let revoked = driver_counter("segment_revocations")? - revocations;
    c.check(
        "segment-importer-exit-exporter-intact",
        read.status() == status::OK
            && write.status() == status::OK
            && exit_status == 0
            && intact
            && matches!(own, Ok(0x1e))
            && attachments_after + 1 == attachments
            && segments_after == segments
            && revoked == 0,
        format!(
            "importer read {read}, wrote {write}, exited with {exit_status}; exporter's data intact {intact}, its own READ64 {own:?}; attachments_live {attachments} -> {attachments_after}, segments_live {segments} -> {segments_after}, {revoked} revocations"
        ),
    );
    let mut next = Agent::spawn()?;
    let again = next.attach(segid, false)?;
    let value = match again.attachment() {
        Some(att) => next.read64_seg(att.address(8))?,
        None => again,
    };
    c.check(
        "segment-importer-exit-new-attach",
        again.attachment().is_some() && value == Reply::Done(0x1e, 0),
        format!("a new importer attaches {again}, READ64 {value}"),
    );
    Ok(())
}

/// Everything the checks made is gone: segments, attachments, contexts, notifiers, DMA
/// buffers back to their values at the start.
fn leaks(baseline: &[(&'static str, u64)], c: &mut Checks) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    let now = loop {
        let now = live_counters()?;
        if now == baseline || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let describe = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    c.check(
        "segment-no-leaks",
        now == baseline,
        format!("start: {}; end: {}", describe(baseline), describe(&now)),
    );
    Ok(())
}
