// SPDX-License-Identifier: GPL-2.0

//! Segments: XPMEM-style sharing of a range of one process's address space with other
//! processes, on the device's export table and attachment slots (spec §19).
//!
//! A context *exports* `[va, va + length)` of its address space (`RMNIC_IOC_EXPORT`); the
//! driver writes it into a free device export entry and hands out a segment id. Another
//! context *attaches* the id (`RMNIC_IOC_ATTACH`) after the permission check, into one of its
//! device attachment slots, and names (slot, offset) in its commands. The device translates
//! those in the exporter's ASID, so:
//!
//! - the exporter's mmu notifier already shoots down everything importers use (no second
//!   invalidation, nothing pinned);
//! - an importer's miss is resolved in the *exporter's* address space (`Context::fill` of the
//!   owner), then the importer is resumed;
//! - removing the segment, or the exporter closing its file, is one device write per segment
//!   (`EXP_CONTROL` = 0), after which every importer's access completes SEGMENT_INVALID; the
//!   driver counts one revocation per importer attachment.
//!
//! The registry ([`Segments`]) lives under `Rmnic::segments`, a spinlock: it is taken by the
//! fault interrupt thread and by ioctls, never by a notifier, and nothing is allocated or
//! dropped under it (an [`Export`] holds its owner's `Arc<Context>`, whose last drop sleeps:
//! it leaves the lock first).

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::context::Context;
use crate::counters;
use crate::cred::Credentials;
use crate::hw::Hw;
use crate::regs::*;
use crate::uapi;

/// Device minor version with remote segments (spec §20).
pub(crate) const SPEC_MINOR_REMOTE: u32 = 3;
/// End of user space on x86-64 with 4-level paging (`TASK_SIZE_MAX`).
const USER_END: u64 = 0x0000_7fff_ffff_f000;
const PAGE: u64 = 4096;

/// One exported segment.
pub(crate) struct Export {
    segid: u64,
    /// The exporting context: misses are resolved in its address space.
    owner: Arc<Context>,
    base: u64,
    length: u64,
    writable: bool,
    /// `uapi::permit` bits.
    mode: u32,
    /// The exporter's effective ids when it exported.
    creds: Credentials,
}

/// One attachment slot of an importing context.
#[derive(Clone, Copy)]
struct Attachment {
    /// Device export entry; None for a segment of the fabric's other node (which the device
    /// tracks; this driver only holds the slot).
    export: Option<u8>,
    /// The segment went away (removal, exporter close): the device slot is invalid and its
    /// commands complete SEGMENT_INVALID; the slot stays taken until detached.
    revoked: bool,
}

/// Where an importer's segment fault must be resolved.
pub(crate) struct FaultTarget {
    /// The exporter.
    pub(crate) owner: Arc<Context>,
    /// First VA of the segment in the exporter's space.
    pub(crate) base: u64,
    /// Its length.
    pub(crate) length: u64,
}

/// The registry: exports by device entry, attachments by (importer context, slot). Both
/// tables are allocated once at probe, at their full size (never under the lock).
pub(crate) struct Segments {
    exports: KVec<Option<Export>>,
    attachments: KVec<[Option<Attachment>; NUM_ATTACHMENTS]>,
    next_segid: u64,
}

/// Whether `mode` lets `who` attach a segment exported by `owner`, for writing if `write`: the
/// owner bits when the euids match, else the group bits when the egids match, else the others.
fn permits(mode: u32, owner: Credentials, who: Credentials, write: bool) -> bool {
    let bits = if who.euid == owner.euid {
        mode >> 6
    } else if who.egid == owner.egid {
        mode >> 3
    } else {
        mode
    } & 0o7;
    bits & 0o4 != 0 && (!write || bits & 0o2 != 0)
}

fn export_reg(index: usize, offset: usize) -> usize {
    EXPORT_TABLE_BASE + index * EXPORT_ENTRY_SIZE + offset
}

fn attach_reg(slot: usize) -> usize {
    CTX_ATTACH_BASE + 4 * slot
}

impl Segments {
    /// An empty registry. Allocates; process context.
    pub(crate) fn new() -> Result<Self> {
        let mut exports = KVec::with_capacity(NUM_EXPORTS, GFP_KERNEL)?;
        for _ in 0..NUM_EXPORTS {
            exports.push(None, GFP_KERNEL)?;
        }
        let mut attachments = KVec::with_capacity(MAX_CONTEXTS, GFP_KERNEL)?;
        for _ in 0..MAX_CONTEXTS {
            attachments.push([None; NUM_ATTACHMENTS], GFP_KERNEL)?;
        }
        Ok(Self {
            exports,
            attachments,
            next_segid: 1,
        })
    }

    /// `RMNIC_IOC_EXPORT` for `owner` (the caller's context): checks the range, writes a free
    /// device entry, returns the segment id.
    pub(crate) fn export(
        &mut self,
        hw: &Hw,
        owner: &Arc<Context>,
        req: &uapi::SegmentExport,
        creds: Credentials,
    ) -> Result<u64> {
        let end = req.va.checked_add(req.length).ok_or(EINVAL)?;
        let writable = req.flags & uapi::SEGMENT_WRITABLE != 0;
        let remote = req.flags & uapi::SEGMENT_REMOTE != 0;
        // The other guest's processes have no credentials here: only the "other" bits apply
        // to them, and the device knows one write permission for every importer.
        let remote_refused = remote
            && (req.permit_mode & uapi::permit::OTHER_READ == 0
                || (writable && req.permit_mode & uapi::permit::OTHER_WRITE == 0));
        if req.va % PAGE != 0
            || req.length == 0
            || req.length % PAGE != 0
            || end > USER_END
            || req.flags & !(uapi::SEGMENT_WRITABLE | uapi::SEGMENT_REMOTE) != 0
            || req.permit_mode & !uapi::permit::ALL != 0
            || remote_refused
        {
            return Err(EINVAL);
        }
        let index = self.exports.iter().position(Option::is_none).ok_or(ENOSPC)?;
        let segid = self.next_segid;
        hw.write(export_reg(index, EXP_BASE_LO), req.va as u32)?;
        hw.write(export_reg(index, EXP_BASE_HI), (req.va >> 32) as u32)?;
        hw.write(export_reg(index, EXP_LENGTH_LO), req.length as u32)?;
        hw.write(export_reg(index, EXP_LENGTH_HI), (req.length >> 32) as u32)?;
        let mut control = EXP_CONTROL_VALID | ((owner.index() as u32) << EXP_CONTROL_OWNER_SHIFT);
        if writable {
            control |= EXP_CONTROL_WRITABLE;
        }
        if remote {
            // The key the other node names is the segment id.
            hw.write(export_reg(index, EXP_KEY_LO), segid as u32)?;
            hw.write(export_reg(index, EXP_KEY_HI), (segid >> 32) as u32)?;
            control |= EXP_CONTROL_REMOTE;
        }
        hw.write(export_reg(index, EXP_CONTROL), control)?;
        if hw.read(export_reg(index, EXP_CONTROL))? & EXP_CONTROL_VALID == 0 {
            // The device refused it: its context is not enabled (a recovery reset it).
            return Err(EIO);
        }
        self.next_segid += 1;
        self.exports[index] = Some(Export {
            segid,
            owner: owner.clone(),
            base: req.va,
            length: req.length,
            writable,
            mode: req.permit_mode,
            creds,
        });
        counters::up(&counters::SEGMENTS_LIVE);
        Ok(segid)
    }

    /// Revokes device entry `index` and marks every attachment to it revoked (one revocation
    /// counted per importer attachment). Returns the export, to be dropped outside the lock.
    fn revoke(&mut self, hw: &Hw, index: usize) -> Option<Export> {
        let export = self.exports.get_mut(index)?.take()?;
        // After this write no importer access through the segment is running (spec §19.1).
        let _ = hw.write(export_reg(index, EXP_CONTROL), 0);
        for slots in self.attachments.iter_mut() {
            for attachment in slots.iter_mut().flatten() {
                // CAST: index < NUM_EXPORTS (64).
                if attachment.export == Some(index as u8) && !attachment.revoked {
                    attachment.revoked = true;
                    counters::up(&counters::SEGMENT_REVOCATIONS);
                }
            }
        }
        counters::down(&counters::SEGMENTS_LIVE);
        Some(export)
    }

    /// `RMNIC_IOC_REMOVE`: only the exporting context may remove its segment.
    pub(crate) fn remove(&mut self, hw: &Hw, owner: &Context, segid: u64) -> Result<Export> {
        let index = self
            .exports
            .iter()
            .position(|e| {
                e.as_ref()
                    .is_some_and(|e| e.segid == segid && core::ptr::eq(&*e.owner, owner))
            })
            .ok_or(ENOENT)?;
        self.revoke(hw, index).ok_or(ENOENT)
    }

    /// One export of `owner` revoked (its file is closing), or None when it has none left.
    /// Called in a loop so that each export is dropped outside the lock.
    pub(crate) fn revoke_one_of(&mut self, hw: &Hw, owner: &Context) -> Option<Export> {
        let index = self.exports.iter().position(|e| {
            e.as_ref()
                .is_some_and(|e| core::ptr::eq(&*e.owner, owner))
        })?;
        self.revoke(hw, index)
    }

    /// `RMNIC_IOC_ATTACH` for context `importer` with the caller's `creds`: returns the slot
    /// and the segment's length.
    pub(crate) fn attach(
        &mut self,
        hw: &Hw,
        importer: usize,
        req: &uapi::SegmentAttach,
        creds: Credentials,
    ) -> Result<(u32, u64)> {
        if req.flags & !uapi::SEGMENT_WRITABLE != 0 {
            return Err(EINVAL);
        }
        let write = req.flags & uapi::SEGMENT_WRITABLE != 0;
        let (index, export) = self
            .exports
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.as_ref().filter(|e| e.segid == req.segid).map(|e| (i, e)))
            .ok_or(ENOENT)?;
        if !permits(export.mode, export.creds, creds, false) {
            return Err(EACCES);
        }
        if write && !export.writable {
            return Err(EPERM);
        }
        if write && !permits(export.mode, export.creds, creds, true) {
            return Err(EACCES);
        }
        let length = export.length;
        let slots = self.attachments.get_mut(importer).ok_or(EINVAL)?;
        let slot = slots.iter().position(Option::is_none).ok_or(ENOSPC)?;
        let mut value = index as u32 | ATTACH_VALID;
        if write {
            value |= ATTACH_WRITABLE;
        }
        hw.ctx_write(importer, attach_reg(slot), value)?;
        if hw.ctx_read(importer, attach_reg(slot))? & ATTACH_VALID == 0 {
            return Err(EIO);
        }
        slots[slot] = Some(Attachment {
            // CAST: index < NUM_EXPORTS (64).
            export: Some(index as u8),
            revoked: false,
        });
        counters::up(&counters::ATTACHMENTS_LIVE);
        Ok((slot as u32, length))
    }

    /// Reserves a free slot of context `importer` for a remote attachment (the device asks
    /// the other node when the slot is written, which may take a second: not under this lock).
    pub(crate) fn reserve_remote(&mut self, importer: usize) -> Result<u32> {
        let slots = self.attachments.get_mut(importer).ok_or(EINVAL)?;
        let slot = slots.iter().position(Option::is_none).ok_or(ENOSPC)?;
        slots[slot] = Some(Attachment {
            export: None,
            revoked: false,
        });
        counters::up(&counters::ATTACHMENTS_LIVE);
        Ok(slot as u32)
    }

    /// Gives a reserved slot back (the other node refused the attachment).
    pub(crate) fn release_remote(&mut self, importer: usize, slot: u32) {
        if let Some(entry) = self
            .attachments
            .get_mut(importer)
            .and_then(|slots| slots.get_mut(slot as usize))
        {
            if entry.take().is_some() {
                counters::down(&counters::ATTACHMENTS_LIVE);
            }
        }
    }

    /// `RMNIC_IOC_DETACH` of `slot` in context `importer`.
    pub(crate) fn detach(&mut self, hw: &Hw, importer: usize, slot: u32) -> Result {
        let slot = slot as usize;
        if slot >= NUM_ATTACHMENTS {
            return Err(EINVAL);
        }
        let entry = self
            .attachments
            .get_mut(importer)
            .and_then(|slots| slots.get_mut(slot))
            .ok_or(EINVAL)?;
        if entry.take().is_none() {
            return Err(ENOENT);
        }
        // After this write no access through the slot is running (spec §19.2).
        let _ = hw.ctx_write(importer, attach_reg(slot), 0);
        counters::down(&counters::ATTACHMENTS_LIVE);
        Ok(())
    }

    /// Context `importer` is closing: every slot is detached.
    pub(crate) fn detach_all(&mut self, hw: &Hw, importer: usize) {
        for slot in 0..NUM_ATTACHMENTS {
            let _ = self.detach(hw, importer, slot as u32);
        }
    }

    /// Where a segment fault of context `importer` on `slot` must be resolved; None when the
    /// slot holds no live attachment (then the device completes the command SEGMENT_INVALID
    /// on RESUME).
    pub(crate) fn fault_target(&self, importer: usize, slot: u8) -> Option<FaultTarget> {
        let attachment = self
            .attachments
            .get(importer)?
            .get(usize::from(slot))?
            .as_ref()
            .filter(|a| !a.revoked)?;
        let export = self.exports.get(usize::from(attachment.export?))?.as_ref()?;
        Some(FaultTarget {
            owner: export.owner.clone(),
            base: export.base,
            length: export.length,
        })
    }
}
