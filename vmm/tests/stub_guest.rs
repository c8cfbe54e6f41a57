//! End-to-end runs of the VMM on the host's /dev/kvm with hand-assembled "kernels": a
//! bzImage header around a few instructions at the 64-bit entry point. They need no Linux
//! boot (which this project's CI KVM cannot do), yet cover the real path: memory slots,
//! long-mode entry, the port bus, PCI config mechanism #1, BAR MMIO routing into the rmnic
//! model, the exit port, triple faults, timeouts and stopping every vCPU. Skipped (with a
//! note) where /dev/kvm is missing.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmnic_device::interrupt::{MsiMessage, MsiSink};
use rmnic_device::{RMNIC_DEVICE_ID, RMNIC_ID_MAGIC, RMNIC_VENDOR_ID};
use rmnic_vmm::config::DeviceSource;
use rmnic_vmm::interrupts::{DeviceMsi, GsiRouter, IrqBackend};
use rmnic_vmm::vstate::Vm;
use rmnic_vmm::{ExitReason, VmConfig, Vmm};

/// Serial output captured for assertions.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

fn kvm_usable() -> bool {
    match Vm::new() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: no usable KVM ({e})");
            false
        }
    }
}

/// A bzImage (boot protocol 2.15, 64-bit entry) whose protected-mode part is 0x200 bytes
/// of padding followed by `code`, so `code` is what runs at load address + 0x200.
fn fake_bzimage(code: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024 + 0x200];
    let mut put = |off: usize, bytes: &[u8]| img[off..off + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[1]); // setup_sects: setup is 2 sectors
    put(0x1fe, &0xaa55u16.to_le_bytes());
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes());
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x236, &1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x260, &0x10_0000u32.to_le_bytes()); // init_size
    img.extend_from_slice(code);
    img
}

/// Writes `image` to a temporary file named after this process and `name`.
fn write_image(name: &str, image: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "rmnic-vmm-test-{}-{name}.bzImage",
        std::process::id()
    ));
    std::fs::write(&path, image).expect("write image");
    path
}

fn run(name: &str, code: &[u8], cpus: u8, timeout: Duration) -> (ExitReason, String, Duration) {
    run_with(name, code, cpus, timeout, DeviceSource::InProcess)
}

fn run_with(
    name: &str,
    code: &[u8],
    cpus: u8,
    timeout: Duration,
    device: DeviceSource,
) -> (ExitReason, String, Duration) {
    let image = write_image(name, &fake_bzimage(code));
    let mut config = VmConfig::new(&image);
    config.device = device;
    config.cpus = cpus;
    config.memory_mib = 64;
    config.timeout = Some(timeout);
    let out = Capture::default();
    let start = Instant::now();
    let vmm = Vmm::new(&config, Box::new(out.clone())).expect("VM builds");
    // Loaded into guest memory: the file is no longer needed.
    let _ = std::fs::remove_file(&image);
    let reason = vmm.run().expect("VM runs");
    (reason, out.text(), start.elapsed())
}

/// Prints "OK\n" on COM1, reads the vendor/device ID of 00:01.0 through 0xCF8/0xCFC and
/// REG_ID through BAR0 MMIO, and exits with 7 if both match the rmnic model, else 9.
fn probe_code(bar0: u32) -> Vec<u8> {
    let ids = (u32::from(RMNIC_DEVICE_ID) << 16) | u32::from(RMNIC_VENDOR_ID);
    let mut c = Vec::new();
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.extend_from_slice(&[0xb0, b'O', 0xee]); // mov al, 'O'; out dx, al
    c.extend_from_slice(&[0xb0, b'K', 0xee]); // mov al, 'K'; out dx, al
    c.extend_from_slice(&[0xb0, b'\n', 0xee]); // mov al, '\n'; out dx, al
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
    c.extend_from_slice(&[0xb8, 0x00, 0x08, 0x00, 0x80]); // mov eax, 0x8000_0800 (00:01.0 reg 0)
    c.push(0xef); // out dx, eax
    c.extend_from_slice(&[0x66, 0xba, 0xfc, 0x0c]); // mov dx, 0xcfc
    c.push(0xed); // in eax, dx
    c.extend_from_slice(&[0x89, 0xc3]); // mov ebx, eax
    c.push(0xbe); // mov esi, bar0
    c.extend_from_slice(&bar0.to_le_bytes());
    c.extend_from_slice(&[0x8b, 0x0e]); // mov ecx, [rsi]
    c.extend_from_slice(&[0x81, 0xfb]); // cmp ebx, ids
    c.extend_from_slice(&ids.to_le_bytes());
    c.extend_from_slice(&[0x75, 0x0c]); // jne fail
    c.extend_from_slice(&[0x81, 0xf9]); // cmp ecx, RMNIC_ID_MAGIC
    c.extend_from_slice(&RMNIC_ID_MAGIC.to_le_bytes());
    c.extend_from_slice(&[0x75, 0x04]); // jne fail
    c.extend_from_slice(&[0xb0, 0x07]); // mov al, 7
    c.extend_from_slice(&[0xeb, 0x02]); // jmp out
    c.extend_from_slice(&[0xb0, 0x09]); // fail: mov al, 9
    c.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00]); // out: mov dx, 0xf4
    c.push(0xee); // out dx, al
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    c
}

#[test]
fn guest_sees_rmnic_on_pci_and_its_status_comes_out() {
    if !kvm_usable() {
        return;
    }
    // The firmware pass puts the only BAR at the bottom of the MMIO window.
    let (reason, serial, took) = run(
        "probe",
        &probe_code(0xc000_0000),
        2,
        Duration::from_secs(20),
    );
    assert_eq!(reason, ExitReason::Guest(7), "serial: {serial:?}");
    assert_eq!(reason.status(), 7);
    assert_eq!(serial, "OK\n");
    // The second vCPU sat in wait-for-SIPI inside KVM_RUN: it must have been kicked out.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// The same probe with the device model in `rmnic-device-server`'s server (on a thread here),
/// attached over vfio-user: configuration space, BAR placement and MMIO reach the remote
/// model.
#[test]
fn guest_sees_an_out_of_process_rmnic_over_vfio_user() {
    if !kvm_usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("rmnic-vmm-vfio-user-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("socket dir");
    let socket = dir.join("rmnic.sock");
    let function = rmnic_device_server::RmnicFunction::new(rmnic_device::RmnicConfig::default())
        .expect("device");
    let mut server = rmnic_device_server::Server::bind(&socket, function).expect("bind");
    let serving = std::thread::spawn(move || server.serve_one().expect("serve"));
    let (reason, serial, _) = run_with(
        "probe-vfio-user",
        &probe_code(0xc000_0000),
        1,
        Duration::from_secs(20),
        DeviceSource::VfioUser(socket),
    );
    assert_eq!(reason, ExitReason::Guest(7), "serial: {serial:?}");
    let stats = serving.join().expect("server thread");
    // Version, info, regions, DMA maps, config reads, MSI-X set-up, the guest's accesses.
    assert!(stats.requests > 10, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn triple_fault_stops_with_its_own_status() {
    if !kvm_usable() {
        return;
    }
    // ud2 with an empty IDT: #UD -> #GP -> #DF -> shutdown.
    let (reason, _, _) = run("ud2", &[0x0f, 0x0b], 1, Duration::from_secs(20));
    assert_eq!(reason, ExitReason::TripleFault { vcpu: 0 });
    assert_eq!(reason.status(), 0x82);
}

#[test]
fn halted_guest_is_stopped_by_the_timeout() {
    if !kvm_usable() {
        return;
    }
    // cli-state hlt loop: every vCPU blocks inside KVM until kicked.
    let (reason, _, took) = run("hlt", &[0xf4, 0xeb, 0xfd], 2, Duration::from_secs(1));
    assert_eq!(reason, ExitReason::Timeout(Duration::from_secs(1)));
    assert_eq!(reason.status(), 0x85);
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
}

#[test]
fn i8042_reset_stops_with_its_own_status() {
    if !kvm_usable() {
        return;
    }
    // mov al, 0xfe; out 0x64, al; hlt loop
    let code = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];
    let (reason, _, _) = run("reset", &code, 1, Duration::from_secs(20));
    assert_eq!(reason, ExitReason::I8042Reset);
    assert_eq!(reason.status(), 0x81);
}

#[test]
fn msi_routes_and_irqfds_are_accepted_by_kvm() {
    if !kvm_usable() {
        return;
    }
    let vm = Vm::new().expect("vm");
    vm.setup_irqchip().expect("irqchip");
    let backend: Arc<dyn IrqBackend> = vm.fd().clone();
    let router = Arc::new(GsiRouter::new(backend).expect("legacy routes accepted"));
    let msi = DeviceMsi::new("test", router);
    let message = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    for vector in 0..4 {
        msi.configure(vector, Some(message));
    }
    assert_eq!(msi.gsi_of(3), Some(27));
    msi.trigger(0);
    msi.configure(0, None);
    msi.trigger(0);
    assert_eq!(
        msi.dropped_triggers(),
        1,
        "only the masked trigger was dropped"
    );
}
