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
}
