//! Random guest input at device level: whatever the guest writes into the command queue or
//! BAR0, the device never panics, never hangs, and keeps answering.

use proptest::prelude::*;

use crate::commands::{CommandRecord, COMMAND_SIZE};
use crate::regs::*;
use crate::tests::harness::Harness;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_commands_never_panic(
        commands in proptest::collection::vec(
            (0u8..12, any::<u8>(), 0u64..0x2_0000, 0u64..0x2_0000, 0u64..0x3000, any::<u64>(), any::<u64>()),
            1..12,
        ),
        garbage in proptest::collection::vec(any::<u8>(), COMMAND_SIZE),
    ) {
        let mut h = Harness::new();
        let mut rings = h.bring_up(0, 64);
        let mut queue = h.open_context(0, 1, 32);
        let frames = h.alloc(0x1_0000, 4096);
        h.map_4k(0, 0, frames, 8);
        h.drop_in(0, 0x1_0000, frames, DROPIN_ATTR_READ);
        for (i, (opcode, flags, addr0, addr1, length, operand0, operand1)) in commands.into_iter().enumerate() {
            let record = CommandRecord {
                opcode,
                flags: flags & 1,
                id: i as u64,
                addr0,
                addr1,
                length,
                operand0,
                operand1,
            };
            h.post(&mut queue, &record);
        }
        // One command of raw garbage.
        let slot = h.post(&mut queue, &CommandRecord::default()) - 64;
        h.write_mem(slot, &garbage);
        h.doorbell(&queue);
        h.wait_idle();
        // Without a fault ring every command completes; the context is ACTIVE or (only for
        // queue-level problems) ERROR, never wedged.
        prop_assert!(matches!(h.ctx_state(0), CTX_STATE_ACTIVE | CTX_STATE_ERROR));
        h.invalidate(&mut rings, crate::invalidation::InvalidationDescriptor::global(0));
        prop_assert_eq!(h.read32(REG_ID), RMNIC_ID_MAGIC);
    }

    #[test]
    fn random_register_writes_never_panic(
        writes in proptest::collection::vec((0u64..0x8000, any::<u32>()), 1..200),
    ) {
        let mut h = Harness::new();
        h.bring_up(16, 16);
        h.open_context(0, 1, 16);
        for (offset, value) in writes {
            let offset = offset & !3;
            // Keep the MSI-X table and the reset bit out: they are tested elsewhere, and
            // reset makes the rest of the sequence trivial.
            if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET + 0x1000).contains(&offset) {
                continue;
            }
            let value = if offset == REG_DEV_CONTROL { value & DEV_CONTROL_ENABLE } else { value };
            h.write32(offset, value);
            let _ = h.read32(offset);
        }
        h.wait_idle();
        prop_assert_eq!(h.read32(REG_ID), RMNIC_ID_MAGIC);
    }
}
