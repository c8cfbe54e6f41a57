//! A device host's fabric link against a hostile peer: a frame that breaks the protocol ends
//! the link (the device learns it lost its peer), and the host goes on.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rmnic_device::RmnicConfig;
use rmnic_device_server::fabric_link::{self, FabricArgs};
use rmnic_device_server::RmnicFunction;
use rmnic_fabric::link::FramedLink;
use rmnic_fabric::protocol::NodeId;

#[test]
fn a_hostile_frame_breaks_the_link_and_the_host_goes_on() {
    let function = RmnicFunction::new(RmnicConfig::default()).expect("device");
    let endpoint = function.device().fabric_endpoint();
    let path = std::env::temp_dir().join(format!("rmnic-hostile-{}.sock", std::process::id()));
    let args = FabricArgs {
        node: Some(1),
        fabric_listen: Some(path.clone()),
        ..FabricArgs::default()
    };
    let link = fabric_link::start(&args, endpoint.clone(), "test").expect("a link thread");

    // The hostile peer: a proper handshake, then a frame header announcing 4 GiB.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&path) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot reach the host's fabric socket: {e}"),
        }
    };
    let mut raw = stream.try_clone().expect("clone");
    let mut peer = FramedLink::unix(stream);
    let host = peer
        .handshake(NodeId(2), Instant::now() + Duration::from_secs(5))
        .expect("handshake");
    assert_eq!(host, NodeId(1));
    let node = link.join().expect("link thread").expect("linked");
    assert_eq!(endpoint.peer(), Some(NodeId(2)));
    raw.write_all(&u32::MAX.to_le_bytes()).expect("write");

    // The host breaks the link, and the device learns its peer is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_down() || endpoint.peer().is_some() {
        assert!(Instant::now() < deadline, "the host kept the link");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(endpoint.linked_peer(), Some(NodeId(2)));
    // And goes on: its device still answers (a request of a peer that is gone is refused).
    let answer = endpoint.serve(
        NodeId(2),
        rmnic_fabric::protocol::Message::Attach {
            req: 1,
            key: 99,
            write: false,
        },
    );
    assert!(matches!(
        answer,
        Some(rmnic_fabric::protocol::Message::AttachReply { result: Err(_), .. })
    ));
    let _ = std::fs::remove_file(&path);
}
