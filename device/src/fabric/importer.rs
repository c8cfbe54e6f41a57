//! The importing node's side of remote segments: remote attachments, the remote TLB (grants
//! the exporting node gave), the command steps that run on the exporter's memory, and the
//! invalidations and revocations the exporter sends.
//!
//! A step on a remote segment address translates through the remote TLB (a miss asks the
//! exporter with `Translate`) and then sends one `Access` of at most one page. It runs on the
//! worker holding its context's lock, as a local step does, but waits for the network: at most
//! `TRANSLATE_REPLY_TIMEOUT` plus `ACCESS_REPLY_TIMEOUT`. Whatever it caches, the exporter
//! checks every access against its own grants, so a stale entry here costs a retry
//! (`NotGranted`), never another process's memory.

use std::collections::HashMap;

use rmnic_fabric::protocol::{
    AccessDone, AttachGrant, Grant, Message, NodeId, Op, RemoteError, ACCESS_MAX_BYTES,
    ACCESS_REPLY_TIMEOUT, ATTACH_REPLY_TIMEOUT, TRANSLATE_REPLY_TIMEOUT,
};

use crate::commands::Status;
use crate::engine::Shared;
use crate::segments::{RemoteAttachment, RemoteTarget};

const PAGE: u64 = 4096;

/// Grants of the exporting node, by (export, generation, 4 KiB page offset).
#[derive(Debug, Default)]
pub struct RemoteTlb {
    entries: HashMap<(u8, u32, u64), Grant>,
}

impl RemoteTlb {
    /// The grant holding `offset` of the export.
    pub fn lookup(&self, export: u8, generation: u32, offset: u64) -> Option<Grant> {
        self.entries
            .get(&(export, generation, offset & !(PAGE - 1)))
            .copied()
    }

    /// Caches a grant.
    pub fn insert(&mut self, export: u8, generation: u32, grant: Grant) {
        self.entries
            .insert((export, generation, grant.page_offset), grant);
    }

    /// Drops every grant of the export overlapping `[start, end)`; returns how many.
    pub fn invalidate(&mut self, export: u8, generation: u32, start: u64, end: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(e, g, page), grant| {
            !(*e == export
                && *g == generation
                && *page < end
                && page.saturating_add(grant.size.bytes()) > start)
        });
        before - self.entries.len()
    }

    /// Drops one cached grant (the exporter said it is no longer current).
    pub fn forget(&mut self, export: u8, generation: u32, page_offset: u64) {
        self.entries.remove(&(export, generation, page_offset));
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Grants cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a remote step did not complete its access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RemoteFailure {
    /// The command completes with this status.
    Status(Status),
    /// The grant was stale: the step may be retried after a fresh `Translate`.
    Retry,
}

impl From<RemoteError> for RemoteFailure {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Fenced | RemoteError::Revoked => Self::Status(Status::SegmentInvalid),
            RemoteError::Bounds => Self::Status(Status::SegmentBounds),
            RemoteError::Permission => Self::Status(Status::Permission),
            RemoteError::Misaligned => Self::Status(Status::Alignment),
            RemoteError::Unresolved => Self::Status(Status::FaultUnresolved),
            RemoteError::NotGranted | RemoteError::Busy => Self::Retry,
            RemoteError::Protocol => Self::Status(Status::RemoteUnreachable),
        }
    }
}

/// No link, no answer in time, or an answer that makes no sense.
const UNREACHABLE: RemoteFailure = RemoteFailure::Status(Status::RemoteUnreachable);

impl Shared {
    /// Sends the request `make` builds around a fresh id and waits at most `timeout` for its
    /// answer; no link or no answer is [`UNREACHABLE`].
    fn ask(
        &self,
        make: impl FnOnce(u64) -> Message,
        timeout: std::time::Duration,
    ) -> Result<Message, RemoteFailure> {
        let port = self.fabric.port().ok_or(UNREACHABLE)?;
        port.request(make(self.fabric.next_id()), timeout)
            .map_err(|_| UNREACHABLE)
    }

    /// Asks the exporting node to attach the export published under `key`; None if refused,
    /// unanswered or there is no link.
    pub(crate) fn remote_attach(&self, key: u64, write: bool) -> Option<RemoteAttachment> {
        let reply = self
            .ask(
                |req| Message::Attach { req, key, write },
                ATTACH_REPLY_TIMEOUT,
            )
            .ok()?;
        match reply {
            Message::AttachReply {
                result: Ok(grant @ AttachGrant { .. }),
                ..
            } if grant.writable || !write => Some(RemoteAttachment {
                export: grant.export,
                generation: grant.generation,
                length: grant.length,
                writable: grant.writable && write,
            }),
            _ => None,
        }
    }

    /// The last attachment of this device to the other node's export went: tell the exporter,
    /// which drops this node's attachment and grants (and stops forwarding invalidations of
    /// it here), and forget its grants.
    pub(crate) fn remote_detach(&self, export: u8, generation: u32) {
        self.fabric
            .remote_tlb()
            .invalidate(export, generation, 0, u64::MAX);
        if let Some(port) = self.fabric.port() {
            let _ = port.send(Message::Detach { export, generation });
        }
    }

    /// Answers a message of the peer in the importer's role; None for messages that need no
    /// answer.
    pub(crate) fn serve_as_importer(&self, _peer: NodeId, message: Message) -> Option<Message> {
        match message {
            Message::Invalidate {
                inv,
                export,
                generation,
                start,
                end,
            } => {
                self.fabric
                    .remote_tlb()
                    .invalidate(export, generation, start, end);
                Some(Message::InvalidateAck { inv })
            }
            Message::Revoke { export, generation } => {
                self.fabric
                    .remote_tlb()
                    .invalidate(export, generation, 0, u64::MAX);
                self.segments_write().revoke_remote(export, generation);
                Some(Message::RevokeAck { export, generation })
            }
            _ => None,
        }
    }

    /// The grant holding `offset` of `target`'s export: cached, or asked of the exporter.
    fn remote_grant(
        &self,
        target: &RemoteTarget,
        offset: u64,
        write: bool,
    ) -> Result<Grant, RemoteFailure> {
        let a = target.attachment;
        if let Some(grant) = self
            .fabric
            .remote_tlb()
            .lookup(a.export, a.generation, offset)
        {
            if grant.writable || !write {
                return Ok(grant);
            }
        }
        let reply = self.ask(
            |req| Message::Translate {
                req,
                export: a.export,
                generation: a.generation,
                offset,
                write,
            },
            TRANSLATE_REPLY_TIMEOUT,
        )?;
        let Message::TranslateReply { result, .. } = reply else {
            return Err(UNREACHABLE);
        };
        let grant = result?;
        let attachment = AttachGrant {
            export: a.export,
            generation: a.generation,
            length: a.length,
            writable: a.writable,
        };
        grant
            .check_reply(offset, write, &attachment)
            .map_err(|_| UNREACHABLE)?;
        self.fabric
            .remote_tlb()
            .insert(a.export, a.generation, grant);
        Ok(grant)
    }

    /// One access of the remote segment: `op` at `offset` (within one page), through the
    /// cached or fetched grant. A stale grant is forgotten and reported as [`RemoteFailure::Retry`].
    pub(crate) fn remote_access(
        &self,
        target: &RemoteTarget,
        offset: u64,
        op: Op,
    ) -> Result<AccessDone, RemoteFailure> {
        let a = target.attachment;
        let grant = self.remote_grant(target, offset, op.writes())?;
        let gpa = grant.gpa_of(offset).ok_or(UNREACHABLE)?;
        // A write whose answer is lost may or may not have happened: the command fails, it is
        // not retried.
        let reply = self.ask(
            |req| Message::Access {
                req,
                export: a.export,
                generation: a.generation,
                offset,
                gpa,
                op: op.clone(),
            },
            ACCESS_REPLY_TIMEOUT,
        )?;
        let Message::AccessReply { result, .. } = reply else {
            return Err(UNREACHABLE);
        };
        match result {
            Ok(done) => {
                op.check_reply(&done).map_err(|_| UNREACHABLE)?;
                Ok(done)
            }
            Err(RemoteError::NotGranted) => {
                self.fabric
                    .remote_tlb()
                    .forget(a.export, a.generation, grant.page_offset);
                Err(RemoteFailure::Retry)
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// Bytes one remote access may move from `offset`: to the end of its 4 KiB page, at most
/// `remaining` and [`ACCESS_MAX_BYTES`].
pub(crate) fn remote_chunk(offset: u64, remaining: u64) -> u64 {
    let to_page_end = PAGE - (offset & (PAGE - 1));
    remaining.min(to_page_end).min(u64::from(ACCESS_MAX_BYTES))
}
