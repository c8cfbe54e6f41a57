//! Decoding hostile bytes never allocates more than the frame holds: a counting global
//! allocator records the largest single allocation a decode makes on this thread.
//!
//! One test in this binary on purpose: the allocator is process-wide (the record is per
//! thread, so the harness's own threads do not disturb it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Cursor, Read, Write};

use rmnic_fabric::protocol::{decode_frame, decode_payload, encode_payload, FRAME_HEADER_BYTES};
use rmnic_fabric::{AccessDone, FramedLink, Gpa, LinkError, Message, Op, MAX_FRAME_DEFAULT};

thread_local! {
    /// Whether this thread records allocations now.
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    /// Largest allocation (or reallocation target) seen while tracking.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: allocations during thread teardown, after the cells are gone, are ignored.
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are ours; `record` only touches const-initialised thread-locals,
// which neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, LARGEST.with(Cell::get))
}

/// A varint as postcard writes it.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A read-only stream over fixed bytes.
struct Input(Cursor<Vec<u8>>);

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Input {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn decoding_hostile_bytes_never_allocates_more_than_the_frame() {
    let max = MAX_FRAME_DEFAULT;

    // Payloads claiming byte strings far longer than themselves: an Access Write and an
    // AccessReply, with lengths up to u64::MAX.
    let prefix_write = {
        let m = Message::Access {
            req: 1,
            export: 0,
            generation: 1,
            offset: 0,
            gpa: Gpa(0),
            op: Op::Write { data: vec![7] },
        };
        let p = encode_payload(&m, max).expect("encodes");
        // Drop the data's length (1) and byte (7): what remains is the prefix.
        p[..p.len() - 2].to_vec()
    };
    let prefix_reply = {
        let m = Message::AccessReply {
            req: 1,
            result: Ok(AccessDone {
                data: vec![7],
                value: 0,
            }),
        };
        let p = encode_payload(&m, max).expect("encodes");
        // [tag, req, Ok, len 1, byte 7, value 0]: keep the first three.
        p[..3].to_vec()
    };
    for prefix in [&prefix_write, &prefix_reply] {
        for claim in [
            64 * 1024 + 1,
            1 << 20,
            1 << 30,
            u64::from(u32::MAX),
            u64::MAX >> 1,
        ] {
            let mut payload = prefix.clone();
            payload.extend(varint(claim));
            payload.extend([0xaa; 100]);
            let (result, largest) = largest_allocation(|| decode_payload(&payload, max));
            assert!(result.is_err(), "claim {claim} decoded");
            assert!(
                largest <= payload.len(),
                "claim {claim}: allocated {largest} for a {}-byte payload",
                payload.len()
            );
        }
    }

    // Deterministic pseudo-random payloads (xorshift), including ones that start like a
    // Write: whatever decodes or not, no allocation exceeds the payload.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            let mut p = prefix_write.clone();
            p.extend(payload);
            payload = p;
        }
        let (_, largest) = largest_allocation(|| decode_payload(&payload, max));
        assert!(largest <= payload.len().max(1), "payload {payload:x?}");
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend(&payload);
        let (_, largest) = largest_allocation(|| decode_frame(&frame, max));
        assert!(largest <= payload.len().max(1));
    }

    // The link refuses a header claiming more than its bound before allocating for it.
    for claim in [max + 1, u32::MAX] {
        let mut bytes = claim.to_le_bytes().to_vec();
        bytes.extend([0u8; 64]);
        let mut link = FramedLink::new(Input(Cursor::new(bytes)));
        let (result, largest) = largest_allocation(|| link.recv(None));
        assert!(matches!(result, Err(LinkError::Decode(_))));
        assert!(largest < 1024, "allocated {largest} for a refused header");
    }

    // And a frame within the bound costs its own length, once.
    let full = Message::Access {
        req: 1,
        export: 0,
        generation: 1,
        offset: 0,
        gpa: Gpa(0),
        op: Op::Write {
            data: vec![1; 64 * 1024],
        },
    };
    let payload = encode_payload(&full, max).expect("encodes");
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend(&payload);
    let mut link = FramedLink::new(Input(Cursor::new(bytes)));
    let (result, largest) = largest_allocation(|| link.recv(None));
    assert_eq!(result.expect("decodes"), full);
    assert!(largest <= payload.len());
    assert!(FRAME_HEADER_BYTES + payload.len() <= FRAME_HEADER_BYTES + max as usize);
}
