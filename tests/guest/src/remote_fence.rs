//! `rmnic-guest fence-export` and `rmnic-guest fence-import`: the exporter's bound when the
//! importer does not acknowledge (its device host runs with `--fabric-fault drop-acks`).
//!
//! | step | exporter | importer |
//! | --- | --- | --- |
//! | 1 | exports a mailbox and 4 data pages (remote, writable), sets `ExporterReady`, prints its ids | attaches both (retrying while ENOENT), waits for `ExporterReady` |
//! | 2 | | reads every data page (its remote TLB now holds them), sets `ImporterRead` |
//! | 3 | munmaps data page 1: the forwarded invalidation is never acknowledged, so the exporter's device fences the importer and munmap returns within the bound; writes new values into page 0 | polls page 0 until an access fails |
//! | 4 | stays up a few seconds, then removes its segments | the failure is SEGMENT_INVALID (fenced), and so is every access after it, stale translations included: nothing of the exporter is read again |

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rmnic_abi::{opcode, status, Address, Context};
use rmnic_guest::Mapping;

use crate::remote::{attach_retrying, IDS_LINE_PREFIX};
use crate::scenarios::{driver_counter, munmap};
use crate::segments::{fill_words, word, Reply};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
const P: u64 = PAGE as u64;
const DATA_PAGES: usize = 4;
const SEED: u64 = 0xfe;
const MODE: u32 = 0o606;
/// Mailbox word 0: the exporter's segments are there; word 1: the importer read them.
const READY: usize = 0;
const IMPORTER_READ: u64 = 8;
/// How long a side waits for the other.
const WAIT: Duration = Duration::from_secs(120);
/// How long the exporter stays up after the munmap, for the importer to see the fence.
const LINGER: Duration = Duration::from_secs(5);
/// The fencing bound is 50 ms; a munmap that took this long would mean the exporter waited
/// for the importer without bound (a liveness check, not a performance figure).
const MUNMAP_LIMIT: Duration = Duration::from_secs(2);

/// How long the exporter waits, with `importer_killed`, for the harness to kill the importer
/// after it signalled (the harness polls every 100 ms; the kill is checked by the fence the
/// exporter's host then counts, so a late kill fails the test rather than passing it).
const KILL_GRACE: Duration = Duration::from_secs(3);

/// The exporter's side. With `importer_killed`, the importer is killed by the harness right
/// after it read the pages: the munmap waits [`KILL_GRACE`] for that first.
pub fn export(importer_killed: bool, c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let mailbox = Mapping::new(PAGE, false)?;
    let data = Mapping::new(DATA_PAGES * PAGE, false)?;
    fill_words(&data, SEED);
    let mailbox_id = dev
        .export_remote(mailbox.addr(), P, true, MODE)
        .context("remote export of the mailbox")?;
    let data_id = dev
        .export_remote(data.addr(), (DATA_PAGES * PAGE) as u64, true, MODE)
        .context("remote export of the data")?;
    mailbox.write_u64(READY, 1);
    println!("{IDS_LINE_PREFIX}--mailbox {mailbox_id} --data {data_id}");
    let start = Instant::now();
    // CAST: an offset within the page.
    while mailbox.read_u64(IMPORTER_READ as usize) == 0 {
        if start.elapsed() > WAIT {
            bail!("the importer never read the data");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if importer_killed {
        std::thread::sleep(KILL_GRACE);
    }
    let before = dev.stats()?;
    let munmapped = Instant::now();
    munmap(data.addr() + P, PAGE)?;
    let took = munmapped.elapsed();
    let after = dev.stats()?;
    c.check(
        "fence-export-munmap-bounded",
        took < MUNMAP_LIMIT && after.invalidations_sent > before.invalidations_sent,
        format!(
            "munmap of data page 1 with a silent or dead importer returned after {:.1} ms ({} device invalidation(s))",
            took.as_secs_f64() * 1e3,
            after.invalidations_sent - before.invalidations_sent
        ),
    );
    // New data the fenced importer must never see.
    data.write_u64(0, 0xdead);
    std::thread::sleep(LINGER);
    let live = driver_counter("segments_live")?;
    dev.remove_segment(data_id)?;
    dev.remove_segment(mailbox_id)?;
    c.check(
        "fence-export-removed",
        driver_counter("segments_live")? + 2 == live,
        format!("segments_live {live} before removing both"),
    );
    Ok(())
}

/// The line the harness kills this guest on (`rmnic_tests::pair::KILL_IMPORTER_LINE`).
const KILL_LINE: &str = "remote-pair: kill the importer now";

/// The importer's side. With `get_killed`, it stops after its reads and asks the harness to
/// kill it (with its device host: the link breaks as when a peer dies); the exporter's munmap
/// must then complete within the bound all the same.
///
/// With `partitioned` (its host plants `--fabric-fault partition-on-invalidate`), the exporter's
/// invalidation starts a partition: this side then hears nothing, so its accesses complete
/// REMOTE_UNREACHABLE (the exporter's refusal never arrives) instead of SEGMENT_INVALID.
pub fn import(
    mailbox_id: u64,
    data_id: u64,
    get_killed: bool,
    partitioned: bool,
    c: &mut Checks,
) -> Result<()> {
    let cut_off = if partitioned {
        status::REMOTE_UNREACHABLE
    } else {
        status::SEGMENT_INVALID
    };
    let baseline = driver_counter("attachments_live")?;
    let dev = Context::open()?;
    let (mailbox, _) = attach_retrying(&dev, mailbox_id, true)?;
    let (data, _) = attach_retrying(&dev, data_id, true)?;
    let read =
        |addr: u64| Reply::of_command(dev.word_op(opcode::READ64, Address::Segment(addr), 0, 0));
    let start = Instant::now();
    while read(mailbox.address(READY as u64)).value() != Some(1) {
        if start.elapsed() > WAIT {
            bail!("the exporter never became ready");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pages: Vec<Reply> = (0..DATA_PAGES as u64)
        .map(|p| read(data.address(p * P)))
        .collect();
    let right = pages
        .iter()
        .enumerate()
        .all(|(p, r)| r.value() == Some(word(SEED, p * PAGE / 8)));
    c.check(
        "fence-import-read",
        right,
        format!("READ64 of the 4 data pages: {pages:?}"),
    );
    let signalled = Reply::of_command(dev.word_op(
        opcode::WRITE64,
        Address::Segment(mailbox.address(IMPORTER_READ)),
        1,
        0,
    ));
    if signalled.status() != status::OK {
        bail!("could not signal the exporter: {signalled}");
    }
    if get_killed {
        println!("{KILL_LINE}");
        std::thread::sleep(WAIT);
        bail!("not killed within {} s", WAIT.as_secs());
    }
    // The exporter now munmaps page 1; this device never acknowledges, so it is fenced.
    let start = Instant::now();
    let failed = loop {
        let r = read(data.address(0));
        if r.status() != status::OK {
            break r;
        }
        if r.value() == Some(0xdead) {
            break r;
        }
        if start.elapsed() > WAIT {
            bail!("no access failed within {} s", WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    c.check(
        "fence-import-fenced",
        failed.status() == cut_off,
        format!(
            "page 0 after the exporter's munmap: {failed} after {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        ),
    );
    // Every later access is refused too, the stale translation of page 1 and the mailbox
    // included: nothing of the exporter's memory is read again.
    let after = [
        read(data.address(P)),
        read(data.address(2 * P)),
        read(mailbox.address(0)),
    ];
    c.check(
        "fence-import-nothing-stale",
        after.iter().all(|r| r.status() == cut_off),
        format!("page 1 (unmapped, cached), page 2, mailbox: {after:?}"),
    );
    dev.detach(data.slot)?;
    dev.detach(mailbox.slot)?;
    drop(dev);
    let now = driver_counter("attachments_live")?;
    c.check(
        "fence-import-no-leaks",
        now == baseline,
        format!("attachments_live {baseline} -> {now}"),
    );
    Ok(())
}
