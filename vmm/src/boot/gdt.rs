//! The boot GDT and the segment registers derived from it (64-bit code, flat data, TSS).

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x18;

/// A descriptor from its flags (access byte in bits 0..8, flags nibble in 12..16),
/// 32-bit base and 20-bit limit, in the layout of the Intel SDM, Vol. 3A, 3.4.5.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Null, 64-bit code (L=1), data, TSS: the table written at `BOOT_GDT_START`.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The hidden part of a segment register loaded from descriptor `entry` at `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages; KVM wants bytes.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64bit_present_execute_read() {
        let cs = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
    }

    #[test]
    fn data_segment_is_flat_read_write() {
        let ds = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
        assert_eq!(
            (ds.db, ds.type_, ds.limit, ds.unusable),
            (1, 3, 0xffff_ffff, 0)
        );
    }

    #[test]
    fn gdt_entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x008b, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, TSS_SELECTOR);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.type_, 0xb);
        assert_eq!(s.limit, 0xabcde, "byte granularity keeps the raw limit");
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
