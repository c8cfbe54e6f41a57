//! The kernel module cannot depend on the device crate, so it keeps its own copy of the
//! register map (`guest-driver/module/regs.rs`). This test keeps the copy honest.

use std::collections::HashMap;

fn driver_constants() -> HashMap<String, u64> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-driver/module/regs.rs");
    let text = std::fs::read_to_string(path).expect("driver regs.rs is part of the repository");
    let mut consts = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub(crate) const ") else {
            continue;
        };
        let (name, value) = rest.split_once(':').expect("const NAME: type = value;");
        let value = value.split('=').nth(1).expect("has a value").trim();
        let value = value.trim_end_matches(';').replace('_', "");
        let parsed = match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .expect("numeric constant");
        consts.insert(name.trim().to_string(), parsed);
    }
    consts
}

#[test]
fn driver_register_map_matches_device_model() {
    let driver = driver_constants();
    let expect = [
        ("BAR0_SIZE", rmnic_device::BAR0_SIZE),
        ("REG_ID", rmnic_device::REG_ID),
        ("REG_VERSION", rmnic_device::REG_VERSION),
        ("REG_SCRATCH", rmnic_device::REG_SCRATCH),
        ("REG_CAPS", rmnic_device::REG_CAPS),
        ("ID_MAGIC", u64::from(rmnic_device::RMNIC_ID_MAGIC)),
        ("PCI_VENDOR_ID", u64::from(rmnic_device::RMNIC_VENDOR_ID)),
        ("PCI_DEVICE_ID", u64::from(rmnic_device::RMNIC_DEVICE_ID)),
    ];
    for (name, want) in expect {
        assert_eq!(driver.get(name), Some(&want), "driver regs.rs {name}");
    }
}

#[test]
fn c_header_matches_rust_abi() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-driver/abi/include/rmnic.h");
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
