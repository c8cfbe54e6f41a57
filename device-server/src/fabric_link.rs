//! The fabric link of a device host (spec §20, `docs/fabric.md`): the command-line options
//! both hosts take (`--node`, `--fabric-listen`, `--fabric-connect`), the thread that sets up
//! the link without holding up the boot, and the summary printed at the end.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rmnic_device::rmnic::FabricEndpoint;
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
    /// A link fault this node plants, to test the other node's bounds: `drop-acks` (never
    /// acknowledge an invalidation), `delay-acks:MS` (acknowledge after MS milliseconds),
    /// `partition-on-invalidate` (from the first invalidation received on, every message is
    /// lost both ways while both nodes live on).
    #[arg(long, value_name = "FAULT", value_parser = parse_link_fault, requires = "node")]
    pub fabric_fault: Option<LinkFault>,
}

/// A planted link fault (`--fabric-fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Invalidations are never acknowledged: the exporter must fence this node within its
    /// bound.
    DropAcks,
    /// Invalidations are acknowledged this late.
    DelayAcks(Duration),
    /// The first invalidation received starts a partition: nothing gets through either way.
    PartitionOnInvalidate,
}

fn parse_link_fault(text: &str) -> Result<LinkFault, String> {
    match text.split_once(':') {
        None if text == "drop-acks" => Ok(LinkFault::DropAcks),
        None if text == "partition-on-invalidate" => Ok(LinkFault::PartitionOnInvalidate),
        Some(("delay-acks", ms)) => ms
            .parse::<u64>()
            .map(|ms| LinkFault::DelayAcks(Duration::from_millis(ms)))
            .map_err(|_| format!("delay-acks:MS wants milliseconds, not '{ms}'")),
        _ => Err(format!(
            "unknown link fault '{text}' (drop-acks, delay-acks:MS, partition-on-invalidate)"
        )),
    }
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
    let fault = args.fabric_fault;
    if let Some(fault) = fault {
        eprintln!("{who}: fabric: planting the link fault {fault:?}");
    }
    // The node, once linked, for a partition the handler starts.
    let linked: Arc<OnceLock<Weak<FabricNode>>> = Arc::new(OnceLock::new());
    let partitions = linked.clone();
    let handler: Handler = Arc::new(move |peer, message| {
        let invalidation = matches!(message, rmnic_fabric::protocol::Message::Invalidate { .. });
        if invalidation && fault == Some(LinkFault::PartitionOnInvalidate) {
            if let Some(node) = partitions.get().and_then(Weak::upgrade) {
                eprintln!("{who}: fabric: planted partition starts now");
                node.partition();
            }
            return None;
        }
        let answer = serve.serve(peer, message);
        match fault {
            Some(LinkFault::DropAcks) if invalidation => None,
            Some(LinkFault::DelayAcks(delay)) if invalidation => {
                std::thread::sleep(delay);
                answer
            }
            _ => answer,
        }
    });
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
                    let _ = linked.set(Arc::downgrade(&node));
                    endpoint.connect(Some(node.clone()));
                    let lost = endpoint.clone();
                    node.on_down(Arc::new(move |peer| {
                        let fenced = lost.link_lost(peer);
                        eprintln!(
                            "{who}: fabric: link to node {} lost{}",
                            peer.0,
                            if fenced {
                                "; it was still attached: fenced"
                            } else {
                                ""
                            }
                        );
                    }));
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

/// One line on what the fabric did since the device was created: shootdowns and their mean
/// round trip, fences, accesses served.
pub fn summary(args: &FabricArgs, endpoint: &FabricEndpoint) -> String {
    let peer = endpoint.linked_peer();
    let totals = endpoint.totals();
    let (shootdowns, nanos) = (totals.shootdowns, totals.shootdown_nanos);
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
        totals.fences,
        totals.remote_accesses,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_faults_parse_and_bad_ones_are_named() {
        assert_eq!(parse_link_fault("drop-acks"), Ok(LinkFault::DropAcks));
        assert_eq!(
            parse_link_fault("partition-on-invalidate"),
            Ok(LinkFault::PartitionOnInvalidate)
        );
        assert_eq!(
            parse_link_fault("delay-acks:20"),
            Ok(LinkFault::DelayAcks(Duration::from_millis(20)))
        );
        assert!(parse_link_fault("delay-acks:x")
            .expect_err("refused")
            .contains("milliseconds"));
        assert!(parse_link_fault("cut")
            .expect_err("refused")
            .contains("unknown link fault"));
    }
}
