//! A node's end of the link, as a VMM runs it: connect (or accept) and handshake, one reader
//! thread that hands replies to the requests waiting for them and every other message to a
//! handler on a thread of its own, and a writer shared by all senders.
//!
//! Requests are served on their own threads because serving one may block (an exporter's
//! `Translate` waits for its guest's driver), and the reader must keep delivering replies to
//! this node's own requests meanwhile: with one thread for both, two nodes translating for
//! each other would wait for each other forever.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::link::{FramedLink, LinkError, LinkWriter};
use crate::protocol::{Message, NodeId, HANDSHAKE_TIMEOUT};

/// How long a write to the peer may block (a peer that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests of the peer served at once, at most (each on a thread of its own); beyond it the
/// peer's `Attach`, `Translate` and `Access` are answered `Busy` at once, so a peer cannot
/// make this node start threads without bound.
pub const MAX_SERVED: usize = 64;

/// What serves the peer's requests: answers a message (None: no answer needed).
pub type Handler = Arc<dyn Fn(NodeId, Message) -> Option<Message> + Send + Sync>;

/// Told once when the link to the peer goes down (end of stream, I/O or framing error, or
/// [`FabricNode::close`]).
pub type OnDown = Arc<dyn Fn(NodeId) + Send + Sync>;

/// Why a node operation failed.
#[derive(Debug, Error)]
pub enum NodeError {
    /// Socket setup or I/O.
    #[error("fabric socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The link broke, or the handshake failed.
    #[error("fabric link: {0}")]
    Link(#[from] LinkError),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The link is down (the peer went away, or this node closed it).
    #[error("the fabric link is down")]
    Down,
    /// `request` was given a message nothing answers (use `send`).
    #[error("the message is not a request")]
    NotARequest,
    /// The peer never came.
    #[error("no peer on {path} within {waited:?}")]
    NoPeer {
        /// The socket path.
        path: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// The `Busy` answer to a request that may wait (`Attach`, `Translate`, `Access`); None for
/// the others.
fn busy(message: &Message) -> Option<Message> {
    use crate::protocol::RemoteError::Busy;
    Some(match *message {
        Message::Attach { req, .. } => Message::AttachReply {
            req,
            result: Err(Busy),
        },
        Message::Translate { req, .. } => Message::TranslateReply {
            req,
            result: Err(Busy),
        },
        Message::Access { req, .. } => Message::AccessReply {
            req,
            result: Err(Busy),
        },
        _ => return None,
    })
}

/// A connected node: send requests, send messages, and have the peer's requests served.
pub struct FabricNode {
    me: NodeId,
    peer: NodeId,
    writer: Mutex<Option<LinkWriter>>,
    /// Requests waiting for their reply, by id.
    pending: Mutex<HashMap<u64, Sender<Message>>>,
    down: AtomicBool,
    on_down: Mutex<Option<OnDown>>,
    /// Requests being served now.
    serving: AtomicUsize,
    /// A planted partition (tests): nothing is delivered or sent any more, the link stays up.
    partitioned: AtomicBool,
}

impl std::fmt::Debug for FabricNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricNode")
            .field("me", &self.me)
            .field("peer", &self.peer)
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish()
    }
}

fn socket_error(path: &Path) -> impl FnOnce(io::Error) -> NodeError + '_ {
    move |source| NodeError::Socket {
        path: path.display().to_string(),
        source,
    }
}

impl FabricNode {
    /// Listens on `path` (replacing a stale socket file), accepts one peer within `wait`,
    /// handshakes and starts serving it with `handler`.
    pub fn listen(
        path: &Path,
        me: NodeId,
        wait: Duration,
        handler: Handler,
    ) -> Result<Arc<Self>, NodeError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(socket_error(path))?;
        listener.set_nonblocking(true).map_err(socket_error(path))?;
        let deadline = Instant::now() + wait;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(NodeError::NoPeer {
                            path: path.display().to_string(),
                            waited: wait,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(socket_error(path)(e)),
            }
        };
        stream.set_nonblocking(false).map_err(socket_error(path))?;
        Self::start(stream, path, me, handler)
    }

    /// Connects to `path`, retrying for `wait` while nobody listens there yet, handshakes and
    /// starts serving the peer with `handler`.
    pub fn connect(
        path: &Path,
        me: NodeId,
        wait: Duration,
        handler: Handler,
    ) -> Result<Arc<Self>, NodeError> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(NodeError::NoPeer {
                        path: format!("{}: {e}", path.display()),
                        waited: wait,
                    })
                }
                Err(e) => return Err(socket_error(path)(e)),
            }
        };
        Self::start(stream, path, me, handler)
    }

    fn start(
        stream: UnixStream,
        path: &Path,
        me: NodeId,
        handler: Handler,
    ) -> Result<Arc<Self>, NodeError> {
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(socket_error(path))?;
        let mut link = FramedLink::unix(stream);
        let peer = link.handshake(me, Instant::now() + HANDSHAKE_TIMEOUT)?;
        let (mut reader, writer) = link.split().map_err(socket_error(path))?;
        let node = Arc::new(Self {
            me,
            peer,
            writer: Mutex::new(Some(writer)),
            pending: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            on_down: Mutex::new(None),
            serving: AtomicUsize::new(0),
            partitioned: AtomicBool::new(false),
        });
        let runner = node.clone();
        std::thread::Builder::new()
            .name(format!("fabric-{}-{}", me.0, peer.0))
            .spawn(move || {
                loop {
                    match reader.recv(None) {
                        Ok(message) => runner.deliver(message, &handler),
                        Err(error) if error.breaks_link() => {
                            tracing::warn!(%error, "rmnic fabric: link to node {} broke", runner.peer.0);
                            break;
                        }
                        Err(_) => {}
                    }
                }
                runner.close();
            })
            .map_err(socket_error(path))?;
        Ok(node)
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Sender<Message>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message from the peer: a reply goes to its waiter (a late one is dropped), anything
    /// else to the handler on a thread of its own, whose answer is sent back.
    fn deliver(self: &Arc<Self>, message: Message, handler: &Handler) {
        if self.partitioned.load(Ordering::Acquire) {
            return;
        }
        if let Some(id) = message.reply_to() {
            if let Some(waiter) = self.pending().remove(&id) {
                let _ = waiter.send(message);
            } else {
                tracing::debug!(id, "rmnic fabric: reply nobody waits for, dropped");
            }
            return;
        }
        if self.serving.fetch_add(1, Ordering::AcqRel) >= MAX_SERVED {
            self.serving.fetch_sub(1, Ordering::AcqRel);
            match busy(&message) {
                Some(answer) => {
                    let _ = self.send(answer);
                }
                // Invalidations, revocations, detaches never wait for anything: served here,
                // on the reader, rather than refused.
                None => {
                    if let Some(answer) = handler(self.peer, message) {
                        let _ = self.send(answer);
                    }
                }
            }
            return;
        }
        let (node, handler) = (self.clone(), handler.clone());
        let spawned = std::thread::Builder::new()
            .name("fabric-serve".into())
            .spawn(move || {
                if let Some(answer) = handler(node.peer, message) {
                    let _ = node.send(answer);
                }
                node.serving.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(error) = spawned {
            self.serving.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%error, "rmnic fabric: no thread to serve a request");
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The peer.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Whether the link is down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Plants a partition (tests): from now on every message is lost both ways while the
    /// link stays up, as when the network between two live nodes fails. Requests time out.
    pub fn partition(&self) {
        self.partitioned.store(true, Ordering::Release);
    }

    /// Sends `message` (lost without a word after [`FabricNode::partition`]).
    pub fn send(&self, message: Message) -> Result<(), NodeError> {
        if self.partitioned.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(link) = writer.as_mut() else {
            return Err(NodeError::Down);
        };
        match link.send(&message) {
            Ok(()) => Ok(()),
            Err(error) => {
                if error.breaks_link() {
                    *writer = None;
                    drop(writer);
                    self.close();
                }
                Err(error.into())
            }
        }
    }

    /// Sends `request` (whose id [`Message::reply_to`] of its answer names: `req` of a request,
    /// `inv` of an invalidation) and waits at most `timeout` for the answer.
    pub fn request(&self, request: Message, timeout: Duration) -> Result<Message, NodeError> {
        let id = match &request {
            Message::Attach { req, .. }
            | Message::Translate { req, .. }
            | Message::Access { req, .. } => *req,
            Message::Invalidate { inv, .. } => *inv,
            // Nothing answers it: a caller's mistake, not the link's.
            _ => return Err(NodeError::NotARequest),
        };
        let (tx, rx) = mpsc::channel();
        self.pending().insert(id, tx);
        if let Err(error) = self.send(request) {
            self.pending().remove(&id);
            return Err(error);
        }
        match rx.recv_timeout(timeout) {
            Ok(reply) => Ok(reply),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending().remove(&id);
                Err(NodeError::Timeout(timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(NodeError::Down),
        }
    }

    /// Calls `on_down` when the link goes down (at once if it is down already).
    pub fn on_down(&self, on_down: OnDown) {
        let mut slot = self.on_down.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_down() {
            drop(slot);
            on_down(self.peer);
        } else {
            *slot = Some(on_down);
        }
    }

    /// Closes the link: waiters return [`NodeError::Down`], later sends fail, the `on_down`
    /// callback runs (once).
    pub fn close(&self) {
        let was_down = self.down.swap(true, Ordering::AcqRel);
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.get_ref().shutdown(std::net::Shutdown::Both);
        }
        // Dropping the senders wakes every waiter.
        self.pending().clear();
        if !was_down {
            let callback = self
                .on_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(callback) = callback {
                callback(self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_handler() -> Handler {
        Arc::new(|_, message| match message {
            Message::Invalidate { inv, .. } => Some(Message::InvalidateAck { inv }),
            _ => None,
        })
    }

    fn pair(name: &str, handler_b: Handler) -> (Arc<FabricNode>, Arc<FabricNode>) {
        let path = std::env::temp_dir().join(format!("rmnic-fabric-{}-{name}", std::process::id()));
        let listen_path = path.clone();
        let a = std::thread::spawn(move || {
            FabricNode::listen(
                &listen_path,
                NodeId(1),
                Duration::from_secs(5),
                echo_handler(),
            )
        });
        let b = FabricNode::connect(&path, NodeId(2), Duration::from_secs(5), handler_b)
            .expect("connects");
        let a = a.join().expect("thread").expect("accepts");
        let _ = std::fs::remove_file(&path);
        (a, b)
    }

    fn invalidate(inv: u64) -> Message {
        Message::Invalidate {
            inv,
            export: 0,
            generation: 1,
            start: 0,
            end: 4096,
        }
    }

    #[test]
    fn requests_get_their_replies_and_the_peer_is_known() {
        let (a, b) = pair("replies", echo_handler());
        assert_eq!((a.peer(), b.peer()), (NodeId(2), NodeId(1)));
        for inv in 1..20 {
            let reply = a
                .request(invalidate(inv), Duration::from_secs(5))
                .expect("acked");
            assert_eq!(reply, Message::InvalidateAck { inv });
        }
        let reply = b
            .request(invalidate(99), Duration::from_secs(5))
            .expect("acked");
        assert_eq!(reply, Message::InvalidateAck { inv: 99 });
    }

    #[test]
    fn a_silent_peer_times_out_and_a_closed_link_is_down() {
        let silent: Handler = Arc::new(|_, _| None);
        let (a, b) = pair("silent", silent);
        let start = Instant::now();
        let timed_out = a.request(invalidate(1), Duration::from_millis(50));
        assert!(
            matches!(timed_out, Err(NodeError::Timeout(_))),
            "{timed_out:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        let told = Arc::new(AtomicBool::new(false));
        let flag = told.clone();
        a.on_down(Arc::new(move |peer| {
            assert_eq!(peer, NodeId(2));
            flag.store(true, Ordering::SeqCst);
        }));
        b.close();
        // The reader notices the peer's close and takes the link down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !a.is_down() {
            assert!(Instant::now() < deadline, "never noticed the close");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(
            a.request(invalidate(2), Duration::from_secs(1)),
            Err(NodeError::Down)
        ));
        assert!(told.load(Ordering::SeqCst), "on_down was not called");
    }

    #[test]
    fn a_partition_loses_everything_both_ways_and_requests_time_out() {
        let (a, b) = pair("partition", echo_handler());
        assert!(a.request(invalidate(1), Duration::from_secs(5)).is_ok());
        b.partition();
        assert!(matches!(
            a.request(invalidate(2), Duration::from_millis(50)),
            Err(NodeError::Timeout(_))
        ));
        assert!(matches!(
            b.request(invalidate(3), Duration::from_millis(50)),
            Err(NodeError::Timeout(_))
        ));
        assert!(!a.is_down() && !b.is_down());
    }

    #[test]
    fn requests_beyond_the_served_bound_are_answered_busy_at_once() {
        use crate::protocol::{Op, RemoteError};
        // B's handler blocks every Access until released.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let blocking: Handler = Arc::new(move |_, message| {
            let _ = release_rx
                .lock()
                .map(|rx| rx.recv_timeout(Duration::from_secs(10)));
            match message {
                Message::Access { req, .. } => Some(Message::AccessReply {
                    req,
                    result: Err(RemoteError::Unresolved),
                }),
                _ => None,
            }
        });
        let (a, b) = pair("busy", blocking);
        let access = |req| Message::Access {
            req,
            export: 0,
            generation: 1,
            offset: 0,
            gpa: crate::protocol::Gpa(0),
            op: Op::Read64,
        };
        let a = Arc::new(a);
        let waiting: Vec<_> = (0..MAX_SERVED as u64)
            .map(|req| {
                let a = a.clone();
                std::thread::spawn(move || a.request(access(req), Duration::from_secs(20)))
            })
            .collect();
        // Wait until B is serving all of them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.serving.load(Ordering::Acquire) < MAX_SERVED {
            assert!(Instant::now() < deadline, "B never served all the requests");
            std::thread::sleep(Duration::from_millis(5));
        }
        let refused = a.request(access(1000), Duration::from_secs(5));
        assert!(
            matches!(
                refused,
                Ok(Message::AccessReply {
                    req: 1000,
                    result: Err(RemoteError::Busy)
                })
            ),
            "{refused:?}"
        );
        drop(release_tx);
        for w in waiting {
            assert!(w.join().expect("thread").is_ok());
        }
    }

    #[test]
    fn nobody_listening_is_a_clear_error_after_the_wait() {
        let path = std::env::temp_dir().join("rmnic-fabric-nobody-here");
        let error =
            FabricNode::connect(&path, NodeId(2), Duration::from_millis(100), echo_handler())
                .expect_err("nobody listens");
        assert!(matches!(error, NodeError::NoPeer { .. }), "{error}");
    }
}
