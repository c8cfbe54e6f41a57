//! The error codes the device reports to the driver: in `REG_DEV_ERROR` for device-level
//! errors, in `CTX_STATUS` bits 15:8 for context errors. One code space for both.

/// Why the device or a context stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Device: the fault ring configuration was invalid when the device was enabled.
    FaultRingConfig = 1,
    /// Device: the invalidation queue configuration was invalid when the device was enabled.
    InvqConfig = 2,
    /// Device: a malformed invalidation descriptor (kind, flags, reserved fields, range).
    InvDescriptor = 3,
    /// Device: an invalidation descriptor's sequence number did not increase.
    InvSequence = 4,
    /// Device: `REG_INVQ_TAIL` moved backwards or more than the queue size ahead of the head,
    /// or was written with no queue configured.
    InvqTail = 5,
    /// Device: `REG_FAULT_TAIL` moved backwards or past `REG_FAULT_HEAD`.
    FaultTail = 6,
    /// Device: a DMA of the device itself failed (fault record, invalidation descriptor, done
    /// word).
    Dma = 7,
    /// Context: the command queue configuration was invalid at enable.
    QueueConfig = 8,
    /// Context: another enabled context uses the same ASID.
    AsidInUse = 9,
    /// Context: the available ring index moved more than the queue size.
    AvailIndex = 10,
    /// Context: a malformed descriptor chain (count, direction, lengths).
    DescriptorChain = 11,
    /// Context: a DMA of the command queue (rings, command, completion record) failed.
    QueueDma = 12,
    /// Context: a drop-in with unaligned addresses, no permission, or a frame outside RAM.
    DropIn = 13,
    /// Context: an undefined `CTX_COMMAND` or an ABORT with an undefined status.
    ContextCommand = 14,
}

impl ErrorCode {
    /// The code as the registers carry it.
    pub const fn code(self) -> u16 {
        self as u16
    }
}

/// Every code by its specification name, for the drift test.
pub const SPEC_CONSTANTS: [(&str, u64); 14] = [
    ("ERR_FAULT_RING_CONFIG", ErrorCode::FaultRingConfig as u64),
    ("ERR_INVQ_CONFIG", ErrorCode::InvqConfig as u64),
    ("ERR_INV_DESCRIPTOR", ErrorCode::InvDescriptor as u64),
    ("ERR_INV_SEQUENCE", ErrorCode::InvSequence as u64),
    ("ERR_INVQ_TAIL", ErrorCode::InvqTail as u64),
    ("ERR_FAULT_TAIL", ErrorCode::FaultTail as u64),
    ("ERR_DMA", ErrorCode::Dma as u64),
    ("ERR_QUEUE_CONFIG", ErrorCode::QueueConfig as u64),
    ("ERR_ASID_IN_USE", ErrorCode::AsidInUse as u64),
    ("ERR_AVAIL_INDEX", ErrorCode::AvailIndex as u64),
    ("ERR_DESCRIPTOR_CHAIN", ErrorCode::DescriptorChain as u64),
    ("ERR_QUEUE_DMA", ErrorCode::QueueDma as u64),
    ("ERR_DROPIN", ErrorCode::DropIn as u64),
    ("ERR_CONTEXT_COMMAND", ErrorCode::ContextCommand as u64),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fit_the_8_bit_context_status_field() {
        assert!(SPEC_CONSTANTS
            .iter()
            .all(|(_, code)| *code > 0 && *code < 256));
    }
}
