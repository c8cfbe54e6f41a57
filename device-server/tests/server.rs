//! The server against rust-vmm's vfio-user client (`vfio_user::Client`), and against a
//! hostile client that sends malformed messages over a raw socket. No QEMU needed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;

use rmnic_device::{
    RmnicConfig, BAR0_SIZE, REG_ID, REG_SCRATCH, RMNIC_DEVICE_ID, RMNIC_ID_MAGIC, RMNIC_VENDOR_ID,
    VECTOR_ERROR,
};
use rmnic_device_server::protocol::{Header, FLAG_ERROR, FLAG_TYPE_REPLY, HEADER_SIZE};
use rmnic_device_server::{RmnicFunction, Server};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

/// A socket path in a fresh directory.
fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rmnic-server-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("rmnic.sock")
}

/// Binds a server and serves one connection on a thread; the thread returns the server with
/// its backend as the client left it.
fn start(name: &str) -> (PathBuf, JoinHandle<Server<RmnicFunction>>) {
    let path = socket_path(name);
    let function = RmnicFunction::new(RmnicConfig::default()).expect("device");
    let mut server = Server::bind(&path, function).expect("bind");
    let thread = std::thread::spawn(move || {
        let stream = server.accept().expect("accept");
        server.serve_stream(stream).expect("serve");
        server
    });
    (path, thread)
}

fn memfd(len: usize) -> File {
    let name = std::ffi::CString::new("guest-ram").expect("name");
    // SAFETY: valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64).expect("size");
    // SAFETY: F_ADD_SEALS on the memfd just made; the result is checked.
    let rc = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    assert_eq!(rc, 0, "seal");
    file
}

fn eventfd() -> File {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nothing else.
    unsafe { File::from_raw_fd(fd) }
}

fn eventfd_count(fd: &File) -> u64 {
    let mut bytes = [0u8; 8];
    let mut fd = fd;
    match fd.read(&mut bytes) {
        Ok(8) => u64::from_ne_bytes(bytes),
        _ => 0,
    }
}

const COMMAND_MEMORY_AND_MASTER: u16 = 0x6;

/// Turns on memory decoding and bus mastering in the device's command register.
fn enable_memory_and_bus_master(client: &mut vfio_user::Client) {
    client
        .region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            4,
            &COMMAND_MEMORY_AND_MASTER.to_le_bytes(),
        )
        .expect("command");
}

/// Hands the server `fds` as the MSI-X vectors' eventfds, from vector 0.
fn connect_msix(client: &mut vfio_user::Client, fds: &[File]) {
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    client
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            raw.len() as u32,
            &raw,
        )
        .expect("eventfds");
}

#[test]
fn config_space_and_bar0_through_the_rust_vmm_client() {
    let (path, server) = start("regions");
    let mut client = vfio_user::Client::new(&path).expect("client connects");
    assert_eq!(client.region(0).expect("BAR0").size, BAR0_SIZE);
    assert_eq!(
        client
            .region(VFIO_PCI_CONFIG_REGION_INDEX)
            .expect("config")
            .size,
        256
    );
    assert_eq!(client.region(1).expect("BAR1").size, 0);

    let mut ids = [0u8; 4];
    client
        .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut ids)
        .expect("read IDs");
    assert_eq!(u16::from_le_bytes([ids[0], ids[1]]), RMNIC_VENDOR_ID);
    assert_eq!(u16::from_le_bytes([ids[2], ids[3]]), RMNIC_DEVICE_ID);

    enable_memory_and_bus_master(&mut client);
    let mut id = [0u8; 4];
    client.region_read(0, REG_ID, &mut id).expect("REG_ID");
    assert_eq!(u32::from_le_bytes(id), RMNIC_ID_MAGIC);
    client
        .region_write(0, REG_SCRATCH, &0x1234_5678u32.to_le_bytes())
        .expect("scratch");
    let mut scratch = [0u8; 4];
    client
        .region_read(0, REG_SCRATCH, &mut scratch)
        .expect("scratch");
    assert_eq!(u32::from_le_bytes(scratch), 0x1234_5678);
    drop(client);
    let server = server.join().expect("server thread");
    assert_eq!(server.stats().errors, 0);
}

#[test]
fn dma_ranges_become_the_device_memory_and_unmap_removes_them() {
    let (path, server) = start("dma");
    let mut client = vfio_user::Client::new(&path).expect("client connects");
    let ram = memfd(0x20_0000);
    let mut ram_writer = &ram;
    ram_writer
        .write_all(b"written by the client")
        .expect("fill");
    client
        .dma_map(0, 0x100_0000, 0x20_0000, ram.as_raw_fd())
        .expect("map");
    client
        .dma_map(0x10_0000, 0x400_0000, 0x10_0000, ram.as_raw_fd())
        .expect("map a second range from the same file");
    client.dma_unmap(0x400_0000, 0x10_0000).expect("unmap");
    drop(client);
    let server = server.join().expect("server thread");
    let memory = server.backend().device().memory();
    assert_eq!(memory.num_regions(), 1, "one range left");
    let mut text = [0u8; 21];
    memory
        .read_slice(&mut text, GuestAddress(0x100_0000))
        .expect("the device reads the client's memory");
    assert_eq!(&text, b"written by the client");
    assert!(memory
        .read_slice(&mut text, GuestAddress(0x400_0000))
        .is_err());
    assert_eq!(server.stats().errors, 0);
}

#[test]
fn msix_vectors_reach_the_clients_eventfds() {
    let (path, server) = start("irqs");
    let mut client = vfio_user::Client::new(&path).expect("client connects");
    enable_memory_and_bus_master(&mut client);
    let vectors: Vec<File> = (0..4).map(|_| eventfd()).collect();
    connect_msix(&mut client, &vectors);
    // Loopback trigger of vector 2.
    client
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            1,
            &[],
        )
        .expect("trigger");
    assert_eq!(eventfd_count(&vectors[2]), 1);
    assert_eq!(eventfd_count(&vectors[1]), 0);
    drop(client);
    let mut server = server.join().expect("server thread");
    // The device raises its error vector: the client's eventfd for it fires.
    let delivery = server
        .backend_mut()
        .device_mut()
        .raise(VECTOR_ERROR)
        .expect("vector exists");
    assert_eq!(delivery, rmnic_device::Delivery::Sent);
    assert_eq!(eventfd_count(&vectors[usize::from(VECTOR_ERROR)]), 1);
}

#[test]
fn a_pipe_handed_over_as_an_eventfd_cannot_stall_the_device() {
    let (path, server) = start("pipe");
    let mut client = vfio_user::Client::new(&path).expect("client connects");
    enable_memory_and_bus_master(&mut client);
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills the two-element array; the result is checked.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let vector = usize::from(VECTOR_ERROR);
    let mut all: Vec<File> = (0..4).map(|_| eventfd()).collect();
    all[vector] = write_end;
    connect_msix(&mut client, &all);
    drop(client);
    let mut server = server.join().expect("server thread");
    // A pipe holds 64 KiB, 8 bytes a signal: more signals than fit must not block.
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        let _ = server.backend_mut().device_mut().raise(VECTOR_ERROR);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(read_end);
}

/// Sends one raw message and reads the reply.
fn request(stream: &mut UnixStream, command: u16, body: &[u8]) -> (Header, Vec<u8>) {
    let header = Header {
        message_id: 7,
        command,
        message_size: (HEADER_SIZE + body.len()) as u32,
        flags: 0,
        error: 0,
    };
    stream.write_all(header.as_slice()).expect("send header");
    stream.write_all(body).expect("send body");
    read_reply(stream)
}

fn read_reply(stream: &mut UnixStream) -> (Header, Vec<u8>) {
    let mut reply = Header::default();
    stream
        .read_exact(reply.as_mut_slice())
        .expect("reply header");
    let mut body = vec![0u8; reply.message_size as usize - HEADER_SIZE];
    stream.read_exact(&mut body).expect("reply body");
    (reply, body)
}

fn errno_of(reply: &Header) -> Option<i32> {
    (reply.flags & FLAG_ERROR != 0).then_some(reply.error as i32)
}

fn version_body(major: u16, json: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&major.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(json);
    body
}

fn region_access(offset: u64, region: u32, count: u32) -> Vec<u8> {
    let mut body = offset.to_le_bytes().to_vec();
    body.extend_from_slice(&region.to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    body
}

#[test]
fn hostile_messages_get_error_replies_and_the_connection_stays_usable() {
    let (path, server) = start("hostile");
    let mut s = UnixStream::connect(&path).expect("connect");

    // Wrong major version, then JSON without its NUL.
    let (reply, _) = request(&mut s, 1, &version_body(7, b"{}\0"));
    assert_eq!(errno_of(&reply), Some(libc::ENOTSUP));
    let (reply, _) = request(&mut s, 1, &version_body(0, b"{\"capabilities\":{}"));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let (reply, _) = request(&mut s, 1, &version_body(0, b"not json\0"));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    // Truncated VERSION body.
    let (reply, _) = request(&mut s, 1, &[0]);
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    // A good one: reply 0.0 with NUL-terminated JSON, no longer than QEMU's request.
    let (reply, body) = request(&mut s, 1, &version_body(0, b"{\"capabilities\":{}}\0"));
    assert_eq!(errno_of(&reply), None);
    assert_eq!(reply.flags & 0xf, FLAG_TYPE_REPLY);
    assert_eq!(&body[..4], &[0, 0, 0, 0]);
    assert_eq!(body.last(), Some(&0));
    assert!(body.len() < 200, "{} bytes", body.len());

    // Unknown and unsupported commands.
    let (reply, _) = request(&mut s, 99, &[1, 2, 3]);
    assert_eq!(errno_of(&reply), Some(libc::ENOTSUP));
    let (reply, _) = request(&mut s, 11, &[0; 16]);
    assert_eq!(errno_of(&reply), Some(libc::ENOTSUP));

    // Region accesses: no such region, outside it, too large, data length wrong.
    let (reply, _) = request(&mut s, 9, &region_access(0, 42, 4));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let (reply, _) = request(&mut s, 9, &region_access(BAR0_SIZE - 2, 0, 4));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let (reply, _) = request(&mut s, 9, &region_access(u64::MAX - 1, 0, 4));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let (reply, _) = request(&mut s, 9, &region_access(0, 0, 64 << 20));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let mut write = region_access(8, 0, 8);
    write.extend_from_slice(&[1, 2, 3, 4]);
    let (reply, _) = request(&mut s, 10, &write);
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));

    // DMA: a map without a descriptor is recorded (unreachable), an overlapping map and an
    // unmap that cuts it are refused, an empty range too.
    let dma_map = |address: u64, size: u64| {
        let mut body = 32u32.to_le_bytes().to_vec();
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&address.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body
    };
    let (reply, _) = request(&mut s, 2, &dma_map(0x1000, 0x2000));
    assert_eq!(errno_of(&reply), None);
    let (reply, _) = request(&mut s, 2, &dma_map(0x2000, 0x2000));
    assert_eq!(errno_of(&reply), Some(libc::EEXIST));
    let (reply, _) = request(&mut s, 2, &dma_map(0x9000, 0));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let mut unmap = 24u32.to_le_bytes().to_vec();
    unmap.extend_from_slice(&0u32.to_le_bytes());
    unmap.extend_from_slice(&0x1000u64.to_le_bytes());
    unmap.extend_from_slice(&0x1000u64.to_le_bytes());
    let (reply, _) = request(&mut s, 3, &unmap);
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));

    // Interrupts: no such index, more vectors than the index has, eventfd count wrong.
    let irq_set = |index: u32, flags: u32, start: u32, count: u32| {
        let mut body = 20u32.to_le_bytes().to_vec();
        for v in [flags, index, start, count] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body
    };
    let trigger_none = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
    let (reply, _) = request(&mut s, 8, &irq_set(9, trigger_none, 0, 1));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let (reply, _) = request(&mut s, 8, &irq_set(2, trigger_none, 60, 10));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let (reply, _) = request(&mut s, 8, &irq_set(2, 0xffff, 0, 1));
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));

    // A reply is still a reply: GET_INFO answers 9 regions and 5 indexes.
    let mut info = 16u32.to_le_bytes().to_vec();
    info.extend_from_slice(&[0; 12]);
    let (reply, body) = request(&mut s, 4, &info);
    assert_eq!(errno_of(&reply), None);
    assert_eq!(
        u32::from_le_bytes([body[8], body[9], body[10], body[11]]),
        9
    );
    assert_eq!(
        u32::from_le_bytes([body[12], body[13], body[14], body[15]]),
        5
    );

    // A header whose size is below the header's own: error reply, then the server closes.
    let bad = Header {
        message_id: 1,
        command: 4,
        message_size: 3,
        flags: 0,
        error: 0,
    };
    s.write_all(bad.as_slice()).expect("send");
    let (reply, _) = read_reply(&mut s);
    assert_eq!(errno_of(&reply), Some(libc::EINVAL));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty());
    let server = server.join().expect("the server survives");
    assert!(server.stats().errors >= 18);
}

#[test]
fn a_client_that_hangs_up_inside_a_message_does_not_hurt_the_server() {
    let (path, server) = start("truncated");
    let mut s = UnixStream::connect(&path).expect("connect");
    let header = Header {
        message_id: 1,
        command: 10,
        message_size: 64,
        flags: 0,
        error: 0,
    };
    s.write_all(header.as_slice()).expect("send");
    s.write_all(&[0; 10]).expect("part of the body");
    drop(s);
    let server = server.join().expect("the server survives");
    assert_eq!(server.stats().requests, 1);
}
