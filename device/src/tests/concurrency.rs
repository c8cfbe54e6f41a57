//! The in-flight guarantee under concurrency (§11): worker threads execute translated FILLs
//! and COPYs while another thread invalidates pages (and remaps them to new frames) and a
//! third resolves faults with drop-ins, all following the driver protocol of §10.3. The
//! device is instrumented through the oracle hook: every translated access reports the frame
//! it used and a tick of a shared clock, taken before the TLB read section ends. The driver
//! takes a tick when it sees an invalidation complete. No access through a frame may carry a
//! tick later than the completion of the invalidation that retired it.
//!
//! A negative control runs the same workload with invalidations dropped by fault injection
//! and checks that the instrument does catch the violations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::commands::{CommandRecord, Completion, Opcode, Status, COMPLETION_SIZE};
use crate::engine::dma::GuestRam;
use crate::fault_ring::{FaultRecord, FAULT_RECORD_SIZE};
use crate::inject::{
    DmaAccess, DmaPurpose, DmaVerdict, FaultInjector, InvalidationVerdict, TranslatedAccess,
};
use crate::invalidation::InvalidationDescriptor;
use crate::regs::{DROPIN_ATTR_READ, DROPIN_ATTR_WRITE, REG_FAULT_TAIL, REG_INVQ_TAIL};
use crate::rmnic::RmnicConfig;
use crate::tests::harness::{CommandQueue, Harness, Rings, TIMEOUT};

/// Pages per context in the window the commands touch.
const PAGES: u64 = 4;
/// Base VA of the window.
const WINDOW: u64 = 0x4000_0000;
/// Invalidations the test performs.
const INVALIDATIONS: usize = 150;
/// Contexts (and ASIDs 1..=CONTEXTS) running concurrently.
const CONTEXTS: usize = 2;

#[derive(Debug)]
struct Recorder {
    clock: Arc<AtomicU64>,
    /// (frame, tick) of every translated access.
    accesses: Mutex<Vec<(u64, u64)>>,
    data_dmas: AtomicU64,
    drop_invalidations: bool,
}

impl FaultInjector for Recorder {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        if access.purpose == DmaPurpose::Data {
            // Make every data movement slow, inside the TLB read section, so invalidations
            // race with accesses in flight.
            self.data_dmas.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
        }
        DmaVerdict::Proceed
    }

    fn translated(&self, access: &TranslatedAccess, _memory: &GuestRam) {
        let tick = self.clock.fetch_add(1, Ordering::SeqCst);
        let frame = access.gpa.0 & !0xfff;
        self.accesses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((frame, tick));
    }

    fn invalidation(&self, _: &InvalidationDescriptor) -> InvalidationVerdict {
        if self.drop_invalidations {
            InvalidationVerdict::Drop
        } else {
            InvalidationVerdict::Perform
        }
    }
}

/// The driver's view of the mappings; its mutex is the "notifier lock".
struct Mappings {
    frames: HashMap<(usize, u64), u64>,
    next_frame: u64,
    /// Frame → tick at which the driver saw its invalidation complete.
    retired: HashMap<u64, u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn used_idx(mem: &GuestRam, queue: &CommandQueue) -> u16 {
    mem.read_obj(GuestAddress(queue.used + 2)).expect("in RAM")
}

fn completion_of(mem: &GuestRam, queue: &CommandQueue, index: u16) -> Completion {
    let element = queue.used + 4 + 8 * u64::from(index % queue.size);
    let head: u16 = mem.read_obj(GuestAddress(element)).expect("in RAM");
    let mut record = [0u8; COMPLETION_SIZE];
    mem.read_slice(
        &mut record,
        GuestAddress(queue.buffers + u64::from(head / 2) * 128 + 64),
    )
    .expect("in RAM");
    Completion::from_bytes(&record).expect("defined status")
}

/// Runs the workload; returns (accesses recorded, accesses after their frame's retirement).
fn race(drop_invalidations: bool) -> (usize, usize) {
    let clock = Arc::new(AtomicU64::new(1));
    let recorder = Arc::new(Recorder {
        clock: clock.clone(),
        accesses: Mutex::new(Vec::new()),
        data_dmas: AtomicU64::new(0),
        drop_invalidations,
    });
    let mut harness = Harness::with_config(RmnicConfig {
        injector: recorder.clone(),
        ..RmnicConfig::default()
    });
    let rings = harness.bring_up(256, 64);
    let queues: Vec<CommandQueue> = (0..CONTEXTS)
        // CAST: ctx < CONTEXTS.
        .map(|ctx| harness.open_context(ctx, ctx as u16 + 1, 16))
        .collect();
    let frame_pool = harness.alloc(4096 * 4096, 4096);
    let mem = harness.mem.clone();
    let harness = Arc::new(Mutex::new(harness));
    let mappings = Arc::new(Mutex::new(Mappings {
        frames: HashMap::new(),
        next_frame: frame_pool,
        retired: HashMap::new(),
    }));
    {
        let mut m = lock(&mappings);
        for ctx in 0..CONTEXTS {
            for page in 0..PAGES {
                let frame = m.next_frame;
                m.next_frame += 4096;
                m.frames.insert((ctx, page), frame);
            }
        }
    }
    let stop_submitting = Arc::new(AtomicBool::new(false));
    let stop_handling = Arc::new(AtomicBool::new(false));

    // Fault handler: drop in the current frame under the notifier lock, then resume.
    let handler = {
        let (harness, mappings, mem, stop) = (
            harness.clone(),
            mappings.clone(),
            mem.clone(),
            stop_handling.clone(),
        );
        std::thread::spawn(move || {
            let mut rings: Rings = rings;
            while !stop.load(Ordering::SeqCst) {
                let slot = u64::from(rings.fault_tail % rings.fault_size);
                let mut bytes = [0u8; FAULT_RECORD_SIZE];
                mem.read_slice(&mut bytes, GuestAddress(rings.fault_base + slot * 32))
                    .expect("in RAM");
                let (record, sequence): (FaultRecord, u32) = FaultRecord::from_bytes(&bytes);
                if sequence != rings.fault_tail.wrapping_add(1) {
                    std::thread::sleep(Duration::from_micros(20));
                    continue;
                }
                rings.fault_tail = rings.fault_tail.wrapping_add(1);
                let ctx = usize::from(record.ctx);
                let page_va = record.va.0 & !0xfff;
                let page = (page_va - WINDOW) >> 12;
                {
                    let m = lock(&mappings);
                    let frame = m.frames[&(ctx, page)];
                    let mut h = lock(&harness);
                    h.write32(REG_FAULT_TAIL, rings.fault_tail);
                    h.drop_in(ctx, page_va, frame, DROPIN_ATTR_READ | DROPIN_ATTR_WRITE);
                }
                lock(&harness).resume(ctx);
            }
        })
    };

    // Submitters: FILL and COPY over the window, up to 4 commands in flight per context.
    let submitters: Vec<_> = queues
        .into_iter()
        .map(|mut queue| {
            let (harness, mem, stop) = (harness.clone(), mem.clone(), stop_submitting.clone());
            std::thread::spawn(move || {
                let (mut id, mut outstanding) = (0u64, 0u32);
                let mut statuses = Vec::new();
                let start = Instant::now();
                while !stop.load(Ordering::SeqCst) || outstanding > 0 {
                    assert!(start.elapsed() < TIMEOUT * 3, "submitter stuck");
                    while !stop.load(Ordering::SeqCst) && outstanding < 4 {
                        let page = id % PAGES;
                        let record = if id % 2 == 0 {
                            CommandRecord {
                                opcode: Opcode::Fill as u8,
                                id,
                                addr0: WINDOW + page * 4096,
                                length: 4096,
                                operand0: id,
                                ..CommandRecord::default()
                            }
                        } else {
                            CommandRecord {
                                opcode: Opcode::Copy as u8,
                                id,
                                addr0: WINDOW + page * 4096,
                                addr1: WINDOW + ((page + 1) % PAGES) * 4096,
                                length: 4096,
                                ..CommandRecord::default()
                            }
                        };
                        lock(&harness).submit(&mut queue, &record);
                        id += 1;
                        outstanding += 1;
                    }
                    if used_idx(&mem, &queue) != queue.used_idx {
                        statuses.push(completion_of(&mem, &queue, queue.used_idx).status);
                        queue.used_idx = queue.used_idx.wrapping_add(1);
                        outstanding -= 1;
                    } else {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
                statuses
            })
        })
        .collect();

    // Invalidator: remap a page to a new frame, invalidate the old translation, wait.
    let mut invq = rings;
    for i in 0..INVALIDATIONS {
        let ctx = i % CONTEXTS;
        // CAST: a small index.
        let page = (i as u64 * 5 + 1) % PAGES;
        let mut m = lock(&mappings);
        let old = m.frames[&(ctx, page)];
        let new = m.next_frame;
        m.next_frame += 4096;
        m.frames.insert((ctx, page), new);
        let va = WINDOW + page * 4096;
        // CAST: ctx < CONTEXTS.
        let descriptor =
            InvalidationDescriptor::range(ctx as u16 + 1, va, va + 4096, 0).expect("valid");
        let seq = {
            let mut h = lock(&harness);
            let seq = h.post_invalidation(&mut invq, descriptor);
            h.write32(REG_INVQ_TAIL, invq.invq_tail);
            seq
        };
        let start = Instant::now();
        while mem
            .read_obj::<u64>(GuestAddress(invq.done))
            .expect("in RAM")
            < seq
        {
            assert!(start.elapsed() < TIMEOUT, "invalidation never completed");
            std::hint::spin_loop();
        }
        let done = clock.fetch_add(1, Ordering::SeqCst);
        m.retired.insert(old, done);
        drop(m);
        std::thread::sleep(Duration::from_micros(200));
    }
    stop_submitting.store(true, Ordering::SeqCst);
    let statuses: Vec<Status> = submitters
        .into_iter()
        .flat_map(|s| s.join().expect("submitter"))
        .collect();
    stop_handling.store(true, Ordering::SeqCst);
    handler.join().expect("fault handler");
    assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");

    let retired = &lock(&mappings).retired;
    let accesses = lock(&recorder.accesses);
    let violations = accesses
        .iter()
        .filter(|(frame, tick)| retired.get(frame).is_some_and(|done| tick > done))
        .count();
    (accesses.len(), violations)
}

#[test]
fn no_access_through_an_entry_outlives_its_invalidation() {
    let (accesses, violations) = race(false);
    assert!(
        accesses > 500,
        "the workload did too little: {accesses} accesses"
    );
    assert_eq!(violations, 0);
}

#[test]
fn the_instrument_catches_accesses_through_invalidations_that_were_dropped() {
    let (accesses, violations) = race(true);
    assert!(accesses > 500);
    assert!(violations > 0, "dropped invalidations went unnoticed");
}
