//! The exporting node's side of remote segments: what the peer may attach, the grants it holds,
//! and the three services it asks for (attach, translate, access), plus forwarding every
//! invalidation that revokes a grant.
//!
//! Safety of the exporter's memory does not rest on the peer: every `Access` is checked
//! against the grant directory and runs while holding it (read side), and an invalidation
//! revokes the grants it touches (write side) before it waits for the peer's acknowledgement.
//! The acknowledgement wait is what makes the peer's remote TLB coherent too: when the
//! exporter's invalidation completes, the peer holds no translation of the range, or is
//! fenced.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use rmnic_fabric::grants::GrantDirectory;
use rmnic_fabric::protocol::{
    AccessDone, Gpa, Grant, Message, NodeId, Op, PageSize, RemoteError, INVALIDATE_ACK_TIMEOUT,
    TRANSLATE_REPLY_TIMEOUT,
};
use vm_memory::GuestAddress;

use crate::addr::VirtAddr;
use crate::engine::{lock, Shared};
use crate::events::EventKind;
use crate::events::InvalidationKind;
use crate::fault_ring::{
    FaultRecord, Posted, FAULT_ACCESS_READ, FAULT_ACCESS_WRITE, FAULT_REASON_MISS,
    FAULT_REASON_PERMISSION,
};
use crate::inject::{DmaPurpose, TranslatedAccess};
use crate::invalidation::InvalidationDescriptor;
use crate::rmnic::VECTOR_FAULT;
use crate::segments::Export;
use crate::stats::GlobalCounter;
use crate::tlb::Perms;

use super::{REMOTE_ANSWER_PERMISSION, REMOTE_ANSWER_RESOLVED};

/// How many times a `Translate` asks the driver before giving up (each answer "resolved"
/// may be undone by an invalidation before the lookup repeats).
const TRANSLATE_ATTEMPTS: usize = 4;
const PAGE: u64 = 4096;

/// A local export the peer may attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteExport {
    /// The key the peer names.
    pub key: u64,
    /// The exporting context, its ASID and page-table root.
    pub owner: u8,
    /// The owner's ASID.
    pub asid: u16,
    /// The owner's page-table root (for the oracle).
    pub pt_root: u64,
    /// First VA.
    pub base: u64,
    /// Length.
    pub length: u64,
    /// The generation the grant directory gave this opening.
    pub generation: u32,
}

/// Exports the peer may attach and the grants it holds.
#[derive(Debug, Default)]
pub struct ExporterState {
    /// Attachments and page grants, per peer (`rmnic-fabric`).
    pub grants: GrantDirectory,
    /// Remote exports by export index.
    pub exports: BTreeMap<u8, RemoteExport>,
}

impl Shared {
    /// Export `index` became valid: if it is remote, the peer may attach it from now on.
    pub(crate) fn fabric_export_installed(&self, index: usize, export: &Export) {
        let Some(key) = export.remote_key else {
            return;
        };
        // CAST: index < NUM_EXPORTS (64).
        let index = index as u8;
        let mut state = self.fabric.exporter_write();
        match state
            .grants
            .open_export(index, export.length, export.writable)
        {
            Ok(generation) => {
                state.exports.insert(
                    index,
                    RemoteExport {
                        key,
                        owner: export.owner,
                        asid: export.asid,
                        pt_root: export.pt_root,
                        base: export.base,
                        length: export.length,
                        generation,
                    },
                );
            }
            Err(error) => tracing::warn!(index, %error, "rmnic: remote export not opened"),
        }
    }

    /// Export `index` was revoked: its grants go at once (no access of the peer passes a
    /// check from here on), and the peer is told. Called without the segment table's lock.
    pub(crate) fn fabric_export_revoked(&self, index: usize) {
        // CAST: index < NUM_EXPORTS (64).
        let index = index as u8;
        let (peers, generation) = {
            let mut state = self.fabric.exporter_write();
            let Some(export) = state.exports.remove(&index) else {
                return;
            };
            (state.grants.close_export(index), export.generation)
        };
        let Some(port) = self.fabric.port() else {
            return;
        };
        for peer in peers {
            if peer == port.peer() {
                let _ = port.send(Message::Revoke {
                    export: index,
                    generation,
                });
            }
        }
    }

    /// Answers a request of the peer in the exporter's role; None for messages that need no
    /// answer.
    pub(crate) fn serve_as_exporter(&self, peer: NodeId, message: Message) -> Option<Message> {
        match message {
            Message::Attach { req, key, write } => {
                let result = {
                    let mut state = self.fabric.exporter_write();
                    match state
                        .exports
                        .iter()
                        .find(|(_, e)| e.key == key)
                        .map(|(i, _)| *i)
                    {
                        Some(index) => state.grants.attach(peer, index, write),
                        None => Err(RemoteError::Revoked),
                    }
                };
                Some(Message::AttachReply { req, result })
            }
            Message::Translate {
                req,
                export,
                generation,
                offset,
                write,
            } => Some(Message::TranslateReply {
                req,
                result: self.serve_translate(peer, export, generation, offset, write),
            }),
            Message::Access {
                req,
                export,
                generation,
                offset,
                gpa,
                op,
            } => Some(Message::AccessReply {
                req,
                result: self.serve_access(peer, export, generation, offset, gpa, &op),
            }),
            Message::Detach { export, generation } => {
                self.fabric
                    .exporter_write()
                    .grants
                    .detach(peer, export, generation);
                None
            }
            _ => None,
        }
    }

    /// The grant of the page holding `offset` of export `export`: looked up in the device TLB
    /// under the owner's ASID and recorded in the grant directory under one hold of the
    /// exporter lock, which an invalidation takes (after removing TLB entries) to revoke
    /// grants; on a miss, the driver resolves the page first (a remote fault record).
    fn serve_translate(
        &self,
        peer: NodeId,
        export: u8,
        generation: u32,
        offset: u64,
        write: bool,
    ) -> Result<Grant, RemoteError> {
        let access = if write {
            FAULT_ACCESS_WRITE
        } else {
            FAULT_ACCESS_READ
        };
        for _ in 0..TRANSLATE_ATTEMPTS {
            let (owner, asid, va, reason) = {
                let mut state = self.fabric.exporter_write();
                if state.grants.is_fenced(peer) {
                    return Err(RemoteError::Fenced);
                }
                let e = *state
                    .exports
                    .get(&export)
                    .filter(|e| e.generation == generation)
                    .ok_or(RemoteError::Revoked)?;
                if offset >= e.length {
                    return Err(RemoteError::Bounds);
                }
                let va = e.base + offset;
                let hit = self.tlb_read().lookup(e.asid, VirtAddr(va));
                match hit {
                    Some(hit) if !write || hit.perms.allows(Perms::WRITE) => {
                        let grant = Grant {
                            page_offset: offset & !(PAGE - 1),
                            gpa: Gpa(hit.gpa.0 - (va & (PAGE - 1))),
                            size: PageSize::Size4K,
                            writable: hit.perms.allows(Perms::WRITE),
                        };
                        return match state.grants.grant(peer, export, generation, grant) {
                            // A read-only attachment gets read-only grants.
                            Err(RemoteError::Permission) if !write => {
                                let grant = Grant {
                                    writable: false,
                                    ..grant
                                };
                                state.grants.grant(peer, export, generation, grant)?;
                                Ok(grant)
                            }
                            other => other.map(|()| grant),
                        };
                    }
                    Some(_) => (e.owner, e.asid, va, FAULT_REASON_PERMISSION),
                    None => (e.owner, e.asid, va, FAULT_REASON_MISS),
                }
            };
            match self.remote_fault(owner, asid, VirtAddr(va), access, reason, export) {
                Some(REMOTE_ANSWER_RESOLVED) => continue,
                Some(REMOTE_ANSWER_PERMISSION) => return Err(RemoteError::Permission),
                _ => return Err(RemoteError::Unresolved),
            }
        }
        Err(RemoteError::Unresolved)
    }

    /// Posts a remote fault record for the owner context's `va` and waits for the driver's
    /// answer (None: no fault ring, or no answer in time).
    fn remote_fault(
        &self,
        owner: u8,
        asid: u16,
        va: VirtAddr,
        access: u8,
        reason: u8,
        export: u8,
    ) -> Option<u8> {
        let tag = self.fabric.new_tag();
        let record = FaultRecord {
            ctx: owner,
            asid,
            access,
            reason,
            va,
            command_id: u64::from(tag),
            segment_slot: Some(export),
            remote: true,
        };
        let posted = lock(&self.fault_ring).post(record, &self.dma(DmaPurpose::FaultRecord));
        match posted {
            Ok(Posted::Written(index)) => {
                self.events.record(EventKind::FaultRecord {
                    ctx: owner,
                    va,
                    index,
                });
                self.raise(VECTOR_FAULT);
            }
            Ok(Posted::Queued) => {}
            Ok(Posted::NoRing) | Err(_) => {
                self.fabric.wait_answer(tag, std::time::Duration::ZERO);
                return None;
            }
        }
        // Leave the peer's wait some room: it gives up after TRANSLATE_REPLY_TIMEOUT.
        self.fabric
            .wait_answer(tag, TRANSLATE_REPLY_TIMEOUT.mul_f32(0.8))
    }

    /// Runs `op` on the exporter's memory for the peer, if the grant directory allows it, while
    /// holding the directory so that no invalidation revoking the page completes meanwhile.
    fn serve_access(
        &self,
        peer: NodeId,
        export: u8,
        generation: u32,
        offset: u64,
        gpa: Gpa,
        op: &Op,
    ) -> Result<AccessDone, RemoteError> {
        let state = self.fabric.exporter_read();
        state
            .grants
            .check_op(peer, export, generation, offset, gpa, op)?;
        let e = state.exports.get(&export).ok_or(RemoteError::Revoked)?;
        let dma = self.dma(DmaPurpose::Data);
        let at = GuestAddress(gpa.0);
        let mut done = AccessDone::default();
        let result = match op {
            Op::Read { len } => {
                // CAST: check_op bounded len to ACCESS_MAX_BYTES.
                done.data = vec![0; *len as usize];
                dma.read(at, &mut done.data)
            }
            Op::Write { data } => dma.write(at, data),
            Op::Read64 => dma
                .with_atomic::<AtomicU64, _>(at, |w| w.load(std::sync::atomic::Ordering::SeqCst))
                .map(|v| done.value = v),
            Op::Write64 { value } => dma.with_atomic::<AtomicU64, _>(at, |w| {
                w.store(*value, std::sync::atomic::Ordering::SeqCst)
            }),
            Op::FetchAdd { addend } => dma
                .with_atomic::<AtomicU64, _>(at, |w| {
                    w.fetch_add(*addend, std::sync::atomic::Ordering::SeqCst)
                })
                .map(|v| done.value = v),
            Op::Cas { expected, new } => dma
                .with_atomic::<AtomicU64, _>(at, |w| {
                    match w.compare_exchange(
                        *expected,
                        *new,
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                    ) {
                        Ok(old) | Err(old) => old,
                    }
                })
                .map(|v| done.value = v),
            Op::Swap { value } => dma
                .with_atomic::<AtomicU64, _>(at, |w| {
                    w.swap(*value, std::sync::atomic::Ordering::SeqCst)
                })
                .map(|v| done.value = v),
        };
        result.map_err(|_| RemoteError::Unresolved)?;
        let mut bits = 0;
        if !matches!(op, Op::Write { .. } | Op::Write64 { .. }) {
            bits |= FAULT_ACCESS_READ;
        }
        if op.writes() {
            bits |= FAULT_ACCESS_WRITE;
        }
        // The oracle checks the peer's access against the owner's page tables, as any other.
        self.injector.translated(
            &TranslatedAccess {
                ctx: e.owner,
                asid: e.asid,
                va: VirtAddr(e.base + offset),
                gpa: at,
                len: u64::from(op.len()),
                access: bits,
                fill_id: 0,
                pt_root: e.pt_root,
            },
            dma.memory(),
        );
        self.stats.count(GlobalCounter::RemoteAccesses, 1);
        self.fabric
            .totals
            .remote_accesses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(state);
        Ok(done)
    }

    /// After `descriptor` removed its TLB entries: revokes the peer's grants it covers and
    /// waits for the peer's acknowledgement, at most [`INVALIDATE_ACK_TIMEOUT`] per
    /// message; a peer that does not answer in time, or whose link is down, is fenced.
    pub(crate) fn forward_invalidation(&self, descriptor: &InvalidationDescriptor) {
        let work: Vec<(NodeId, Message)> = {
            let mut state = self.fabric.exporter_write();
            let state = &mut *state;
            let mut work = Vec::new();
            for (index, e) in &state.exports {
                let range = match descriptor.kind {
                    InvalidationKind::Global => Some((0, e.length)),
                    InvalidationKind::Asid if descriptor.asid == e.asid => Some((0, e.length)),
                    InvalidationKind::Range if descriptor.asid == e.asid => {
                        descriptor.range.and_then(|r| {
                            let start = r.start().0.max(e.base);
                            let end = r.end().0.min(e.base + e.length);
                            (start < end).then(|| {
                                (
                                    (start - e.base) & !(PAGE - 1),
                                    (end - e.base).next_multiple_of(PAGE).min(e.length),
                                )
                            })
                        })
                    }
                    _ => None,
                };
                let Some((start, end)) = range else {
                    continue;
                };
                for peer in state.grants.revoke_range(*index, start, end) {
                    work.push((
                        peer,
                        Message::Invalidate {
                            inv: self.fabric.next_id(),
                            export: *index,
                            generation: e.generation,
                            start,
                            end,
                        },
                    ));
                }
            }
            work
        };
        if work.is_empty() {
            return;
        }
        let port = self.fabric.port();
        for (peer, message) in work {
            let sent = Instant::now();
            let acked = port
                .as_ref()
                .filter(|port| port.peer() == peer)
                .map(|port| port.request(message, INVALIDATE_ACK_TIMEOUT));
            match acked {
                Some(Ok(Message::InvalidateAck { .. })) => {
                    let nanos = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.stats.count(GlobalCounter::RemoteShootdowns, 1);
                    self.stats.count(GlobalCounter::RemoteShootdownNanos, nanos);
                    let totals = &self.fabric.totals;
                    totals
                        .shootdowns
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    totals
                        .shootdown_nanos
                        .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
                }
                _ => self.fence(peer),
            }
        }
    }

    /// Fences `peer`: no request of it passes from now on (it must reconnect).
    pub(crate) fn fence(&self, peer: NodeId) {
        self.fabric.exporter_write().grants.fence(peer);
        self.stats.count(GlobalCounter::Fences, 1);
        self.fabric
            .totals
            .fences
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(peer = peer.0, "rmnic: fabric peer fenced");
    }
}
