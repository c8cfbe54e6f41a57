//! Messages of the fabric between two rmnic devices, and their frames on the wire.
//!
//! A frame is a `u32` little-endian payload length, then the payload: one [`Message`] in
//! postcard (varint integers, enum variants as varint tags, byte strings as a varint length and
//! the bytes). `docs/fabric.md` is the protocol's description; this module is its single source
//! of truth for types, bounds and constants.
//!
//! Every received byte is hostile ([`decode_payload`], [`decode_frame`]): a frame longer than
//! the bound, a truncated payload, trailing bytes, an unknown tag, a length outside the
//! protocol's bounds are [`DecodeError`]s, never a panic, and decoding allocates at most the
//! frame's own length (a byte string is copied out of the frame after postcard has checked
//! that the frame holds it; see `tests/allocation_bound.rs`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Protocol version carried in [`Message::Hello`]; both ends must carry the same.
pub const PROTOCOL_VERSION: u16 = 1;

/// Most bytes one [`Op::Read`] or [`Op::Write`] moves, and most bytes of
/// [`AccessDone::data`]: the device's `ACCESS_MAX_BYTES` (`device/src/engine/access.rs`), so
/// a device access step needs one `Access` per page it touches (an `Access` stays in one
/// grant), never more.
pub const ACCESS_MAX_BYTES: u32 = 64 * 1024;

/// Bytes of a frame's length header.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Default and minimum payload bound, in bytes, that an end announces in
/// [`Message::Hello::max_frame`]: a full [`ACCESS_MAX_BYTES`] `Access` or `AccessReply` plus
/// 256 bytes for its other fields (at most 51 bytes in postcard: see
/// `largest_messages_fit_the_default_frame_bound`).
pub const MAX_FRAME_DEFAULT: u32 = ACCESS_MAX_BYTES + 256;

/// Bytes of a small page grant ([`PageSize::Size4K`]).
pub const PAGE_4K: u64 = 4 * 1024;
/// Bytes of a large page grant ([`PageSize::Size2M`]).
pub const PAGE_2M: u64 = 2 * 1024 * 1024;

/// How long each end waits for the other's `Hello` (`docs/fabric.md`, "Timeouts").
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an importer waits for an `AttachReply`.
pub const ATTACH_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an importer waits for a `TranslateReply` (the exporter's driver may have to
/// resolve the page first); then the command's step completes `FAULT_UNRESOLVED`.
pub const TRANSLATE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an importer waits for an `AccessReply`; then the outcome is unknown and the
/// importer breaks the link.
pub const ACCESS_REPLY_TIMEOUT: Duration = Duration::from_millis(100);
/// How long an exporter waits for an `InvalidateAck` before it fences the importer: the
/// fencing bound, and so the most a remote importer adds to an exporter's invalidation.
pub const INVALIDATE_ACK_TIMEOUT: Duration = Duration::from_millis(50);

/// A node of the fabric: one device in one VMM process, named by its VMM's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u8);

/// A guest-physical address **of the exporter's guest**: meaningful only to the exporter,
/// which checks every one it receives against its grants ([`crate::grants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Gpa(pub u64);

impl Gpa {
    /// `self + offset`, or `None` if it wraps.
    pub fn checked_add(self, offset: u64) -> Option<Gpa> {
        self.0.checked_add(offset).map(Gpa)
    }
}

/// One message on a link. Which end sends it is in each variant's documentation; a node can
/// be exporter and importer on the same link, so the receiver does not check direction, only
/// what it is asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Both ends, first frame of a link. A different `version` ends the link.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// The sender's node; the two ends' nodes differ.
        node: NodeId,
        /// Largest payload the sender accepts, at least [`MAX_FRAME_DEFAULT`]; the other end
        /// sends nothing larger.
        max_frame: u32,
    },
    /// Importer → exporter: attach the export the exporter's driver published under `key`.
    Attach {
        /// Request id, chosen by the importer, echoed in the reply.
        req: u64,
        /// The export's 64-bit key (chosen by the exporter's driver, passed out of band).
        key: u64,
        /// The importer wants to write through the attachment.
        write: bool,
    },
    /// Exporter → importer: answer to [`Message::Attach`].
    AttachReply {
        /// The request's id.
        req: u64,
        /// The attachment, or why not (`Revoked`: no such key; `Permission`: write asked of a
        /// read-only export or not allowed to this peer; `Busy`: no room).
        result: Result<AttachGrant, RemoteError>,
    },
    /// Importer → exporter: which page of the exporter backs `offset`? The exporter may have
    /// to resolve it in its guest first, so the reply may come after later replies.
    Translate {
        /// Request id, echoed in the reply.
        req: u64,
        /// Export index from the [`AttachGrant`].
        export: u8,
        /// Generation from the [`AttachGrant`].
        generation: u32,
        /// Byte offset in the segment.
        offset: u64,
        /// The importer intends to write.
        write: bool,
    },
    /// Exporter → importer: answer to [`Message::Translate`].
    TranslateReply {
        /// The request's id.
        req: u64,
        /// The grant of the page holding the offset, or why not.
        result: Result<Grant, RemoteError>,
    },
    /// Importer → exporter: run `op` at `offset` of the segment, on the exporter's page at
    /// `gpa` (the grant's `gpa` plus `offset − page_offset`). The whole access lies in one
    /// grant.
    Access {
        /// Request id, echoed in the reply.
        req: u64,
        /// Export index.
        export: u8,
        /// Export generation.
        generation: u32,
        /// Byte offset in the segment of the first byte.
        offset: u64,
        /// The exporter's guest-physical address of the first byte.
        gpa: Gpa,
        /// What to do.
        op: Op,
    },
    /// Exporter → importer: answer to [`Message::Access`].
    AccessReply {
        /// The request's id.
        req: u64,
        /// What the access returned, or why it did not run (nothing was accessed then).
        result: Result<AccessDone, RemoteError>,
    },
    /// Exporter → importer: drop every translation of `[start, end)` of the segment, then
    /// answer [`Message::InvalidateAck`]. Sent for every invalidation of the exporter that
    /// revoked a grant this importer holds.
    Invalidate {
        /// Invalidation id, chosen by the exporter, echoed in the ack.
        inv: u64,
        /// Export index.
        export: u8,
        /// Export generation.
        generation: u32,
        /// First byte offset (page aligned).
        start: u64,
        /// Offset past the last byte (exclusive, greater than `start`).
        end: u64,
    },
    /// Importer → exporter: every translation of the invalidation `inv` is gone. Sent for
    /// every `Invalidate`, even one naming an unknown export.
    InvalidateAck {
        /// The invalidation's id.
        inv: u64,
    },
    /// Exporter → importer: the export is gone; drop every translation and the attachment.
    Revoke {
        /// Export index.
        export: u8,
        /// Export generation.
        generation: u32,
    },
    /// Importer → exporter: the `Revoke` was applied (so the exporter can count).
    RevokeAck {
        /// Export index.
        export: u8,
        /// Export generation.
        generation: u32,
    },
    /// Importer → exporter: the importer no longer uses the attachment.
    Detach {
        /// Export index.
        export: u8,
        /// Export generation.
        generation: u32,
    },
}

/// The attachment an exporter granted ([`Message::AttachReply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachGrant {
    /// Export index (the exporter's export table entry).
    pub export: u8,
    /// Generation of that entry: every later message about it carries it.
    pub generation: u32,
    /// Segment length in bytes (a non-zero multiple of 4 KiB).
    pub length: u64,
    /// The importer may write.
    pub writable: bool,
}

/// Size of a granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
}

impl PageSize {
    /// Bytes of the page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => PAGE_4K,
            PageSize::Size2M => PAGE_2M,
        }
    }
}

/// One page of the segment, granted to one importer ([`Message::TranslateReply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Offset in the segment of the page's first byte (aligned to `size`).
    pub page_offset: u64,
    /// The exporter's guest-physical address of the page's first byte (aligned to `size`).
    pub gpa: Gpa,
    /// Page size.
    pub size: PageSize,
    /// Writes through this grant are allowed.
    pub writable: bool,
}

impl Grant {
    /// Checks an exporter's grant against the `Translate` it answers (`offset`, `write`) and
    /// the attachment: what an importer does before caching it. The page is aligned to its
    /// size (offset and gpa), holds `offset`, lies inside the segment, and is writable if
    /// writing was asked, and only if the attachment is.
    pub fn check_reply(
        &self,
        offset: u64,
        write: bool,
        attachment: &AttachGrant,
    ) -> Result<(), ReplyError> {
        let size = self.size.bytes();
        if self.page_offset % size != 0 || self.gpa.0 % size != 0 {
            return Err(ReplyError::GrantMisaligned);
        }
        if self.gpa_of(offset).is_none() {
            return Err(ReplyError::GrantMissesOffset { offset });
        }
        if self
            .page_offset
            .checked_add(size)
            .is_none_or(|end| end > attachment.length)
        {
            return Err(ReplyError::GrantOutsideSegment);
        }
        if (write && !self.writable) || (self.writable && !attachment.writable) {
            return Err(ReplyError::GrantPermission);
        }
        Ok(())
    }

    /// The gpa of segment offset `offset`, if the grant covers it.
    pub fn gpa_of(&self, offset: u64) -> Option<Gpa> {
        let delta = offset.checked_sub(self.page_offset)?;
        if delta >= self.size.bytes() {
            return None;
        }
        self.gpa.checked_add(delta)
    }
}

/// An operation of [`Message::Access`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read `len` bytes (1 ..= [`ACCESS_MAX_BYTES`]).
    Read {
        /// Bytes to read.
        len: u32,
    },
    /// Write `data` (1 ..= [`ACCESS_MAX_BYTES`] bytes).
    Write {
        /// The bytes.
        #[serde(with = "wire_bytes")]
        data: Vec<u8>,
    },
    /// Atomic 64-bit fetch-and-add; the reply's `value` is the old value.
    FetchAdd {
        /// Added (wrapping).
        addend: u64,
    },
    /// Atomic 64-bit compare-and-swap; the reply's `value` is the old value (equal to
    /// `expected` if the swap happened).
    Cas {
        /// The value compared with.
        expected: u64,
        /// Stored if equal.
        new: u64,
    },
    /// Atomic 64-bit swap; the reply's `value` is the old value.
    Swap {
        /// Stored.
        value: u64,
    },
    /// 64-bit read; the reply's `value` is the value.
    Read64,
    /// 64-bit write.
    Write64 {
        /// Stored.
        value: u64,
    },
}

impl Op {
    /// Bytes the operation touches.
    pub fn len(&self) -> u32 {
        match self {
            Op::Read { len } => *len,
            // CAST: `validate` bounds the data to ACCESS_MAX_BYTES; a longer vector (built
            // locally, never sent) saturates, which every bound check then refuses.
            Op::Write { data } => u32::try_from(data.len()).unwrap_or(u32::MAX),
            Op::FetchAdd { .. }
            | Op::Cas { .. }
            | Op::Swap { .. }
            | Op::Read64
            | Op::Write64 { .. } => 8,
        }
    }

    /// The operation touches no byte: a zero-length `Read` or `Write`, which
    /// [`validate`](Op::validate) refuses.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operation needs write permission (atomics do, even a CAS that does not swap).
    pub fn writes(&self) -> bool {
        !matches!(self, Op::Read { .. } | Op::Read64)
    }

    /// The operation is one of the 64-bit ones, whose offset must be 8-byte aligned.
    pub fn is_64bit(&self) -> bool {
        !matches!(self, Op::Read { .. } | Op::Write { .. })
    }

    /// Checks the operation's own bounds (lengths), as [`validate`](Message::validate) does.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let len = match self {
            Op::Read { len } => u64::from(*len),
            Op::Write { data } => data.len() as u64,
            _ => return Ok(()),
        };
        if len == 0 || len > u64::from(ACCESS_MAX_BYTES) {
            return Err(DecodeError::BadLength {
                len,
                max: ACCESS_MAX_BYTES,
            });
        }
        Ok(())
    }

    /// Checks an exporter's reply against this operation: what an importer does before using
    /// anything in it. A `Read` gets exactly `len` bytes; every other operation gets none.
    pub fn check_reply(&self, done: &AccessDone) -> Result<(), ReplyError> {
        let want = match self {
            Op::Read { len } => *len as usize,
            _ => 0,
        };
        if done.data.len() != want {
            return Err(ReplyError::DataLength {
                got: done.data.len(),
                want,
            });
        }
        Ok(())
    }
}

/// What an [`Op`] returned ([`Message::AccessReply`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDone {
    /// The bytes a `Read` read (exactly its `len`); empty for every other operation.
    #[serde(with = "wire_bytes")]
    pub data: Vec<u8>,
    /// The old value of an atomic, the value of a `Read64`; 0 otherwise.
    pub value: u64,
}

/// Why an exporter refused a request. Nothing was accessed when an `Access` gets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Error)]
pub enum RemoteError {
    /// The importer is fenced: it missed an invalidation bound or its link broke. It must
    /// reconnect and attach again.
    #[error("The importer is fenced")]
    Fenced,
    /// Stale generation, no such export or key, or not attached.
    #[error("The export is revoked or unknown")]
    Revoked,
    /// The offset and length reach past the segment.
    #[error("Outside the segment")]
    Bounds,
    /// A write through a read-only attachment or grant, or a writable attachment of a
    /// read-only export.
    #[error("Not permitted")]
    Permission,
    /// A 64-bit operation at an offset that is not 8-byte aligned.
    #[error("Misaligned 64-bit operation")]
    Misaligned,
    /// The exporter's driver could not map the page (unmapped, or mapped without the
    /// permission asked).
    #[error("The exporter could not map the page")]
    Unresolved,
    /// The gpa is not the one currently granted to this importer for this offset (revoked,
    /// never granted, or the access leaves the grant's page): translate again.
    #[error("The page is not granted")]
    NotGranted,
    /// The exporter has no room now (attachments, outstanding requests); retry later.
    #[error("The exporter is busy")]
    Busy,
    /// The request made no sense (zero length, a message the exporter did not expect).
    #[error("Protocol violation")]
    Protocol,
}

/// Why a received payload is not a message this protocol accepts.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame's length header exceeds the receiver's bound.
    #[error("Frame of {len} bytes exceeds the bound of {max}")]
    FrameTooLarge {
        /// Length in the header.
        len: u64,
        /// The receiver's bound.
        max: u32,
    },
    /// The payload ends inside a field (or is empty).
    #[error("Payload truncated")]
    Truncated,
    /// The message ends before the payload does.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// An enum tag (message, operation, result, error, page size) or a bool out of range.
    #[error("Unknown tag")]
    UnknownTag,
    /// A varint longer than its type allows.
    #[error("Malformed integer")]
    BadVarint,
    /// A `Read` length or byte string outside 1 ..= `max` (0 allowed only in a reply).
    #[error("Length {len} outside the bound of {max}")]
    BadLength {
        /// The length found.
        len: u64,
        /// The bound.
        max: u32,
    },
    /// An `Invalidate` whose range is empty or reversed.
    #[error("Empty invalidation range [{start:#x}, {end:#x})")]
    EmptyRange {
        /// First offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// Any other malformed payload.
    #[error("Malformed payload")]
    Malformed(#[source] postcard::Error),
}

/// Why a message cannot be sent.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The message breaks the protocol's bounds (a sender's bug: caught before it leaves).
    #[error("Invalid message")]
    Invalid(#[source] DecodeError),
    /// The encoded message exceeds the peer's frame bound.
    #[error("Message of {len} bytes exceeds the peer's bound of {max}")]
    TooLarge {
        /// Encoded payload length.
        len: usize,
        /// The peer's bound.
        max: u32,
    },
    /// Postcard failed (it does not for these types: kept so nothing panics if it did).
    #[error("Encoding failed")]
    Postcard(#[source] postcard::Error),
}

/// Why an importer cannot use an exporter's reply.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// A reply's data is not as long as the request asked.
    #[error("Reply carries {got} bytes, the request asked {want}")]
    DataLength {
        /// Bytes in the reply.
        got: usize,
        /// Bytes the request asked for.
        want: usize,
    },
    /// A grant whose offset or gpa is not aligned to its page size.
    #[error("Grant not aligned to its page size")]
    GrantMisaligned,
    /// A grant whose page does not hold the offset asked.
    #[error("Grant does not hold offset {offset:#x}")]
    GrantMissesOffset {
        /// The offset the `Translate` asked.
        offset: u64,
    },
    /// A grant whose page reaches past the segment.
    #[error("Grant reaches past the segment")]
    GrantOutsideSegment,
    /// A read-only grant for a write, or a writable one through a read-only attachment.
    #[error("Grant permission does not match the request and attachment")]
    GrantPermission,
}

impl Message {
    /// The request id a reply answers (`Attach`/`Translate`/`Access` replies), or the
    /// invalidation id an ack answers; `None` for every other message.
    pub fn reply_to(&self) -> Option<u64> {
        match self {
            Message::AttachReply { req, .. }
            | Message::TranslateReply { req, .. }
            | Message::AccessReply { req, .. } => Some(*req),
            Message::InvalidateAck { inv } => Some(*inv),
            _ => None,
        }
    }

    /// Checks the bounds postcard cannot express: `Read` and `Write` lengths, reply data,
    /// invalidation ranges. [`decode_payload`] runs it on every message received, and
    /// [`encode_payload`] on every message sent.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Message::Access { op, .. } => op.validate(),
            Message::AccessReply {
                result: Ok(done), ..
            } => {
                let len = done.data.len() as u64;
                if len > u64::from(ACCESS_MAX_BYTES) {
                    return Err(DecodeError::BadLength {
                        len,
                        max: ACCESS_MAX_BYTES,
                    });
                }
                Ok(())
            }
            Message::Invalidate { start, end, .. } if start >= end => {
                Err(DecodeError::EmptyRange {
                    start: *start,
                    end: *end,
                })
            }
            _ => Ok(()),
        }
    }
}

fn decode_error(e: postcard::Error) -> DecodeError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        // A variant index the type does not have reaches serde's derived visitor, whose
        // `invalid_value` becomes postcard's `SerdeDeCustom`; no other custom error exists in
        // these types (structs are tuples in postcard, and `wire_bytes` accepts any bytes).
        postcard::Error::DeserializeBadEnum
        | postcard::Error::SerdeDeCustom
        | postcard::Error::DeserializeBadBool
        | postcard::Error::DeserializeBadOption => DecodeError::UnknownTag,
        postcard::Error::DeserializeBadVarint => DecodeError::BadVarint,
        other => DecodeError::Malformed(other),
    }
}

/// Decodes one payload (a frame without its header) of at most `max_frame` bytes, treating
/// every byte as hostile.
pub fn decode_payload(payload: &[u8], max_frame: u32) -> Result<Message, DecodeError> {
    if payload.len() as u64 > u64::from(max_frame) {
        return Err(DecodeError::FrameTooLarge {
            len: payload.len() as u64,
            max: max_frame,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<Message>(payload).map_err(decode_error)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    msg.validate()?;
    Ok(msg)
}

/// Reads a frame header: the payload length, checked against `max_frame`.
pub fn frame_len(header: [u8; FRAME_HEADER_BYTES], max_frame: u32) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(header);
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len: u64::from(len),
            max: max_frame,
        });
    }
    // CAST: u32 to usize, lossless on the 32- and 64-bit targets the VMM runs on.
    Ok(len as usize)
}

/// Decodes one whole frame (header and payload, nothing after).
pub fn decode_frame(frame: &[u8], max_frame: u32) -> Result<Message, DecodeError> {
    let Some((header, payload)) = frame.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(DecodeError::Truncated);
    };
    let len = frame_len(*header, max_frame)?;
    match payload.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated),
        std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes {
            extra: payload.len() - len,
        }),
        std::cmp::Ordering::Equal => decode_payload(payload, max_frame),
    }
}

/// Encodes `msg` as a payload of at most `max_frame` bytes (the peer's bound).
pub fn encode_payload(msg: &Message, max_frame: u32) -> Result<Vec<u8>, EncodeError> {
    msg.validate().map_err(EncodeError::Invalid)?;
    let payload = postcard::to_allocvec(msg).map_err(EncodeError::Postcard)?;
    if payload.len() as u64 > u64::from(max_frame) {
        return Err(EncodeError::TooLarge {
            len: payload.len(),
            max: max_frame,
        });
    }
    Ok(payload)
}

/// Encodes `msg` as a whole frame (header and payload) of at most `max_frame` payload bytes.
pub fn encode_frame(msg: &Message, max_frame: u32) -> Result<Vec<u8>, EncodeError> {
    let payload = encode_payload(msg, max_frame)?;
    // CAST: encode_payload bounded the length by a u32.
    let len = payload.len() as u32;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Byte strings as postcard byte strings (a varint length and the bytes: the same encoding
/// as a `Vec<u8>` sequence), decoded by copying the borrowed slice. The copy is exactly the
/// length postcard found in the payload, so it never exceeds the frame, whatever length a
/// hostile header claims; the protocol bound ([`ACCESS_MAX_BYTES`]) is checked after decoding
/// by [`Message::validate`], where the error can say what it is.
mod wire_bytes {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = MAX_FRAME_DEFAULT;

    fn encode(msg: &Message) -> Vec<u8> {
        match encode_frame(msg, MAX) {
            Ok(f) => f,
            Err(e) => panic!("encoding {msg:?}: {e}"),
        }
    }

    fn remote_error() -> impl Strategy<Value = RemoteError> {
        prop_oneof![
            Just(RemoteError::Fenced),
            Just(RemoteError::Revoked),
            Just(RemoteError::Bounds),
            Just(RemoteError::Permission),
            Just(RemoteError::Misaligned),
            Just(RemoteError::Unresolved),
            Just(RemoteError::NotGranted),
            Just(RemoteError::Busy),
            Just(RemoteError::Protocol),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1..=ACCESS_MAX_BYTES).prop_map(|len| Op::Read { len }),
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(|data| Op::Write { data }),
            any::<u64>().prop_map(|addend| Op::FetchAdd { addend }),
            (any::<u64>(), any::<u64>()).prop_map(|(expected, new)| Op::Cas { expected, new }),
            any::<u64>().prop_map(|value| Op::Swap { value }),
            Just(Op::Read64),
            any::<u64>().prop_map(|value| Op::Write64 { value }),
        ]
    }

    fn grant() -> impl Strategy<Value = Grant> {
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(page_offset, gpa, large, writable)| Grant {
                page_offset,
                gpa: Gpa(gpa),
                size: if large {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                },
                writable,
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u16>(), any::<u8>(), any::<u32>()).prop_map(|(version, node, max_frame)| {
                Message::Hello {
                    version,
                    node: NodeId(node),
                    max_frame,
                }
            }),
            (any::<u64>(), any::<u64>(), any::<bool>())
                .prop_map(|(req, key, write)| Message::Attach { req, key, write }),
            (
                any::<u64>(),
                prop_oneof![
                    (any::<u8>(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
                        |(export, generation, length, writable)| Ok(AttachGrant {
                            export,
                            generation,
                            length,
                            writable
                        })
                    ),
                    remote_error().prop_map(Err),
                ]
            )
                .prop_map(|(req, result)| Message::AttachReply { req, result }),
            (
                any::<u64>(),
                any::<u8>(),
                any::<u32>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(req, export, generation, offset, write)| {
                    Message::Translate {
                        req,
                        export,
                        generation,
                        offset,
                        write,
                    }
                }),
            (
                any::<u64>(),
                prop_oneof![grant().prop_map(Ok), remote_error().prop_map(Err)]
            )
                .prop_map(|(req, result)| Message::TranslateReply { req, result }),
            (
                any::<u64>(),
                any::<u8>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                op()
            )
                .prop_map(|(req, export, generation, offset, gpa, op)| {
                    Message::Access {
                        req,
                        export,
                        generation,
                        offset,
                        gpa: Gpa(gpa),
                        op,
                    }
                }),
            (
                any::<u64>(),
                prop_oneof![
                    (proptest::collection::vec(any::<u8>(), 0..300), any::<u64>())
                        .prop_map(|(data, value)| Ok(AccessDone { data, value })),
                    remote_error().prop_map(Err),
                ]
            )
                .prop_map(|(req, result)| Message::AccessReply { req, result }),
            (
                any::<u64>(),
                any::<u8>(),
                any::<u32>(),
                0..u64::MAX,
                1..=u64::MAX
            )
                .prop_map(|(inv, export, generation, a, b)| {
                    let (start, end) = if a < b { (a, b) } else { (b - 1, a + 1) };
                    Message::Invalidate {
                        inv,
                        export,
                        generation,
                        start,
                        end,
                    }
                }),
            any::<u64>().prop_map(|inv| Message::InvalidateAck { inv }),
            (any::<u8>(), any::<u32>())
                .prop_map(|(export, generation)| Message::Revoke { export, generation }),
            (any::<u8>(), any::<u32>())
                .prop_map(|(export, generation)| Message::RevokeAck { export, generation }),
            (any::<u8>(), any::<u32>())
                .prop_map(|(export, generation)| Message::Detach { export, generation }),
        ]
    }

    proptest! {
        #[test]
        fn every_valid_message_round_trips(msg in message()) {
            let frame = encode(&msg);
            prop_assert_eq!(decode_frame(&frame, MAX), Ok(msg));
        }

        #[test]
        fn every_strict_prefix_of_a_frame_is_an_error(msg in message(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&msg);
            let at = cut.index(frame.len());
            prop_assert!(decode_frame(&frame[..at], MAX).is_err());
            // Also with a header that claims the shorter payload.
            if at > FRAME_HEADER_BYTES {
                prop_assert!(decode_payload(&frame[FRAME_HEADER_BYTES..at], MAX).is_err());
            }
        }

        #[test]
        fn trailing_bytes_after_a_message_are_an_error(msg in message(), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
            let mut payload = encode_payload(&msg, MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
            payload.extend_from_slice(&extra);
            prop_assert_eq!(decode_payload(&payload, MAX), Err(DecodeError::TrailingBytes { extra: extra.len() }));
        }

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(msg) = decode_payload(&bytes, MAX) {
                // Whatever decodes is within the protocol's bounds, so it can be sent on.
                // (Not necessarily in the same bytes: postcard accepts non-minimal varints.)
                prop_assert!(encode_payload(&msg, MAX).is_ok());
            }
            let _ = decode_frame(&bytes, MAX);
        }

        #[test]
        fn flipping_a_byte_of_a_frame_never_panics_the_decoder(msg in message(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut frame = encode(&msg);
            let i = at.index(frame.len());
            frame[i] ^= 1 << bit;
            let _ = decode_frame(&frame, MAX);
        }
    }

    #[test]
    fn a_frame_longer_than_the_bound_is_refused_from_its_header() {
        let header = (MAX + 1).to_le_bytes();
        assert_eq!(
            frame_len(header, MAX),
            Err(DecodeError::FrameTooLarge {
                len: u64::from(MAX) + 1,
                max: MAX
            })
        );
        assert_eq!(
            decode_frame(&header, MAX),
            Err(DecodeError::FrameTooLarge {
                len: u64::from(MAX) + 1,
                max: MAX
            })
        );
        assert!(matches!(
            decode_payload(&vec![0u8; MAX as usize + 1], MAX),
            Err(DecodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn an_empty_payload_is_truncated() {
        assert_eq!(decode_payload(&[], MAX), Err(DecodeError::Truncated));
        assert_eq!(decode_frame(&[0, 0], MAX), Err(DecodeError::Truncated));
    }

    #[test]
    fn an_unknown_message_tag_is_refused() {
        // 13 messages: tags 0..=12.
        assert_eq!(decode_payload(&[13], MAX), Err(DecodeError::UnknownTag));
        assert_eq!(decode_payload(&[0x7f], MAX), Err(DecodeError::UnknownTag));
    }

    #[test]
    fn an_unknown_remote_error_tag_is_refused() {
        let msg = Message::AccessReply {
            req: 1,
            result: Err(RemoteError::Protocol),
        };
        let mut payload = encode_payload(&msg, MAX).expect("encodes");
        // The error's tag is the last byte: [msg tag, req, Result tag, error tag].
        let last = payload.len() - 1;
        payload[last] = 9;
        assert_eq!(decode_payload(&payload, MAX), Err(DecodeError::UnknownTag));
    }

    #[test]
    fn a_bool_other_than_zero_or_one_is_refused() {
        let msg = Message::Attach {
            req: 1,
            key: 2,
            write: true,
        };
        let mut payload = encode_payload(&msg, MAX).expect("encodes");
        let last = payload.len() - 1;
        payload[last] = 2;
        assert_eq!(decode_payload(&payload, MAX), Err(DecodeError::UnknownTag));
    }

    #[test]
    fn an_overlong_varint_is_refused() {
        // Attach with a req varint of 11 continuation bytes.
        let mut payload = vec![1u8];
        payload.extend_from_slice(&[0xff; 11]);
        payload.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode_payload(&payload, MAX), Err(DecodeError::BadVarint));
    }

    fn access(op: Op) -> Message {
        Message::Access {
            req: u64::MAX,
            export: u8::MAX,
            generation: u32::MAX,
            offset: u64::MAX,
            gpa: Gpa(u64::MAX),
            op,
        }
    }

    #[test]
    fn a_write_longer_than_access_max_bytes_is_refused_on_receipt() {
        // Built by hand: the encoder refuses to send it.
        let mut payload = postcard::to_allocvec(&access(Op::Write {
            data: vec![0xa5; ACCESS_MAX_BYTES as usize + 1],
        }))
        .expect("postcard encodes");
        assert!(payload.len() <= MAX as usize);
        assert_eq!(
            decode_payload(&payload, MAX),
            Err(DecodeError::BadLength {
                len: u64::from(ACCESS_MAX_BYTES) + 1,
                max: ACCESS_MAX_BYTES
            })
        );
        // And a claimed length far beyond the payload is truncation, not an allocation.
        payload.truncate(40);
        assert_eq!(decode_payload(&payload, MAX), Err(DecodeError::Truncated));
    }

    #[test]
    fn a_write_longer_than_access_max_bytes_is_refused_on_send() {
        let msg = access(Op::Write {
            data: vec![0; ACCESS_MAX_BYTES as usize + 1],
        });
        assert!(matches!(
            encode_frame(&msg, MAX),
            Err(EncodeError::Invalid(DecodeError::BadLength { .. }))
        ));
    }

    #[test]
    fn reads_of_zero_or_too_many_bytes_are_refused() {
        for len in [0, ACCESS_MAX_BYTES + 1, u32::MAX] {
            let payload = postcard::to_allocvec(&access(Op::Read { len })).expect("encodes");
            assert_eq!(
                decode_payload(&payload, MAX),
                Err(DecodeError::BadLength {
                    len: u64::from(len),
                    max: ACCESS_MAX_BYTES
                })
            );
        }
        let payload = postcard::to_allocvec(&access(Op::Write { data: vec![] })).expect("encodes");
        assert!(matches!(
            decode_payload(&payload, MAX),
            Err(DecodeError::BadLength { len: 0, .. })
        ));
    }

    #[test]
    fn reply_data_longer_than_access_max_bytes_is_refused() {
        let payload = postcard::to_allocvec(&Message::AccessReply {
            req: 0,
            result: Ok(AccessDone {
                data: vec![0; ACCESS_MAX_BYTES as usize + 1],
                value: 0,
            }),
        })
        .expect("encodes");
        assert!(matches!(
            decode_payload(&payload, MAX),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn an_empty_or_reversed_invalidation_range_is_refused() {
        for (start, end) in [(0x1000, 0x1000), (0x2000, 0x1000)] {
            let payload = postcard::to_allocvec(&Message::Invalidate {
                inv: 1,
                export: 0,
                generation: 1,
                start,
                end,
            })
            .expect("encodes");
            assert_eq!(
                decode_payload(&payload, MAX),
                Err(DecodeError::EmptyRange { start, end })
            );
        }
    }

    #[test]
    fn largest_messages_fit_the_default_frame_bound() {
        let full = vec![0xffu8; ACCESS_MAX_BYTES as usize];
        let write =
            encode_payload(&access(Op::Write { data: full.clone() }), u32::MAX).expect("encodes");
        let reply = encode_payload(
            &Message::AccessReply {
                req: u64::MAX,
                result: Ok(AccessDone {
                    data: full,
                    value: u64::MAX,
                }),
            },
            u32::MAX,
        )
        .expect("encodes");
        for len in [write.len(), reply.len()] {
            let overhead = len - ACCESS_MAX_BYTES as usize;
            assert!(overhead <= 51, "{overhead} bytes besides the data");
            assert!(len <= MAX_FRAME_DEFAULT as usize);
        }
    }

    #[test]
    fn a_message_larger_than_the_peer_bound_is_not_sent() {
        let msg = access(Op::Write {
            data: vec![0; 1024],
        });
        assert!(matches!(
            encode_frame(&msg, 512),
            Err(EncodeError::TooLarge { max: 512, .. })
        ));
    }

    #[test]
    fn an_importer_refuses_a_reply_whose_data_does_not_match_its_read() {
        let read = Op::Read { len: 16 };
        let short = AccessDone {
            data: vec![0; 8],
            value: 0,
        };
        assert_eq!(
            read.check_reply(&short),
            Err(ReplyError::DataLength { got: 8, want: 16 })
        );
        let exact = AccessDone {
            data: vec![0; 16],
            value: 0,
        };
        assert_eq!(read.check_reply(&exact), Ok(()));
        assert_eq!(
            Op::Read64.check_reply(&exact),
            Err(ReplyError::DataLength { got: 16, want: 0 })
        );
        assert_eq!(Op::Read64.check_reply(&AccessDone::default()), Ok(()));
    }

    #[test]
    fn an_importer_refuses_a_grant_that_does_not_answer_its_translate() {
        let attachment = AttachGrant {
            export: 0,
            generation: 1,
            length: 0x10_0000,
            writable: false,
        };
        let good = Grant {
            page_offset: 0x5000,
            gpa: Gpa(0x9_0000),
            size: PageSize::Size4K,
            writable: false,
        };
        assert_eq!(good.check_reply(0x5008, false, &attachment), Ok(()));
        assert_eq!(
            good.check_reply(0x6000, false, &attachment),
            Err(ReplyError::GrantMissesOffset { offset: 0x6000 })
        );
        assert_eq!(
            good.check_reply(0x5008, true, &attachment),
            Err(ReplyError::GrantPermission)
        );
        let writable = Grant {
            writable: true,
            ..good
        };
        assert_eq!(
            writable.check_reply(0x5008, false, &attachment),
            Err(ReplyError::GrantPermission),
            "writable through a read-only attachment"
        );
        let misaligned = Grant {
            gpa: Gpa(0x9_0800),
            ..good
        };
        assert_eq!(
            misaligned.check_reply(0x5008, false, &attachment),
            Err(ReplyError::GrantMisaligned)
        );
        let large = Grant {
            page_offset: 0,
            gpa: Gpa(0x4000_0000),
            size: PageSize::Size2M,
            writable: false,
        };
        assert_eq!(
            large.check_reply(0x5008, false, &attachment),
            Err(ReplyError::GrantOutsideSegment),
            "a 2 MiB page of a 1 MiB segment"
        );
        let top = Grant {
            page_offset: u64::MAX - 0xfff,
            ..good
        };
        assert_eq!(
            top.check_reply(u64::MAX, false, &attachment),
            Err(ReplyError::GrantOutsideSegment)
        );
    }

    #[test]
    fn grant_gpa_of_covers_exactly_its_page() {
        let g = Grant {
            page_offset: 0x20_0000,
            gpa: Gpa(0x4000_0000),
            size: PageSize::Size2M,
            writable: true,
        };
        assert_eq!(g.gpa_of(0x1f_ffff), None);
        assert_eq!(g.gpa_of(0x20_0000), Some(Gpa(0x4000_0000)));
        assert_eq!(g.gpa_of(0x3f_ffff), Some(Gpa(0x401f_ffff)));
        assert_eq!(g.gpa_of(0x40_0000), None);
        let top = Grant {
            page_offset: 0,
            gpa: Gpa(u64::MAX - 10),
            size: PageSize::Size4K,
            writable: false,
        };
        assert_eq!(top.gpa_of(100), None, "a wrapping gpa is no gpa");
    }

    /// The constants table of `docs/fabric.md` equals the code.
    #[test]
    fn specification_constants_match_the_code() {
        let doc = include_str!("../../docs/fabric.md");
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        let rows = [
            ("PROTOCOL_VERSION", PROTOCOL_VERSION.to_string()),
            ("ACCESS_MAX_BYTES", ACCESS_MAX_BYTES.to_string()),
            ("MAX_FRAME_DEFAULT", MAX_FRAME_DEFAULT.to_string()),
            ("HANDSHAKE_TIMEOUT", ms(HANDSHAKE_TIMEOUT)),
            ("ATTACH_REPLY_TIMEOUT", ms(ATTACH_REPLY_TIMEOUT)),
            ("TRANSLATE_REPLY_TIMEOUT", ms(TRANSLATE_REPLY_TIMEOUT)),
            ("ACCESS_REPLY_TIMEOUT", ms(ACCESS_REPLY_TIMEOUT)),
            ("INVALIDATE_ACK_TIMEOUT", ms(INVALIDATE_ACK_TIMEOUT)),
        ];
        for (name, value) in rows {
            let row = format!("| `{name}` | {value} |");
            assert!(doc.contains(&row), "docs/fabric.md lacks the row {row}");
        }
    }

    #[test]
    fn op_kinds_say_whether_they_write() {
        assert!(!Op::Read { len: 1 }.writes());
        assert!(!Op::Read64.writes());
        assert!(Op::Write { data: vec![1] }.writes());
        assert!(Op::Cas {
            expected: 0,
            new: 1
        }
        .writes());
        assert!(Op::FetchAdd { addend: 1 }.is_64bit());
        assert!(!Op::Write { data: vec![1] }.is_64bit());
        assert_eq!(Op::Swap { value: 0 }.len(), 8);
    }
}
