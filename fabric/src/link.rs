//! A blocking, framed link carrying [`Message`]s over a byte stream: the Unix socket between
//! two VMM processes in practice, any `Read + Write` in tests.
//!
//! One frame is a `u32` little-endian payload length and the payload ([`crate::protocol`]).
//! The receiver reads the header, refuses a length beyond its bound before allocating
//! anything, then reads exactly that many bytes and decodes them. A read that times out
//! keeps the bytes already read, so the next `recv` resumes the same frame: a timeout never
//! desynchronises the stream.
//!
//! Any framing or decoding error, end of stream or I/O error **breaks** the link: every later
//! call fails with [`LinkError::Broken`], since a stream whose peer sent garbage cannot be
//! trusted to be back at a frame boundary. (The halves of a split link break separately: the
//! caller shuts the socket down, which makes the other half fail too.) The caller then fences the peer
//! ([`crate::grants::GrantDirectory::fence`]) and drops the link. Only a [`LinkError::Timeout`]
//! or a refused [`send`](FramedLink::send) ([`LinkError::Encode`], nothing written) leaves it
//! usable ([`LinkError::breaks_link`]).
//!
//! Concurrency: a [`FramedLink`] is one object; the VMM [`split`](FramedLink::split)s a Unix
//! socket link into a [`LinkReader`] for its one reader thread and a [`LinkWriter`] that the
//! senders share behind a lock (each `send` writes its frame with one `write_all`, so frames
//! from different senders never interleave as long as they hold that lock).

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::protocol::{
    decode_payload, encode_frame, frame_len, DecodeError, EncodeError, Message, NodeId,
    FRAME_HEADER_BYTES, MAX_FRAME_DEFAULT, PROTOCOL_VERSION,
};

/// Why the handshake failed.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The peer's first message was not a `Hello`.
    #[error("The peer's first message is not a Hello")]
    NotHello,
    /// The peer speaks another protocol version.
    #[error("Protocol version {theirs} of the peer differs from ours ({ours})")]
    VersionMismatch {
        /// Ours.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer claims our node id.
    #[error("The peer claims our node id {0:?}")]
    SameNode(NodeId),
    /// The peer's frame bound cannot hold a full access.
    #[error("The peer's frame bound {max_frame} is below the protocol's minimum {min}")]
    FrameBoundTooSmall {
        /// The peer's bound.
        max_frame: u32,
        /// [`MAX_FRAME_DEFAULT`].
        min: u32,
    },
}

/// Why a link operation failed.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The deadline passed before a whole frame arrived; the bytes read so far are kept.
    #[error("No whole frame before the deadline")]
    Timeout,
    /// The peer closed the stream at a frame boundary.
    #[error("The peer closed the link")]
    Closed,
    /// The peer closed the stream inside a frame.
    #[error("The peer closed the link {have} bytes into a {want}-byte frame")]
    ClosedMidFrame {
        /// Bytes of the frame (header included) received.
        have: usize,
        /// Bytes of the frame (header included) expected; 4 if the header was incomplete.
        want: usize,
    },
    /// The stream failed.
    #[error("I/O error on the link")]
    Io(#[source] io::Error),
    /// The peer sent a frame this protocol refuses.
    #[error("Malformed frame from the peer")]
    Decode(#[source] DecodeError),
    /// A `Hello` after the handshake.
    #[error("A Hello after the handshake")]
    UnexpectedHello,
    /// The handshake failed.
    #[error("Handshake failed")]
    Handshake(#[source] HandshakeError),
    /// The message cannot be sent (nothing was written; the link is still usable).
    #[error("Message not sent")]
    Encode(#[source] EncodeError),
    /// An earlier error broke the link.
    #[error("The link is broken by an earlier error")]
    Broken,
}

impl LinkError {
    /// Whether the link is unusable after this error (everything but `Timeout` and `Encode`):
    /// the peer is then fenced.
    pub fn breaks_link(&self) -> bool {
        !matches!(self, LinkError::Timeout | LinkError::Encode(_))
    }
}

/// Sets a stream's read timeout (`None`: block forever), as `UnixStream::set_read_timeout`.
pub type ReadTimeoutFn<S> = fn(&S, Option<Duration>) -> io::Result<()>;

fn unix_read_timeout(s: &UnixStream, t: Option<Duration>) -> io::Result<()> {
    s.set_read_timeout(t)
}

/// The receiving half's state: a frame being read.
#[derive(Debug)]
struct Receiver<S> {
    /// Largest payload accepted (announced in our `Hello`).
    max_recv: u32,
    header: [u8; FRAME_HEADER_BYTES],
    /// Bytes of `header` read; `FRAME_HEADER_BYTES` once the payload is being read.
    header_have: usize,
    /// The payload being read, sized to its length once the header is in.
    payload: Vec<u8>,
    payload_have: usize,
    set_timeout: Option<ReadTimeoutFn<S>>,
    /// The timeout set on the stream now, so it is set only when it changes.
    timeout_now: Option<Duration>,
    handshake_done: bool,
    broken: bool,
}

impl<S: Read> Receiver<S> {
    fn new(max_recv: u32, set_timeout: Option<ReadTimeoutFn<S>>) -> Self {
        Receiver {
            max_recv,
            header: [0; FRAME_HEADER_BYTES],
            header_have: 0,
            payload: Vec::new(),
            payload_have: 0,
            set_timeout,
            timeout_now: None,
            handshake_done: false,
            broken: false,
        }
    }

    fn mid_frame(&self) -> bool {
        self.header_have > 0
    }

    /// Receives one message, a `Hello` only if `hello` (the handshake).
    fn recv(
        &mut self,
        stream: &mut S,
        deadline: Option<Instant>,
        hello: bool,
    ) -> Result<Message, LinkError> {
        if self.broken {
            return Err(LinkError::Broken);
        }
        let result = self.recv_inner(stream, deadline, hello);
        if let Err(e) = &result {
            if e.breaks_link() {
                self.broken = true;
            }
        }
        result
    }

    fn recv_inner(
        &mut self,
        stream: &mut S,
        deadline: Option<Instant>,
        hello: bool,
    ) -> Result<Message, LinkError> {
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    // Zero is not a valid socket timeout (and means the deadline passed).
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(LinkError::Timeout),
                },
            };
            if let Some(set) = self.set_timeout {
                if timeout != self.timeout_now {
                    set(stream, timeout).map_err(LinkError::Io)?;
                    self.timeout_now = timeout;
                }
            }
            let in_header = self.header_have < FRAME_HEADER_BYTES;
            let buf = if in_header {
                &mut self.header[self.header_have..]
            } else {
                &mut self.payload[self.payload_have..]
            };
            let n = match stream.read(buf) {
                Ok(0) if self.mid_frame() => {
                    return Err(LinkError::ClosedMidFrame {
                        have: self.header_have + self.payload_have,
                        want: FRAME_HEADER_BYTES + self.payload.len(),
                    })
                }
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => n,
                // A socket read timeout reports WouldBlock on Unix, TimedOut elsewhere; the
                // deadline check at the top of the loop decides.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(LinkError::Io(e)),
            };
            if in_header {
                self.header_have += n;
                if self.header_have == FRAME_HEADER_BYTES {
                    let len = frame_len(self.header, self.max_recv).map_err(LinkError::Decode)?;
                    // Bounded by max_recv: the header was checked first.
                    self.payload.clear();
                    self.payload.resize(len, 0);
                    self.payload_have = 0;
                }
            } else {
                self.payload_have += n;
            }
            if self.header_have == FRAME_HEADER_BYTES && self.payload_have == self.payload.len() {
                self.header_have = 0;
                self.payload_have = 0;
                let decoded = decode_payload(&self.payload, self.max_recv);
                self.payload.clear();
                let msg = decoded.map_err(LinkError::Decode)?;
                if matches!(msg, Message::Hello { .. }) != hello {
                    return Err(if hello {
                        LinkError::Handshake(HandshakeError::NotHello)
                    } else {
                        LinkError::UnexpectedHello
                    });
                }
                return Ok(msg);
            }
        }
    }
}

/// The sending half's state.
#[derive(Debug)]
struct Sender {
    /// Largest payload the peer accepts (from its `Hello`).
    max_send: u32,
    broken: bool,
}

impl Sender {
    fn send<S: Write>(&mut self, stream: &mut S, msg: &Message) -> Result<(), LinkError> {
        if self.broken {
            return Err(LinkError::Broken);
        }
        let frame = encode_frame(msg, self.max_send).map_err(LinkError::Encode)?;
        // One write_all per frame; a failure may leave part of it on the stream, so it breaks
        // the link.
        let written = stream.write_all(&frame).and_then(|()| stream.flush());
        written.map_err(|e| {
            self.broken = true;
            LinkError::Io(e)
        })
    }
}

/// A framed, blocking link over a byte stream.
#[derive(Debug)]
pub struct FramedLink<S> {
    stream: S,
    rx: Receiver<S>,
    tx: Sender,
}

impl<S: Read + Write> FramedLink<S> {
    /// A link over any stream, accepting payloads up to [`MAX_FRAME_DEFAULT`]. Without a read
    /// timeout, [`recv`](Self::recv) blocks in `read` as long as the stream does: its deadline
    /// is checked before each read and whenever the stream reports `WouldBlock` or
    /// `TimedOut` (a stream with a timeout of its own set, or a non-blocking one, where this
    /// becomes a busy loop). Use [`with_read_timeout`](Self::with_read_timeout) for a stream
    /// that has one.
    pub fn new(stream: S) -> Self {
        Self::build(stream, None)
    }

    /// A link over a stream whose reads can time out: `set` is called with the time left
    /// before each read that has a deadline (and with `None` for one that has not).
    pub fn with_read_timeout(stream: S, set: ReadTimeoutFn<S>) -> Self {
        Self::build(stream, Some(set))
    }

    fn build(stream: S, set: Option<ReadTimeoutFn<S>>) -> Self {
        FramedLink {
            stream,
            rx: Receiver::new(MAX_FRAME_DEFAULT, set),
            tx: Sender {
                max_send: MAX_FRAME_DEFAULT,
                broken: false,
            },
        }
    }

    /// Sends one message. Blocks while the stream does (a socket whose peer does not read
    /// blocks once its buffer is full: set a write timeout on the stream where that matters,
    /// see `docs/fabric.md`).
    pub fn send(&mut self, msg: &Message) -> Result<(), LinkError> {
        let sent = self.tx.send(&mut self.stream, msg);
        self.rx.broken |= self.tx.broken;
        sent
    }

    /// Receives the next message, waiting until `deadline` (`None`: for ever). Never returns
    /// a `Hello`: that is the handshake's.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Message, LinkError> {
        let received = self.rx.recv(&mut self.stream, deadline, false);
        self.tx.broken |= self.rx.broken;
        received
    }

    /// Exchanges `Hello`s: sends ours (node `me`, our frame bound), waits until `deadline` for
    /// the peer's and checks it (the same version, another node, a frame bound that holds a
    /// full access). Returns the peer's node. Call it once, first, on both ends.
    pub fn handshake(&mut self, me: NodeId, deadline: Instant) -> Result<NodeId, LinkError> {
        self.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            node: me,
            max_frame: self.rx.max_recv,
        })?;
        let Message::Hello {
            version,
            node,
            max_frame,
        } = self.rx.recv(&mut self.stream, Some(deadline), true)?
        else {
            // `recv` with `hello` returns nothing else.
            return Err(LinkError::Handshake(HandshakeError::NotHello));
        };
        let refused = if version != PROTOCOL_VERSION {
            Some(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            })
        } else if node == me {
            Some(HandshakeError::SameNode(node))
        } else if max_frame < MAX_FRAME_DEFAULT {
            Some(HandshakeError::FrameBoundTooSmall {
                max_frame,
                min: MAX_FRAME_DEFAULT,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            self.rx.broken = true;
            self.tx.broken = true;
            return Err(LinkError::Handshake(e));
        }
        self.tx.max_send = max_frame;
        self.rx.handshake_done = true;
        Ok(node)
    }

    /// Whether [`handshake`](Self::handshake) succeeded.
    pub fn handshake_done(&self) -> bool {
        self.rx.handshake_done
    }

    /// The stream (to set a write timeout, or shut it down).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl FramedLink<UnixStream> {
    /// A link over a Unix socket, with read timeouts.
    pub fn unix(stream: UnixStream) -> Self {
        Self::with_read_timeout(stream, unix_read_timeout)
    }

    /// Two connected links (`UnixStream::pair`), for tests.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::unix(a), Self::unix(b)))
    }

    /// Splits the link into a reader (for one thread) and a writer (for the senders), over two
    /// handles of the same socket. A frame half-read so far stays with the reader.
    pub fn split(self) -> io::Result<(LinkReader, LinkWriter)> {
        let writer = self.stream.try_clone()?;
        Ok((
            LinkReader {
                stream: self.stream,
                rx: self.rx,
            },
            LinkWriter {
                stream: writer,
                tx: self.tx,
            },
        ))
    }
}

/// The receiving half of a split Unix socket link.
#[derive(Debug)]
pub struct LinkReader {
    stream: UnixStream,
    rx: Receiver<UnixStream>,
}

impl LinkReader {
    /// As [`FramedLink::recv`].
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Message, LinkError> {
        self.rx.recv(&mut self.stream, deadline, false)
    }
}

/// The sending half of a split Unix socket link.
#[derive(Debug)]
pub struct LinkWriter {
    stream: UnixStream,
    tx: Sender,
}

impl LinkWriter {
    /// As [`FramedLink::send`].
    pub fn send(&mut self, msg: &Message) -> Result<(), LinkError> {
        self.tx.send(&mut self.stream, msg)
    }

    /// The socket (to set a write timeout, or shut the link down, which also wakes the reader).
    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_payload, Gpa, Op, ACCESS_MAX_BYTES};
    use std::io::Cursor;
    use std::thread;

    const SHORT: Duration = Duration::from_millis(30);
    const LONG: Duration = Duration::from_secs(10);

    fn soon() -> Option<Instant> {
        Some(Instant::now() + SHORT)
    }

    fn later() -> Option<Instant> {
        Some(Instant::now() + LONG)
    }

    fn ack(inv: u64) -> Message {
        Message::InvalidateAck { inv }
    }

    fn frame_of(msg: &Message) -> Vec<u8> {
        encode_frame(msg, MAX_FRAME_DEFAULT).expect("encodes")
    }

    /// A link end and the raw socket of the other end, to send it bytes by hand.
    fn raw_pair() -> (FramedLink<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (FramedLink::unix(a), b)
    }

    #[test]
    fn messages_arrive_in_order() {
        let (mut a, mut b) = FramedLink::pair().expect("pair");
        let big = Message::Access {
            req: 7,
            export: 1,
            generation: 2,
            offset: 0,
            gpa: Gpa(0x1000),
            op: Op::Write {
                data: vec![0x5a; ACCESS_MAX_BYTES as usize],
            },
        };
        // A full-size access exceeds the socket buffer: send from another thread.
        thread::scope(|s| {
            s.spawn(|| {
                for m in [ack(1), big.clone(), ack(2)] {
                    a.send(&m).expect("sends");
                }
            });
            for want in [ack(1), big.clone(), ack(2)] {
                assert_eq!(b.recv(later()).expect("receives"), want);
            }
        });
    }

    #[test]
    fn a_timeout_mid_frame_keeps_the_bytes_read_so_far() {
        let (mut link, mut raw) = raw_pair();
        assert!(matches!(link.recv(soon()), Err(LinkError::Timeout)));
        let frame = frame_of(&ack(0x1234_5678_9abc));
        raw.write_all(&frame[..2]).expect("writes");
        assert!(matches!(link.recv(soon()), Err(LinkError::Timeout)));
        raw.write_all(&frame[2..6]).expect("writes");
        assert!(matches!(link.recv(soon()), Err(LinkError::Timeout)));
        raw.write_all(&frame[6..]).expect("writes");
        assert_eq!(link.recv(soon()).expect("receives"), ack(0x1234_5678_9abc));
    }

    #[test]
    fn a_passed_deadline_times_out_at_once() {
        let (mut link, _raw) = raw_pair();
        let start = Instant::now();
        assert!(matches!(
            link.recv(Some(start - Duration::from_millis(1))),
            Err(LinkError::Timeout)
        ));
        assert!(start.elapsed() < LONG);
    }

    #[test]
    fn an_oversized_header_breaks_the_link_before_the_payload_is_read() {
        let (mut link, mut raw) = raw_pair();
        raw.write_all(&(MAX_FRAME_DEFAULT + 1).to_le_bytes())
            .expect("writes");
        // No payload follows: the refusal must not wait for it.
        assert!(matches!(
            link.recv(later()),
            Err(LinkError::Decode(DecodeError::FrameTooLarge { .. }))
        ));
        raw.write_all(&frame_of(&ack(1))).expect("writes");
        assert!(matches!(link.recv(later()), Err(LinkError::Broken)));
    }

    #[test]
    fn a_malformed_payload_breaks_the_link() {
        let (mut link, mut raw) = raw_pair();
        let mut frame = frame_of(&ack(1));
        frame.push(0);
        frame[0] += 1;
        raw.write_all(&frame).expect("writes");
        assert!(matches!(
            link.recv(later()),
            Err(LinkError::Decode(DecodeError::TrailingBytes { extra: 1 }))
        ));
        assert!(matches!(link.recv(later()), Err(LinkError::Broken)));
        assert!(matches!(link.send(&ack(2)), Err(LinkError::Broken)));
    }

    #[test]
    fn a_close_between_frames_and_inside_one_are_told_apart() {
        let (mut link, raw) = raw_pair();
        drop(raw);
        assert!(matches!(link.recv(later()), Err(LinkError::Closed)));

        let (mut link, mut raw) = raw_pair();
        let frame = frame_of(&ack(1));
        raw.write_all(&frame[..5]).expect("writes");
        drop(raw);
        assert!(matches!(
            link.recv(later()),
            Err(LinkError::ClosedMidFrame { have: 5, want }) if want == frame.len()
        ));
    }

    #[test]
    fn a_message_too_large_for_the_peer_is_refused_and_the_link_stays_usable() {
        let (mut a, mut b) = FramedLink::pair().expect("pair");
        let too_big = Message::Access {
            req: 1,
            export: 0,
            generation: 1,
            offset: 0,
            gpa: Gpa(0),
            op: Op::Write {
                data: vec![0; ACCESS_MAX_BYTES as usize + 1],
            },
        };
        let err = a.send(&too_big).expect_err("refused");
        assert!(!err.breaks_link());
        a.send(&ack(3)).expect("sends");
        assert_eq!(b.recv(later()).expect("receives"), ack(3));
    }

    fn handshake_both(
        a: &mut FramedLink<UnixStream>,
        b: &mut FramedLink<UnixStream>,
        na: u8,
        nb: u8,
    ) -> (Result<NodeId, LinkError>, Result<NodeId, LinkError>) {
        let deadline = Instant::now() + LONG;
        thread::scope(|s| {
            let ta = s.spawn(|| a.handshake(NodeId(na), deadline));
            let rb = b.handshake(NodeId(nb), deadline);
            (ta.join().expect("no panic"), rb)
        })
    }

    #[test]
    fn the_handshake_names_the_peer_and_then_hello_is_refused() {
        let (mut a, mut b) = FramedLink::pair().expect("pair");
        let (ra, rb) = handshake_both(&mut a, &mut b, 1, 2);
        assert_eq!(ra.expect("a"), NodeId(2));
        assert_eq!(rb.expect("b"), NodeId(1));
        assert!(a.handshake_done());
        a.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            node: NodeId(1),
            max_frame: MAX_FRAME_DEFAULT,
        })
        .expect("sends");
        assert!(matches!(b.recv(later()), Err(LinkError::UnexpectedHello)));
    }

    #[test]
    fn the_handshake_refuses_the_same_node_on_both_ends() {
        let (mut a, mut b) = FramedLink::pair().expect("pair");
        let (ra, _) = handshake_both(&mut a, &mut b, 3, 3);
        assert!(matches!(
            ra,
            Err(LinkError::Handshake(HandshakeError::SameNode(NodeId(3))))
        ));
        assert!(matches!(a.recv(soon()), Err(LinkError::Broken)));
    }

    fn hello_from_raw(version: u16, max_frame: u32) -> Result<NodeId, LinkError> {
        let (mut link, mut raw) = raw_pair();
        raw.write_all(&frame_of(&Message::Hello {
            version,
            node: NodeId(9),
            max_frame,
        }))
        .expect("writes");
        link.handshake(NodeId(1), Instant::now() + LONG)
    }

    #[test]
    fn the_handshake_refuses_another_version() {
        assert!(matches!(
            hello_from_raw(PROTOCOL_VERSION + 1, MAX_FRAME_DEFAULT),
            Err(LinkError::Handshake(HandshakeError::VersionMismatch { theirs, .. }))
                if theirs == PROTOCOL_VERSION + 1
        ));
    }

    #[test]
    fn the_handshake_refuses_a_frame_bound_below_a_full_access() {
        assert!(matches!(
            hello_from_raw(PROTOCOL_VERSION, MAX_FRAME_DEFAULT - 1),
            Err(LinkError::Handshake(
                HandshakeError::FrameBoundTooSmall { .. }
            ))
        ));
        assert_eq!(
            hello_from_raw(PROTOCOL_VERSION, u32::MAX).expect("accepted"),
            NodeId(9)
        );
    }

    #[test]
    fn the_handshake_refuses_a_first_message_that_is_not_hello() {
        let (mut link, mut raw) = raw_pair();
        raw.write_all(&frame_of(&ack(1))).expect("writes");
        assert!(matches!(
            link.handshake(NodeId(1), Instant::now() + LONG),
            Err(LinkError::Handshake(HandshakeError::NotHello))
        ));
    }

    #[test]
    fn the_handshake_times_out_on_a_silent_peer() {
        let (mut link, _raw) = raw_pair();
        assert!(matches!(
            link.handshake(NodeId(1), Instant::now() + SHORT),
            Err(LinkError::Timeout)
        ));
    }

    #[test]
    fn a_split_link_reads_on_one_thread_while_another_sends() {
        let (a, mut b) = FramedLink::pair().expect("pair");
        let (mut reader, mut writer) = a.split().expect("splits");
        thread::scope(|s| {
            let t = s.spawn(move || {
                // Echo acks back through the same socket pair.
                for _ in 0..3 {
                    let m = reader.recv(later()).expect("receives");
                    writer.send(&m).expect("sends");
                }
            });
            for i in 0..3 {
                b.send(&ack(i)).expect("sends");
                assert_eq!(b.recv(later()).expect("echo"), ack(i));
            }
            t.join().expect("no panic");
        });
    }

    /// A stream over fixed input, collecting output: a generic `Read + Write`.
    struct Script {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // One byte at a time: every partial-read path runs.
            let n = buf.len().min(1);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_generic_stream_carries_frames_read_a_byte_at_a_time() {
        let mut input = frame_of(&ack(1));
        input.extend(frame_of(&ack(2)));
        let mut link = FramedLink::new(Script {
            input: Cursor::new(input),
            output: Vec::new(),
        });
        assert_eq!(link.recv(None).expect("first"), ack(1));
        link.send(&ack(3)).expect("sends");
        assert_eq!(
            &link.get_ref().output[FRAME_HEADER_BYTES..],
            encode_payload(&ack(3), MAX_FRAME_DEFAULT).expect("encodes")
        );
        assert_eq!(link.recv(None).expect("second"), ack(2));
        assert!(matches!(link.recv(None), Err(LinkError::Closed)));
        assert!(matches!(link.send(&ack(4)), Err(LinkError::Broken)));
    }

    #[test]
    fn an_empty_frame_breaks_the_link() {
        let mut link = FramedLink::new(Script {
            input: Cursor::new(vec![0, 0, 0, 0]),
            output: Vec::new(),
        });
        assert!(matches!(
            link.recv(None),
            Err(LinkError::Decode(DecodeError::Truncated))
        ));
    }
}
