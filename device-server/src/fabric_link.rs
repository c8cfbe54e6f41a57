//! The fabric link of a device host (spec §20, `docs/fabric.md`): the command-line options
//! both hosts take (`--node`, `--fabric-listen`, `--fabric-connect`), the thread that sets up
//! the link without holding up the boot, and the summary printed at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rmnic_device::rmnic::FabricEndpoint;
use rmnic_device::stats::GlobalCounter;
use rmnic_fabric::node::{FabricNode, Handler};
use rmnic_fabric::protocol::NodeId;

/// How long a node waits for its peer to appear (the other VM may still be booting).
pub const PEER_WAIT: Duration = Duration::from_secs(120);

/// The fabric options of a device host.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct FabricArgs {
    /// This device's node on the fabric (1..=255; the two ends differ).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub node: Option<u8>,
    /// Link to the other node by listening on this Unix socket (created; a stale one is
    /// replaced).
    #[arg(
        long,
        value_name = "PATH",
        requires = "node",
        conflicts_with = "fabric_connect"
    )]
    pub fabric_listen: Option<PathBuf>,
    /// Link to the other node by connecting to this Unix socket (retried while it does not
    /// exist yet, for up to 120 s).
    #[arg(long, value_name = "PATH", requires = "node")]
    pub fabric_connect: Option<PathBuf>,
}

impl FabricArgs {
    /// Whether a link was asked for.
    pub fn enabled(&self) -> bool {
        self.fabric_listen.is_some() || self.fabric_connect.is_some()
    }
}

/// Sets the link up on a thread of its own (listening or connecting may wait for the peer)
/// and connects it to the device once the handshake is done. `who` prefixes the messages
/// (`rmnic-device-server`, `rmnic-vmm`).
pub fn start(
    args: &FabricArgs,
    endpoint: FabricEndpoint,
    who: &'static str,
) -> Option<JoinHandle<Option<Arc<FabricNode>>>> {
    let me = NodeId(args.node?);
    let (path, listen) = match (&args.fabric_listen, &args.fabric_connect) {
        (Some(path), _) => (path.clone(), true),
        (None, Some(path)) => (path.clone(), false),
        (None, None) => return None,
    };
    let serve = endpoint.clone();
    let handler: Handler = Arc::new(move |peer, message| serve.serve(peer, message));
    let spawned = std::thread::Builder::new()
        .name("fabric-link".into())
        .spawn(move || {
            let node = if listen {
                FabricNode::listen(&path, me, PEER_WAIT, handler)
            } else {
                FabricNode::connect(&path, me, PEER_WAIT, handler)
            };
            match node {
                Ok(node) => {
                    eprintln!(
                        "{who}: fabric: node {} linked to node {} over {}",
                        me.0,
                        node.peer().0,
                        path.display()
                    );
                    endpoint.connect(Some(node.clone()));
                    Some(node)
                }
                Err(e) => {
                    eprintln!("{who}: fabric: node {}: {e}", me.0);
                    None
                }
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            eprintln!("{who}: fabric: no thread for the link: {e}");
            None
        }
    }
}

/// One line on what the fabric did: shootdowns and their mean round trip, fences, accesses
/// served.
pub fn summary(args: &FabricArgs, endpoint: &FabricEndpoint) -> String {
    let peer = endpoint.peer();
    let shootdowns = endpoint.counter(GlobalCounter::RemoteShootdowns);
    let nanos = endpoint.counter(GlobalCounter::RemoteShootdownNanos);
    let mean_us = if shootdowns == 0 {
        0.0
    } else {
        // CAST: display only.
        nanos as f64 / shootdowns as f64 / 1000.0
    };
    format!(
        "fabric: node {} peer {}: {shootdowns} remote shootdowns (mean {mean_us:.1} us), {} fences, {} remote accesses served",
        args.node.unwrap_or(0),
        peer.map_or_else(|| "none".to_string(), |p| p.0.to_string()),
        endpoint.counter(GlobalCounter::Fences),
        endpoint.counter(GlobalCounter::RemoteAccesses),
    )
}
