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
        commands as c, fault_ring as f, invalidation as i, regs as r, segments as s,
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
        r::CTX_CONTROL_ENABLE as CTX_CONTROL_ENABLE,
        r::CTX_STATUS_STATE_MASK as CTX_STATUS_STATE_MASK,
        r::CTX_STATE_FREE as CTX_STATE_FREE,
        r::DROPIN_ATTR_READ as DROPIN_ATTR_READ,
        r::DROPIN_ATTR_WRITE as DROPIN_ATTR_WRITE,
        r::DROPIN_ATTR_2M as DROPIN_ATTR_2M,
        r::CTX_CMD_DROPIN as CTX_CMD_DROPIN,
        r::CTX_CMD_RESUME as CTX_CMD_RESUME,
        r::CTX_CMD_ABORT as CTX_CMD_ABORT,
        r::CTX_CMD_ABORT_STATUS_SHIFT as CTX_CMD_ABORT_STATUS_SHIFT,
        f::FAULT_RECORD_SIZE as FAULT_RECORD_SIZE,
        f::FAULT_REC_CONTEXT as FAULT_REC_CONTEXT,
        f::FAULT_REC_ASID as FAULT_REC_ASID,
        f::FAULT_REC_ACCESS as FAULT_REC_ACCESS,
        f::FAULT_REC_VA as FAULT_REC_VA,
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
}

/// Compiles the C header with the system C compiler and compares what C computes (struct
/// sizes, ioctl numbers) with the Rust ABI.
#[test]
fn c_header_compiles_to_the_same_abi() {
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-driver/abi/include");
    let dir = std::env::temp_dir().join(format!("rmnic-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("abi.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include "rmnic.h"
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct rmnic_version_info),
           sizeof(struct rmnic_scratch_probe), sizeof(struct rmnic_command),
           sizeof(struct rmnic_completion), sizeof(struct rmnic_submit),
           sizeof(struct rmnic_wait), sizeof(struct rmnic_context_stats));
    printf("%lu %lu %lu %lu %lu\n", (unsigned long)RMNIC_IOC_VERSION,
           (unsigned long)RMNIC_IOC_SCRATCH, (unsigned long)RMNIC_IOC_SUBMIT,
           (unsigned long)RMNIC_IOC_WAIT, (unsigned long)RMNIC_IOC_STATS);
    return 0;
}
"#,
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
    use rmnic_abi::abi;
    use std::mem::size_of;
    let want = format!(
        "{} {} {} {} {} {} {}\n{} {} {} {} {}\n",
        size_of::<abi::VersionInfo>(),
        size_of::<abi::ScratchProbe>(),
        size_of::<abi::Command>(),
        size_of::<abi::Completion>(),
        size_of::<abi::Submit>(),
        size_of::<abi::Wait>(),
        size_of::<abi::ContextStats>(),
        abi::IOC_VERSION,
        abi::IOC_SCRATCH,
        abi::IOC_SUBMIT,
        abi::IOC_WAIT,
        abi::IOC_STATS
    );
    assert_eq!(text, want, "C header and Rust ABI disagree");
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
