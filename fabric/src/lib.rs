//! The rmnic fabric's wire protocol: how two rmnic devices, each in its own VMM process,
//! share segments across two guests (issue 11).
//!
//! [`protocol`] is the message set and its frames, decoded as hostile input; [`link`] a
//! blocking framed link over a Unix socket (or any byte stream); [`grants`] the exporter's
//! directory of what each remote importer may access, which every incoming access is checked
//! against; [`node`] a node's end of the link as a host runs it (reader thread, reply matching,
//! requests served on threads of their own). No device or VMM inside: the device model (its
//! `fabric` module) and the device hosts build on it.
//!
//! The description, with timeouts, fencing and trust, is `docs/fabric.md`.

pub mod grants;
pub mod link;
pub mod node;
pub mod protocol;

pub use grants::{GrantDirectory, GrantError};
pub use link::{FramedLink, HandshakeError, LinkError, LinkReader, LinkWriter};
pub use node::{FabricNode, Handler, NodeError};
pub use protocol::{
    AccessDone, AttachGrant, DecodeError, EncodeError, Gpa, Grant, Message, NodeId, Op, PageSize,
    RemoteError, ReplyError, ACCESS_MAX_BYTES, MAX_FRAME_DEFAULT, PROTOCOL_VERSION,
};
