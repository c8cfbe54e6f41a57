//! The exporter's grant directory: which pages of which export each remote importer may
//! access, and at which guest-physical address, so that every [`Message::Access`] a peer
//! sends is checked against what this side granted and has not revoked.
//!
//! The exporter never trusts a peer: an access passes [`GrantDirectory::check`] only if the
//! peer is not fenced, the export is open in the generation named, the peer is attached to
//! it, the bytes lie in the segment, the access writes only through a writable attachment and
//! grant, and the gpa is exactly the one the exporter granted to *this* peer for *this*
//! offset. Safety of the exporter's memory rests on this check, not on the importer's
//! acknowledgements: once [`GrantDirectory::revoke_range`] returns, no access naming a
//! revoked page passes, whatever the peer still caches. (The device must also let accesses
//! already past `check` finish before the exporter's invalidation completes, as it does for
//! local segment accesses: `docs/fabric.md`, "Ordering".)
//!
//! Pure data, no locking: the device owns one directory behind its segment lock.
//!
//! [`Message::Access`]: crate::protocol::Message::Access

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::protocol::{AttachGrant, Gpa, Grant, NodeId, Op, PageSize, RemoteError, PAGE_4K};

/// Misuse of the directory by the exporter itself (not a peer's doing).
#[derive(Debug, PartialEq, Eq, Error)]
pub enum GrantError {
    /// The export index is already open.
    #[error("Export {export} is already open")]
    AlreadyOpen {
        /// Export index.
        export: u8,
    },
    /// A segment length that is zero or not a multiple of 4 KiB.
    #[error("Segment length {length:#x} is not a non-zero multiple of 4 KiB")]
    BadLength {
        /// The length.
        length: u64,
    },
    /// Every `u32` generation was used.
    #[error("Export generations exhausted")]
    GenerationsExhausted,
}

/// One granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageGrant {
    gpa: Gpa,
    size: PageSize,
    writable: bool,
}

/// One peer's attachment to one export.
#[derive(Debug, Default)]
struct Importer {
    writable: bool,
    /// Granted pages by segment offset of their first byte. Invariant: no two overlap, so the
    /// grant holding an offset, if any, is the last one starting at or before it.
    pages: BTreeMap<u64, PageGrant>,
}

impl Importer {
    /// Removes every grant overlapping `[start, end)`; returns how many.
    fn remove_overlapping(&mut self, start: u64, end: u64) -> usize {
        // A grant starting before `start` overlaps only if it is at most 2 MiB − 1 before.
        let from = start.saturating_sub(PageSize::Size2M.bytes() - 1);
        let doomed: Vec<u64> = self
            .pages
            .range(from..end)
            .filter(|(&at, g)| at.saturating_add(g.size.bytes()) > start)
            .map(|(&at, _)| at)
            .collect();
        for at in &doomed {
            self.pages.remove(at);
        }
        doomed.len()
    }

    /// The grant holding `offset`, with its first offset.
    fn holding(&self, offset: u64) -> Option<(u64, PageGrant)> {
        let (&at, &g) = self.pages.range(..=offset).next_back()?;
        (offset - at < g.size.bytes()).then_some((at, g))
    }
}

/// One open export.
#[derive(Debug)]
struct ExportState {
    generation: u32,
    length: u64,
    writable: bool,
    importers: BTreeMap<NodeId, Importer>,
}

/// The exporter-side record of exports, remote attachments and page grants.
#[derive(Debug)]
pub struct GrantDirectory {
    exports: BTreeMap<u8, ExportState>,
    /// The generation the next opened export gets. Global rather than per index, so a
    /// generation names one opening of one export for the life of the directory.
    next_generation: u32,
    fenced: BTreeSet<NodeId>,
}

impl Default for GrantDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl GrantDirectory {
    /// An empty directory: no export open, nobody fenced.
    pub fn new() -> Self {
        GrantDirectory {
            exports: BTreeMap::new(),
            next_generation: 1,
            fenced: BTreeSet::new(),
        }
    }

    /// Opens export `export` for remote importers: `length` bytes (a non-zero multiple of
    /// 4 KiB), `writable` if importers may write. Returns the generation every message about
    /// this opening carries.
    pub fn open_export(
        &mut self,
        export: u8,
        length: u64,
        writable: bool,
    ) -> Result<u32, GrantError> {
        if self.exports.contains_key(&export) {
            return Err(GrantError::AlreadyOpen { export });
        }
        if length == 0 || length % PAGE_4K != 0 {
            return Err(GrantError::BadLength { length });
        }
        let generation = self.next_generation;
        self.next_generation = generation
            .checked_add(1)
            .ok_or(GrantError::GenerationsExhausted)?;
        self.exports.insert(
            export,
            ExportState {
                generation,
                length,
                writable,
                importers: BTreeMap::new(),
            },
        );
        Ok(generation)
    }

    /// Closes export `export` (its segment is gone): every attachment and grant goes with it.
    /// Returns the peers to send [`Message::Revoke`](crate::protocol::Message::Revoke), the
    /// attached ones that are not fenced; empty if the export was not open.
    pub fn close_export(&mut self, export: u8) -> Vec<NodeId> {
        let Some(state) = self.exports.remove(&export) else {
            return Vec::new();
        };
        state
            .importers
            .into_keys()
            .filter(|peer| !self.fenced.contains(peer))
            .collect()
    }

    /// The generation export `export` is open in, if it is.
    pub fn generation(&self, export: u8) -> Option<u32> {
        self.exports.get(&export).map(|e| e.generation)
    }

    /// Attaches `peer` to export `export` (writable if `write`). Attaching again is allowed
    /// and keeps the grants; `write` then only ever adds permission. The attachment is the
    /// peer node's, whatever number of its local contexts use it: its device sends
    /// `Detach` when the last one is gone.
    pub fn attach(
        &mut self,
        peer: NodeId,
        export: u8,
        write: bool,
    ) -> Result<AttachGrant, RemoteError> {
        if self.fenced.contains(&peer) {
            return Err(RemoteError::Fenced);
        }
        let state = self.exports.get_mut(&export).ok_or(RemoteError::Revoked)?;
        if write && !state.writable {
            return Err(RemoteError::Permission);
        }
        let importer = state.importers.entry(peer).or_default();
        importer.writable |= write;
        Ok(AttachGrant {
            export,
            generation: state.generation,
            length: state.length,
            writable: importer.writable,
        })
    }

    /// Detaches `peer` from export `export` of generation `generation`, dropping its grants.
    /// Returns whether it was attached (a stale or repeated `Detach` is harmless).
    pub fn detach(&mut self, peer: NodeId, export: u8, generation: u32) -> bool {
        match self.exports.get_mut(&export) {
            Some(state) if state.generation == generation => {
                state.importers.remove(&peer).is_some()
            }
            _ => false,
        }
    }

    /// Records that `peer` may access the page `grant` describes. The TLB lookup that
    /// produced the gpa, this call and queueing the `TranslateReply` happen under one hold of
    /// the lock the invalidation path takes for [`revoke_range`](Self::revoke_range), so a
    /// later invalidation both revokes the grant here and follows the reply on the link
    /// (`docs/fabric.md`, "Ordering", rule 3). A grant overlapping earlier ones of the peer
    /// replaces them.
    ///
    /// Errors: `Fenced`; `Revoked` (export closed, other generation, peer not attached);
    /// `Bounds` (the page leaves the segment); `Permission` (a writable grant through a
    /// read-only attachment); `Protocol` (offset or gpa not aligned to the page size).
    pub fn grant(
        &mut self,
        peer: NodeId,
        export: u8,
        generation: u32,
        grant: Grant,
    ) -> Result<(), RemoteError> {
        let (importer, length) = self.importer_mut(peer, export, generation)?;
        let size = grant.size.bytes();
        if grant.page_offset % size != 0 || grant.gpa.0 % size != 0 {
            return Err(RemoteError::Protocol);
        }
        if grant.gpa.checked_add(size - 1).is_none() {
            return Err(RemoteError::Protocol);
        }
        let end = grant
            .page_offset
            .checked_add(size)
            .filter(|&end| end <= length)
            .ok_or(RemoteError::Bounds)?;
        if grant.writable && !importer.writable {
            return Err(RemoteError::Permission);
        }
        importer.remove_overlapping(grant.page_offset, end);
        importer.pages.insert(
            grant.page_offset,
            PageGrant {
                gpa: grant.gpa,
                size: grant.size,
                writable: grant.writable,
            },
        );
        Ok(())
    }

    /// The attachment of `peer` to `export` in `generation`: `Fenced`, or `Revoked` if the
    /// export is closed, in another generation, or the peer not attached.
    fn importer(
        &self,
        peer: NodeId,
        export: u8,
        generation: u32,
    ) -> Result<(&Importer, u64), RemoteError> {
        if self.fenced.contains(&peer) {
            return Err(RemoteError::Fenced);
        }
        let state = self
            .exports
            .get(&export)
            .filter(|s| s.generation == generation)
            .ok_or(RemoteError::Revoked)?;
        let importer = state.importers.get(&peer).ok_or(RemoteError::Revoked)?;
        Ok((importer, state.length))
    }

    /// [`importer`](Self::importer), mutable.
    fn importer_mut(
        &mut self,
        peer: NodeId,
        export: u8,
        generation: u32,
    ) -> Result<(&mut Importer, u64), RemoteError> {
        if self.fenced.contains(&peer) {
            return Err(RemoteError::Fenced);
        }
        let state = self
            .exports
            .get_mut(&export)
            .filter(|s| s.generation == generation)
            .ok_or(RemoteError::Revoked)?;
        let length = state.length;
        let importer = state.importers.get_mut(&peer).ok_or(RemoteError::Revoked)?;
        Ok((importer, length))
    }

    /// Checks an access of `len` bytes at segment offset `offset` that `peer` names with the
    /// exporter's `gpa`, writing if `write`. `Ok` only if every byte lies in one page granted
    /// to this peer at this gpa and not revoked since.
    ///
    /// Errors, in the order checked: `Fenced`; `Revoked` (export closed, other generation,
    /// peer not attached); `Protocol` (`len` 0); `Bounds` (past the segment); `Permission`
    /// (a write through a read-only attachment); `NotGranted` (no grant holds the offset, the
    /// gpa is not the grant's for it, or the bytes leave the grant's page); `Permission` (a
    /// write through a read-only grant).
    #[expect(clippy::too_many_arguments, reason = "the seven fields of an access")]
    pub fn check(
        &self,
        peer: NodeId,
        export: u8,
        generation: u32,
        offset: u64,
        len: u32,
        gpa: Gpa,
        write: bool,
    ) -> Result<(), RemoteError> {
        let (importer, length) = self.importer(peer, export, generation)?;
        if len == 0 {
            return Err(RemoteError::Protocol);
        }
        let end = offset
            .checked_add(u64::from(len))
            .filter(|&end| end <= length)
            .ok_or(RemoteError::Bounds)?;
        if write && !importer.writable {
            return Err(RemoteError::Permission);
        }
        let (at, g) = importer.holding(offset).ok_or(RemoteError::NotGranted)?;
        // `at + size` cannot wrap: `grant` kept the page inside the segment.
        if end > at + g.size.bytes() || g.gpa.checked_add(offset - at) != Some(gpa) {
            return Err(RemoteError::NotGranted);
        }
        if write && !g.writable {
            return Err(RemoteError::Permission);
        }
        Ok(())
    }

    /// [`check`](Self::check) for an `Access` message's operation: also refuses a 64-bit
    /// operation at an offset that is not 8-byte aligned (`Misaligned`, after `Revoked`).
    pub fn check_op(
        &self,
        peer: NodeId,
        export: u8,
        generation: u32,
        offset: u64,
        gpa: Gpa,
        op: &Op,
    ) -> Result<(), RemoteError> {
        if op.is_64bit() && offset % 8 != 0 {
            // Fenced and Revoked first, as `check` orders them.
            self.importer(peer, export, generation)?;
            return Err(RemoteError::Misaligned);
        }
        self.check(peer, export, generation, offset, op.len(), gpa, op.writes())
    }

    /// Revokes every grant of export `export` overlapping `[start, end)` (segment offsets,
    /// half-open), for every peer: from the return on, no access naming those pages passes
    /// [`check`](Self::check). Returns the peers to send an `Invalidate` and wait for: those
    /// that lost a grant and are not fenced. Peers that held no grant in the range have no
    /// translation of it to drop.
    pub fn revoke_range(&mut self, export: u8, start: u64, end: u64) -> Vec<NodeId> {
        let Some(state) = self.exports.get_mut(&export) else {
            return Vec::new();
        };
        if start >= end {
            return Vec::new();
        }
        state
            .importers
            .iter_mut()
            .filter_map(|(&peer, importer)| {
                (importer.remove_overlapping(start, end) > 0 && !self.fenced.contains(&peer))
                    .then_some(peer)
            })
            .collect()
    }

    /// Fences `peer`: it missed an invalidation bound or its link broke. Its attachments and
    /// grants are dropped and every request it makes is refused `Fenced` until
    /// [`unfence`](Self::unfence).
    pub fn fence(&mut self, peer: NodeId) {
        self.fenced.insert(peer);
        for state in self.exports.values_mut() {
            state.importers.remove(&peer);
        }
    }

    /// Whether `peer` holds an attachment to any open export.
    pub fn is_attached(&self, peer: NodeId) -> bool {
        self.exports
            .values()
            .any(|state| state.importers.contains_key(&peer))
    }

    /// Whether `peer` is fenced.
    pub fn is_fenced(&self, peer: NodeId) -> bool {
        self.fenced.contains(&peer)
    }

    /// Lets `peer` in again, with nothing attached: for a new link to it, after its `Hello`.
    pub fn unfence(&mut self, peer: NodeId) {
        self.fenced.remove(&peer);
    }

    /// Pages granted to `peer` in export `export` (any generation open now).
    pub fn granted_pages(&self, peer: NodeId, export: u8) -> usize {
        self.exports
            .get(&export)
            .and_then(|s| s.importers.get(&peer))
            .map_or(0, |i| i.pages.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PAGE_2M;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const SEG: u64 = 4 * PAGE_2M;

    fn page(page_offset: u64, gpa: u64, writable: bool) -> Grant {
        Grant {
            page_offset,
            gpa: Gpa(gpa),
            size: PageSize::Size4K,
            writable,
        }
    }

    /// A directory with export 3 open writable, B attached writable; returns the generation.
    fn setup() -> (GrantDirectory, u32) {
        let mut d = GrantDirectory::new();
        let g = d.open_export(3, SEG, true).expect("opens");
        d.attach(B, 3, true).expect("attaches");
        (d, g)
    }

    #[test]
    fn a_granted_page_passes_at_its_gpa_only() {
        let (mut d, g) = setup();
        d.grant(B, 3, g, page(0x5000, 0x9_0000, true))
            .expect("grants");
        assert_eq!(d.check(B, 3, g, 0x5000, 4096, Gpa(0x9_0000), true), Ok(()));
        assert_eq!(d.check(B, 3, g, 0x5ff8, 8, Gpa(0x9_0ff8), false), Ok(()));
        assert_eq!(
            d.check(B, 3, g, 0x5000, 8, Gpa(0x9_1000), false),
            Err(RemoteError::NotGranted)
        );
        assert_eq!(
            d.check(B, 3, g, 0x5ff8, 16, Gpa(0x9_0ff8), false),
            Err(RemoteError::NotGranted),
            "an access leaving the page"
        );
        assert_eq!(
            d.check(B, 3, g, 0x6000, 8, Gpa(0x9_1000), false),
            Err(RemoteError::NotGranted),
            "the next page was never granted"
        );
    }

    #[test]
    fn a_grant_to_one_peer_does_not_pass_for_another() {
        let (mut d, g) = setup();
        d.attach(A, 3, true).expect("attaches");
        d.grant(B, 3, g, page(0, 0x1000, true)).expect("grants");
        assert_eq!(
            d.check(A, 3, g, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::NotGranted)
        );
    }

    #[test]
    fn a_stale_generation_or_closed_export_is_revoked() {
        let (mut d, g) = setup();
        d.grant(B, 3, g, page(0, 0x1000, true)).expect("grants");
        assert_eq!(
            d.check(B, 3, g + 1, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::Revoked)
        );
        assert_eq!(d.close_export(3), vec![B]);
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::Revoked)
        );
        let g2 = d.open_export(3, SEG, true).expect("reopens");
        assert_ne!(g, g2);
        d.attach(B, 3, false).expect("attaches");
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::Revoked),
            "the old generation stays dead after a reopen"
        );
        assert_eq!(
            d.check(B, 3, g2, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::NotGranted),
            "grants do not survive a reopen"
        );
    }

    #[test]
    fn an_unattached_peer_is_revoked() {
        let (mut d, g) = setup();
        d.grant(B, 3, g, page(0, 0x1000, true)).expect("grants");
        assert!(d.detach(B, 3, g));
        assert!(!d.detach(B, 3, g), "a repeated detach is harmless");
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::Revoked)
        );
        assert_eq!(
            d.grant(B, 3, g, page(0, 0x1000, true)),
            Err(RemoteError::Revoked)
        );
    }

    #[test]
    fn accesses_past_the_segment_are_out_of_bounds() {
        let (d, g) = setup();
        assert_eq!(
            d.check(B, 3, g, SEG - 4, 8, Gpa(0), false),
            Err(RemoteError::Bounds)
        );
        assert_eq!(
            d.check(B, 3, g, u64::MAX - 2, 8, Gpa(0), false),
            Err(RemoteError::Bounds),
            "offset + len wraps"
        );
        assert_eq!(
            d.check(B, 3, g, 0, 0, Gpa(0), false),
            Err(RemoteError::Protocol)
        );
    }

    #[test]
    fn writes_need_a_writable_attachment_and_grant() {
        let mut d = GrantDirectory::new();
        let ro = d.open_export(0, SEG, false).expect("opens");
        assert_eq!(d.attach(B, 0, true), Err(RemoteError::Permission));
        let grant = d.attach(B, 0, false).expect("attaches read-only");
        assert!(!grant.writable);
        assert_eq!(
            d.grant(B, 0, ro, page(0, 0x1000, true)),
            Err(RemoteError::Permission)
        );
        d.grant(B, 0, ro, page(0, 0x1000, false)).expect("grants");
        assert_eq!(
            d.check(B, 0, ro, 0, 8, Gpa(0x1000), true),
            Err(RemoteError::Permission)
        );

        let (mut d, g) = setup();
        d.grant(B, 3, g, page(0, 0x1000, false)).expect("grants");
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x1000), true),
            Err(RemoteError::Permission),
            "a read-only grant (the exporter's PTE) through a writable attachment"
        );
        assert_eq!(d.check(B, 3, g, 0, 8, Gpa(0x1000), false), Ok(()));
    }

    #[test]
    fn misaligned_64bit_operations_are_refused() {
        let (mut d, g) = setup();
        d.grant(B, 3, g, page(0, 0x1000, true)).expect("grants");
        let add = Op::FetchAdd { addend: 1 };
        assert_eq!(
            d.check_op(B, 3, g, 4, Gpa(0x1004), &add),
            Err(RemoteError::Misaligned)
        );
        assert_eq!(d.check_op(B, 3, g, 8, Gpa(0x1008), &add), Ok(()));
        assert_eq!(
            d.check_op(B, 3, g + 1, 4, Gpa(0x1004), &add),
            Err(RemoteError::Revoked)
        );
        let read = Op::Read { len: 3 };
        assert_eq!(d.check_op(B, 3, g, 5, Gpa(0x1005), &read), Ok(()));
    }

    #[test]
    fn grants_must_be_aligned_and_inside_the_segment() {
        let (mut d, g) = setup();
        assert_eq!(
            d.grant(B, 3, g, page(0x800, 0x1000, true)),
            Err(RemoteError::Protocol)
        );
        assert_eq!(
            d.grant(B, 3, g, page(0x1000, 0x1800, true)),
            Err(RemoteError::Protocol)
        );
        assert_eq!(
            d.grant(B, 3, g, page(SEG, 0x1000, true)),
            Err(RemoteError::Bounds)
        );
        assert_eq!(
            d.grant(
                B,
                3,
                g,
                Grant {
                    page_offset: PAGE_2M,
                    gpa: Gpa(PAGE_2M + PAGE_4K),
                    size: PageSize::Size2M,
                    writable: true
                }
            ),
            Err(RemoteError::Protocol)
        );
        // The last page of the address space does not wrap: granted, and its last byte checks.
        d.grant(B, 3, g, page(0, !0xfff, true)).expect("grants");
        assert_eq!(d.check(B, 3, g, 0xff8, 8, Gpa(!7), true), Ok(()));
    }

    #[test]
    fn a_large_grant_replaces_the_small_ones_it_covers() {
        let (mut d, g) = setup();
        d.grant(B, 3, g, page(PAGE_2M + 0x3000, 0x7000, true))
            .expect("grants");
        d.grant(B, 3, g, page(2 * PAGE_2M, 0x8000, true))
            .expect("grants");
        d.grant(
            B,
            3,
            g,
            Grant {
                page_offset: PAGE_2M,
                gpa: Gpa(0x4000_0000),
                size: PageSize::Size2M,
                writable: true,
            },
        )
        .expect("grants");
        assert_eq!(d.granted_pages(B, 3), 2);
        assert_eq!(
            d.check(B, 3, g, PAGE_2M + 0x3000, 8, Gpa(0x7000), false),
            Err(RemoteError::NotGranted)
        );
        assert_eq!(
            d.check(B, 3, g, PAGE_2M + 0x3000, 8, Gpa(0x4000_3000), false),
            Ok(())
        );
        assert_eq!(
            d.check(B, 3, g, 2 * PAGE_2M, 8, Gpa(0x8000), false),
            Ok(()),
            "the page after the large one stays"
        );
        // And a small one splits the large one away entirely.
        d.grant(B, 3, g, page(PAGE_2M, 0x4000_0000, true))
            .expect("grants");
        assert_eq!(
            d.check(B, 3, g, PAGE_2M + 0x3000, 8, Gpa(0x4000_3000), false),
            Err(RemoteError::NotGranted)
        );
    }

    #[test]
    fn revoke_range_names_only_the_peers_that_held_a_page_in_it() {
        let (mut d, g) = setup();
        d.attach(A, 3, false).expect("attaches");
        d.grant(B, 3, g, page(0x1000, 0x1000, true))
            .expect("grants");
        d.grant(A, 3, g, page(0x9000, 0x2000, false))
            .expect("grants");
        assert_eq!(d.revoke_range(3, 0, 0x2000), vec![B]);
        assert_eq!(
            d.check(B, 3, g, 0x1000, 8, Gpa(0x1000), false),
            Err(RemoteError::NotGranted)
        );
        assert_eq!(d.check(A, 3, g, 0x9000, 8, Gpa(0x2000), false), Ok(()));
        assert_eq!(d.revoke_range(3, 0, 0x2000), Vec::<NodeId>::new());
        assert_eq!(d.revoke_range(3, 0x9000, 0x9000), Vec::<NodeId>::new());
        assert_eq!(d.revoke_range(7, 0, SEG), Vec::<NodeId>::new());
    }

    #[test]
    fn revoking_one_byte_of_a_large_page_revokes_the_page() {
        let (mut d, g) = setup();
        d.grant(
            B,
            3,
            g,
            Grant {
                page_offset: 0,
                gpa: Gpa(0x4000_0000),
                size: PageSize::Size2M,
                writable: true,
            },
        )
        .expect("grants");
        assert_eq!(d.revoke_range(3, PAGE_2M - 1, PAGE_2M), vec![B]);
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x4000_0000), false),
            Err(RemoteError::NotGranted)
        );
    }

    #[test]
    fn a_fenced_peer_is_refused_everything_until_unfenced_and_reattached() {
        let (mut d, g) = setup();
        d.grant(B, 3, g, page(0, 0x1000, true)).expect("grants");
        d.fence(B);
        assert!(d.is_fenced(B));
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::Fenced)
        );
        assert_eq!(d.attach(B, 3, false), Err(RemoteError::Fenced));
        assert_eq!(
            d.grant(B, 3, g, page(0, 0x1000, true)),
            Err(RemoteError::Fenced)
        );
        assert_eq!(d.revoke_range(3, 0, SEG), Vec::<NodeId>::new());
        assert_eq!(d.close_export(3), Vec::<NodeId>::new());
        let g = d.open_export(3, SEG, true).expect("reopens");
        d.unfence(B);
        assert!(!d.is_fenced(B));
        assert_eq!(
            d.check(B, 3, g, 0, 8, Gpa(0x1000), false),
            Err(RemoteError::Revoked),
            "unfencing restores no attachment"
        );
    }

    #[test]
    fn open_export_refuses_bad_lengths_and_double_opens() {
        let mut d = GrantDirectory::new();
        assert_eq!(
            d.open_export(0, 0, true),
            Err(GrantError::BadLength { length: 0 })
        );
        assert_eq!(
            d.open_export(0, 0x1800, true),
            Err(GrantError::BadLength { length: 0x1800 })
        );
        d.open_export(0, 0x1000, true).expect("opens");
        assert_eq!(
            d.open_export(0, 0x1000, true),
            Err(GrantError::AlreadyOpen { export: 0 })
        );
    }

    #[test]
    fn generations_never_repeat_and_their_exhaustion_is_an_error() {
        let mut d = GrantDirectory::new();
        d.next_generation = u32::MAX;
        assert_eq!(
            d.open_export(0, 0x1000, true),
            Err(GrantError::GenerationsExhausted)
        );
    }

    mod model {
        //! A model-based property test: a random sequence of directory operations, mirrored
        //! in a naive model (a list of grants scanned linearly), with every revoked page
        //! remembered as a tombstone.

        use super::*;
        use proptest::prelude::*;
        use std::collections::btree_map::Entry;

        const EXPORTS: u8 = 2;
        const PEERS: u8 = 3;
        /// Segment lengths up to 2 × 2 MiB in 4 KiB pages, so large grants occur.
        const MAX_PAGES: u64 = 1024;

        #[derive(Clone, Debug)]
        enum Step {
            Open {
                export: u8,
                pages: u64,
                writable: bool,
            },
            Close {
                export: u8,
            },
            Attach {
                peer: u8,
                export: u8,
                write: bool,
            },
            Detach {
                peer: u8,
                export: u8,
            },
            Grant {
                peer: u8,
                export: u8,
                page: u64,
                large: bool,
                frame: u64,
                writable: bool,
            },
            Revoke {
                export: u8,
                page: u64,
                pages: u64,
            },
            Fence {
                peer: u8,
            },
            Unfence {
                peer: u8,
            },
            Probe {
                peer: u8,
                export: u8,
                offset: u64,
                len: u32,
                frame: u64,
                write: bool,
            },
        }

        fn step() -> impl Strategy<Value = Step> {
            let export = 0..EXPORTS;
            let peer = 0..PEERS;
            prop_oneof![
                1 => (export.clone(), 1..=MAX_PAGES, any::<bool>())
                    .prop_map(|(export, pages, writable)| Step::Open { export, pages, writable }),
                1 => export.clone().prop_map(|export| Step::Close { export }),
                2 => (peer.clone(), export.clone(), any::<bool>())
                    .prop_map(|(peer, export, write)| Step::Attach { peer, export, write }),
                1 => (peer.clone(), export.clone()).prop_map(|(peer, export)| Step::Detach { peer, export }),
                6 => (peer.clone(), export.clone(), 0..MAX_PAGES, prop::bool::weighted(0.2), 0..8u64, any::<bool>())
                    .prop_map(|(peer, export, page, large, frame, writable)| Step::Grant { peer, export, page, large, frame, writable }),
                3 => (export.clone(), 0..MAX_PAGES, 1..64u64)
                    .prop_map(|(export, page, pages)| Step::Revoke { export, page, pages }),
                1 => peer.clone().prop_map(|peer| Step::Fence { peer }),
                1 => peer.clone().prop_map(|peer| Step::Unfence { peer }),
                4 => (peer, export, 0..MAX_PAGES * PAGE_4K, 1..9000u32, 0..8u64, any::<bool>())
                    .prop_map(|(peer, export, offset, len, frame, write)| Step::Probe { peer, export, offset, len, frame, write }),
            ]
        }

        #[derive(Clone, Copy, Debug, PartialEq)]
        struct ModelGrant {
            peer: NodeId,
            export: u8,
            generation: u32,
            at: u64,
            size: u64,
            gpa: u64,
            writable: bool,
        }

        #[derive(Clone, Copy, Debug)]
        struct ModelExport {
            generation: u32,
            length: u64,
            writable: bool,
        }

        /// A 4 KiB page that was revoked: its gpa must not pass again unless re-granted.
        #[derive(Clone, Copy, Debug, PartialEq)]
        struct Tombstone {
            peer: NodeId,
            export: u8,
            generation: u32,
            offset: u64,
            gpa: u64,
        }

        #[derive(Default)]
        struct Model {
            exports: BTreeMap<u8, ModelExport>,
            attached: BTreeMap<(NodeId, u8), bool>,
            fenced: BTreeSet<NodeId>,
            grants: Vec<ModelGrant>,
            tombstones: Vec<Tombstone>,
        }

        impl Model {
            fn bury(&mut self, dead: impl IntoIterator<Item = ModelGrant>) {
                for g in dead {
                    for i in 0..g.size / PAGE_4K {
                        self.tombstones.push(Tombstone {
                            peer: g.peer,
                            export: g.export,
                            generation: g.generation,
                            offset: g.at + i * PAGE_4K,
                            gpa: g.gpa + i * PAGE_4K,
                        });
                    }
                }
            }

            fn drop_where(&mut self, f: impl Fn(&ModelGrant) -> bool) {
                let (dead, live): (Vec<_>, Vec<_>) = self.grants.iter().partition(|g| f(g));
                self.grants = live;
                self.bury(dead);
            }

            #[expect(clippy::too_many_arguments, reason = "the seven fields of an access")]
            fn allows(
                &self,
                peer: NodeId,
                export: u8,
                generation: u32,
                offset: u64,
                len: u64,
                gpa: u64,
                write: bool,
            ) -> bool {
                let Some(e) = self.exports.get(&export) else {
                    return false;
                };
                let Some(&attached_writable) = self.attached.get(&(peer, export)) else {
                    return false;
                };
                !self.fenced.contains(&peer)
                    && e.generation == generation
                    && len > 0
                    && offset + len <= e.length
                    && (!write || attached_writable)
                    && self.grants.iter().any(|g| {
                        g.peer == peer
                            && g.export == export
                            && g.generation == generation
                            && g.at <= offset
                            && offset + len <= g.at + g.size
                            && g.gpa + (offset - g.at) == gpa
                            && (!write || g.writable)
                    })
            }
        }

        fn gen_of(d: &GrantDirectory, export: u8) -> u32 {
            // A closed export's probes use generation 0, which is never handed out.
            d.generation(export).unwrap_or(0)
        }

        fn apply(d: &mut GrantDirectory, m: &mut Model, s: &Step) -> Result<(), TestCaseError> {
            match *s {
                Step::Open {
                    export,
                    pages,
                    writable,
                } => {
                    let r = d.open_export(export, pages * PAGE_4K, writable);
                    match m.exports.entry(export) {
                        Entry::Occupied(_) => prop_assert!(r.is_err()),
                        Entry::Vacant(v) => {
                            let generation = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                            v.insert(ModelExport {
                                generation,
                                length: pages * PAGE_4K,
                                writable,
                            });
                        }
                    }
                }
                Step::Close { export } => {
                    d.close_export(export);
                    m.exports.remove(&export);
                    m.attached.retain(|&(_, e), _| e != export);
                    m.drop_where(|g| g.export == export);
                }
                Step::Attach {
                    peer,
                    export,
                    write,
                } => {
                    let peer = NodeId(peer);
                    let r = d.attach(peer, export, write);
                    let ok = !m.fenced.contains(&peer)
                        && m.exports.get(&export).is_some_and(|e| e.writable || !write);
                    prop_assert_eq!(r.is_ok(), ok);
                    if ok {
                        *m.attached.entry((peer, export)).or_default() |= write;
                    }
                }
                Step::Detach { peer, export } => {
                    let peer = NodeId(peer);
                    d.detach(peer, export, gen_of(d, export));
                    m.attached.remove(&(peer, export));
                    m.drop_where(|g| g.peer == peer && g.export == export);
                }
                Step::Grant {
                    peer,
                    export,
                    page,
                    large,
                    frame,
                    writable,
                } => {
                    let peer = NodeId(peer);
                    let (size, ps) = if large {
                        (PAGE_2M, PageSize::Size2M)
                    } else {
                        (PAGE_4K, PageSize::Size4K)
                    };
                    let at = (page * PAGE_4K) / size * size;
                    // Few frames, so the same gpa comes back for other offsets and peers.
                    let gpa =
                        (frame + 1) * PAGE_2M * 4 + if large { 0 } else { (page % 512) * PAGE_4K };
                    let generation = gen_of(d, export);
                    let grant = Grant {
                        page_offset: at,
                        gpa: Gpa(gpa),
                        size: ps,
                        writable,
                    };
                    let r = d.grant(peer, export, generation, grant);
                    let ok = !m.fenced.contains(&peer)
                        && m.exports
                            .get(&export)
                            .is_some_and(|e| at + size <= e.length)
                        && m.attached
                            .get(&(peer, export))
                            .is_some_and(|&w| w || !writable);
                    prop_assert_eq!(r.is_ok(), ok, "grant {:?}: {:?}", grant, r);
                    if ok {
                        m.drop_where(|g| {
                            g.peer == peer
                                && g.export == export
                                && g.at < at + size
                                && at < g.at + g.size
                        });
                        let new = ModelGrant {
                            peer,
                            export,
                            generation,
                            at,
                            size,
                            gpa,
                            writable,
                        };
                        // Pages the new grant maps to the gpa they had are alive again.
                        m.tombstones.retain(|t| {
                            !(t.peer == peer
                                && t.export == export
                                && t.generation == generation
                                && t.offset >= at
                                && t.offset < at + size
                                && t.gpa == gpa + (t.offset - at))
                        });
                        m.grants.push(new);
                    }
                }
                Step::Revoke {
                    export,
                    page,
                    pages,
                } => {
                    let (start, end) = (page * PAGE_4K, (page + pages) * PAGE_4K);
                    let mut told = d.revoke_range(export, start, end);
                    told.sort();
                    let mut expect: Vec<NodeId> = m
                        .grants
                        .iter()
                        .filter(|g| {
                            g.export == export
                                && g.at < end
                                && start < g.at + g.size
                                && !m.fenced.contains(&g.peer)
                        })
                        .map(|g| g.peer)
                        .collect();
                    expect.sort();
                    expect.dedup();
                    prop_assert_eq!(told, expect);
                    m.drop_where(|g| g.export == export && g.at < end && start < g.at + g.size);
                }
                Step::Fence { peer } => {
                    let peer = NodeId(peer);
                    d.fence(peer);
                    m.fenced.insert(peer);
                    m.attached.retain(|&(p, _), _| p != peer);
                    m.drop_where(|g| g.peer == peer);
                }
                Step::Unfence { peer } => {
                    d.unfence(NodeId(peer));
                    m.fenced.remove(&NodeId(peer));
                }
                Step::Probe {
                    peer,
                    export,
                    offset,
                    len,
                    frame,
                    write,
                } => {
                    let peer = NodeId(peer);
                    let generation = gen_of(d, export);
                    // Aim at a live grant's gpa half the time, else at an arbitrary frame.
                    let gpa = m
                        .grants
                        .iter()
                        .find(|g| {
                            g.peer == peer
                                && g.export == export
                                && g.at <= offset
                                && offset < g.at + g.size
                        })
                        .filter(|_| frame % 2 == 0)
                        .map_or((frame + 1) * PAGE_2M * 4 + offset % PAGE_2M, |g| {
                            g.gpa + (offset - g.at)
                        });
                    let got = d
                        .check(peer, export, generation, offset, len, Gpa(gpa), write)
                        .is_ok();
                    let want =
                        m.allows(peer, export, generation, offset, u64::from(len), gpa, write);
                    prop_assert_eq!(got, want, "probe {:?}", s);
                }
            }
            Ok(())
        }

        fn invariants(d: &GrantDirectory, m: &Model) -> Result<(), TestCaseError> {
            // Every revoked page's gpa fails, at both ends of the page.
            for t in &m.tombstones {
                for delta in [0, PAGE_4K - 8] {
                    let r = d.check(
                        t.peer,
                        t.export,
                        t.generation,
                        t.offset + delta,
                        8,
                        Gpa(t.gpa + delta),
                        false,
                    );
                    prop_assert!(r.is_err(), "revoked page passes: {:?}", t);
                    if m.fenced.contains(&t.peer) {
                        prop_assert_eq!(r, Err(RemoteError::Fenced));
                    }
                }
            }
            // Every live grant passes at its gpa (so the test is not vacuous).
            for g in &m.grants {
                let r = d.check(
                    g.peer,
                    g.export,
                    g.generation,
                    g.at + g.size - 8,
                    8,
                    Gpa(g.gpa + g.size - 8),
                    g.writable,
                );
                prop_assert_eq!(r, Ok(()), "live grant refused: {:?}", g);
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn a_gpa_never_passes_check_after_its_page_was_revoked_or_its_peer_fenced(
                steps in proptest::collection::vec(step(), 1..120)
            ) {
                let mut d = GrantDirectory::new();
                let mut m = Model::default();
                for s in &steps {
                    apply(&mut d, &mut m, s)?;
                    invariants(&d, &m)?;
                }
            }
        }
    }
}
