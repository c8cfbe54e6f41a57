//! The rmnic fabric's wire protocol: how two rmnic devices, each in its own VMM process,
//! share segments across two guests (issue 11).
//!
//! [`protocol`] is the message set and its frames, decoded as hostile input; [`link`] a
//! blocking framed link over a Unix socket (or any byte stream); [`grants`] the exporter's
//! directory of what each remote importer may access, which every incoming access is checked
//! against. Pure Rust, no device, VMM or threads: the device model and the VMM build on it.
//!
//! The description, with timeouts, fencing and trust, is `docs/fabric.md`. Nothing in the
//! device, VMM or driver uses this crate yet (that document's "Not built yet").

pub mod grants;
pub mod link;
pub mod protocol;

pub use grants::{GrantDirectory, GrantError};
pub use link::{FramedLink, HandshakeError, LinkError, LinkReader, LinkWriter};
pub use protocol::{
    AccessDone, AttachGrant, DecodeError, EncodeError, Gpa, Grant, Message, NodeId, Op, PageSize,
    RemoteError, ReplyError, ACCESS_MAX_BYTES, MAX_FRAME_DEFAULT, PROTOCOL_VERSION,
};
