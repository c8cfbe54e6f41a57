//! Guest-physical DMA: the only way the device touches guest RAM. Every access is checked
//! against guest RAM (vm-memory's bounds checks: nothing outside the regions the VMM mapped)
//! and offered to the fault injector first.
//!
//! [`Dma`] also implements vm-memory's `GuestMemory`, so the virtio-queue crate's ring parsing
//! goes through the same checks and hooks as every other DMA.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    Permissions, VolatileMemory,
};

use crate::inject::{DmaAccess, DmaPurpose, DmaVerdict, FaultInjector};

/// Guest RAM as the VMM hands it to the device.
pub type GuestRam = GuestMemoryMmap<()>;

/// A DMA that did not happen.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DmaError {
    /// Part of the range is outside guest RAM.
    #[error("DMA of {len} bytes at {gpa:#x} is outside guest RAM")]
    OutsideRam {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes.
        len: u64,
    },
    /// Fault injection failed it.
    #[error("DMA of {len} bytes at {gpa:#x} failed by fault injection")]
    Injected {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes.
        len: u64,
    },
    /// A 64-bit atomic on an address that is not 8-byte aligned in host memory.
    #[error("Atomic DMA at {gpa:#x} is not naturally aligned")]
    Misaligned {
        /// Guest-physical address.
        gpa: u64,
    },
}

/// Bytes moved per bounce when a copy crosses a region boundary.
const BOUNCE_BYTES: usize = 4096;

/// The guest RAM a [`Dma`] reaches: borrowed, or a snapshot of the device's current map
/// (which a host that maps memory at run time, like a vfio-user server, replaces; the
/// snapshot keeps the old map alive until the access through it is over).
#[derive(Clone)]
enum Ram<'a> {
    Borrowed(&'a GuestRam),
    Snapshot(Arc<GuestRam>),
}

/// DMA for one purpose through one injector.
#[derive(Clone)]
pub struct Dma<'a> {
    mem: Ram<'a>,
    injector: &'a dyn FaultInjector,
    purpose: DmaPurpose,
}

impl std::fmt::Debug for Dma<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dma")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

impl<'a> Dma<'a> {
    /// DMA into `mem` for `purpose`, offered to `injector` first.
    pub fn new(mem: &'a GuestRam, injector: &'a dyn FaultInjector, purpose: DmaPurpose) -> Self {
        Self {
            mem: Ram::Borrowed(mem),
            injector,
            purpose,
        }
    }

    /// DMA into a snapshot of the device's memory map.
    pub(crate) fn snapshot(
        mem: Arc<GuestRam>,
        injector: &'a dyn FaultInjector,
        purpose: DmaPurpose,
    ) -> Self {
        Self {
            mem: Ram::Snapshot(mem),
            injector,
            purpose,
        }
    }

    /// The same DMA engine for another purpose.
    pub fn purpose(self, purpose: DmaPurpose) -> Self {
        Self { purpose, ..self }
    }

    /// The guest RAM behind it.
    pub fn memory(&self) -> &GuestRam {
        match &self.mem {
            Ram::Borrowed(mem) => mem,
            Ram::Snapshot(mem) => mem,
        }
    }

    /// Checks a DMA of `len` bytes at `gpa`: inside RAM, and not failed by the injector.
    pub fn admit(&self, gpa: GuestAddress, len: usize, write: bool) -> Result<(), DmaError> {
        // CAST: usize fits u64 on every supported host.
        let len64 = len as u64;
        if !GuestMemoryBackend::check_range(self.memory(), gpa, len) {
            return Err(DmaError::OutsideRam {
                gpa: gpa.0,
                len: len64,
            });
        }
        let access = DmaAccess {
            gpa,
            len,
            write,
            purpose: self.purpose,
        };
        match self.injector.dma(&access) {
            DmaVerdict::Proceed => Ok(()),
            DmaVerdict::Fail => Err(DmaError::Injected {
                gpa: gpa.0,
                len: len64,
            }),
        }
    }

    /// Reads `buf.len()` bytes at `gpa`.
    pub fn read(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), DmaError> {
        self.admit(gpa, buf.len(), false)?;
        Bytes::read_slice(self.memory(), buf, gpa).map_err(|_| outside(gpa, buf.len()))
    }

    /// Writes `buf` at `gpa`.
    pub fn write(&self, gpa: GuestAddress, buf: &[u8]) -> Result<(), DmaError> {
        self.admit(gpa, buf.len(), true)?;
        Bytes::write_slice(self.memory(), buf, gpa).map_err(|_| outside(gpa, buf.len()))
    }

    /// Stores a little-endian u32 at `gpa` with release ordering: every earlier store of the
    /// device is visible before it (the "valid" word of a record).
    pub fn store_u32_release(&self, gpa: GuestAddress, value: u32) -> Result<(), DmaError> {
        self.with_atomic::<AtomicU32, _>(gpa, |word| word.store(value.to_le(), Ordering::Release))
    }

    /// Stores a little-endian u64 at `gpa` with release ordering.
    pub fn store_u64_release(&self, gpa: GuestAddress, value: u64) -> Result<(), DmaError> {
        self.with_atomic::<AtomicU64, _>(gpa, |word| word.store(value.to_le(), Ordering::Release))
    }

    /// Runs `op` on the naturally aligned atomic word at `gpa` (a locked read-modify-write
    /// on the guest's memory, atomic with respect to the vCPUs).
    pub fn with_atomic<T, R>(
        &self,
        gpa: GuestAddress,
        op: impl FnOnce(&T) -> R,
    ) -> Result<R, DmaError>
    where
        T: vm_memory::AtomicInteger,
    {
        let len = std::mem::size_of::<T>();
        self.admit(gpa, len, true)?;
        let slice = GuestMemoryBackend::get_slice(self.memory(), gpa, len)
            .map_err(|_| outside(gpa, len))?;
        let word = slice
            .get_atomic_ref::<T>(0)
            .map_err(|_| DmaError::Misaligned { gpa: gpa.0 })?;
        Ok(op(word))
    }

    /// Copies `len` bytes from `src` to `dst`, both guest-physical.
    pub fn copy(&self, src: GuestAddress, dst: GuestAddress, len: usize) -> Result<(), DmaError> {
        self.admit(src, len, false)?;
        self.admit(dst, len, true)?;
        let direct = GuestMemoryBackend::get_slice(self.memory(), src, len).and_then(|from| {
            GuestMemoryBackend::get_slice(self.memory(), dst, len).map(|to| (from, to))
        });
        if let Ok((from, to)) = direct {
            from.copy_to_volatile_slice(to);
            return Ok(());
        }
        // One of the ranges spans two RAM regions: bounce.
        let mut bounce = [0u8; BOUNCE_BYTES];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BOUNCE_BYTES);
            let (from, to) = (offset(src, done), offset(dst, done));
            Bytes::read_slice(self.memory(), &mut bounce[..n], from)
                .map_err(|_| outside(from, n))?;
            Bytes::write_slice(self.memory(), &bounce[..n], to).map_err(|_| outside(to, n))?;
            done += n;
        }
        Ok(())
    }

    /// Writes `len` bytes at `dst`, byte `i` being `pattern[(phase + i) % 8]`.
    pub fn fill(
        &self,
        dst: GuestAddress,
        len: usize,
        pattern: [u8; 8],
        phase: usize,
    ) -> Result<(), DmaError> {
        self.admit(dst, len, true)?;
        let mut block = [0u8; 512];
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = pattern[(phase + i) % 8];
        }
        // `block` is a multiple of 8 long, so every block starts at the same phase.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(block.len());
            let to = offset(dst, done);
            Bytes::write_slice(self.memory(), &block[..n], to).map_err(|_| outside(to, n))?;
            done += n;
        }
        Ok(())
    }
}

fn offset(base: GuestAddress, by: usize) -> GuestAddress {
    // CAST: usize fits u64; callers checked the range is inside RAM, so no wrap.
    GuestAddress(base.0.wrapping_add(by as u64))
}

fn outside(gpa: GuestAddress, len: usize) -> DmaError {
    DmaError::OutsideRam {
        gpa: gpa.0,
        // CAST: usize fits u64.
        len: len as u64,
    }
}

/// virtio-queue reaches guest memory through this impl, so its ring reads and used-ring
/// writes are checked and injectable like every other DMA.
impl GuestMemory for Dma<'_> {
    type PhysicalMemory = GuestRam;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.admit(addr, count, access.has_write()).is_ok()
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> vm_memory::guest_memory::Result<impl GuestMemorySliceIterator<'b, BS<'b, Self::Bitmap>>>
    {
        self.admit(addr, count, access.has_write())
            .map_err(|_| GuestMemoryError::InvalidGuestAddress(addr))?;
        Ok(GuestMemoryBackend::get_slices(self.memory(), addr, count))
    }

    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        Some(self.memory())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::inject::NoFaults;

    fn ram() -> GuestRam {
        // Two adjacent regions, so copies can straddle them.
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)])
            .expect("anonymous memory")
    }

    #[derive(Debug, Default)]
    struct FailWrites {
        seen: Mutex<Vec<DmaAccess>>,
    }

    impl FaultInjector for FailWrites {
        fn dma(&self, access: &DmaAccess) -> DmaVerdict {
            self.seen.lock().expect("not poisoned").push(*access);
            if access.write {
                DmaVerdict::Fail
            } else {
                DmaVerdict::Proceed
            }
        }
    }

    #[test]
    fn reads_and_writes_inside_ram_succeed_and_outside_fail() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::Data);
        dma.write(GuestAddress(0x100), &[1, 2, 3]).expect("inside");
        let mut buf = [0u8; 3];
        dma.read(GuestAddress(0x100), &mut buf).expect("inside");
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(
            dma.write(GuestAddress(0x1_fffe), &[0; 4]),
            Err(DmaError::OutsideRam {
                gpa: 0x1_fffe,
                len: 4
            })
        );
        assert!(dma.read(GuestAddress(u64::MAX - 1), &mut buf).is_err());
    }

    #[test]
    fn copies_straddling_regions_bounce() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::Data);
        let data: Vec<u8> = (0..0x3000u32).map(|i| (i % 251) as u8).collect();
        dma.write(GuestAddress(0xf000), &data).expect("inside");
        dma.copy(GuestAddress(0xf000), GuestAddress(0x2000), 0x3000)
            .expect("copy");
        let mut back = vec![0u8; 0x3000];
        dma.read(GuestAddress(0x2000), &mut back).expect("inside");
        assert_eq!(back, data);
    }

    #[test]
    fn fill_repeats_the_pattern_from_the_phase() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::Data);
        let pattern = 0x0807_0605_0403_0201u64.to_le_bytes();
        dma.fill(GuestAddress(0x400), 1000, pattern, 3)
            .expect("fill");
        let mut back = vec![0u8; 1000];
        dma.read(GuestAddress(0x400), &mut back).expect("inside");
        for (i, byte) in back.iter().enumerate() {
            assert_eq!(*byte, pattern[(3 + i) % 8], "byte {i}");
        }
    }

    #[test]
    fn atomics_work_on_aligned_words_only() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::Data);
        let old = dma
            .with_atomic::<AtomicU64, _>(GuestAddress(0x800), |w| w.fetch_add(5, Ordering::SeqCst))
            .expect("aligned");
        assert_eq!(old, 0);
        dma.store_u64_release(GuestAddress(0x808), 7)
            .expect("aligned");
        let mut word = [0u8; 8];
        dma.read(GuestAddress(0x808), &mut word).expect("inside");
        assert_eq!(u64::from_le_bytes(word), 7);
        assert_eq!(
            dma.with_atomic::<AtomicU64, _>(GuestAddress(0x804), |w| w.load(Ordering::SeqCst)),
            Err(DmaError::Misaligned { gpa: 0x804 })
        );
    }

    #[test]
    fn the_injector_sees_every_dma_and_can_fail_it() {
        let mem = ram();
        let injector = FailWrites::default();
        let dma = Dma::new(&mem, &injector, DmaPurpose::Completion);
        assert!(matches!(
            dma.write(GuestAddress(0), &[0; 8]),
            Err(DmaError::Injected { gpa: 0, len: 8 })
        ));
        let mut buf = [0u8; 8];
        dma.read(GuestAddress(0), &mut buf).expect("reads proceed");
        // Through the GuestMemory impl (the path virtio-queue uses) too.
        assert!(Bytes::write_obj(&dma, 1u16, GuestAddress(0)).is_err());
        assert!(Bytes::read_obj::<u16>(&dma, GuestAddress(0)).is_ok());
        let seen = injector.seen.lock().expect("not poisoned");
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|a| a.purpose == DmaPurpose::Completion));
    }
}
