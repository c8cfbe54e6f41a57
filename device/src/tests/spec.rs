//! The specification as a whole against the code: every constant and counter the document
//! names exists in the code with the same value, and the other way round.

use std::collections::BTreeMap;

use crate::engine::access::ACCESS_MAX_BYTES;
use crate::regs::*;
use crate::rmnic::*;
use crate::spec_doc::{constants, counter_rows, CounterRow};
use crate::stats::{CONTEXT_COUNTERS, GLOBAL_COUNTERS};

/// Every named value the specification's constant tables may hold.
fn code_constants() -> BTreeMap<String, u64> {
    let mut all: Vec<(&str, u64)> = vec![
        ("RMNIC_VENDOR_ID", u64::from(RMNIC_VENDOR_ID)),
        ("RMNIC_DEVICE_ID", u64::from(RMNIC_DEVICE_ID)),
        ("RMNIC_REVISION_ID", u64::from(RMNIC_REVISION_ID)),
        ("RMNIC_CLASS_CODE", u64::from(RMNIC_CLASS_CODE)),
        ("RMNIC_SUBCLASS", u64::from(RMNIC_SUBCLASS)),
        ("RMNIC_PROG_IF", u64::from(RMNIC_PROG_IF)),
        ("RMNIC_MSIX_VECTORS", u64::from(RMNIC_MSIX_VECTORS)),
        ("VECTOR_FAULT", u64::from(VECTOR_FAULT)),
        ("VECTOR_COMPLETION", u64::from(VECTOR_COMPLETION)),
        ("VECTOR_INVALIDATION", u64::from(VECTOR_INVALIDATION)),
        ("VECTOR_ERROR", u64::from(VECTOR_ERROR)),
        ("BAR0_SIZE", BAR0_SIZE),
        ("REGISTER_WINDOW_SIZE", REGISTER_WINDOW_SIZE),
        ("MSIX_TABLE_OFFSET", MSIX_TABLE_OFFSET),
        ("MSIX_PBA_OFFSET", MSIX_PBA_OFFSET),
        ("CTX_BLOCK_BASE", CTX_BLOCK_BASE),
        ("CTX_BLOCK_SIZE", CTX_BLOCK_SIZE),
        ("NUM_CONTEXTS", NUM_CONTEXTS as u64),
        ("UQ_DOORBELL_BASE", UQ_DOORBELL_BASE),
        ("UQ_DOORBELL_STRIDE", UQ_DOORBELL_STRIDE),
        ("INLINE_SLOT_SIZE", INLINE_SLOT_SIZE),
        ("INLINE_TAIL_OFFSET", INLINE_TAIL_OFFSET),
        ("INLINE_HEAD_OFFSET", INLINE_HEAD_OFFSET),
        ("REG_STATS_BASE", REG_STATS_BASE),
        ("CTX_STATS_BASE", CTX_STATS_BASE),
        ("RMNIC_ID_MAGIC", u64::from(RMNIC_ID_MAGIC)),
        ("RMNIC_SPEC_VERSION", u64::from(RMNIC_SPEC_VERSION)),
        ("RMNIC_CAPS", u64::from(RMNIC_CAPS)),
        ("TLB_GEOMETRY_DEFAULT", u64::from(TLB_GEOMETRY_DEFAULT)),
        ("CQ_MAX_SIZE", u64::from(CQ_MAX_SIZE)),
        ("ACCESS_MAX_BYTES", ACCESS_MAX_BYTES),
    ];
    for (name, value) in [
        ("CAPS_CONTEXTS_MASK", CAPS_CONTEXTS_MASK),
        ("CAPS_HUGE_PAGES", CAPS_HUGE_PAGES),
        ("CAPS_SEGMENTS", CAPS_SEGMENTS),
        ("CAPS_DROPIN_LIST", CAPS_DROPIN_LIST),
        ("CAPS_INLINE_QUEUE", CAPS_INLINE_QUEUE),
        ("CQ_FORMAT_SPLIT", CQ_FORMAT_SPLIT),
        ("CQ_FORMAT_INLINE", CQ_FORMAT_INLINE),
        ("CAPS_VECTORS_MASK", CAPS_VECTORS_MASK),
        ("TLB_GEOMETRY_SETS_MASK", TLB_GEOMETRY_SETS_MASK),
        ("TLB_GEOMETRY_WAYS_MASK", TLB_GEOMETRY_WAYS_MASK),
        ("DEV_STATUS_ENABLED", DEV_STATUS_ENABLED),
        ("DEV_STATUS_ERROR", DEV_STATUS_ERROR),
        ("DEV_ERROR_CODE_MASK", DEV_ERROR_CODE_MASK),
        ("DEV_CONTROL_ENABLE", DEV_CONTROL_ENABLE),
        ("DEV_CONTROL_FLR", DEV_CONTROL_FLR),
        ("CTX_CONTROL_ENABLE", CTX_CONTROL_ENABLE),
        ("CTX_STATUS_STATE_MASK", CTX_STATUS_STATE_MASK),
        ("CTX_STATUS_ERROR_MASK", CTX_STATUS_ERROR_MASK),
        ("CTX_STATE_FREE", CTX_STATE_FREE),
        ("CTX_STATE_ACTIVE", CTX_STATE_ACTIVE),
        ("CTX_STATE_FAULTED", CTX_STATE_FAULTED),
        ("CTX_STATE_ERROR", CTX_STATE_ERROR),
        ("CTX_ASID_MASK", CTX_ASID_MASK),
        ("CQ_READY_BIT", CQ_READY_BIT),
        ("DROPIN_ATTR_READ", DROPIN_ATTR_READ),
        ("DROPIN_ATTR_WRITE", DROPIN_ATTR_WRITE),
        ("DROPIN_ATTR_2M", DROPIN_ATTR_2M),
        ("CTX_COMMAND_OP_MASK", CTX_COMMAND_OP_MASK),
        ("CTX_CMD_ABORT_STATUS_MASK", CTX_CMD_ABORT_STATUS_MASK),
        ("CTX_CMD_DROPIN", CTX_CMD_DROPIN),
        ("CTX_CMD_RESUME", CTX_CMD_RESUME),
        ("CTX_CMD_ABORT", CTX_CMD_ABORT),
        ("CTX_CMD_DROPIN_LIST", CTX_CMD_DROPIN_LIST),
        ("DROPIN_LIST_MAX", DROPIN_LIST_MAX),
        ("FAULT_INFO_ACCESS_MASK", FAULT_INFO_ACCESS_MASK),
        ("FAULT_INFO_REASON_MASK", FAULT_INFO_REASON_MASK),
        ("FAULT_INFO_SEGMENT", FAULT_INFO_SEGMENT),
        ("FAULT_INFO_SLOT_MASK", FAULT_INFO_SLOT_MASK),
    ] {
        all.push((name, u64::from(value)));
    }
    all.push(("DROPIN_RECORD_SIZE", DROPIN_RECORD_SIZE));
    all.extend(crate::commands::SPEC_CONSTANTS);
    all.extend(crate::fault_ring::SPEC_CONSTANTS);
    all.extend(crate::invalidation::SPEC_CONSTANTS);
    all.extend(crate::error_code::SPEC_CONSTANTS);
    all.extend(crate::segments::SPEC_CONSTANTS);
    all.extend(crate::fabric::SPEC_CONSTANTS);
    all.into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

#[test]
fn every_constant_of_the_specification_is_the_codes_and_every_code_constant_is_documented() {
    let documented: BTreeMap<String, u64> = constants().into_iter().collect();
    let code = code_constants();
    for (name, value) in &documented {
        assert_eq!(
            code.get(name),
            Some(value),
            "docs/device-spec.md names {name}"
        );
    }
    for (name, value) in &code {
        assert_eq!(
            documented.get(name),
            Some(value),
            "{name} is not documented"
        );
    }
}

fn rows(table: &[crate::stats::CounterSpec]) -> Vec<CounterRow> {
    table
        .iter()
        .map(|spec| CounterRow {
            offset: spec.offset,
            name: spec.name.to_string(),
        })
        .collect()
}

#[test]
fn specification_counter_tables_match_the_code() {
    assert_eq!(counter_rows("STAT_"), rows(&GLOBAL_COUNTERS));
    assert_eq!(counter_rows("CTX_STAT_"), rows(&CONTEXT_COUNTERS));
}
