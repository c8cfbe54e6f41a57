//! Remote segments (spec §20, since 1.3): segments exported by one rmnic device and attached
//! by contexts of another, over a fabric link between the two VMMs (`docs/fabric.md`).
//!
//! The device knows no sockets: the host gives it a [`FabricPort`] (send a request and wait
//! for its reply, send a one-way message), and hands every message the peer sends to
//! [`crate::RmnicDevice::fabric_serve`], which answers it. Both roles live here:
//!
//! - [`exporter`]: which local exports the peer may attach ([`ExporterState`], with the
//!   grant directory of `rmnic-fabric`), answering `Attach`, `Translate` (a miss asks this
//!   device's driver through a *remote fault record*) and `Access` (checked against the
//!   grants, then done on guest memory with the oracle watching), and forwarding every
//!   invalidation that revokes a grant to the peer, waiting for its acknowledgement within the
//!   fencing bound;
//! - [`importer`]: remote attachments, the remote TLB (the peer's grants), and the command
//!   steps that run on the peer's memory.

pub mod exporter;
pub mod importer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use rmnic_fabric::protocol::{Message, NodeId};
use thiserror::Error;

pub use self::exporter::{ExporterState, RemoteExport};
pub use self::importer::RemoteTlb;

/// The host's end of the fabric link, as the device uses it.
pub trait FabricPort: Send + Sync + std::fmt::Debug {
    /// The node at the other end.
    fn peer(&self) -> NodeId;
    /// Sends `request` and waits at most `timeout` for the message answering it (matched by
    /// [`Message::reply_to`]).
    fn request(&self, request: Message, timeout: Duration) -> Result<Message, PortError>;
    /// Sends a message nothing waits for an answer to.
    fn send(&self, message: Message) -> Result<(), PortError>;
}

/// Why a message did not get through.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PortError {
    /// The device has no fabric link.
    #[error("no fabric link")]
    NoLink,
    /// No answer in time.
    #[error("the peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The link broke or was closed (the peer died, or was fenced).
    #[error("the fabric link is down: {0}")]
    Down(String),
}

/// The host's link runner (`rmnic-fabric`'s [`FabricNode`]) is a port as it stands.
impl FabricPort for rmnic_fabric::node::FabricNode {
    fn peer(&self) -> NodeId {
        rmnic_fabric::node::FabricNode::peer(self)
    }

    fn request(&self, request: Message, timeout: Duration) -> Result<Message, PortError> {
        rmnic_fabric::node::FabricNode::request(self, request, timeout).map_err(port_error)
    }

    fn send(&self, message: Message) -> Result<(), PortError> {
        rmnic_fabric::node::FabricNode::send(self, message).map_err(port_error)
    }
}

fn port_error(error: rmnic_fabric::node::NodeError) -> PortError {
    match error {
        rmnic_fabric::node::NodeError::Timeout(t) => PortError::Timeout(t),
        other => PortError::Down(other.to_string()),
    }
}

/// Answers to remote fault records, by tag (`REG_REMOTE_ANSWER`).
#[derive(Debug, Default)]
struct Answers {
    next_tag: u16,
    /// Tag → the driver's answer, once given.
    pending: HashMap<u16, Option<u8>>,
}

/// The device's fabric state. Lock order: after the invalidation queue (`exporter` is lock
/// 4b of `engine`), `remote_tlb` and `answers` are leaves.
#[derive(Debug, Default)]
pub(crate) struct Fabric {
    /// The link, once the host connected one.
    port: RwLock<Option<Arc<dyn FabricPort>>>,
    /// The node of the last link connected (it stays known after the link is lost).
    linked_peer: Mutex<Option<NodeId>>,
    /// Exports the peer may attach, and what it was granted.
    pub(crate) exporter: RwLock<ExporterState>,
    /// The peer's grants this device caches for its importers.
    pub(crate) remote_tlb: Mutex<RemoteTlb>,
    answers: Mutex<Answers>,
    answered: Condvar,
    /// Ids of requests and invalidations this device sends.
    next_id: AtomicU64,
    /// What the fabric did since the device was created; unlike the `STAT_*` counters, a
    /// function reset (a vfio-user client leaving) does not clear them, so a host can report
    /// them at the end of a run.
    pub(crate) totals: FabricTotals,
}

/// Lifetime totals of a device's fabric side ([`crate::rmnic::FabricEndpoint::totals`]).
#[derive(Debug, Default)]
pub struct FabricTotals {
    /// Invalidations forwarded and acknowledged in time.
    pub shootdowns: AtomicU64,
    /// Their round trips, summed, in nanoseconds.
    pub shootdown_nanos: AtomicU64,
    /// Peers fenced.
    pub fences: AtomicU64,
    /// Accesses of the peer served.
    pub remote_accesses: AtomicU64,
}

/// A snapshot of [`FabricTotals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricCounts {
    /// Invalidations forwarded and acknowledged in time.
    pub shootdowns: u64,
    /// Their round trips, summed, in nanoseconds.
    pub shootdown_nanos: u64,
    /// Peers fenced.
    pub fences: u64,
    /// Accesses of the peer served.
    pub remote_accesses: u64,
}

impl FabricTotals {
    /// The totals now.
    pub fn snapshot(&self) -> FabricCounts {
        FabricCounts {
            shootdowns: self.shootdowns.load(Ordering::Relaxed),
            shootdown_nanos: self.shootdown_nanos.load(Ordering::Relaxed),
            fences: self.fences.load(Ordering::Relaxed),
            remote_accesses: self.remote_accesses.load(Ordering::Relaxed),
        }
    }
}

impl Fabric {
    /// Connects (or disconnects, with None) the link.
    pub(crate) fn set_port(&self, port: Option<Arc<dyn FabricPort>>) {
        if let Some(port) = &port {
            *self.linked_peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(port.peer());
        }
        *self.port.write().unwrap_or_else(|p| p.into_inner()) = port;
    }

    /// The node of the last link connected, even if it was lost since.
    pub(crate) fn linked_peer(&self) -> Option<NodeId> {
        *self.linked_peer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link, if any.
    pub(crate) fn port(&self) -> Option<Arc<dyn FabricPort>> {
        self.port.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A fresh request or invalidation id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The exporter state for reading.
    pub(crate) fn exporter_read(&self) -> std::sync::RwLockReadGuard<'_, ExporterState> {
        self.exporter.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The exporter state for changes.
    pub(crate) fn exporter_write(&self) -> std::sync::RwLockWriteGuard<'_, ExporterState> {
        self.exporter.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The remote TLB.
    pub(crate) fn remote_tlb(&self) -> std::sync::MutexGuard<'_, RemoteTlb> {
        self.remote_tlb.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new tag for a remote fault record.
    fn new_tag(&self) -> u16 {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            answers.next_tag = answers.next_tag.wrapping_add(1);
            let tag = answers.next_tag;
            if let std::collections::hash_map::Entry::Vacant(slot) = answers.pending.entry(tag) {
                slot.insert(None);
                return tag;
            }
        }
    }

    /// The driver answered the remote fault `tag` with `status` (`REG_REMOTE_ANSWER`). An
    /// unknown tag (late, or made up) is ignored.
    pub(crate) fn answer(&self, tag: u16, status: u8) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = answers.pending.get_mut(&tag) {
            *slot = Some(status);
            self.answered.notify_all();
        }
    }

    /// Waits at most `timeout` for the answer to `tag`, and forgets the tag.
    fn wait_answer(&self, tag: u16, timeout: Duration) -> Option<u8> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let (mut answers, _) = self
            .answered
            .wait_timeout_while(answers, timeout, |a| {
                a.pending.get(&tag).is_some_and(Option::is_none)
            })
            .unwrap_or_else(|p| p.into_inner());
        answers.pending.remove(&tag).flatten()
    }

    /// Back to reset, for the leaf locks (the function reset clears the exporter state under
    /// its own lock order): no cached remote translation, no pending remote fault (waiters
    /// give up at once). The link stays: it is the host's.
    pub(crate) fn reset_leaves(&self) {
        self.remote_tlb().clear();
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.pending.clear();
        self.answered.notify_all();
    }
}

/// `REG_REMOTE_ANSWER` status: the driver resolved the page; retry.
pub const REMOTE_ANSWER_RESOLVED: u8 = 0;
/// `REG_REMOTE_ANSWER` status: the page cannot be mapped.
pub const REMOTE_ANSWER_UNRESOLVED: u8 = 1;
/// `REG_REMOTE_ANSWER` status: the page is mapped without the permission asked.
pub const REMOTE_ANSWER_PERMISSION: u8 = 2;
/// `REG_REMOTE_ANSWER` bits 15:0: the tag of the remote fault record answered.
pub const REMOTE_ANSWER_TAG_MASK: u32 = 0xffff;
/// `REG_REMOTE_ANSWER` bits 23:16: the status.
pub const REMOTE_ANSWER_STATUS_SHIFT: u32 = 16;

/// Every named value of this module, for the specification drift test.
pub const SPEC_CONSTANTS: [(&str, u64); 5] = [
    ("REMOTE_ANSWER_RESOLVED", REMOTE_ANSWER_RESOLVED as u64),
    ("REMOTE_ANSWER_UNRESOLVED", REMOTE_ANSWER_UNRESOLVED as u64),
    ("REMOTE_ANSWER_PERMISSION", REMOTE_ANSWER_PERMISSION as u64),
    ("REMOTE_ANSWER_TAG_MASK", REMOTE_ANSWER_TAG_MASK as u64),
    (
        "REMOTE_ANSWER_STATUS_SHIFT",
        REMOTE_ANSWER_STATUS_SHIFT as u64,
    ),
];
