//! Every register of both tables, through BAR0: reset values, writable bits, read-only and
//! write-only behaviour (side effects are tested with the sequences that use them).

use crate::regs::*;
use crate::stats::{CONTEXT_COUNTERS, GLOBAL_COUNTERS};
use crate::tests::harness::Harness;

/// Registers whose writes have side effects beyond storing the value.
const SIDE_EFFECTS: [u64; 5] = [
    REG_DEV_CONTROL,
    REG_DEV_ERROR,
    REG_FAULT_TAIL,
    REG_INVQ_TAIL,
    REG_REMOTE_ANSWER,
];

#[test]
fn every_register_and_counter_reads_its_reset_value_through_bar0() {
    let mut h = Harness::new();
    for register in &GLOBAL_REGISTERS {
        assert_eq!(
            h.read32(register.offset),
            register.reset,
            "{}",
            register.name
        );
    }
    for ctx in [0, 37, NUM_CONTEXTS - 1] {
        for register in &CONTEXT_REGISTERS {
            let offset = Harness::ctx_offset(ctx, register.offset);
            assert_eq!(
                h.read32(offset),
                register.reset,
                "{} of {ctx}",
                register.name
            );
        }
        for counter in &CONTEXT_COUNTERS {
            assert_eq!(
                h.read64(Harness::ctx_offset(ctx, counter.offset)),
                0,
                "{}",
                counter.name
            );
        }
    }
    for counter in &GLOBAL_COUNTERS {
        assert_eq!(h.read64(counter.offset), 0, "{}", counter.name);
    }
    // Unassigned offsets of both windows read 0.
    for offset in [0x020, 0x0fc, 0x158, 0xffc] {
        assert_eq!(h.read32(offset), 0);
    }
    assert_eq!(h.read32(Harness::ctx_offset(5, 0x7c)), 0);
    assert_eq!(h.read32(Harness::ctx_offset(5, 0xfc)), 0);
    assert_eq!(h.device.access_errors(), 0);
}

#[test]
fn every_storing_register_keeps_exactly_its_writable_bits() {
    let mut h = Harness::new();
    for register in &GLOBAL_REGISTERS {
        if SIDE_EFFECTS.contains(&register.offset) || register.live {
            continue;
        }
        h.write32(register.offset, u32::MAX);
        let expected = match register.access {
            Access::ReadOnly => register.reset,
            _ => register.writable,
        };
        assert_eq!(h.read32(register.offset), expected, "{}", register.name);
        h.write32(register.offset, 0);
    }
    for register in &CONTEXT_REGISTERS {
        if register.offset == CTX_CONTROL || register.live {
            continue;
        }
        let offset = Harness::ctx_offset(9, register.offset);
        h.write32(offset, u32::MAX);
        let expected = match register.access {
            Access::ReadOnly | Access::WriteOnly => 0,
            _ => register.writable,
        };
        assert_eq!(h.read32(offset), expected, "{}", register.name);
        h.write32(offset, 0);
    }
}

#[test]
fn live_and_read_only_registers_ignore_writes() {
    let mut h = Harness::new();
    h.bring_up(16, 16);
    h.open_context(1, 1, 16);
    for register in GLOBAL_REGISTERS.iter().chain(CONTEXT_REGISTERS.iter()) {
        if register.access != Access::ReadOnly {
            continue;
        }
        let offset = if CONTEXT_REGISTERS.contains(register) {
            Harness::ctx_offset(1, register.offset)
        } else {
            register.offset
        };
        let before = h.read32(offset);
        h.write32(offset, !before);
        assert_eq!(h.read32(offset), before, "{}", register.name);
    }
    for counter in &GLOBAL_COUNTERS {
        h.write64(counter.offset, u64::MAX);
        assert_ne!(h.read64(counter.offset), u64::MAX, "{}", counter.name);
    }
}

#[test]
fn qword_accesses_reach_both_halves_of_a_register_pair() {
    let mut h = Harness::new();
    h.write64(Harness::ctx_offset(2, DROPIN_VA_LO), 0x1234_5678_9abc_d000);
    assert_eq!(h.ctx_read32(2, DROPIN_VA_LO), 0x9abc_d000);
    assert_eq!(h.ctx_read32(2, DROPIN_VA_HI), 0x1234_5678);
    assert_eq!(
        h.read64(Harness::ctx_offset(2, DROPIN_VA_LO)),
        0x1234_5678_9abc_d000
    );
}

#[test]
fn illegal_widths_in_the_context_window_read_all_ones_and_count() {
    use crate::pci::PciDevice;
    let mut h = Harness::new();
    let offset = Harness::ctx_offset(3, CTX_ASID);
    let mut data = [0u8; 2];
    h.device.read_bar(0, offset, &mut data);
    assert_eq!(data, [0xff; 2]);
    h.device.write_bar(0, offset, &[1, 2]);
    h.device.write_bar(0, offset + 2, &[1, 2, 3, 4]);
    assert_eq!(h.ctx_read32(3, CTX_ASID), 0);
    assert_eq!(h.device.access_errors(), 3);
}
