//! Intel MultiProcessor Specification 1.4 tables: how Linux finds every vCPU, the IOAPIC
//! and the ISA interrupt wiring without ACPI.
//!
//! Layout at [`MPTABLE_START`](super::layout::MPTABLE_START) (inside the 0xF0000 BIOS area
//! Linux scans): the 16-byte floating pointer, then the configuration table with one
//! processor entry per vCPU (APIC ID = vCPU index), a PCI bus (ID 0, matching PCI bus 0)
//! and an ISA bus (ID 1), the IOAPIC, ISA IRQ 0..=15 → IOAPIC pin 0..=15 (the same wiring
//! as KVM's default GSI routes), LINT0 ExtINT and LINT1 NMI.

use super::layout::{APIC_START, IOAPIC_START};

/// Largest vCPU count the table (and xAPIC IDs below the IOAPIC's) supports here.
pub const MAX_CPUS: u32 = 254;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 in the processor signature; Linux only prints it.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX FPU and APIC bits.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const SPEC_REVISION: u8 = 4;

/// MP bus ID of PCI bus 0 (must equal the PCI bus number).
pub const BUS_ID_PCI: u8 = 0;
/// MP bus ID of the ISA bus.
pub const BUS_ID_ISA: u8 = 1;
/// Number of legacy ISA IRQs described.
pub const ISA_IRQS: u8 = 16;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// The vCPU count is zero or above [`MAX_CPUS`].
    #[error("MP table cannot describe {0} vCPUs (1..={MAX_CPUS})")]
    CpuCount(u32),
    /// The table would not fit in a 32-bit address.
    #[error("MP table at {0:#x} is not addressable with 32 bits")]
    Address(u64),
}

/// The bytes to write at `base`: floating pointer immediately followed by the
/// configuration table, both checksummed.
pub fn build(base: u64, num_cpus: u32) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let table_addr = u32::try_from(base + FLOATING_POINTER_LEN as u64)
        .map_err(|_| MptableError::Address(base))?;
    let ioapic_id = u8::try_from(num_cpus).map_err(|_| MptableError::CpuCount(num_cpus))?;

    let small_entries = 2 + 1 + usize::from(ISA_IRQS) + 2; // buses, IOAPIC, IRQs, LINTs
    let mut entries: Vec<u8> = Vec::with_capacity(
        usize::from(ioapic_id) * PROCESSOR_ENTRY_LEN + small_entries * SMALL_ENTRY_LEN,
    );
    let mut count: u16 = 0;
    for cpu in 0..ioapic_id {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(BUS_ID_PCI, b"PCI   "), (BUS_ID_ISA, b"ISA   ")] {
        entries.extend_from_slice(&[ENTRY_BUS, id]);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // Flags 0: polarity and trigger conform to the ISA bus (active high, edge).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, IRQ_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[BUS_ID_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    for (ty, lint) in [(IRQ_TYPE_EXTINT, 0u8), (IRQ_TYPE_NMI, 1)] {
        // Destination 0xFF: every local APIC.
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, ty, 0, 0]);
        entries.extend_from_slice(&[BUS_ID_ISA, 0, 0xff, lint]);
        count += 1;
    }

    let table_len =
        u16::try_from(HEADER_LEN + entries.len()).map_err(|_| MptableError::CpuCount(num_cpus))?;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REVISION, 0]); // checksum patched below
    table.extend_from_slice(b"RMNIC   ");
    table.extend_from_slice(b"RMNIC-VMM   ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum
    table.extend_from_slice(&entries);
    table[7] = checksum_fix(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum_fix(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// The byte that makes `bytes` (with that byte still zero) sum to 0 mod 256.
fn checksum_fix(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    /// (type, bytes) of every entry after the header.
    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = &table[HEADER_LEN..];
        while let Some(&ty) = rest.first() {
            let len = if ty == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_LEN
            } else {
                SMALL_ENTRY_LEN
            };
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for cpus in [1, 2, 7, 64, MAX_CPUS] {
            let b = build(0xf_0000, cpus).expect("build");
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..FLOATING_POINTER_LEN]), 0, "fp, {cpus} cpus");
            let table = &b[FLOATING_POINTER_LEN..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table, {cpus} cpus");
        }
    }

    #[test]
    fn floating_pointer_points_at_table() {
        let b = build(0xf_0000, 2).expect("build");
        assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 0xf_0010);
        assert_eq!(b[8], 1, "length in paragraphs");
        assert_eq!(b[9], 4, "spec revision 1.4");
    }

    #[test]
    fn one_enabled_processor_entry_per_vcpu_with_bsp_first() {
        let b = build(0xf_0000, 4).expect("build");
        let table = &b[FLOATING_POINTER_LEN..];
        let cpus: Vec<_> = entries(table)
            .into_iter()
            .filter(|e| e[0] == ENTRY_PROCESSOR)
            .collect();
        assert_eq!(cpus.len(), 4);
        for (i, e) in cpus.iter().enumerate() {
            assert_eq!(e[1] as usize, i, "APIC ID");
            assert_eq!(e[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(e[3] & CPU_BOOT_PROCESSOR != 0, i == 0);
        }
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        assert_eq!(count, entries(table).len());
    }

    #[test]
    fn ioapic_follows_cpu_ids_and_isa_irqs_map_to_same_pin() {
        let b = build(0xf_0000, 3).expect("build");
        let all = entries(&b[FLOATING_POINTER_LEN..]);
        let ioapic: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(ioapic[0][1], 3);
        assert_eq!(
            u32::from_le_bytes([ioapic[0][4], ioapic[0][5], ioapic[0][6], ioapic[0][7]]),
            0xfec0_0000
        );
        let irqs: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_IO_INTERRUPT).collect();
        assert_eq!(irqs.len(), usize::from(ISA_IRQS));
        for e in irqs {
            assert_eq!(e[4], BUS_ID_ISA);
            assert_eq!(e[5], e[7], "ISA IRQ n on IOAPIC pin n");
            assert_eq!(e[6], 3, "destination is the IOAPIC");
        }
        let buses: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_BUS).collect();
        assert_eq!(&buses[0][2..], b"PCI   ");
        assert_eq!(buses[0][1], 0);
    }

    #[test]
    fn zero_or_too_many_cpus_is_an_error() {
        assert_eq!(build(0xf_0000, 0), Err(MptableError::CpuCount(0)));
        assert_eq!(build(0xf_0000, 255), Err(MptableError::CpuCount(255)));
        assert!(matches!(build(1 << 32, 1), Err(MptableError::Address(_))));
    }
}
