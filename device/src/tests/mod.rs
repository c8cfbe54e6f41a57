//! Device-level tests: the specification's sequences, every error path, the in-flight
//! guarantee under concurrency, and the specification's tables as a whole, driven through
//! BAR0 and guest memory by a small fake driver ([`harness`]).

mod concurrency;
mod errors;
mod fabric;
mod faults;
pub(crate) mod harness;
mod inline_queue;
mod proptests;
mod registers;
mod segments;
pub(crate) mod sequences;
mod spec;
