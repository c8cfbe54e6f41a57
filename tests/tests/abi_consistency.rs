//! The kernel module cannot depend on the device crate, so it keeps its own copy of the
//! register map (`guest-driver/module/regs.rs`). This test keeps the copy honest.

use std::collections::HashMap;

fn driver_constants() -> HashMap<String, u64> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/module/regs.rs"
    );
    let text = std::fs::read_to_string(path).expect("driver regs.rs is part of the repository");
    let mut consts = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub(crate) const ") else {
            continue;
        };
        let (name, value) = rest.split_once(':').expect("const NAME: type = value;");
        let value = value.split('=').nth(1).expect("has a value").trim();
        let value = value.trim_end_matches(';').replace('_', "");
        let parsed = match (value.strip_prefix("0x"), value.split_once("<<")) {
            (Some(hex), _) => u64::from_str_radix(hex, 16).expect("hex constant"),
            (None, Some((a, b))) => {
                let a: u64 = a.trim().parse().expect("shift base");
                let b: u32 = b.trim().parse().expect("shift amount");
                a << b
            }
            (None, None) => value.parse().expect("numeric constant"),
        };
        consts.insert(name.trim().to_string(), parsed);
    }
    consts
}

/// `(name, value)` pairs of device-model constants, named as the driver names them.
macro_rules! device_constants {
    ($($path:path as $name:ident),* $(,)?) => {
        vec![$((stringify!($name), ($path) as u64)),*]
    };
}

#[test]
fn every_driver_constant_matches_the_device_model() {
    use rmnic_device::{
        commands as c, fabric as fab, fault_ring as f, invalidation as i, regs as r, segments as s,
    };
    let device: HashMap<&str, u64> = device_constants![
        r::BAR0_SIZE as BAR0_SIZE,
        r::REG_ID as REG_ID,
        r::REG_VERSION as REG_VERSION,
        r::REG_SCRATCH as REG_SCRATCH,
        r::REG_CAPS as REG_CAPS,
        r::REG_DEV_CONTROL as REG_DEV_CONTROL,
        r::REG_DEV_STATUS as REG_DEV_STATUS,
        r::REG_DEV_ERROR as REG_DEV_ERROR,
        r::REG_FAULT_BASE_LO as REG_FAULT_BASE_LO,
        r::REG_FAULT_BASE_HI as REG_FAULT_BASE_HI,
        r::REG_FAULT_SIZE as REG_FAULT_SIZE,
        r::REG_FAULT_HEAD as REG_FAULT_HEAD,
        r::REG_FAULT_TAIL as REG_FAULT_TAIL,
        r::REG_INVQ_BASE_LO as REG_INVQ_BASE_LO,
        r::REG_INVQ_BASE_HI as REG_INVQ_BASE_HI,
        r::REG_INVQ_SIZE as REG_INVQ_SIZE,
        r::REG_INVQ_TAIL as REG_INVQ_TAIL,
        r::REG_INVQ_HEAD as REG_INVQ_HEAD,
        r::REG_INVQ_DONE_ADDR_LO as REG_INVQ_DONE_ADDR_LO,
        r::REG_INVQ_DONE_ADDR_HI as REG_INVQ_DONE_ADDR_HI,
        r::DEV_CONTROL_ENABLE as DEV_CONTROL_ENABLE,
        r::DEV_CONTROL_FLR as DEV_CONTROL_FLR,
        r::DEV_STATUS_ENABLED as DEV_STATUS_ENABLED,
        r::CAPS_CONTEXTS_MASK as CAPS_CONTEXTS_MASK,
        r::CAPS_SEGMENTS as CAPS_SEGMENTS,
        r::CAPS_DROPIN_LIST as CAPS_DROPIN_LIST,
        r::CAPS_INLINE_QUEUE as CAPS_INLINE_QUEUE,
        r::UQ_DOORBELL_BASE as UQ_DOORBELL_BASE,
        r::UQ_DOORBELL_STRIDE as UQ_DOORBELL_STRIDE,
        r::CQ_FORMAT as CQ_FORMAT,
        r::CQ_FORMAT_SPLIT as CQ_FORMAT_SPLIT,
        r::CQ_FORMAT_INLINE as CQ_FORMAT_INLINE,
        r::INLINE_SLOT_SIZE as INLINE_SLOT_SIZE,
        f::FAULT_REC_FLAGS as FAULT_REC_FLAGS,
        f::FAULT_REC_SLOT as FAULT_REC_SLOT,
        f::FAULT_FLAG_SEGMENT as FAULT_FLAG_SEGMENT,
        s::EXPORT_TABLE_BASE as EXPORT_TABLE_BASE,
        s::EXPORT_ENTRY_SIZE as EXPORT_ENTRY_SIZE,
        s::NUM_EXPORTS as NUM_EXPORTS,
        s::EXP_CONTROL as EXP_CONTROL,
        s::EXP_BASE_LO as EXP_BASE_LO,
        s::EXP_BASE_HI as EXP_BASE_HI,
        s::EXP_LENGTH_LO as EXP_LENGTH_LO,
        s::EXP_LENGTH_HI as EXP_LENGTH_HI,
        s::EXP_CONTROL_VALID as EXP_CONTROL_VALID,
        s::EXP_CONTROL_WRITABLE as EXP_CONTROL_WRITABLE,
        s::EXP_CONTROL_OWNER_SHIFT as EXP_CONTROL_OWNER_SHIFT,
        s::CTX_ATTACH_BASE as CTX_ATTACH_BASE,
        s::NUM_ATTACHMENTS as NUM_ATTACHMENTS,
        s::ATTACH_VALID as ATTACH_VALID,
        s::ATTACH_WRITABLE as ATTACH_WRITABLE,
        s::EXP_KEY_LO as EXP_KEY_LO,
        s::EXP_KEY_HI as EXP_KEY_HI,
        s::EXP_CONTROL_REMOTE as EXP_CONTROL_REMOTE,
        s::ATTACH_REMOTE as ATTACH_REMOTE,
        s::CTX_RKEY_LO as CTX_RKEY_LO,
        s::CTX_RKEY_HI as CTX_RKEY_HI,
        s::CTX_RLENGTH_LO as CTX_RLENGTH_LO,
        s::CTX_RLENGTH_HI as CTX_RLENGTH_HI,
        f::FAULT_FLAG_REMOTE as FAULT_FLAG_REMOTE,
        f::FAULT_REC_COMMAND_ID as FAULT_REC_COMMAND_ID,
        r::REG_REMOTE_ANSWER as REG_REMOTE_ANSWER,
        fab::REMOTE_ANSWER_STATUS_SHIFT as REMOTE_ANSWER_STATUS_SHIFT,
        fab::REMOTE_ANSWER_RESOLVED as REMOTE_ANSWER_RESOLVED,
        fab::REMOTE_ANSWER_UNRESOLVED as REMOTE_ANSWER_UNRESOLVED,
        fab::REMOTE_ANSWER_PERMISSION as REMOTE_ANSWER_PERMISSION,
        r::CTX_BLOCK_BASE as CTX_BLOCK_BASE,
        r::CTX_BLOCK_SIZE as CTX_BLOCK_SIZE,
        r::NUM_CONTEXTS as MAX_CONTEXTS,
        r::CTX_CONTROL as CTX_CONTROL,
        r::CTX_STATUS as CTX_STATUS,
        r::CTX_ASID as CTX_ASID,
        r::CTX_PTROOT_LO as CTX_PTROOT_LO,
        r::CTX_PTROOT_HI as CTX_PTROOT_HI,
        r::CQ_DESC_LO as CQ_DESC_LO,
        r::CQ_DESC_HI as CQ_DESC_HI,
        r::CQ_AVAIL_LO as CQ_AVAIL_LO,
        r::CQ_AVAIL_HI as CQ_AVAIL_HI,
        r::CQ_USED_LO as CQ_USED_LO,
        r::CQ_USED_HI as CQ_USED_HI,
        r::CQ_SIZE as CQ_SIZE,
        r::CQ_READY as CQ_READY,
        r::CQ_DOORBELL as CQ_DOORBELL,
        r::DROPIN_VA_LO as DROPIN_VA_LO,
        r::DROPIN_VA_HI as DROPIN_VA_HI,
        r::DROPIN_GPA_LO as DROPIN_GPA_LO,
        r::DROPIN_GPA_HI as DROPIN_GPA_HI,
        r::DROPIN_ATTR as DROPIN_ATTR,
        r::CTX_COMMAND as CTX_COMMAND,
        r::DROPIN_LIST_LO as DROPIN_LIST_LO,
        r::DROPIN_LIST_HI as DROPIN_LIST_HI,
        r::DROPIN_LIST_COUNT as DROPIN_LIST_COUNT,
        r::CTX_CONTROL_ENABLE as CTX_CONTROL_ENABLE,
        r::CTX_STATUS_STATE_MASK as CTX_STATUS_STATE_MASK,
        r::CTX_STATE_FREE as CTX_STATE_FREE,
        r::CTX_STATE_ACTIVE as CTX_STATE_ACTIVE,
        r::DROPIN_ATTR_READ as DROPIN_ATTR_READ,
        r::DROPIN_ATTR_WRITE as DROPIN_ATTR_WRITE,
        r::DROPIN_ATTR_2M as DROPIN_ATTR_2M,
        r::CTX_CMD_DROPIN as CTX_CMD_DROPIN,
        r::CTX_CMD_RESUME as CTX_CMD_RESUME,
        r::CTX_CMD_ABORT as CTX_CMD_ABORT,
        r::CTX_CMD_ABORT_STATUS_SHIFT as CTX_CMD_ABORT_STATUS_SHIFT,
        r::CTX_CMD_DROPIN_LIST as CTX_CMD_DROPIN_LIST,
        r::DROPIN_LIST_MAX as DROPIN_LIST_MAX,
        r::DROPIN_RECORD_SIZE as DROPIN_RECORD_SIZE,
        f::FAULT_RECORD_SIZE as FAULT_RECORD_SIZE,
        f::FAULT_REC_CONTEXT as FAULT_REC_CONTEXT,
        f::FAULT_REC_ASID as FAULT_REC_ASID,
        f::FAULT_REC_ACCESS as FAULT_REC_ACCESS,
        f::FAULT_REC_VA as FAULT_REC_VA,
        f::FAULT_REC_SEQUENCE as FAULT_REC_SEQUENCE,
        f::FAULT_ACCESS_WRITE as FAULT_ACCESS_WRITE,
        i::INVQ_DESC_SIZE as INVQ_DESC_SIZE,
        i::INVQ_DESC_KIND as INVQ_DESC_KIND,
        i::INVQ_DESC_FLAGS as INVQ_DESC_FLAGS,
        i::INVQ_DESC_ASID as INVQ_DESC_ASID,
        i::INVQ_DESC_START as INVQ_DESC_START,
        i::INVQ_DESC_END as INVQ_DESC_END,
        i::INVQ_DESC_SEQ as INVQ_DESC_SEQ,
        i::INVQ_KIND_RANGE as INVQ_KIND_RANGE,
        i::INVQ_KIND_ASID as INVQ_KIND_ASID,
        c::COMMAND_SIZE as COMMAND_SIZE,
        c::COMPLETION_SIZE as COMPLETION_SIZE,
        rmnic_device::VECTOR_FAULT as VECTOR_FAULT,
        rmnic_device::VECTOR_COMPLETION as VECTOR_COMPLETION,
        rmnic_device::VECTOR_INVALIDATION as VECTOR_INVALIDATION,
        rmnic_device::VECTOR_ERROR as VECTOR_ERROR,
        rmnic_device::RMNIC_MSIX_VECTORS as NUM_VECTORS,
        rmnic_device::RMNIC_ID_MAGIC as ID_MAGIC,
        rmnic_device::RMNIC_VENDOR_ID as PCI_VENDOR_ID,
        rmnic_device::RMNIC_DEVICE_ID as PCI_DEVICE_ID,
    ]
    .into_iter()
    .collect();
    // Driver-only constants: the virtio split-ring flags (virtio spec, not the device's) and
    // the spec major version, checked against the version register below.
    let driver_only = ["VIRTQ_DESC_F_NEXT", "VIRTQ_DESC_F_WRITE", "SPEC_MAJOR"];
    let driver = driver_constants();
    for (name, value) in &driver {
        if driver_only.contains(&name.as_str()) {
            continue;
        }
        match device.get(name.as_str()) {
            Some(want) => assert_eq!(value, want, "driver regs.rs {name}"),
            None => panic!("driver regs.rs {name} has no device-model counterpart in this test"),
        }
    }
    assert_eq!(
        driver.get("SPEC_MAJOR").copied(),
        Some(u64::from(rmnic_device::RMNIC_SPEC_VERSION >> 16)),
        "the driver speaks another major spec version"
    );
    assert_eq!(driver.get("VIRTQ_DESC_F_NEXT"), Some(&1));
    assert_eq!(driver.get("VIRTQ_DESC_F_WRITE"), Some(&2));
}

#[test]
fn c_header_matches_rust_abi() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-driver/abi/include/rmnic.h"
    );
    let header = std::fs::read_to_string(path).expect("rmnic.h is part of the repository");
    assert!(header.contains(&format!(
        "#define RMNIC_ABI_VERSION {}",
        rmnic_abi::ABI_VERSION
    )));
    assert!(header.contains("_IOR('r', 0x00, struct rmnic_version_info)"));
    assert!(header.contains("_IOWR('r', 0x01, struct rmnic_scratch_probe)"));
    assert!(header.contains("_IOWR('r', 0x02, struct rmnic_submit)"));
    assert!(header.contains("_IOWR('r', 0x03, struct rmnic_wait)"));
    assert!(header.contains("_IOR('r', 0x04, struct rmnic_context_stats)"));
    assert!(header.contains("_IOWR('r', 0x05, struct rmnic_segment_export)"));
    assert!(header.contains("_IOW('r', 0x06, __u64)"));
    assert!(header.contains("_IOWR('r', 0x07, struct rmnic_segment_attach)"));
    assert!(header.contains("_IOW('r', 0x08, __u32)"));
    assert!(header.contains("_IOW('r', 0x09, __u32)"));
    assert!(header.contains("_IOR('r', 0x0a, struct rmnic_user_queue)"));
}

/// C expressions over rmnic.h, each with the value the Rust ABI gives it: struct sizes and
/// the offsets of fields after the first, ioctl numbers, flags, limits, statuses.
fn c_expressions() -> Vec<(&'static str, u64)> {
    use rmnic_abi::abi::{self, opcode, permit, status};
    use std::mem::{offset_of, size_of};
    vec![
        (
            "sizeof(struct rmnic_version_info)",
            size_of::<abi::VersionInfo>() as u64,
        ),
        (
            "sizeof(struct rmnic_scratch_probe)",
            size_of::<abi::ScratchProbe>() as u64,
        ),
        (
            "sizeof(struct rmnic_command)",
            size_of::<abi::Command>() as u64,
        ),
        (
            "sizeof(struct rmnic_completion)",
            size_of::<abi::Completion>() as u64,
        ),
        (
            "sizeof(struct rmnic_submit)",
            size_of::<abi::Submit>() as u64,
        ),
        ("sizeof(struct rmnic_wait)", size_of::<abi::Wait>() as u64),
        (
            "sizeof(struct rmnic_context_stats)",
            size_of::<abi::ContextStats>() as u64,
        ),
        (
            "sizeof(struct rmnic_segment_export)",
            size_of::<abi::SegmentExport>() as u64,
        ),
        (
            "offsetof(struct rmnic_segment_export, length)",
            offset_of!(abi::SegmentExport, length) as u64,
        ),
        (
            "offsetof(struct rmnic_segment_export, flags)",
            offset_of!(abi::SegmentExport, flags) as u64,
        ),
        (
            "offsetof(struct rmnic_segment_export, permit_mode)",
            offset_of!(abi::SegmentExport, permit_mode) as u64,
        ),
        (
            "offsetof(struct rmnic_segment_export, segid)",
            offset_of!(abi::SegmentExport, segid) as u64,
        ),
        (
            "sizeof(struct rmnic_segment_attach)",
            size_of::<abi::SegmentAttach>() as u64,
        ),
        (
            "offsetof(struct rmnic_segment_attach, flags)",
            offset_of!(abi::SegmentAttach, flags) as u64,
        ),
        (
            "offsetof(struct rmnic_segment_attach, slot)",
            offset_of!(abi::SegmentAttach, slot) as u64,
        ),
        (
            "offsetof(struct rmnic_segment_attach, length)",
            offset_of!(abi::SegmentAttach, length) as u64,
        ),
        ("RMNIC_IOC_VERSION", abi::IOC_VERSION.into()),
        ("RMNIC_IOC_SCRATCH", abi::IOC_SCRATCH.into()),
        ("RMNIC_IOC_SUBMIT", abi::IOC_SUBMIT.into()),
        ("RMNIC_IOC_WAIT", abi::IOC_WAIT.into()),
        ("RMNIC_IOC_STATS", abi::IOC_STATS.into()),
        ("RMNIC_IOC_EXPORT", abi::IOC_EXPORT.into()),
        ("RMNIC_IOC_REMOVE", abi::IOC_REMOVE.into()),
        ("RMNIC_IOC_ATTACH", abi::IOC_ATTACH.into()),
        ("RMNIC_IOC_DETACH", abi::IOC_DETACH.into()),
        ("RMNIC_IOC_FAULT_AHEAD", abi::IOC_FAULT_AHEAD.into()),
        ("RMNIC_IOC_USER_QUEUE", abi::IOC_USER_QUEUE.into()),
        (
            "sizeof(struct rmnic_user_queue)",
            size_of::<abi::UserQueue>() as u64,
        ),
        (
            "offsetof(struct rmnic_user_queue, completions_offset)",
            offset_of!(abi::UserQueue, completions_offset) as u64,
        ),
        (
            "offsetof(struct rmnic_user_queue, map_length)",
            offset_of!(abi::UserQueue, map_length) as u64,
        ),
        (
            "offsetof(struct rmnic_user_queue, doorbell_offset)",
            offset_of!(abi::UserQueue, doorbell_offset) as u64,
        ),
        ("RMNIC_IOC_USER_WAIT", abi::IOC_USER_WAIT.into()),
        (
            "sizeof(struct rmnic_user_wait)",
            size_of::<abi::UserWait>() as u64,
        ),
        ("RMNIC_USER_QUEUE_MMAP_OFFSET", abi::USER_QUEUE_MMAP_OFFSET),
        (
            "RMNIC_USER_DOORBELL_MMAP_OFFSET",
            abi::USER_DOORBELL_MMAP_OFFSET,
        ),
        ("RMNIC_USER_QUEUE_SLOTS", abi::USER_QUEUE_SLOTS.into()),
        ("RMNIC_USER_SLOT_SIZE", abi::USER_SLOT_SIZE.into()),
        ("RMNIC_USER_TAIL_OFFSET", abi::USER_TAIL_OFFSET.into()),
        ("RMNIC_USER_HEAD_OFFSET", abi::USER_HEAD_OFFSET.into()),
        ("RMNIC_OP_NOP", opcode::NOP.into()),
        ("RMNIC_OP_COPY", opcode::COPY.into()),
        ("RMNIC_OP_FILL", opcode::FILL.into()),
        ("RMNIC_OP_READ64", opcode::READ64.into()),
        ("RMNIC_OP_WRITE64", opcode::WRITE64.into()),
        ("RMNIC_OP_FETCH_ADD", opcode::FETCH_ADD.into()),
        ("RMNIC_OP_CAS", opcode::CAS.into()),
        ("RMNIC_OP_SWAP", opcode::SWAP.into()),
        ("RMNIC_OP_FENCE", opcode::FENCE.into()),
        ("RMNIC_ST_OK", status::OK.into()),
        ("RMNIC_ST_FAULT_UNRESOLVED", status::FAULT_UNRESOLVED.into()),
        ("RMNIC_ST_PERMISSION", status::PERMISSION.into()),
        ("RMNIC_ST_DEVICE_ERROR", status::DEVICE_ERROR.into()),
        ("RMNIC_ST_INVALID_OPCODE", status::INVALID_OPCODE.into()),
        ("RMNIC_ST_ABORTED", status::ABORTED.into()),
        ("RMNIC_ST_ALIGNMENT", status::ALIGNMENT.into()),
        ("RMNIC_ST_INVALID_ARGUMENT", status::INVALID_ARGUMENT.into()),
        ("RMNIC_ST_SEGMENT_INVALID", status::SEGMENT_INVALID.into()),
        ("RMNIC_ST_SEGMENT_BOUNDS", status::SEGMENT_BOUNDS.into()),
        (
            "RMNIC_ST_REMOTE_UNREACHABLE",
            status::REMOTE_UNREACHABLE.into(),
        ),
        ("RMNIC_CMD_FLAG_INTERRUPT", abi::CMD_FLAG_INTERRUPT.into()),
        (
            "RMNIC_CMD_FLAG_SEGMENT_ADDR0",
            abi::CMD_FLAG_SEGMENT_ADDR0.into(),
        ),
        (
            "RMNIC_CMD_FLAG_SEGMENT_ADDR1",
            abi::CMD_FLAG_SEGMENT_ADDR1.into(),
        ),
        ("RMNIC_MAX_BATCH", abi::MAX_BATCH.into()),
        ("RMNIC_MAX_ATTACHMENTS", abi::MAX_ATTACHMENTS.into()),
        ("RMNIC_SEGMENT_WRITABLE", abi::SEGMENT_WRITABLE.into()),
        ("RMNIC_SEGMENT_REMOTE", abi::SEGMENT_REMOTE.into()),
        ("RMNIC_SEGMENT_OFFSET_MASK", abi::SEGMENT_OFFSET_MASK),
        (
            "RMNIC_SEGMENT_ADDRESS(5, 0x123)",
            abi::segment_address(5, 0x123),
        ),
        // An offset too large for 56 bits must not spill into the slot.
        (
            "RMNIC_SEGMENT_ADDRESS(255, ~0ULL)",
            abi::segment_address(255, u64::MAX),
        ),
        ("RMNIC_PERMIT_OWNER_READ", permit::OWNER_READ.into()),
        ("RMNIC_PERMIT_OWNER_WRITE", permit::OWNER_WRITE.into()),
        ("RMNIC_PERMIT_GROUP_READ", permit::GROUP_READ.into()),
        ("RMNIC_PERMIT_GROUP_WRITE", permit::GROUP_WRITE.into()),
        ("RMNIC_PERMIT_OTHER_READ", permit::OTHER_READ.into()),
        ("RMNIC_PERMIT_OTHER_WRITE", permit::OTHER_WRITE.into()),
        ("RMNIC_PERMIT_ALL", permit::ALL.into()),
    ]
}

/// Compiles the C header with the system C compiler and compares what C computes for each of
/// [`c_expressions`] (struct layouts, ioctl numbers, constants) with the Rust ABI.
#[test]
fn c_header_compiles_to_the_same_abi() {
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-driver/abi/include");
    let dir = std::env::temp_dir().join(format!("rmnic-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("abi.c");
    let expressions = c_expressions();
    let prints: String = expressions
        .iter()
        .map(|(expr, _)| format!("    printf(\"%llu\\n\", (unsigned long long)({expr}));\n"))
        .collect();
    std::fs::write(
        &src,
        format!(
            "#include <stddef.h>\n#include <stdio.h>\n#include \"rmnic.h\"\nint main(void) {{\n{prints}    return 0;\n}}\n"
        ),
    )
    .expect("write C source");
    let exe = dir.join("abi");
    let status = std::process::Command::new("cc")
        .arg("-I")
        .arg(include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "rmnic.h does not compile");
    let out = std::process::Command::new(&exe).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    let c_values: Vec<&str> = text.lines().collect();
    assert_eq!(
        c_values.len(),
        expressions.len(),
        "the C program printed {text:?}"
    );
    let disagree: Vec<String> = expressions
        .iter()
        .zip(&c_values)
        .filter(|((_, rust), c)| c.parse::<u64>().ok() != Some(*rust))
        .map(|((expr, rust), c)| format!("{expr}: C {c}, Rust {rust}"))
        .collect();
    assert!(
        disagree.is_empty(),
        "C header and Rust ABI disagree:\n{}",
        disagree.join("\n")
    );
}

/// The user ABI passes device commands and completions through unchanged: its opcodes and
/// statuses must be the device's.
#[test]
fn user_abi_opcodes_and_statuses_are_the_devices() {
    use rmnic_abi::{opcode, status};
    let device: HashMap<&str, u64> = rmnic_device::commands::SPEC_CONSTANTS
        .iter()
        .copied()
        .collect();
    let user = [
        ("OP_NOP", u64::from(opcode::NOP)),
        ("OP_COPY", u64::from(opcode::COPY)),
        ("OP_FILL", u64::from(opcode::FILL)),
        ("OP_READ64", u64::from(opcode::READ64)),
        ("OP_WRITE64", u64::from(opcode::WRITE64)),
        ("OP_FETCH_ADD", u64::from(opcode::FETCH_ADD)),
        ("OP_CAS", u64::from(opcode::CAS)),
        ("OP_SWAP", u64::from(opcode::SWAP)),
        ("OP_FENCE", u64::from(opcode::FENCE)),
        ("STATUS_OK", u64::from(status::OK)),
        (
            "STATUS_FAULT_UNRESOLVED",
            u64::from(status::FAULT_UNRESOLVED),
        ),
        ("STATUS_PERMISSION", u64::from(status::PERMISSION)),
        ("STATUS_DEVICE_ERROR", u64::from(status::DEVICE_ERROR)),
        ("STATUS_INVALID_OPCODE", u64::from(status::INVALID_OPCODE)),
        ("STATUS_ABORTED", u64::from(status::ABORTED)),
        ("STATUS_ALIGNMENT", u64::from(status::ALIGNMENT)),
        (
            "STATUS_INVALID_ARGUMENT",
            u64::from(status::INVALID_ARGUMENT),
        ),
        ("STATUS_SEGMENT_INVALID", u64::from(status::SEGMENT_INVALID)),
        ("STATUS_SEGMENT_BOUNDS", u64::from(status::SEGMENT_BOUNDS)),
        (
            "STATUS_REMOTE_UNREACHABLE",
            u64::from(status::REMOTE_UNREACHABLE),
        ),
        (
            "CMD_FLAG_SEGMENT_ADDR0",
            u64::from(rmnic_abi::abi::CMD_FLAG_SEGMENT_ADDR0),
        ),
        (
            "CMD_FLAG_SEGMENT_ADDR1",
            u64::from(rmnic_abi::abi::CMD_FLAG_SEGMENT_ADDR1),
        ),
        (
            "COMMAND_SIZE",
            std::mem::size_of::<rmnic_abi::Command>() as u64,
        ),
        (
            "COMPLETION_SIZE",
            std::mem::size_of::<rmnic_abi::Completion>() as u64,
        ),
        (
            "CMD_FLAG_INTERRUPT",
            u64::from(rmnic_abi::abi::CMD_FLAG_INTERRUPT),
        ),
    ];
    for (name, value) in user {
        assert_eq!(device.get(name), Some(&value), "rmnic-abi {name}");
    }
}
