//! Segments (spec 1.2, §19): a context's range of user VAs that other contexts may address.
//!
//! The driver *exports* a range of one context's address space into the device's export
//! table (BAR0 `[0x1000, 0x1800)`), and *attaches* an export to an importing context in one of
//! its attachment slots (context block `+0xC0`). A command of the importer then names
//! (slot, offset) instead of a VA, and the device translates `base + offset` in the
//! exporter's address space: through the exporter's ASID, so the exporter's own invalidations
//! shoot down what importers use, and its misses are resolved by the driver in the exporter's
//! mm. Nothing here is pinned: the device holds translations exactly as it does for the
//! exporter's own commands.
//!
//! The table is one lock (after the contexts, before the ASIDs in the engine's lock order).
//! An access through a segment holds it for reading from the check to the end of the data
//! movement; revoking an export or detaching a slot takes it for writing, so when that register
//! write returns no access through the segment is still running.

use crate::addr::VirtAddr;
use crate::regs::NUM_CONTEXTS;

/// BAR0 offset of the export table.
pub const EXPORT_TABLE_BASE: u64 = 0x1000;
/// Bytes per export table entry.
pub const EXPORT_ENTRY_SIZE: u64 = 0x20;
/// Entries of the export table.
pub const NUM_EXPORTS: usize = 64;
/// Export entry offset: `EXP_CONTROL` (bit 0 VALID, bit 1 WRITABLE, bits 15:8 owner context,
/// bit 31 ERROR, read-only: the last write asking for VALID was refused).
pub const EXP_CONTROL: u64 = 0x00;
/// Export entry offset: base VA, low half (4 KiB aligned).
pub const EXP_BASE_LO: u64 = 0x08;
/// Export entry offset: base VA, high half.
pub const EXP_BASE_HI: u64 = 0x0c;
/// Export entry offset: length in bytes, low half (a non-zero multiple of 4 KiB).
pub const EXP_LENGTH_LO: u64 = 0x10;
/// Export entry offset: length, high half.
pub const EXP_LENGTH_HI: u64 = 0x14;
/// Export entry offset: the 64-bit key remote importers name, low half (since 1.3).
pub const EXP_KEY_LO: u64 = 0x18;
/// Export entry offset: key, high half.
pub const EXP_KEY_HI: u64 = 0x1c;
/// `EXP_CONTROL` bit 0: the export is valid.
pub const EXP_CONTROL_VALID: u32 = 1 << 0;
/// `EXP_CONTROL` bit 1: importers may write through it.
pub const EXP_CONTROL_WRITABLE: u32 = 1 << 1;
/// `EXP_CONTROL` bit 2: importers on the fabric's other node may attach it by its key
/// (since 1.3).
pub const EXP_CONTROL_REMOTE: u32 = 1 << 2;
/// `EXP_CONTROL` bits 15:8: the owner (exporting) context.
pub const EXP_CONTROL_OWNER_SHIFT: u32 = 8;
/// `EXP_CONTROL` owner field mask.
pub const EXP_CONTROL_OWNER_MASK: u32 = 0xff << EXP_CONTROL_OWNER_SHIFT;
/// `EXP_CONTROL` bit 31 (read-only): the last write that set VALID was refused.
pub const EXP_CONTROL_ERROR: u32 = 1 << 31;

/// Context block offset of attachment slot 0 (`CTX_ATTACH0`); slot *s* at `+ 4 × s`.
pub const CTX_ATTACH_BASE: u64 = 0xc0;
/// Attachment slots per context.
pub const NUM_ATTACHMENTS: usize = 8;
/// `CTX_ATTACH` bits 7:0: the export table index.
pub const ATTACH_EXPORT_MASK: u32 = 0xff;
/// `CTX_ATTACH` bit 8: the attachment is valid.
pub const ATTACH_VALID: u32 = 1 << 8;
/// `CTX_ATTACH` bit 9: the importer may write through it.
pub const ATTACH_WRITABLE: u32 = 1 << 9;
/// `CTX_ATTACH` bit 10: the attachment is to the export of the fabric's other node whose key
/// is in `CTX_RKEY` (since 1.3); bits 7:0 are then ignored.
pub const ATTACH_REMOTE: u32 = 1 << 10;
/// Context block offset of `CTX_RKEY_LO`: the key a remote attachment names (since 1.3).
pub const CTX_RKEY_LO: u64 = 0xe0;
/// Context block offset of `CTX_RKEY_HI`.
pub const CTX_RKEY_HI: u64 = 0xe4;
/// Context block offset of `CTX_RLENGTH_LO` (RO): the length of the segment the last
/// successful remote attachment of the context got.
pub const CTX_RLENGTH_LO: u64 = 0xe8;
/// Context block offset of `CTX_RLENGTH_HI` (RO).
pub const CTX_RLENGTH_HI: u64 = 0xec;
/// `CTX_ATTACH` bit 31 (read-only): the last write that set VALID was refused.
pub const ATTACH_ERROR: u32 = 1 << 31;

/// Command flag: addr0 is a segment address.
pub const CMD_FLAG_SEGMENT_ADDR0: u8 = 1 << 1;
/// Command flag: addr1 is a segment address (COPY's source).
pub const CMD_FLAG_SEGMENT_ADDR1: u8 = 1 << 2;
/// Segment address bits 63:56: the attachment slot.
pub const SEGMENT_SLOT_SHIFT: u32 = 56;
/// Segment address bits 55:0: the offset in the segment.
pub const SEGMENT_OFFSET_MASK: u64 = (1 << SEGMENT_SLOT_SHIFT) - 1;

const PAGE_MASK: u64 = 0xfff;

/// The segment address of `offset` in the segment attached at `slot`.
pub const fn segment_address(slot: u8, offset: u64) -> u64 {
    ((slot as u64) << SEGMENT_SLOT_SHIFT) | (offset & SEGMENT_OFFSET_MASK)
}

/// A valid export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    /// The exporting context.
    pub owner: u8,
    /// Its ASID, latched when the export became valid (the owner stays enabled while the
    /// export is valid: disabling it revokes the export).
    pub asid: u16,
    /// Its page-table root, for the oracle.
    pub pt_root: u64,
    /// First VA.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// Whether importers may write.
    pub writable: bool,
    /// Whether the fabric's other node may attach it, and by which key.
    pub remote_key: Option<u64>,
}

/// The address space an access translates in, as a segment resolved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpace {
    /// The exporter's ASID.
    pub asid: u16,
    /// The exporter's page-table root.
    pub pt_root: u64,
    /// The exporter's VA of segment offset 0.
    pub base: u64,
    /// The importer's slot (reported in fault records and completions).
    pub slot: u8,
}

/// Why a segment address cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRefusal {
    /// No valid attachment in the slot (never attached, detached, or revoked).
    Invalid,
    /// The range leaves the segment.
    Bounds,
    /// A write through a read-only attachment.
    Permission,
}

/// One attachment slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Attachment {
    /// `CTX_ATTACH` as last written (VALID cleared by revocation).
    register: u32,
    /// The remote export it names, while valid and remote.
    remote: Option<RemoteAttachment>,
}

/// What the exporting node granted a remote attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAttachment {
    /// The exporter's export index.
    pub export: u8,
    /// Its generation.
    pub generation: u32,
    /// Segment length.
    pub length: u64,
    /// Whether this attachment may write.
    pub writable: bool,
}

/// A segment address resolved: in this device's memory, or on the fabric's other node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A local export: the exporter's space and the VA of the first byte.
    Local(SegmentSpace, VirtAddr),
    /// A remote export: which one, and the offset of the first byte.
    Remote(RemoteTarget),
}

/// The remote side of a resolved segment address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteTarget {
    /// The importer's slot.
    pub slot: u8,
    /// The attachment.
    pub attachment: RemoteAttachment,
    /// Offset of the first byte in the segment.
    pub offset: u64,
}

impl Attachment {
    fn valid(self) -> bool {
        self.register & ATTACH_VALID != 0
    }

    fn export(self) -> usize {
        // CAST: masked to 8 bits.
        (self.register & ATTACH_EXPORT_MASK) as usize
    }
}

/// One export table entry: its registers and, while valid, what was latched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ExportEntry {
    control: u32,
    base: u64,
    length: u64,
    key: u64,
    valid: Option<Export>,
}

/// The export table and every context's attachment slots.
#[derive(Debug)]
pub struct SegmentTable {
    exports: Vec<ExportEntry>,
    attachments: Vec<[Attachment; NUM_ATTACHMENTS]>,
    /// `CTX_RKEY` and `CTX_RLENGTH` of every context.
    remote_keys: Vec<(u64, u64)>,
}

impl Default for SegmentTable {
    fn default() -> Self {
        Self {
            exports: vec![ExportEntry::default(); NUM_EXPORTS],
            attachments: vec![[Attachment::default(); NUM_ATTACHMENTS]; NUM_CONTEXTS],
            remote_keys: vec![(0, 0); NUM_CONTEXTS],
        }
    }
}

/// What the device knows of a context when an export names it as owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerState {
    /// Whether it is enabled (ACTIVE or FAULTED) with its ASID latched.
    pub live: bool,
    /// Its ASID.
    pub asid: u16,
    /// Its page-table root.
    pub pt_root: u64,
}

/// What disabling a context did to the segments ([`SegmentTable::context_disabled`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Disabled {
    /// The exports it owned, each with the attachments that went with it.
    pub revoked: Vec<(usize, usize)>,
    /// Remote exports (index, generation) whose last attachment on this device went.
    pub detached: Vec<(u8, u32)>,
}

/// What a write to the export table changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportChange {
    /// Nothing the engine must know about.
    None,
    /// Export `index` became valid.
    Installed(Export),
    /// Export `index` was revoked; this many attachments went with it.
    Revoked(usize),
}

impl SegmentTable {
    /// Reads export entry `index` at `offset` (0 for anything not a register).
    pub fn read_export(&self, index: usize, offset: u64) -> u32 {
        let Some(entry) = self.exports.get(index) else {
            return 0;
        };
        let [base_lo, base_hi] = halves(entry.base);
        let [len_lo, len_hi] = halves(entry.length);
        let [key_lo, key_hi] = halves(entry.key);
        match offset {
            EXP_CONTROL => entry.control,
            EXP_BASE_LO => base_lo,
            EXP_BASE_HI => base_hi,
            EXP_LENGTH_LO => len_lo,
            EXP_LENGTH_HI => len_hi,
            EXP_KEY_LO => key_lo,
            EXP_KEY_HI => key_hi,
            _ => 0,
        }
    }

    /// The owner context named by a write of `value` to `EXP_CONTROL` that sets VALID, if
    /// the entry is invalid now (the caller looks the owner up before calling
    /// [`SegmentTable::write_export`]).
    pub fn owner_to_check(&self, index: usize, offset: u64, value: u32) -> Option<u8> {
        let entry = self.exports.get(index)?;
        if offset != EXP_CONTROL || value & EXP_CONTROL_VALID == 0 || entry.valid.is_some() {
            return None;
        }
        // CAST: masked to 8 bits.
        Some(((value & EXP_CONTROL_OWNER_MASK) >> EXP_CONTROL_OWNER_SHIFT) as u8)
    }

    /// Writes export entry `index` at `offset`. `owner` is the state of the context the
    /// written `EXP_CONTROL` names (from [`SegmentTable::owner_to_check`]); base and length
    /// are locked while the entry is valid.
    pub fn write_export(
        &mut self,
        index: usize,
        offset: u64,
        value: u32,
        owner: Option<OwnerState>,
    ) -> ExportChange {
        let Some(entry) = self.exports.get_mut(index) else {
            return ExportChange::None;
        };
        let locked = entry.valid.is_some();
        match offset {
            EXP_BASE_LO if !locked => set_low(&mut entry.base, value),
            EXP_BASE_HI if !locked => set_high(&mut entry.base, value),
            EXP_LENGTH_LO if !locked => set_low(&mut entry.length, value),
            EXP_LENGTH_HI if !locked => set_high(&mut entry.length, value),
            EXP_KEY_LO if !locked => set_low(&mut entry.key, value),
            EXP_KEY_HI if !locked => set_high(&mut entry.key, value),
            EXP_CONTROL if locked && value & EXP_CONTROL_VALID == 0 => return self.revoke(index),
            EXP_CONTROL if !locked && value & EXP_CONTROL_VALID != 0 => {
                let fields =
                    value & (EXP_CONTROL_WRITABLE | EXP_CONTROL_REMOTE | EXP_CONTROL_OWNER_MASK);
                // CAST: masked to 8 bits.
                let owner_index =
                    ((value & EXP_CONTROL_OWNER_MASK) >> EXP_CONTROL_OWNER_SHIFT) as u8;
                let range_ok = entry.base & PAGE_MASK == 0
                    && entry.length != 0
                    && entry.length & PAGE_MASK == 0
                    && entry.base.checked_add(entry.length).is_some();
                match owner {
                    Some(owner) if owner.live && range_ok => {
                        let export = Export {
                            owner: owner_index,
                            asid: owner.asid,
                            pt_root: owner.pt_root,
                            base: entry.base,
                            length: entry.length,
                            writable: value & EXP_CONTROL_WRITABLE != 0,
                            remote_key: (value & EXP_CONTROL_REMOTE != 0).then_some(entry.key),
                        };
                        entry.valid = Some(export);
                        entry.control = fields | EXP_CONTROL_VALID;
                        return ExportChange::Installed(export);
                    }
                    _ => entry.control = fields | EXP_CONTROL_ERROR,
                }
            }
            EXP_CONTROL if !locked => {
                entry.control =
                    value & (EXP_CONTROL_WRITABLE | EXP_CONTROL_REMOTE | EXP_CONTROL_OWNER_MASK);
            }
            _ => {}
        }
        ExportChange::None
    }

    /// Revokes export `index` and every attachment to it.
    fn revoke(&mut self, index: usize) -> ExportChange {
        let Some(entry) = self.exports.get_mut(index) else {
            return ExportChange::None;
        };
        entry.valid = None;
        entry.control &= !(EXP_CONTROL_VALID | EXP_CONTROL_ERROR);
        let mut detached = 0;
        for slots in &mut self.attachments {
            for attachment in slots.iter_mut() {
                if attachment.valid() && attachment.remote.is_none() && attachment.export() == index
                {
                    attachment.register &= !ATTACH_VALID;
                    detached += 1;
                }
            }
        }
        ExportChange::Revoked(detached)
    }

    /// Context `ctx` is being disabled: its exports are revoked and its attachments cleared.
    /// Returns the revoked exports' indices, each with the attachments that went with it, and
    /// the remote exports whose last attachment on this device went (see
    /// [`SegmentTable::write_attachment`]).
    pub fn context_disabled(&mut self, ctx: u8) -> Disabled {
        let owned: Vec<usize> = (0..self.exports.len())
            .filter(|i| self.exports[*i].valid.is_some_and(|e| e.owner == ctx))
            .collect();
        let revoked = owned
            .into_iter()
            .map(|index| match self.revoke(index) {
                ExportChange::Revoked(attachments) => (index, attachments),
                _ => (index, 0),
            })
            .collect();
        let mut remotes = Vec::new();
        if let Some(slots) = self.attachments.get_mut(usize::from(ctx)) {
            for attachment in slots.iter_mut() {
                attachment.register &= !ATTACH_VALID;
                remotes.extend(attachment.remote.take());
            }
        }
        let mut detached: Vec<(u8, u32)> = remotes
            .into_iter()
            .filter_map(|r| self.last_remote_use(r))
            .collect();
        detached.dedup();
        Disabled { revoked, detached }
    }

    /// The valid remote export published under `key`.
    pub fn remote_export(&self, key: u64) -> Option<(usize, Export)> {
        self.exports().find(|(_, e)| e.remote_key == Some(key))
    }

    /// `CTX_RKEY` / `CTX_RLENGTH` of context `ctx` at `offset`.
    pub fn read_remote_key(&self, ctx: usize, offset: u64) -> u32 {
        let Some((key, length)) = self.remote_keys.get(ctx) else {
            return 0;
        };
        match offset {
            CTX_RKEY_LO => halves(*key)[0],
            CTX_RKEY_HI => halves(*key)[1],
            CTX_RLENGTH_LO => halves(*length)[0],
            CTX_RLENGTH_HI => halves(*length)[1],
            _ => 0,
        }
    }

    /// Writes `CTX_RKEY` of context `ctx` (`CTX_RLENGTH` is read-only).
    pub fn write_remote_key(&mut self, ctx: usize, offset: u64, value: u32) {
        if let Some((key, _)) = self.remote_keys.get_mut(ctx) {
            match offset {
                CTX_RKEY_LO => set_low(key, value),
                CTX_RKEY_HI => set_high(key, value),
                _ => {}
            }
        }
    }

    /// The remote attachment a write of `value` to `CTX_ATTACH` of `slot` in `ctx` asks for:
    /// the key and whether writing is wanted, if the slot is invalid now and the write sets
    /// VALID and REMOTE (the caller asks the other node before [`SegmentTable::attach_remote`]).
    pub fn remote_attach_request(
        &self,
        ctx: usize,
        slot: usize,
        value: u32,
    ) -> Option<(u64, bool)> {
        let attachment = self.attachments.get(ctx)?.get(slot)?;
        if attachment.valid()
            || value & (ATTACH_VALID | ATTACH_REMOTE) != ATTACH_VALID | ATTACH_REMOTE
        {
            return None;
        }
        let (key, _) = self.remote_keys.get(ctx)?;
        Some((*key, value & ATTACH_WRITABLE != 0))
    }

    /// Completes a remote attachment of `slot` in `ctx` with what the other node answered
    /// (None: refused or unanswered, and the register reads ERROR).
    pub fn attach_remote(
        &mut self,
        ctx: usize,
        slot: usize,
        value: u32,
        granted: Option<RemoteAttachment>,
    ) {
        let Some(attachment) = self
            .attachments
            .get_mut(ctx)
            .and_then(|slots| slots.get_mut(slot))
        else {
            return;
        };
        if attachment.valid() {
            return;
        }
        let fields = value & (ATTACH_WRITABLE | ATTACH_REMOTE);
        match granted {
            Some(granted) => {
                attachment.register = fields | ATTACH_VALID;
                attachment.remote = Some(granted);
                if let Some((_, length)) = self.remote_keys.get_mut(ctx) {
                    *length = granted.length;
                }
            }
            None => {
                attachment.register = fields | ATTACH_ERROR;
                attachment.remote = None;
            }
        }
    }

    /// The link to the other node is gone: every remote attachment becomes invalid. Returns
    /// how many.
    pub fn revoke_all_remote(&mut self) -> usize {
        let mut revoked = 0;
        for slots in &mut self.attachments {
            for attachment in slots.iter_mut() {
                if attachment.remote.take().is_some() {
                    attachment.register &= !ATTACH_VALID;
                    revoked += 1;
                }
            }
        }
        revoked
    }

    /// The other node revoked its export `export` of `generation`: every remote attachment to
    /// it becomes invalid. Returns how many.
    pub fn revoke_remote(&mut self, export: u8, generation: u32) -> usize {
        let mut revoked = 0;
        for slots in &mut self.attachments {
            for attachment in slots.iter_mut() {
                if attachment
                    .remote
                    .is_some_and(|r| r.export == export && r.generation == generation)
                {
                    attachment.register &= !ATTACH_VALID;
                    attachment.remote = None;
                    revoked += 1;
                }
            }
        }
        revoked
    }

    /// Back to reset: no export, no attachment.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// `CTX_ATTACH` of `slot` in context `ctx`.
    pub fn read_attachment(&self, ctx: usize, slot: usize) -> u32 {
        self.attachments
            .get(ctx)
            .and_then(|slots| slots.get(slot))
            .map_or(0, |a| a.register)
    }

    /// Writes `CTX_ATTACH` of `slot` in context `ctx`: setting VALID attaches (refused, with
    /// ERROR, unless the export is valid and grants the write permission asked for);
    /// clearing it detaches. A write while valid that keeps VALID set is ignored.
    ///
    /// Returns the remote export (index, generation) whose last attachment on this device the
    /// write detached: the other node is told, so it drops this node's grants.
    pub fn write_attachment(&mut self, ctx: usize, slot: usize, value: u32) -> Option<(u8, u32)> {
        let exports = &self.exports;
        let attachment = self
            .attachments
            .get_mut(ctx)
            .and_then(|slots| slots.get_mut(slot))?;
        let fields = value & (ATTACH_EXPORT_MASK | ATTACH_WRITABLE);
        if value & ATTACH_VALID == 0 {
            attachment.register = fields;
            let detached = attachment.remote.take()?;
            return self.last_remote_use(detached);
        }
        if attachment.valid() || value & ATTACH_REMOTE != 0 {
            // Remote attachments go through `attach_remote`.
            return None;
        }
        // CAST: masked to 8 bits.
        let export = exports
            .get((value & ATTACH_EXPORT_MASK) as usize)
            .and_then(|e| e.valid);
        let wants_write = value & ATTACH_WRITABLE != 0;
        attachment.register = match export {
            Some(export) if export.writable || !wants_write => fields | ATTACH_VALID,
            _ => fields | ATTACH_ERROR,
        };
        None
    }

    /// `detached` (export, generation), if no remote attachment of this device uses it any
    /// more.
    fn last_remote_use(&self, detached: RemoteAttachment) -> Option<(u8, u32)> {
        let still_used = self.attachments.iter().flatten().any(|a| {
            a.remote
                .is_some_and(|r| r.export == detached.export && r.generation == detached.generation)
        });
        (!still_used).then_some((detached.export, detached.generation))
    }

    /// Resolves `len` bytes (at least 1 is checked) at segment address `address` for context
    /// `ctx`, writing if `write`: the exporter's space and the VA of the first byte, or the
    /// remote export and the offset.
    pub fn resolve(
        &self,
        ctx: u8,
        address: u64,
        len: u64,
        write: bool,
    ) -> Result<Resolved, SegmentRefusal> {
        // CAST: the slot is the top 8 bits.
        let slot = (address >> SEGMENT_SLOT_SHIFT) as u8;
        let offset = address & SEGMENT_OFFSET_MASK;
        let attachment = self
            .attachments
            .get(usize::from(ctx))
            .and_then(|slots| slots.get(usize::from(slot)))
            .filter(|a| a.valid())
            .ok_or(SegmentRefusal::Invalid)?;
        if let Some(remote) = attachment.remote {
            let end = offset
                .checked_add(len.max(1))
                .ok_or(SegmentRefusal::Bounds)?;
            if end > remote.length {
                return Err(SegmentRefusal::Bounds);
            }
            if write && !remote.writable {
                return Err(SegmentRefusal::Permission);
            }
            return Ok(Resolved::Remote(RemoteTarget {
                slot,
                attachment: remote,
                offset,
            }));
        }
        let export = self
            .exports
            .get(attachment.export())
            .and_then(|e| e.valid)
            .ok_or(SegmentRefusal::Invalid)?;
        let end = offset
            .checked_add(len.max(1))
            .ok_or(SegmentRefusal::Bounds)?;
        if end > export.length {
            return Err(SegmentRefusal::Bounds);
        }
        if write && attachment.register & ATTACH_WRITABLE == 0 {
            return Err(SegmentRefusal::Permission);
        }
        let space = SegmentSpace {
            asid: export.asid,
            pt_root: export.pt_root,
            base: export.base,
            slot,
        };
        Ok(Resolved::Local(space, VirtAddr(export.base + offset)))
    }

    /// The valid exports (for inspection).
    pub fn exports(&self) -> impl Iterator<Item = (usize, Export)> + '_ {
        self.exports
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.valid.map(|export| (i, export)))
    }
}

/// Every named value of this module, for the specification drift test.
pub const SPEC_CONSTANTS: [(&str, u64); 27] = [
    ("CTX_RLENGTH_HI", CTX_RLENGTH_HI),
    ("EXP_KEY_LO", EXP_KEY_LO),
    ("EXP_KEY_HI", EXP_KEY_HI),
    ("EXP_CONTROL_REMOTE", EXP_CONTROL_REMOTE as u64),
    ("ATTACH_REMOTE", ATTACH_REMOTE as u64),
    ("CTX_RKEY_LO", CTX_RKEY_LO),
    ("CTX_RKEY_HI", CTX_RKEY_HI),
    ("CTX_RLENGTH_LO", CTX_RLENGTH_LO),
    ("EXPORT_TABLE_BASE", EXPORT_TABLE_BASE),
    ("EXPORT_ENTRY_SIZE", EXPORT_ENTRY_SIZE),
    ("NUM_EXPORTS", NUM_EXPORTS as u64),
    ("EXP_CONTROL", EXP_CONTROL),
    ("EXP_BASE_LO", EXP_BASE_LO),
    ("EXP_BASE_HI", EXP_BASE_HI),
    ("EXP_LENGTH_LO", EXP_LENGTH_LO),
    ("EXP_LENGTH_HI", EXP_LENGTH_HI),
    ("EXP_CONTROL_VALID", EXP_CONTROL_VALID as u64),
    ("EXP_CONTROL_WRITABLE", EXP_CONTROL_WRITABLE as u64),
    ("EXP_CONTROL_OWNER_MASK", EXP_CONTROL_OWNER_MASK as u64),
    ("EXP_CONTROL_ERROR", EXP_CONTROL_ERROR as u64),
    ("CTX_ATTACH_BASE", CTX_ATTACH_BASE),
    ("NUM_ATTACHMENTS", NUM_ATTACHMENTS as u64),
    ("ATTACH_EXPORT_MASK", ATTACH_EXPORT_MASK as u64),
    ("ATTACH_VALID", ATTACH_VALID as u64),
    ("ATTACH_WRITABLE", ATTACH_WRITABLE as u64),
    ("ATTACH_ERROR", ATTACH_ERROR as u64),
    ("SEGMENT_OFFSET_MASK", SEGMENT_OFFSET_MASK),
];

fn halves(value: u64) -> [u32; 2] {
    // CAST: splitting a u64 into its halves.
    [value as u32, (value >> 32) as u32]
}

fn set_low(field: &mut u64, value: u32) {
    *field = (*field & !0xffff_ffff) | u64::from(value);
}

fn set_high(field: &mut u64, value: u32) {
    *field = (*field & 0xffff_ffff) | (u64::from(value) << 32);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: OwnerState = OwnerState {
        live: true,
        asid: 7,
        pt_root: 0x1000,
    };

    fn export(
        table: &mut SegmentTable,
        index: usize,
        owner: u8,
        base: u64,
        len: u64,
        writable: bool,
    ) -> ExportChange {
        table.write_export(index, EXP_BASE_LO, base as u32, None);
        table.write_export(index, EXP_BASE_HI, (base >> 32) as u32, None);
        table.write_export(index, EXP_LENGTH_LO, len as u32, None);
        table.write_export(index, EXP_LENGTH_HI, (len >> 32) as u32, None);
        let mut control = EXP_CONTROL_VALID | (u32::from(owner) << EXP_CONTROL_OWNER_SHIFT);
        if writable {
            control |= EXP_CONTROL_WRITABLE;
        }
        let checked = table.owner_to_check(index, EXP_CONTROL, control);
        assert_eq!(checked, Some(owner));
        table.write_export(index, EXP_CONTROL, control, Some(LIVE))
    }

    #[test]
    fn an_attached_export_resolves_in_the_owners_space() {
        let mut table = SegmentTable::default();
        assert!(matches!(
            export(&mut table, 3, 5, 0x7000_0000, 0x4000, true),
            ExportChange::Installed(_)
        ));
        table.write_attachment(9, 2, 3 | ATTACH_VALID | ATTACH_WRITABLE);
        assert_eq!(
            table.read_attachment(9, 2),
            3 | ATTACH_VALID | ATTACH_WRITABLE
        );
        let Ok(Resolved::Local(space, va)) = table.resolve(9, segment_address(2, 0x1008), 8, true)
        else {
            panic!("attached locally");
        };
        assert_eq!(
            (space.asid, space.pt_root, space.slot, va),
            (7, 0x1000, 2, VirtAddr(0x7000_1008))
        );
        // The range ends exactly at the segment's end; one byte more is out of bounds.
        assert!(table
            .resolve(9, segment_address(2, 0x3ff8), 8, false)
            .is_ok());
        assert_eq!(
            table.resolve(9, segment_address(2, 0x3ff9), 8, false),
            Err(SegmentRefusal::Bounds)
        );
        assert_eq!(
            table.resolve(9, segment_address(2, u64::MAX), 8, false),
            Err(SegmentRefusal::Bounds)
        );
        // Another slot, another context: nothing attached.
        assert_eq!(
            table.resolve(9, segment_address(1, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
        assert_eq!(
            table.resolve(8, segment_address(2, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
        assert_eq!(
            table.resolve(9, segment_address(200, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
    }

    #[test]
    fn read_only_exports_refuse_writable_attachments_and_writes() {
        let mut table = SegmentTable::default();
        export(&mut table, 0, 1, 0x10_0000, 0x1000, false);
        table.write_attachment(2, 0, ATTACH_VALID | ATTACH_WRITABLE);
        assert_eq!(table.read_attachment(2, 0), ATTACH_WRITABLE | ATTACH_ERROR);
        table.write_attachment(2, 0, ATTACH_VALID);
        assert_eq!(table.read_attachment(2, 0), ATTACH_VALID);
        assert!(table.resolve(2, segment_address(0, 0), 8, false).is_ok());
        assert_eq!(
            table.resolve(2, segment_address(0, 0), 8, true),
            Err(SegmentRefusal::Permission)
        );
    }

    #[test]
    fn bad_ranges_and_dead_owners_are_refused_with_error() {
        let mut table = SegmentTable::default();
        for (base, len) in [
            (0x1001, 0x1000),
            (0x1000, 0),
            (0x1000, 0x800),
            (!0xfff, 0x2000),
        ] {
            assert_eq!(
                export(&mut table, 0, 1, base, len, true),
                ExportChange::None
            );
            assert_eq!(
                table.read_export(0, EXP_CONTROL) & (EXP_CONTROL_VALID | EXP_CONTROL_ERROR),
                EXP_CONTROL_ERROR
            );
        }
        let dead = OwnerState {
            live: false,
            ..LIVE
        };
        table.write_export(1, EXP_LENGTH_LO, 0x1000, None);
        assert_eq!(
            table.write_export(1, EXP_CONTROL, EXP_CONTROL_VALID, Some(dead)),
            ExportChange::None
        );
        assert_eq!(
            table.write_export(1, EXP_CONTROL, EXP_CONTROL_VALID, None),
            ExportChange::None
        );
        assert_eq!(table.exports().count(), 0);
        // Out-of-range indices read 0 and ignore writes.
        assert_eq!(table.read_export(NUM_EXPORTS, EXP_CONTROL), 0);
        assert_eq!(
            table.write_export(NUM_EXPORTS, EXP_CONTROL, 1, Some(LIVE)),
            ExportChange::None
        );
        table.write_attachment(NUM_CONTEXTS, 0, ATTACH_VALID);
        table.write_attachment(0, NUM_ATTACHMENTS, ATTACH_VALID);
    }

    #[test]
    fn revoking_an_export_detaches_every_importer_and_locks_nothing_after() {
        let mut table = SegmentTable::default();
        export(&mut table, 4, 1, 0x20_0000, 0x2000, true);
        table.write_attachment(2, 0, 4 | ATTACH_VALID);
        table.write_attachment(3, 7, 4 | ATTACH_VALID | ATTACH_WRITABLE);
        // Base and length are locked while valid.
        table.write_export(4, EXP_BASE_LO, 0, None);
        assert_eq!(table.read_export(4, EXP_BASE_LO), 0x20_0000);
        assert_eq!(
            table.write_export(4, EXP_CONTROL, 0, None),
            ExportChange::Revoked(2)
        );
        assert_eq!(
            table.resolve(2, segment_address(0, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
        assert_eq!(
            table.resolve(3, segment_address(7, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
        // A new export in the same entry does not revive the old attachments.
        export(&mut table, 4, 1, 0x40_0000, 0x1000, true);
        assert_eq!(
            table.resolve(2, segment_address(0, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
    }

    #[test]
    fn disabling_a_context_revokes_its_exports_and_clears_its_attachments() {
        let mut table = SegmentTable::default();
        export(&mut table, 0, 1, 0x20_0000, 0x2000, true);
        export(&mut table, 1, 2, 0x20_0000, 0x2000, true);
        table.write_attachment(2, 0, ATTACH_VALID);
        table.write_attachment(3, 0, 1 | ATTACH_VALID);
        assert_eq!(table.context_disabled(1).revoked, vec![(0, 1)]);
        assert_eq!(
            table.resolve(2, segment_address(0, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
        assert!(table.resolve(3, segment_address(0, 0), 8, false).is_ok());
        assert_eq!(table.context_disabled(3), Disabled::default());
        assert_eq!(
            table.resolve(3, segment_address(0, 0), 8, false),
            Err(SegmentRefusal::Invalid)
        );
        assert_eq!(table.exports().count(), 1);
    }
}
