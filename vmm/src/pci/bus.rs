//! PCI bus 0: configuration mechanism #1 on ports 0xCF8 (address) / 0xCFC..=0xCFF (data),
//! and routing of MMIO exits to the BAR that decodes the address.
//!
//! Only bus 0, function 0 of each of the 32 device slots is populated; every other
//! configuration read returns all ones and every other write is dropped, as on real
//! hardware with an empty slot.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rmnic_device::pci::PciDevice;

use crate::bus::{BusDevice, BusRange};

/// First port of the mechanism #1 window (address register).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Address register (4 ports) plus data window (4 ports).
pub const PCI_CONFIG_PORT_LEN: u64 = 8;
/// Device slots on a PCI bus.
pub const SLOTS: usize = 32;
/// 32-bit configuration registers per function (256 bytes).
pub const CONFIG_REGS: usize = 64;

const COMMAND_REG: usize = 1;
const COMMAND_MEMORY_SPACE: u8 = 1 << 1;

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors populating the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// The slot number is not 0..=31.
    #[error("PCI slot {0} does not exist (0..=31)")]
    NoSuchSlot(u8),
    /// The slot already holds a device.
    #[error("PCI slot {0} is already occupied")]
    SlotTaken(u8),
}

/// A decoded value of the 0xCF8 address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress(pub u32);

impl ConfigAddress {
    /// Bit 31: configuration cycles are generated only while set.
    pub fn enabled(self) -> bool {
        self.0 & 0x8000_0000 != 0
    }
    /// Bits 23..16.
    pub fn bus(self) -> u8 {
        (self.0 >> 16) as u8
    }
    /// Bits 15..11.
    pub fn device(self) -> u8 {
        ((self.0 >> 11) & 0x1f) as u8
    }
    /// Bits 10..8.
    pub fn function(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    /// Bits 7..2: the 32-bit register index; bits 1..0 are ignored, the byte within the
    /// register comes from which data port (0xCFC + n) is accessed.
    pub fn register(self) -> usize {
        ((self.0 >> 2) & 0x3f) as usize
    }
}

/// A BAR the bus currently routes.
#[derive(Clone)]
struct MappedBar {
    range: BusRange,
    bar: u8,
    slot: u8,
    device: SharedPciDevice,
}

/// The devices on bus 0 and the MMIO ranges their BARs decode.
pub struct PciRoot {
    slots: Vec<Option<SharedPciDevice>>,
    /// Rebuilt for a device after each configuration write to it; read on every MMIO
    /// exit. Never held while a device lock is taken.
    mapped: RwLock<Vec<MappedBar>>,
    /// Told after each refresh of a slot's BARs ([`PciRoot::watch_bars`]).
    watchers: Vec<(u8, BarWatcher)>,
}

/// Called after the BARs of a watched slot were re-read ([`PciRoot::watch_bars`]).
pub type BarWatcher = Arc<dyn Fn() + Send + Sync>;

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            slots: vec![None; SLOTS],
            mapped: RwLock::new(Vec::new()),
            watchers: Vec::new(),
        }
    }

    /// Places `device` at `00:slot.0`.
    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciError> {
        let entry = self
            .slots
            .get_mut(usize::from(slot))
            .ok_or(PciError::NoSuchSlot(slot))?;
        if entry.is_some() {
            return Err(PciError::SlotTaken(slot));
        }
        *entry = Some(device);
        self.refresh_bars(slot);
        Ok(())
    }

    /// Calls `watcher` after every refresh of the BARs of `slot` (a configuration write to
    /// it, memory decoding turned on), e.g. to move ioeventfds along with a BAR.
    pub fn watch_bars(&mut self, slot: u8, watcher: BarWatcher) {
        self.watchers.push((slot, watcher));
    }

    /// The device at `00:slot.0`, if any.
    pub fn device(&self, slot: u8) -> Option<&SharedPciDevice> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// Occupied slot numbers, in order.
    pub fn occupied_slots(&self) -> Vec<u8> {
        (0..SLOTS as u8)
            .filter(|s| self.device(*s).is_some())
            .collect()
    }

    fn target(&self, addr: ConfigAddress) -> Option<&SharedPciDevice> {
        if !addr.enabled() || addr.bus() != 0 || addr.function() != 0 {
            return None;
        }
        self.device(addr.device())
    }

    /// Reads `data.len()` bytes at byte `offset` (0..=3) of the register `addr` selects.
    pub fn config_read(&self, addr: ConfigAddress, offset: usize, data: &mut [u8]) {
        let value = match self.target(addr) {
            Some(dev) => lock(dev).read_config_register(addr.register()),
            None => u32::MAX,
        };
        let bytes = value.to_le_bytes();
        match bytes.get(offset..offset.saturating_add(data.len())) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
    }

    /// Writes `data` at byte `offset` (0..=3) of the register `addr` selects, then
    /// re-reads which BARs the device decodes.
    pub fn config_write(&self, addr: ConfigAddress, offset: usize, data: &[u8]) {
        if data.is_empty() || offset >= 4 || data.len() > 4 - offset {
            return;
        }
        let Some(dev) = self.target(addr) else { return };
        lock(dev).write_config_register(addr.register(), offset as u64, data);
        self.refresh_bars(addr.device());
    }

    /// Recomputes the routed MMIO ranges of the device in `slot` from its `bar_regions()`.
    pub fn refresh_bars(&self, slot: u8) {
        let Some(dev) = self.device(slot) else { return };
        let regions = lock(dev).bar_regions();
        let mut mapped = self.mapped.write().unwrap_or_else(|e| e.into_inner());
        mapped.retain(|m| m.slot != slot);
        for r in regions {
            match BusRange::new(r.base, r.size) {
                Ok(range) => {
                    if let Some(other) = mapped.iter().find(|m| m.range.overlaps(&range)) {
                        // Guest-programmed overlap: the earlier mapping keeps the range.
                        tracing::warn!(
                            "BAR {} of 00:{slot:02x}.0 at {range} overlaps BAR {} of 00:{:02x}.0",
                            r.index,
                            other.bar,
                            other.slot
                        );
                    }
                    mapped.push(MappedBar {
                        range,
                        bar: r.index,
                        slot,
                        device: dev.clone(),
                    });
                }
                Err(e) => tracing::warn!("BAR {} of 00:{slot:02x}.0 ignored: {e}", r.index),
            }
        }
        drop(mapped);
        for (_, watcher) in self.watchers.iter().filter(|(s, _)| *s == slot) {
            watcher();
        }
    }

    fn resolve_mmio(&self, addr: u64, len: usize) -> Option<(SharedPciDevice, u8, u64)> {
        let mapped = self.mapped.read().unwrap_or_else(|e| e.into_inner());
        mapped.iter().find_map(|m| {
            m.range
                .offset_of(addr, len)
                .map(|off| (m.device.clone(), m.bar, off))
        })
    }

    /// Forwards an MMIO read to the BAR decoding `addr`; false when none does.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve_mmio(addr, data.len()) {
            Some((dev, bar, off)) => {
                lock(&dev).read_bar(bar, off, data);
                true
            }
            None => false,
        }
    }

    /// Forwards an MMIO write to the BAR decoding `addr`; false when none does.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve_mmio(addr, data.len()) {
            Some((dev, bar, off)) => {
                lock(&dev).write_bar(bar, off, data);
                true
            }
            None => false,
        }
    }

    /// Sets the memory-space enable bit of the device in `slot` (firmware does this after
    /// placing BARs).
    pub fn enable_memory_decoding(&self, slot: u8) {
        let Some(dev) = self.device(slot) else { return };
        let cmd = lock(dev).read_config_register(COMMAND_REG) as u8;
        lock(dev).write_config_register(COMMAND_REG, 0, &[cmd | COMMAND_MEMORY_SPACE]);
        self.refresh_bars(slot);
    }
}

fn lock(dev: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// The port-I/O face of [`PciRoot`]: the 0xCF8 address latch and the 0xCFC data window.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

impl PciConfigIo {
    /// Config I/O for `root`, with the address register cleared.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // Only a dword access reaches the address register (byte and word accesses
            // to 0xCF8..=0xCFB are not configuration accesses on PC chipsets).
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (4..=7, _) => {
                self.root
                    .config_read(ConfigAddress(self.address), (offset - 4) as usize, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[a, b, c, d]) => self.address = u32::from_le_bytes([a, b, c, d]),
            (4..=7, _) => {
                self.root
                    .config_write(ConfigAddress(self.address), (offset - 4) as usize, data)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::HostBridge;
    use rmnic_device::pci::BarRegion;

    /// 256 bytes of plain config space, plus one memory BAR whose decode follows
    /// command bit 1 and BAR0.
    struct FakeDevice {
        regs: [u32; CONFIG_REGS],
        writes: Vec<(usize, u64, Vec<u8>)>,
        bar_reads: Vec<(u8, u64, usize)>,
    }

    impl FakeDevice {
        fn new() -> Self {
            let mut regs = [0u32; CONFIG_REGS];
            regs[0] = 0x1234_abcd;
            regs[2] = 0x0200_0001;
            Self {
                regs,
                writes: Vec::new(),
                bar_reads: Vec::new(),
            }
        }
    }

    impl PciDevice for FakeDevice {
        fn read_config_register(&mut self, reg: usize) -> u32 {
            self.regs.get(reg).copied().unwrap_or(0)
        }
        fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
            self.writes.push((reg, offset, data.to_vec()));
            if let Some(r) = self.regs.get_mut(reg) {
                let mut bytes = r.to_le_bytes();
                bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                *r = u32::from_le_bytes(bytes);
            }
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            self.bar_reads.push((bar, offset, data.len()));
            data.fill(0x5a);
        }
        fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
        fn bar_regions(&self) -> Vec<BarRegion> {
            if self.regs[1] & 2 == 0 {
                return Vec::new();
            }
            vec![BarRegion {
                index: 0,
                base: u64::from(self.regs[4] & !0xf),
                size: 0x1000,
            }]
        }
    }

    fn addr(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
        0x8000_0000 | (bus << 16) | (dev << 11) | (func << 8) | (reg << 2)
    }

    fn setup() -> (PciConfigIo, Arc<Mutex<FakeDevice>>, Arc<PciRoot>) {
        let mut root = PciRoot::new();
        root.add_device(0, Arc::new(Mutex::new(HostBridge::new())))
            .expect("slot 0");
        let dev = Arc::new(Mutex::new(FakeDevice::new()));
        root.add_device(1, dev.clone()).expect("slot 1");
        let root = Arc::new(root);
        (PciConfigIo::new(root.clone()), dev, root)
    }

    fn read(io: &mut PciConfigIo, offset: u64, len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        io.read(offset, &mut d);
        d
    }

    #[test]
    fn address_decoding_splits_fields() {
        let a = ConfigAddress(addr(3, 0x1f, 5, 0x3f) | 0b11);
        assert!(a.enabled());
        assert_eq!(
            (a.bus(), a.device(), a.function(), a.register()),
            (3, 0x1f, 5, 0x3f)
        );
        assert!(!ConfigAddress(0x7fff_ffff).enabled());
    }

    #[test]
    fn address_register_reads_back_for_linux_type1_probe() {
        let (mut io, _, _) = setup();
        io.write(0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(read(&mut io, 0, 4), 0x8000_0000u32.to_le_bytes());
        // A byte write to 0xCFB (Linux's probe does one) leaves the latch alone.
        io.write(3, &[1]);
        assert_eq!(read(&mut io, 0, 4), 0x8000_0000u32.to_le_bytes());
        assert_eq!(read(&mut io, 1, 1), vec![0xff]);
    }

    #[test]
    fn enable_bit_clear_reads_all_ones() {
        let (mut io, _, _) = setup();
        io.write(0, &(addr(0, 1, 0, 0) & 0x7fff_ffff).to_le_bytes());
        assert_eq!(read(&mut io, 4, 4), vec![0xff; 4]);
    }

    #[test]
    fn dword_and_sub_dword_reads_pick_bytes_by_data_port() {
        let (mut io, _, _) = setup();
        io.write(0, &addr(0, 1, 0, 0).to_le_bytes());
        assert_eq!(read(&mut io, 4, 4), 0x1234_abcdu32.to_le_bytes());
        assert_eq!(read(&mut io, 4, 2), vec![0xcd, 0xab]);
        assert_eq!(read(&mut io, 6, 2), vec![0x34, 0x12]);
        assert_eq!(read(&mut io, 7, 1), vec![0x12]);
        // A word at 0xCFF would cross the data window.
        assert_eq!(read(&mut io, 7, 2), vec![0xff, 0xff]);
    }

    #[test]
    fn low_address_bits_do_not_shift_the_register() {
        let (mut io, _, _) = setup();
        io.write(0, &(addr(0, 1, 0, 2) | 0b10).to_le_bytes());
        assert_eq!(read(&mut io, 4, 4), 0x0200_0001u32.to_le_bytes());
    }

    #[test]
    fn sub_dword_write_passes_register_and_offset() {
        let (mut io, dev, _) = setup();
        io.write(0, &addr(0, 1, 0, 1).to_le_bytes());
        io.write(6, &[0xaa, 0xbb]);
        io.write(5, &[0x07]);
        let writes = dev.lock().expect("lock").writes.clone();
        assert_eq!(writes, vec![(1, 2, vec![0xaa, 0xbb]), (1, 1, vec![0x07])]);
    }

    #[test]
    fn empty_slot_other_function_and_other_bus_read_all_ones() {
        let (mut io, dev, _) = setup();
        for a in [addr(0, 2, 0, 0), addr(0, 1, 1, 0), addr(1, 1, 0, 0)] {
            io.write(0, &a.to_le_bytes());
            assert_eq!(read(&mut io, 4, 4), vec![0xff; 4], "{a:#x}");
            io.write(4, &[0; 4]);
        }
        assert!(dev.lock().expect("lock").writes.is_empty());
    }

    #[test]
    fn host_bridge_at_slot_0() {
        let (mut io, _, _) = setup();
        io.write(0, &addr(0, 0, 0, 2).to_le_bytes());
        assert_eq!(read(&mut io, 6, 2), 0x0600u16.to_le_bytes());
    }

    #[test]
    fn mmio_routing_follows_bar_and_command_writes() {
        let (mut io, dev, root) = setup();
        let mut d = [0u8; 4];
        io.write(0, &addr(0, 1, 0, 4).to_le_bytes());
        io.write(4, &0xc000_0000u32.to_le_bytes());
        assert!(!root.mmio_read(0xc000_0010, &mut d), "decode off");
        io.write(0, &addr(0, 1, 0, 1).to_le_bytes());
        io.write(4, &[0x02]);
        assert!(root.mmio_read(0xc000_0010, &mut d));
        assert_eq!(d, [0x5a; 4]);
        assert_eq!(dev.lock().expect("lock").bar_reads, vec![(0, 0x10, 4)]);
        assert!(!root.mmio_read(0xc000_0ffe, &mut d), "crosses BAR end");
        assert!(!root.mmio_write(0xc000_1000, &d));
        // Moving the BAR moves the route.
        io.write(0, &addr(0, 1, 0, 4).to_le_bytes());
        io.write(4, &0xd000_0000u32.to_le_bytes());
        assert!(!root.mmio_read(0xc000_0010, &mut d));
        assert!(root.mmio_read(0xd000_0ffc, &mut d));
    }

    #[test]
    fn slot_errors() {
        let mut root = PciRoot::new();
        root.add_device(0, Arc::new(Mutex::new(HostBridge::new())))
            .expect("slot 0");
        assert_eq!(
            root.add_device(0, Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::SlotTaken(0))
        );
        assert_eq!(
            root.add_device(32, Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::NoSuchSlot(32))
        );
    }
}
