//! Type-0 PCI configuration space as data: 64 registers, a parallel array of writable bits and
//! one of write-1-to-clear bits, and a single masked write path for every guest write.
//!
//! Layout and semantics follow the PCI Local Bus Specification 3.0, section 6.2 (header) and
//! 6.7 (capabilities list). Only the 256-byte conventional space exists: the function has no
//! PCI Express capability, so Linux never reads past offset 0xff (`pci_cfg_space_size`).
//!
//! BAR sizing: a guest sizes a BAR by writing all ones and reading back the size mask
//! (address bits below the size are hardwired to zero). Such a write updates the register the
//! guest reads but not the address the function decodes: the decoded address only follows
//! writes that are not all ones in the BAR's address bits. So a probe never moves the BAR,
//! even with memory decoding left on, and restoring the original value is a no-op for the bus.

use thiserror::Error;

use crate::pci::BarRegion;

/// Number of 32-bit registers in the conventional configuration space.
pub const NUM_CONFIGURATION_REGISTERS: usize = 64;
/// Number of BAR registers in a type-0 header.
pub const NUM_BAR_REGISTERS: usize = 6;

/// Byte offset of the vendor ID.
pub const VENDOR_ID_OFFSET: usize = 0x00;
/// Byte offset of the device ID.
pub const DEVICE_ID_OFFSET: usize = 0x02;
/// Byte offset of the command register.
pub const COMMAND_OFFSET: usize = 0x04;
/// Byte offset of the status register.
pub const STATUS_OFFSET: usize = 0x06;
/// Byte offset of the revision ID (the class code follows in bytes 0x09..=0x0b).
pub const REVISION_ID_OFFSET: usize = 0x08;
/// Byte offset of the header type.
pub const HEADER_TYPE_OFFSET: usize = 0x0e;
/// Byte offset of BAR 0.
pub const BAR0_OFFSET: usize = 0x10;
/// Byte offset of the subsystem vendor ID (the subsystem ID follows at 0x2e).
pub const SUBSYSTEM_VENDOR_ID_OFFSET: usize = 0x2c;
/// Byte offset of the capabilities pointer.
pub const CAPABILITY_POINTER_OFFSET: usize = 0x34;
/// Byte offset of the interrupt line (the interrupt pin follows at 0x3d).
pub const INTERRUPT_LINE_OFFSET: usize = 0x3c;
/// Byte offset at which the first capability is placed.
pub const FIRST_CAPABILITY_OFFSET: usize = 0x40;

/// Command register: the function decodes its memory BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register: the function may master the bus (DMA and MSI-X messages).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: parity error response.
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
/// Command register: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Command register: INTx emulation disabled.
pub const COMMAND_INTERRUPT_DISABLE: u16 = 1 << 10;
/// Command bits the guest may change; the others (I/O space, VGA snoop...) are hardwired to 0.
pub const COMMAND_WRITABLE: u16 = COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR
    | COMMAND_INTERRUPT_DISABLE;

/// Status register: a capabilities list starts at the capabilities pointer (read-only).
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status register bits that are write-1-to-clear: master data parity error, signalled and
/// received target abort, received master abort, signalled system error, detected parity error.
pub const STATUS_WRITE_1_TO_CLEAR: u16 = (1 << 8) | (0b1_1111 << 11);

/// Memory BAR type bits (2:1) for a 64-bit BAR.
pub const BAR_MEMORY_64BIT: u32 = 0b100;
/// Memory BAR bit 3: prefetchable.
pub const BAR_PREFETCHABLE: u32 = 1 << 3;
/// The low four bits of a memory BAR hold type information, never address bits.
const BAR_MEMORY_INFO_MASK: u32 = 0xf;
/// The smallest memory BAR the specification allows.
const BAR_MIN_SIZE: u64 = 16;
/// The largest 32-bit memory BAR: half of the 4 GiB space it decodes in.
const BAR32_MAX_SIZE: u64 = 1 << 31;

// Register indices (byte offset / 4) used by the header layout below.
const REG_ID: usize = VENDOR_ID_OFFSET / 4;
const REG_COMMAND_STATUS: usize = COMMAND_OFFSET / 4;
const REG_CLASS_REVISION: usize = REVISION_ID_OFFSET / 4;
const REG_HEADER: usize = HEADER_TYPE_OFFSET / 4;
const REG_BAR0: usize = BAR0_OFFSET / 4;
const REG_SUBSYSTEM: usize = SUBSYSTEM_VENDOR_ID_OFFSET / 4;
const REG_CAPABILITY_POINTER: usize = CAPABILITY_POINTER_OFFSET / 4;
const REG_INTERRUPT: usize = INTERRUPT_LINE_OFFSET / 4;

/// Errors of the configuration space: guest accesses it refuses and layouts it cannot hold.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ConfigurationError {
    /// The guest named a register past the 256-byte space.
    #[error("Configuration register {reg} is outside the 256-byte configuration space")]
    RegisterOutOfRange {
        /// The register number the guest used.
        reg: usize,
    },
    /// The guest wrote a width other than 1, 2 or 4 bytes, or one crossing the register.
    #[error("Configuration write of {len} bytes at byte {offset} of register {reg} is malformed")]
    BadWrite {
        /// The register number.
        reg: usize,
        /// The byte offset within the register.
        offset: u64,
        /// The number of bytes written.
        len: usize,
    },
    /// A BAR index past 5, or the upper half of a 64-bit BAR would be past 5.
    #[error("BAR {index} does not exist in a type-0 header")]
    BarIndexOutOfRange {
        /// The BAR index.
        index: u8,
    },
    /// The BAR slot is already used by another BAR (or by the upper half of a 64-bit one).
    #[error("BAR {index} is already in use")]
    BarInUse {
        /// The BAR index.
        index: u8,
    },
    /// The BAR size is not a power of two, below 16 bytes, or above 2 GiB for a 32-bit BAR.
    #[error("BAR {index} cannot have size {size:#x}")]
    BarSizeInvalid {
        /// The BAR index.
        index: u8,
        /// The requested size.
        size: u64,
    },
    /// No BAR was declared at this index.
    #[error("BAR {index} is not implemented")]
    BarNotImplemented {
        /// The BAR index.
        index: u8,
    },
    /// The address is not aligned to the BAR size or does not fit the BAR's address width.
    #[error("BAR {index} of size {size:#x} cannot be placed at {address:#x}")]
    BarAddressInvalid {
        /// The BAR index.
        index: u8,
        /// The requested address.
        address: u64,
        /// The BAR size.
        size: u64,
    },
    /// A capability description with no registers or mismatched mask length.
    #[error("Capability {id:#04x} has {registers} registers but {writable} writable masks")]
    CapabilityMalformed {
        /// The capability ID.
        id: u8,
        /// Number of registers given.
        registers: usize,
        /// Number of writable masks given.
        writable: usize,
    },
    /// The capability does not fit in the space left after the header and earlier ones.
    #[error("Capability {id:#04x} of {bytes} bytes does not fit at offset {offset:#x}")]
    CapabilitySpaceFull {
        /// The capability ID.
        id: u8,
        /// The capability's size in bytes.
        bytes: usize,
        /// The offset at which it would have been placed.
        offset: usize,
    },
}

/// The identity registers of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID (offset 0x00).
    pub vendor_id: u16,
    /// Device ID (offset 0x02).
    pub device_id: u16,
    /// Revision ID (offset 0x08).
    pub revision_id: u8,
    /// Base class code (offset 0x0b).
    pub class_code: u8,
    /// Sub-class code (offset 0x0a).
    pub subclass: u8,
    /// Programming interface (offset 0x09).
    pub prog_if: u8,
    /// Subsystem vendor ID (offset 0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (offset 0x2e).
    pub subsystem_id: u16,
    /// Interrupt pin (offset 0x3d): 0 for none, 1..=4 for INTA#..INTD#.
    pub interrupt_pin: u8,
}

/// The address width of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Decodes below 4 GiB; one BAR register.
    Memory32,
    /// Decodes anywhere in 64-bit space; two BAR registers, named by the low one.
    Memory64,
}

/// A memory BAR the function implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarConfig {
    /// BAR index, 0..=5 (0..=4 for a 64-bit BAR).
    pub index: u8,
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// Address width.
    pub kind: BarKind,
    /// Whether reads have no side effects, so the host may prefetch and merge writes.
    pub prefetchable: bool,
}

/// What occupies one BAR register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    Unused,
    /// The BAR's first (or only) register.
    Base {
        size: u64,
        kind: BarKind,
    },
    /// The high half of the 64-bit BAR named by the previous register.
    UpperHalf,
}

/// A type-0 configuration space.
///
/// Built by the device (identity, BARs, capabilities), then driven by the guest through
/// [`read_register`](Self::read_register) and [`write_register`](Self::write_register).
#[derive(Clone, Debug)]
pub struct ConfigurationSpace {
    /// What the guest reads.
    registers: [u32; NUM_CONFIGURATION_REGISTERS],
    /// Bits a guest write may set or clear.
    writable_bits: [u32; NUM_CONFIGURATION_REGISTERS],
    /// Bits a guest write of 1 clears (write-1-to-clear); a write of 0 leaves them.
    write_1_to_clear_bits: [u32; NUM_CONFIGURATION_REGISTERS],
    /// `registers` as built, restored by [`reset`](Self::reset).
    reset_registers: [u32; NUM_CONFIGURATION_REGISTERS],
    /// Which BAR registers are used, and how.
    bar_slots: [BarSlot; NUM_BAR_REGISTERS],
    /// The BAR register values the function decodes: the guest's last write that was not a
    /// sizing probe (see the module documentation).
    decoded_bars: [u32; NUM_BAR_REGISTERS],
    /// Byte offset of the last capability added, whose next pointer links a new one.
    last_capability: Option<usize>,
    /// Byte offset where the next capability goes.
    next_capability_offset: usize,
}

impl ConfigurationSpace {
    /// A header with `identity`, no BARs, no capabilities, every decoder off.
    pub fn new(identity: PciIdentity) -> Self {
        let mut space = Self {
            registers: [0; NUM_CONFIGURATION_REGISTERS],
            writable_bits: [0; NUM_CONFIGURATION_REGISTERS],
            write_1_to_clear_bits: [0; NUM_CONFIGURATION_REGISTERS],
            reset_registers: [0; NUM_CONFIGURATION_REGISTERS],
            bar_slots: [BarSlot::Unused; NUM_BAR_REGISTERS],
            decoded_bars: [0; NUM_BAR_REGISTERS],
            last_capability: None,
            next_capability_offset: FIRST_CAPABILITY_OFFSET,
        };
        space.declare(
            REG_ID,
            u32::from(identity.vendor_id) | (u32::from(identity.device_id) << 16),
            0,
            0,
        );
        space.declare(
            REG_COMMAND_STATUS,
            0,
            u32::from(COMMAND_WRITABLE),
            u32::from(STATUS_WRITE_1_TO_CLEAR) << 16,
        );
        space.declare(
            REG_CLASS_REVISION,
            u32::from_le_bytes([
                identity.revision_id,
                identity.prog_if,
                identity.subclass,
                identity.class_code,
            ]),
            0,
            0,
        );
        // Byte 0 is the cache line size, which Linux writes and the function ignores; latency
        // timer, header type (0, single function) and BIST read as zero.
        space.declare(REG_HEADER, 0, 0xff, 0);
        space.declare(
            REG_SUBSYSTEM,
            u32::from(identity.subsystem_vendor_id) | (u32::from(identity.subsystem_id) << 16),
            0,
            0,
        );
        // Interrupt line is a scratch byte for the OS; the pin is fixed.
        space.declare(
            REG_INTERRUPT,
            u32::from(identity.interrupt_pin) << 8,
            0xff,
            0,
        );
        space
    }

    /// Sets a register's reset value and masks.
    fn declare(&mut self, reg: usize, value: u32, writable: u32, write_1_to_clear: u32) {
        self.registers[reg] = value;
        self.reset_registers[reg] = value;
        self.writable_bits[reg] = writable;
        self.write_1_to_clear_bits[reg] = write_1_to_clear;
    }

    /// Declares a memory BAR at address 0 (until the guest or the VMM places it).
    pub fn add_bar(&mut self, bar: BarConfig) -> Result<(), ConfigurationError> {
        let index = bar.index;
        let first = usize::from(index);
        let count = match bar.kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        let slots = self
            .bar_slots
            .get(first..first + count)
            .ok_or(ConfigurationError::BarIndexOutOfRange { index })?;
        if slots.iter().any(|slot| *slot != BarSlot::Unused) {
            return Err(ConfigurationError::BarInUse { index });
        }
        let max_size = match bar.kind {
            BarKind::Memory32 => BAR32_MAX_SIZE,
            BarKind::Memory64 => 1 << 63,
        };
        if !bar.size.is_power_of_two() || bar.size < BAR_MIN_SIZE || bar.size > max_size {
            return Err(ConfigurationError::BarSizeInvalid {
                index,
                size: bar.size,
            });
        }

        let mut info = 0;
        if bar.kind == BarKind::Memory64 {
            info |= BAR_MEMORY_64BIT;
        }
        if bar.prefetchable {
            info |= BAR_PREFETCHABLE;
        }
        // Address bits at and above the size are writable; those below read as zero.
        let address_mask = !(bar.size - 1) & !u64::from(BAR_MEMORY_INFO_MASK);
        // CAST: splitting the 64-bit mask into the low and high BAR registers.
        let (low_mask, high_mask) = (address_mask as u32, (address_mask >> 32) as u32);
        self.declare(REG_BAR0 + first, info, low_mask, 0);
        self.decoded_bars[first] = info;
        self.bar_slots[first] = BarSlot::Base {
            size: bar.size,
            kind: bar.kind,
        };
        if bar.kind == BarKind::Memory64 {
            self.declare(REG_BAR0 + first + 1, 0, high_mask, 0);
            self.bar_slots[first + 1] = BarSlot::UpperHalf;
        }
        Ok(())
    }

    /// Appends a capability to the list and returns its byte offset.
    ///
    /// `registers[0]` bits 15:0 are replaced by the capability ID and the next pointer, which
    /// are read-only; `writable_bits` gives the bits the guest may change in each register.
    pub fn add_capability(
        &mut self,
        id: u8,
        registers: &[u32],
        writable_bits: &[u32],
    ) -> Result<usize, ConfigurationError> {
        if registers.is_empty() || registers.len() != writable_bits.len() {
            return Err(ConfigurationError::CapabilityMalformed {
                id,
                registers: registers.len(),
                writable: writable_bits.len(),
            });
        }
        let offset = self.next_capability_offset;
        let bytes = registers.len() * 4;
        let end = offset
            .checked_add(bytes)
            .filter(|end| *end <= NUM_CONFIGURATION_REGISTERS * 4)
            .ok_or(ConfigurationError::CapabilitySpaceFull { id, bytes, offset })?;
        let first = offset / 4;
        for (i, (value, writable)) in registers.iter().zip(writable_bits).enumerate() {
            self.declare(first + i, *value, *writable, 0);
        }
        self.declare(
            first,
            (registers[0] & !0xffff) | u32::from(id),
            writable_bits[0] & !0xffff,
            0,
        );

        // CAST: offset < 0x100, checked above.
        let link = offset as u8;
        match self.last_capability {
            // The previous capability's next pointer is byte 1 of its first register.
            Some(previous) => self.or_reset_value(previous / 4, u32::from(link) << 8),
            None => {
                self.or_reset_value(REG_CAPABILITY_POINTER, u32::from(link));
                self.or_reset_value(
                    REG_COMMAND_STATUS,
                    u32::from(STATUS_CAPABILITIES_LIST) << 16,
                );
            }
        }
        self.last_capability = Some(offset);
        self.next_capability_offset = end;
        Ok(offset)
    }

    /// Sets read-only bits in a register's reset value and current value.
    fn or_reset_value(&mut self, reg: usize, bits: u32) {
        self.registers[reg] |= bits;
        self.reset_registers[reg] |= bits;
    }

    /// Restores every register to its value after construction: BARs at 0, decoders off,
    /// capabilities in their reset state.
    pub fn reset(&mut self) {
        self.registers = self.reset_registers;
        for (i, decoded) in self.decoded_bars.iter_mut().enumerate() {
            *decoded = self.reset_registers[REG_BAR0 + i];
        }
    }

    /// Reads register `reg` as the guest sees it.
    pub fn read_register(&self, reg: usize) -> Result<u32, ConfigurationError> {
        self.registers
            .get(reg)
            .copied()
            .ok_or(ConfigurationError::RegisterOutOfRange { reg })
    }

    /// The guest writes `data` (1, 2 or 4 bytes) at byte `offset` of register `reg`.
    ///
    /// The only guest write path: bytes outside the access are untouched, read-only bits keep
    /// their value, write-1-to-clear bits are cleared where the data has a 1. A malformed
    /// access changes nothing.
    pub fn write_register(
        &mut self,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ConfigurationError> {
        if reg >= NUM_CONFIGURATION_REGISTERS {
            return Err(ConfigurationError::RegisterOutOfRange { reg });
        }
        let len = data.len();
        let bad_write = ConfigurationError::BadWrite { reg, offset, len };
        let start = usize::try_from(offset).map_err(|_| bad_write)?;
        if !matches!(len, 1 | 2 | 4) || start.checked_add(len).is_none_or(|end| end > 4) {
            return Err(bad_write);
        }
        let mut bytes = [0u8; 4];
        let mut byte_mask = [0u8; 4];
        bytes[start..start + len].copy_from_slice(data);
        byte_mask[start..start + len].fill(0xff);
        self.masked_write(
            reg,
            u32::from_le_bytes(bytes),
            u32::from_le_bytes(byte_mask),
        );
        Ok(())
    }

    /// Merges `value` into register `reg`, within the bytes selected by `byte_mask`.
    fn masked_write(&mut self, reg: usize, value: u32, byte_mask: u32) {
        let writable = self.writable_bits[reg] & byte_mask;
        let cleared = self.write_1_to_clear_bits[reg] & byte_mask & value;
        let old = self.registers[reg];
        let new = ((old & !writable) | (value & writable)) & !cleared;
        self.registers[reg] = new;

        if let Some(bar) = reg.checked_sub(REG_BAR0).filter(|i| *i < NUM_BAR_REGISTERS) {
            let address_bits = self.writable_bits[reg];
            let sizing_probe = address_bits != 0 && new & address_bits == address_bits;
            if !sizing_probe {
                self.decoded_bars[bar] = new;
            }
        }
    }

    /// Reads the 16-bit command register.
    pub fn command(&self) -> u16 {
        // CAST: the command register is the low half of register 1.
        self.registers[REG_COMMAND_STATUS] as u16
    }

    /// Whether the guest enabled memory-space decoding.
    pub fn memory_space_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Whether the guest allowed the function to master the bus (needed for MSI-X).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Every implemented BAR at its decoded address, whether decoding is on or not.
    pub fn bars(&self) -> Vec<BarRegion> {
        let mut bars = Vec::new();
        for (i, slot) in self.bar_slots.iter().enumerate() {
            let BarSlot::Base { size, kind } = *slot else {
                continue;
            };
            let low = u64::from(self.decoded_bars[i] & !BAR_MEMORY_INFO_MASK);
            let high = match kind {
                BarKind::Memory32 => 0,
                BarKind::Memory64 => u64::from(self.decoded_bars[i + 1]),
            };
            // CAST: i < NUM_BAR_REGISTERS = 6.
            let index = i as u8;
            bars.push(BarRegion {
                index,
                base: (high << 32) | low,
                size,
            });
        }
        bars
    }

    /// The BARs the function decodes now: none while memory-space decoding is off.
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        if self.memory_space_enabled() {
            self.bars()
        } else {
            Vec::new()
        }
    }

    /// Places BAR `index` at `address`, as firmware would; the VMM's equivalent of a BIOS
    /// assigning resources before the guest runs.
    pub fn set_bar_address(&mut self, index: u8, address: u64) -> Result<(), ConfigurationError> {
        let i = usize::from(index);
        let Some(BarSlot::Base { size, kind }) = self.bar_slots.get(i).copied() else {
            return Err(ConfigurationError::BarNotImplemented { index });
        };
        let fits = match kind {
            BarKind::Memory32 => address.checked_add(size).is_some_and(|end| end <= 1 << 32),
            BarKind::Memory64 => true,
        };
        if address % size != 0 || !fits {
            return Err(ConfigurationError::BarAddressInvalid {
                index,
                address,
                size,
            });
        }
        let info = self.registers[REG_BAR0 + i] & BAR_MEMORY_INFO_MASK;
        // CAST: splitting the address into the low and high BAR registers.
        let low = (address as u32) | info;
        self.registers[REG_BAR0 + i] = low;
        self.decoded_bars[i] = low;
        if kind == BarKind::Memory64 {
            let high = (address >> 32) as u32;
            self.registers[REG_BAR0 + i + 1] = high;
            self.decoded_bars[i + 1] = high;
        }
        Ok(())
    }

    /// Bits of register `reg` the guest may set or clear (0 outside the space).
    pub fn writable_bits(&self, reg: usize) -> u32 {
        self.writable_bits.get(reg).copied().unwrap_or(0)
    }

    /// Bits of register `reg` a guest write of 1 clears (0 outside the space).
    pub fn write_1_to_clear_bits(&self, reg: usize) -> u32 {
        self.write_1_to_clear_bits.get(reg).copied().unwrap_or(0)
    }

    /// Sets write-1-to-clear status bits, as the function does when it detects an error.
    pub fn set_status_bits(&mut self, bits: u16) {
        let bits = u32::from(bits & STATUS_WRITE_1_TO_CLEAR) << 16;
        self.registers[REG_COMMAND_STATUS] |= bits;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const IDENTITY: PciIdentity = PciIdentity {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision_id: 2,
        class_code: 0x02,
        subclass: 0x80,
        prog_if: 0x01,
        subsystem_vendor_id: 0xabcd,
        subsystem_id: 0xef01,
        interrupt_pin: 1,
    };

    /// A space with a 32-bit 4 KiB BAR 0, a 64-bit prefetchable 16 KiB BAR 2 and a 64-bit
    /// 8 GiB BAR 4.
    fn space_with_bars() -> ConfigurationSpace {
        let mut space = ConfigurationSpace::new(IDENTITY);
        for bar in [
            BarConfig {
                index: 0,
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
            BarConfig {
                index: 2,
                size: 0x4000,
                kind: BarKind::Memory64,
                prefetchable: true,
            },
            BarConfig {
                index: 4,
                size: 8 << 30,
                kind: BarKind::Memory64,
                prefetchable: false,
            },
        ] {
            space.add_bar(bar).expect("test BAR layout is valid");
        }
        space
    }

    fn write32(space: &mut ConfigurationSpace, reg: usize, value: u32) {
        space
            .write_register(reg, 0, &value.to_le_bytes())
            .expect("aligned dword write");
    }

    fn read(space: &ConfigurationSpace, reg: usize) -> u32 {
        space.read_register(reg).expect("register in range")
    }

    fn enable_memory(space: &mut ConfigurationSpace) {
        write32(space, REG_COMMAND_STATUS, u32::from(COMMAND_MEMORY_SPACE));
    }

    #[test]
    fn identity_registers_read_back_as_built() {
        let space = ConfigurationSpace::new(IDENTITY);
        assert_eq!(read(&space, 0), 0x5678_1234);
        assert_eq!(read(&space, 2), 0x0280_0102);
        assert_eq!(read(&space, 3) >> 16 & 0xff, 0, "header type 0");
        assert_eq!(read(&space, 11), 0xef01_abcd);
        assert_eq!(read(&space, 15), 0x0000_0100, "pin INTA, line 0");
    }

    #[test]
    fn identity_registers_ignore_writes() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        for reg in [0, 2, 11] {
            let before = read(&space, reg);
            write32(&mut space, reg, !before);
            assert_eq!(read(&space, reg), before, "register {reg}");
        }
    }

    #[test]
    fn sub_dword_writes_merge_into_their_bytes_only() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        // Interrupt line is byte 0 of register 15; the pin in byte 1 must survive.
        space
            .write_register(15, 0, &[0x0b])
            .expect("byte write at offset 0");
        assert_eq!(read(&space, 15), 0x0000_010b);
        // A word write to the command register at offset 0.
        space
            .write_register(1, 0, &COMMAND_BUS_MASTER.to_le_bytes())
            .expect("word write");
        assert!(space.bus_master_enabled());
        // A byte write to the command register's low byte clears bus master, nothing else.
        space
            .write_register(1, 0, &[0x02])
            .expect("byte write to command");
        assert_eq!(space.command(), COMMAND_MEMORY_SPACE);
    }

    #[test]
    fn malformed_writes_are_refused_and_change_nothing() {
        let mut space = space_with_bars();
        let before = space.registers;
        let cases: [(usize, u64, &[u8]); 6] = [
            (1, 0, &[]),
            (1, 0, &[1, 2, 3]),
            (1, 1, &[1, 2, 3, 4]),
            (1, 3, &[1, 2]),
            (1, 4, &[1]),
            (1, u64::MAX, &[1]),
        ];
        for (reg, offset, data) in cases {
            assert_eq!(
                space.write_register(reg, offset, data),
                Err(ConfigurationError::BadWrite {
                    reg,
                    offset,
                    len: data.len()
                })
            );
        }
        assert_eq!(
            space.write_register(64, 0, &[1]),
            Err(ConfigurationError::RegisterOutOfRange { reg: 64 })
        );
        assert_eq!(space.registers, before);
    }

    #[test]
    fn reads_past_the_space_are_refused() {
        let space = ConfigurationSpace::new(IDENTITY);
        assert_eq!(
            space.read_register(64),
            Err(ConfigurationError::RegisterOutOfRange { reg: 64 })
        );
    }

    #[test]
    fn command_register_keeps_hardwired_bits_zero() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        write32(&mut space, 1, 0x0000_ffff);
        assert_eq!(space.command(), COMMAND_WRITABLE);
    }

    #[test]
    fn status_error_bits_are_write_1_to_clear() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        space.set_status_bits(STATUS_WRITE_1_TO_CLEAR);
        let status = |space: &ConfigurationSpace| read(space, 1) >> 16;
        assert_eq!(status(&space), u32::from(STATUS_WRITE_1_TO_CLEAR));
        // Writing zeros (e.g. a command write that covers the status half) clears nothing.
        write32(&mut space, 1, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(status(&space), u32::from(STATUS_WRITE_1_TO_CLEAR));
        // A word write to the command register alone never touches the status bits.
        space
            .write_register(1, 0, &[0xff, 0xff])
            .expect("word write");
        assert_eq!(status(&space), u32::from(STATUS_WRITE_1_TO_CLEAR));
        // Writing 1 to one bit clears that bit only.
        let received_master_abort: u16 = 1 << 13;
        space
            .write_register(1, 2, &received_master_abort.to_le_bytes())
            .expect("word write to status");
        assert_eq!(
            status(&space),
            u32::from(STATUS_WRITE_1_TO_CLEAR & !received_master_abort)
        );
    }

    #[test]
    fn sizing_probe_of_32_bit_bar_returns_size_mask_and_restore_keeps_address() {
        let mut space = space_with_bars();
        space.set_bar_address(0, 0xfebf_0000).expect("aligned");
        enable_memory(&mut space);
        let original = read(&space, 4);
        assert_eq!(original, 0xfebf_0000);

        write32(&mut space, 4, u32::MAX);
        assert_eq!(read(&space, 4), 0xffff_f000, "size mask of a 4 KiB BAR");
        assert_eq!(
            space.bar_regions()[0].base,
            0xfebf_0000,
            "a probe does not move the decoded BAR"
        );

        write32(&mut space, 4, original);
        assert_eq!(read(&space, 4), original);
        assert_eq!(
            space.bar_regions()[0],
            BarRegion {
                index: 0,
                base: 0xfebf_0000,
                size: 0x1000
            }
        );
    }

    #[test]
    fn sizing_probe_of_64_bit_bar_returns_size_mask_and_restore_keeps_address() {
        let mut space = space_with_bars();
        space.set_bar_address(2, 0x1_2345_c000).expect("aligned");
        let (low, high) = (read(&space, 6), read(&space, 7));
        assert_eq!(low, 0x2345_c000 | BAR_MEMORY_64BIT | BAR_PREFETCHABLE);
        assert_eq!(high, 0x1);

        write32(&mut space, 6, u32::MAX);
        write32(&mut space, 7, u32::MAX);
        assert_eq!(
            read(&space, 6),
            0xffff_c000 | BAR_MEMORY_64BIT | BAR_PREFETCHABLE
        );
        assert_eq!(read(&space, 7), u32::MAX);
        assert_eq!(space.bars()[1].base, 0x1_2345_c000);

        write32(&mut space, 6, low);
        write32(&mut space, 7, high);
        assert_eq!((read(&space, 6), read(&space, 7)), (low, high));
        assert_eq!(space.bars()[1].base, 0x1_2345_c000);
    }

    #[test]
    fn bar_larger_than_4_gib_has_read_only_low_address_bits() {
        let mut space = space_with_bars();
        write32(&mut space, 8, u32::MAX);
        write32(&mut space, 9, u32::MAX);
        assert_eq!(read(&space, 8), BAR_MEMORY_64BIT, "no writable low bits");
        assert_eq!(read(&space, 9), 0xffff_fffe, "8 GiB size mask");
    }

    #[test]
    fn guest_can_move_a_bar_and_address_bits_below_size_read_zero() {
        let mut space = space_with_bars();
        write32(&mut space, 4, 0xc000_0fff);
        assert_eq!(read(&space, 4), 0xc000_0000);
        assert_eq!(space.bars()[0].base, 0xc000_0000);
    }

    #[test]
    fn memory_space_enable_gates_bar_regions() {
        let mut space = space_with_bars();
        assert!(space.bar_regions().is_empty());
        enable_memory(&mut space);
        assert_eq!(space.bar_regions().len(), 3);
        write32(&mut space, 1, 0);
        assert!(space.bar_regions().is_empty());
        assert_eq!(space.bars().len(), 3, "declared BARs stay listed");
    }

    #[test]
    fn bad_bar_layouts_are_refused() {
        let mut space = space_with_bars();
        let bar = |index, size, kind| BarConfig {
            index,
            size,
            kind,
            prefetchable: false,
        };
        assert_eq!(
            space.add_bar(bar(3, 0x1000, BarKind::Memory32)),
            Err(ConfigurationError::BarInUse { index: 3 })
        );
        assert_eq!(
            space.add_bar(bar(6, 0x1000, BarKind::Memory32)),
            Err(ConfigurationError::BarIndexOutOfRange { index: 6 })
        );
        let mut fresh = ConfigurationSpace::new(IDENTITY);
        assert_eq!(
            fresh.add_bar(bar(5, 0x1000, BarKind::Memory64)),
            Err(ConfigurationError::BarIndexOutOfRange { index: 5 })
        );
        for size in [0, 8, 0x1800, 1 << 32] {
            assert_eq!(
                fresh.add_bar(bar(0, size, BarKind::Memory32)),
                Err(ConfigurationError::BarSizeInvalid { index: 0, size })
            );
        }
    }

    #[test]
    fn bad_bar_addresses_are_refused() {
        let mut space = space_with_bars();
        assert_eq!(
            space.set_bar_address(0, 0x800),
            Err(ConfigurationError::BarAddressInvalid {
                index: 0,
                address: 0x800,
                size: 0x1000
            })
        );
        assert_eq!(
            space.set_bar_address(0, 1 << 32),
            Err(ConfigurationError::BarAddressInvalid {
                index: 0,
                address: 1 << 32,
                size: 0x1000
            })
        );
        assert_eq!(
            space.set_bar_address(3, 0),
            Err(ConfigurationError::BarNotImplemented { index: 3 })
        );
    }

    /// Walks the capability list the way a guest does; returns (ID, offset) pairs.
    fn walk_capabilities(space: &ConfigurationSpace) -> Vec<(u8, usize)> {
        let mut found = Vec::new();
        if read(space, 1) >> 16 & u32::from(STATUS_CAPABILITIES_LIST) == 0 {
            return found;
        }
        let mut offset = (read(space, CAPABILITY_POINTER_OFFSET / 4) & 0xfc) as usize;
        while offset != 0 && found.len() < 48 {
            let header = read(space, offset / 4);
            found.push(((header & 0xff) as u8, offset));
            offset = (header >> 8 & 0xfc) as usize;
        }
        found
    }

    #[test]
    fn capability_list_links_capabilities_in_order() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        assert!(walk_capabilities(&space).is_empty());
        let first = space
            .add_capability(0x09, &[0xdead_0000], &[0])
            .expect("fits");
        let second = space
            .add_capability(0x11, &[0, 0, 0], &[0xc000_0000, 0, 0])
            .expect("fits");
        assert_eq!((first, second), (0x40, 0x44));
        assert_eq!(walk_capabilities(&space), vec![(0x09, 0x40), (0x11, 0x44)]);
        assert_eq!(read(&space, 0x40 / 4), 0xdead_4409, "next pointer set");
    }

    #[test]
    fn capability_header_bytes_are_read_only() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        space
            .add_capability(0x11, &[0, 0, 0], &[0xffff_ffff, 0, 0])
            .expect("fits");
        write32(&mut space, 0x10, 0xffff_ffff);
        assert_eq!(read(&space, 0x10), 0xffff_0011);
    }

    #[test]
    fn capabilities_that_do_not_fit_are_refused() {
        let mut space = ConfigurationSpace::new(IDENTITY);
        assert_eq!(
            space.add_capability(0x11, &[0; 3], &[0; 2]),
            Err(ConfigurationError::CapabilityMalformed {
                id: 0x11,
                registers: 3,
                writable: 2
            })
        );
        assert_eq!(
            space.add_capability(0x11, &[0; 49], &[0; 49]),
            Err(ConfigurationError::CapabilitySpaceFull {
                id: 0x11,
                bytes: 196,
                offset: 0x40
            })
        );
        space
            .add_capability(0x11, &[0; 48], &[0; 48])
            .expect("fits");
    }

    #[test]
    fn reset_restores_built_values_and_clears_bar_addresses() {
        let mut space = space_with_bars();
        space
            .add_capability(0x11, &[0, 0, 0], &[0xc000_0000, 0, 0])
            .expect("fits");
        let built = space.registers;
        space.set_bar_address(2, 0x8000_0000).expect("aligned");
        write32(&mut space, 1, 0xffff);
        write32(&mut space, 0x10, 0xffff_ffff);
        space.reset();
        assert_eq!(space.registers, built);
        assert!(space.bars().iter().all(|bar| bar.base == 0));
    }

    proptest! {
        #[test]
        fn random_writes_never_panic_nor_change_read_only_bits(
            writes in proptest::collection::vec(
                (0usize..70, 0u64..6, proptest::collection::vec(any::<u8>(), 0..6)),
                1..64,
            )
        ) {
            let mut space = space_with_bars();
            space
                .add_capability(0x11, &[0x0003_0000, 0x2000, 0x3000], &[0xc000_0000, 0, 0])
                .expect("fits");
            for (reg, offset, data) in writes {
                let before = space.registers;
                let _ = space.write_register(reg, offset, &data);
                for (i, (old, new)) in before.iter().zip(space.registers.iter()).enumerate() {
                    let read_only = !space.writable_bits[i] & !space.write_1_to_clear_bits[i];
                    prop_assert_eq!(old & read_only, new & read_only, "register {}", i);
                    // Write-1-to-clear bits can only go from 1 to 0.
                    let w1c = space.write_1_to_clear_bits[i];
                    prop_assert_eq!(new & w1c & !old, 0, "register {}", i);
                }
            }
        }
    }
}
