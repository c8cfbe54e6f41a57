//! Benchmarks of the rmnic device model (`cargo bench -p rmnic-device`):
//!
//! - `tlb_lookup/*`: one TLB lookup, hit and miss (ns);
//! - `copy/*`: translated COPY through the whole device (doorbell, worker, TLB, completion) on
//!   4 KiB and 2 MiB mappings, next to a plain memcpy of the same size in the same run;
//! - `invalidation/*`: one RANGE invalidation of 1 GiB against the number of entries present,
//!   and of one page, showing the cost follows the entries, not the range.
//!
//! A summary with the copy/memcpy ratios is printed at the end.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rmnic_device::addr::{PageSize, VaRange, VirtAddr};
use rmnic_device::commands::{CommandRecord, Opcode};
use rmnic_device::events::{EVENT_DEFAULT, EVENT_HIT};
use rmnic_device::inject::{FaultInjector, NoFaults};
use rmnic_device::interrupt::MsiSink;
use rmnic_device::oracle::{CheckMode, Oracle};
use rmnic_device::pci::PciDevice;
use rmnic_device::regs::*;
use rmnic_device::tlb::{DeviceTlb, Perms, TlbFill, TlbGeometry};
use rmnic_device::{GuestRam, RmnicConfig, RmnicDevice};
use vm_memory::{Bytes, GuestAddress};

/// Interrupts go nowhere.
struct NoInterrupts;

impl MsiSink for NoInterrupts {
    fn trigger(&self, _vector: u16) {}
}

fn fill(asid: u16, va: u64, size: PageSize) -> TlbFill {
    TlbFill {
        asid,
        va: VirtAddr(va),
        size,
        gpa: GuestAddress(va & 0xfff_ffff & !size.mask()),
        perms: Perms::READ_WRITE,
        ctx: 0,
    }
}

fn tlb_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("tlb_lookup");
    let mut tlb = DeviceTlb::new(TlbGeometry::default());
    for page in 0..1024u64 {
        tlb.insert(fill(1, page << 12, PageSize::Size4K), &mut |_, _| {});
    }
    let mut va = 0u64;
    group.bench_function("hit", |b| {
        b.iter(|| {
            va = (va + 0x1000 * 7) & 0x3f_ffff;
            black_box(tlb.lookup(1, black_box(VirtAddr(va))))
        })
    });
    group.bench_function("miss", |b| {
        b.iter(|| {
            va = (va + 0x1000 * 7) & 0x3f_ffff;
            black_box(tlb.lookup(2, black_box(VirtAddr(va))))
        })
    });
    // With a 2 MiB entry present every miss probes both sets.
    tlb.insert(fill(3, 0x4000_0000, PageSize::Size2M), &mut |_, _| {});
    group.bench_function("miss_with_2m_entries", |b| {
        b.iter(|| {
            va = (va + 0x1000 * 7) & 0x3f_ffff;
            black_box(tlb.lookup(2, black_box(VirtAddr(va))))
        })
    });
    group.finish();
}

/// A minimal driver: one context, TLB prefilled, no fault ring.
struct Bench {
    device: RmnicDevice,
    mem: GuestRam,
    desc: u64,
    avail: u64,
    used: u64,
    buffers: u64,
    avail_idx: u16,
    /// Next free page for page tables ([`Bench::page_tables`]).
    pt_next: u64,
}

const RAM: u64 = 64 << 20;
const QUEUE: u16 = 16;
const SRC_VA: u64 = 0x1000_0000;
const DST_VA: u64 = 0x2000_0000;
/// Frames: source at 16 MiB, destination at 32 MiB (2 MiB aligned, 8 MiB each).
const SRC_GPA: u64 = 16 << 20;
const DST_GPA: u64 = 32 << 20;

/// Page tables for the oracle: PML4 at 48 MiB, the tables below it from 48 MiB + 4 KiB.
const PT_ROOT: u64 = 48 << 20;

impl Bench {
    fn new(event_mask: u32) -> Self {
        Self::with_injector(event_mask, Arc::new(NoFaults))
    }

    fn with_injector(event_mask: u32, injector: Arc<dyn FaultInjector>) -> Self {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("memory");
        let config = RmnicConfig {
            event_mask,
            injector,
            ..RmnicConfig::default()
        };
        let mut device =
            RmnicDevice::with_memory(mem.clone(), config, Arc::new(NoInterrupts)).expect("device");
        device.set_bar_address(0, 0xe000_0000).expect("aligned");
        device.write_config_register(1, 0, &6u32.to_le_bytes());
        let mut bench = Self {
            device,
            mem,
            desc: 0x1_0000,
            avail: 0x2_0000,
            used: 0x3_0000,
            buffers: 0x4_0000,
            avail_idx: 0,
            pt_next: 0,
        };
        bench.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
        let ctx = |offset| CTX_BLOCK_BASE + offset;
        bench.write32(ctx(CTX_ASID), 1);
        bench.write64(ctx(CQ_DESC_LO), bench.desc);
        bench.write64(ctx(CQ_AVAIL_LO), bench.avail);
        bench.write64(ctx(CQ_USED_LO), bench.used);
        bench.write32(ctx(CQ_SIZE), u32::from(QUEUE));
        bench.write32(ctx(CQ_READY), 1);
        bench.write64(ctx(CTX_PTROOT_LO), PT_ROOT);
        bench.write32(ctx(CTX_CONTROL), CTX_CONTROL_ENABLE);
        assert_eq!(bench.read32(ctx(CTX_STATUS)), CTX_STATE_ACTIVE);
        bench
    }

    /// Writes CPU page tables at [`PT_ROOT`] mapping `va..va + bytes` to `gpa` with `size`
    /// pages, as the kernel would have them: what the oracle walks.
    fn page_tables(&mut self, va: u64, gpa: u64, bytes: u64, size: PageSize) {
        const FLAGS: u64 = 0x7; // present, writable, user
                                // Tables go after those already made (the last one in use is the highest).
        let mut next = self.pt_next.max(PT_ROOT + 0x1000);
        for page in (0..bytes).step_by(size.bytes() as usize) {
            let v = va + page;
            let mut table = PT_ROOT;
            let leaf_level = if size == PageSize::Size2M { 2 } else { 1 };
            for level in (leaf_level + 1..=4u32).rev() {
                let at = table + ((v >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
                let entry: u64 = self.mem.read_obj(GuestAddress(at)).expect("table");
                table = if entry & 1 == 0 {
                    let fresh = next;
                    next += 0x1000;
                    self.mem
                        .write_obj(fresh | FLAGS, GuestAddress(at))
                        .expect("table");
                    fresh
                } else {
                    entry & 0x000f_ffff_ffff_f000
                };
            }
            let at = table + ((v >> (12 + 9 * (leaf_level - 1))) & 0x1ff) * 8;
            let huge = if leaf_level == 2 { 1 << 7 } else { 0 };
            self.mem
                .write_obj((gpa + page) | FLAGS | huge, GuestAddress(at))
                .expect("leaf");
        }
        self.pt_next = next;
    }

    fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.device.read_bar(0, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.device.write_bar(0, offset, &value.to_le_bytes());
    }

    fn write64(&mut self, offset: u64, value: u64) {
        self.device.write_bar(0, offset, &value.to_le_bytes());
    }

    fn map(&mut self, va: u64, gpa: u64, bytes: u64, size: PageSize) {
        let attr = DROPIN_ATTR_READ
            | DROPIN_ATTR_WRITE
            | if size == PageSize::Size2M {
                DROPIN_ATTR_2M
            } else {
                0
            };
        for page in (0..bytes).step_by(size.bytes() as usize) {
            self.write64(CTX_BLOCK_BASE + DROPIN_VA_LO, va + page);
            self.write64(CTX_BLOCK_BASE + DROPIN_GPA_LO, gpa + page);
            self.write32(CTX_BLOCK_BASE + DROPIN_ATTR, attr);
            self.write32(CTX_BLOCK_BASE + CTX_COMMAND, CTX_CMD_DROPIN);
        }
    }

    /// Submits `count` COPY commands of `len` bytes with one doorbell and waits for them.
    fn copy(&mut self, len: u64, count: u16) {
        for i in 0..count {
            let slot = 2 * (self.avail_idx % (QUEUE / 2));
            let command = self.buffers + u64::from(slot) * 64;
            let record = CommandRecord {
                opcode: Opcode::Copy as u8,
                id: u64::from(i),
                addr0: DST_VA,
                addr1: SRC_VA,
                length: len,
                ..CommandRecord::default()
            };
            let mem = &self.mem;
            mem.write_slice(&record.to_bytes(), GuestAddress(command))
                .expect("in RAM");
            let descriptors = [(command, 56u32, 1u16, slot + 1), (command + 64, 32, 2, 0)];
            for (j, (addr, dlen, flags, next)) in descriptors.into_iter().enumerate() {
                let mut bytes = [0u8; 16];
                bytes[0..8].copy_from_slice(&addr.to_le_bytes());
                bytes[8..12].copy_from_slice(&dlen.to_le_bytes());
                bytes[12..14].copy_from_slice(&flags.to_le_bytes());
                bytes[14..16].copy_from_slice(&next.to_le_bytes());
                let index = u64::from(slot) + j as u64;
                mem.write_slice(&bytes, GuestAddress(self.desc + 16 * index))
                    .expect("in RAM");
            }
            let entry = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE);
            mem.write_obj(slot, GuestAddress(entry)).expect("in RAM");
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
                .expect("in RAM");
        }
        self.write32(CTX_BLOCK_BASE + CQ_DOORBELL, 1);
        let start = Instant::now();
        loop {
            let used: u16 = self
                .mem
                .read_obj(GuestAddress(self.used + 2))
                .expect("in RAM");
            if used == self.avail_idx {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "copy stuck");
            std::hint::spin_loop();
        }
    }
}

/// (name, bytes per command, page size).
const COPIES: [(&str, u64, PageSize); 2] = [
    ("4k_pages_1mib", 1 << 20, PageSize::Size4K),
    ("2m_pages_2mib", 2 << 20, PageSize::Size2M),
];
/// Commands per doorbell.
const BATCH: u16 = 4;

fn copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy");
    for (name, len, size) in COPIES {
        group.throughput(Throughput::Bytes(len * u64::from(BATCH)));
        let mut bench = Bench::new(EVENT_DEFAULT & !EVENT_HIT);
        bench.map(SRC_VA, SRC_GPA, len, size);
        bench.map(DST_VA, DST_GPA, len, size);
        group.bench_function(BenchmarkId::new("translated", name), |b| {
            b.iter(|| bench.copy(len, BATCH))
        });
        // CAST: at most 2 MiB.
        let src = vec![1u8; len as usize];
        let mut dst = vec![0u8; len as usize];
        group.bench_function(BenchmarkId::new("memcpy", name), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    dst.copy_from_slice(black_box(&src));
                }
                black_box(&dst);
            })
        });
    }
    group.finish();
}

/// A TLB of 4096 entries holding `present` entries of ASID 1 spread over 1 GiB (255 pages
/// apart: an odd stride, so every one lands in its own set), the rest of other ASIDs.
fn populated(present: u64) -> DeviceTlb {
    let mut tlb = DeviceTlb::new(TlbGeometry::new(1024, 4).expect("valid"));
    for i in 0..(3072 - present.min(3072)) {
        // CAST: i % 7 < 7.
        tlb.insert(
            fill(2 + (i % 7) as u16, i << 12, PageSize::Size4K),
            &mut |_, _| {},
        );
    }
    // Filled last, so the clock never picks them (a fill spares the way filled last).
    for i in 0..present {
        tlb.insert(fill(1, i * 255 * 0x1000, PageSize::Size4K), &mut |_, _| {});
    }
    let mine = tlb.entries().filter(|entry| entry.fill.asid == 1).count();
    // CAST: present <= 1024.
    assert_eq!(mine, present as usize, "every ASID 1 entry is present");
    tlb
}

fn invalidation(c: &mut Criterion) {
    let mut group = c.benchmark_group("invalidation");
    let gib = VaRange::new(VirtAddr(0), VirtAddr(1 << 30)).expect("valid");
    for present in [0u64, 64, 1024] {
        group.bench_with_input(
            BenchmarkId::new("range_1gib", present),
            &present,
            |b, &present| {
                b.iter_batched_ref(
                    || populated(present),
                    |tlb| black_box(tlb.invalidate_range(1, gib, &mut |_, _| {})),
                    BatchSize::LargeInput,
                )
            },
        );
    }
    let page = VaRange::new(VirtAddr(0x1000), VirtAddr(0x2000)).expect("valid");
    group.bench_function("range_4kib_1024_present", |b| {
        b.iter_batched_ref(
            || populated(1024),
            |tlb| black_box(tlb.invalidate_range(1, page, &mut |_, _| {})),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Bytes per second of `op` moving `bytes` per call, over about `time`.
fn rate(time: Duration, bytes: u64, mut op: impl FnMut()) -> f64 {
    op();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < time {
        op();
        calls += 1;
    }
    // CAST: a float rate.
    (calls * bytes) as f64 / start.elapsed().as_secs_f64()
}

/// Prints translated COPY throughput against memcpy of the same size: five rounds, each
/// measuring both back to back, so load from other processes hits both alike; the median
/// round is reported.
fn summary() {
    println!(
        "\nrmnic copy summary ({BATCH} commands per doorbell, median of 5 alternating rounds):"
    );
    for (name, len, size) in COPIES {
        for (label, mask) in [
            ("event log without hits", EVENT_DEFAULT & !EVENT_HIT),
            ("event log with hits", EVENT_DEFAULT),
        ] {
            let mut bench = Bench::new(mask);
            bench.map(SRC_VA, SRC_GPA, len, size);
            bench.map(DST_VA, DST_GPA, len, size);
            let bytes = len * u64::from(BATCH);
            // CAST: at most 2 MiB.
            let src = vec![1u8; len as usize];
            let mut dst = vec![0u8; len as usize];
            let mut rounds: Vec<(f64, f64)> = (0..5)
                .map(|_| {
                    let round = Duration::from_millis(120);
                    let translated = rate(round, bytes, || bench.copy(len, BATCH));
                    let memcpy = rate(round, bytes, || {
                        for _ in 0..BATCH {
                            dst.copy_from_slice(black_box(&src));
                        }
                        black_box(&dst);
                    });
                    (translated, memcpy)
                })
                .collect();
            rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
            let (translated, memcpy) = rounds[2];
            println!(
                "  {name:<14} ({label:<22}): translated {:>6.2} GB/s, memcpy {:>6.2} GB/s, ratio {:.2}",
                translated / 1e9,
                memcpy / 1e9,
                translated / memcpy
            );
        }
    }
}

/// Translated COPY with the coherence oracle off, sampling and checking every access, against
/// the same device without it, in alternating rounds (median of 5).
fn oracle_summary() {
    println!(
        "\nrmnic oracle cost ({BATCH} COPY commands per doorbell, median of 5 alternating rounds):"
    );
    for (name, len, size) in COPIES {
        let bytes = len * u64::from(BATCH);
        let mut setups: Vec<(&str, Bench, Option<Arc<Oracle>>)> = Vec::new();
        for (label, mode) in [
            ("without oracle", None),
            ("oracle sample:64", Some(CheckMode::Sample(64))),
            ("oracle full", Some(CheckMode::Full)),
        ] {
            let oracle = mode.map(|m| Arc::new(Oracle::new(m, Arc::new(NoFaults))));
            let injector: Arc<dyn FaultInjector> = match &oracle {
                Some(o) => o.clone(),
                None => Arc::new(NoFaults),
            };
            let mut bench = Bench::with_injector(EVENT_DEFAULT & !EVENT_HIT, injector);
            bench.map(SRC_VA, SRC_GPA, len, size);
            bench.map(DST_VA, DST_GPA, len, size);
            bench.page_tables(SRC_VA, SRC_GPA, len, size);
            bench.page_tables(DST_VA, DST_GPA, len, size);
            setups.push((label, bench, oracle));
        }
        let mut rounds: Vec<Vec<f64>> = Vec::new();
        for _ in 0..5 {
            let round = Duration::from_millis(120);
            rounds.push(
                setups
                    .iter_mut()
                    .map(|(_, bench, _)| rate(round, bytes, || bench.copy(len, BATCH)))
                    .collect(),
            );
        }
        for (i, (label, _, oracle)) in setups.iter().enumerate() {
            let mut ratios: Vec<f64> = rounds.iter().map(|r| r[i] / r[0]).collect();
            ratios.sort_by(f64::total_cmp);
            let mut rates: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
            rates.sort_by(f64::total_cmp);
            let checked = oracle.as_ref().map_or(String::new(), |o| {
                format!(
                    ", {} checked, {} violations",
                    o.checked(),
                    o.violation_count()
                )
            });
            println!(
                "  {name:<14} ({label:<16}): {:>6.2} GB/s, ratio to without {:.2}{checked}",
                rates[2] / 1e9,
                ratios[2]
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(400))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20)
        .configure_from_args();
    tlb_lookup(&mut criterion);
    copy(&mut criterion);
    invalidation(&mut criterion);
    criterion.final_summary();
    summary();
    oracle_summary();
}
