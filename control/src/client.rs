//! The client end (`rmnic-vmm ctl`): one connection, one request line, one response line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{Envelope, Request, Response};

/// How long a client waits for an answer (a trace through the emulated host's serial relay
/// takes seconds).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server there.
    #[error("control socket {0}: {1} (is rmnic-vmm running with --api-socket?)")]
    Connect(PathBuf, std::io::Error),
    /// The connection failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection without answering.
    #[error("control socket: the server closed the connection without an answer")]
    NoAnswer,
    /// The answer is not a response.
    #[error("control socket: unreadable answer: {0}")]
    BadAnswer(serde_json::Error),
    /// No answer in time.
    #[error("control socket: no answer within {0:?}")]
    Timeout(Duration),
}

/// A connection to a control API.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    next_id: u64,
}

impl Client {
    /// Connects to the server at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_with_timeout(path, RESPONSE_TIMEOUT)
    }

    /// Connects, waiting at most `timeout` for each answer.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        stream.set_read_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        // Ids that differ between connections: a late answer to another connection's request
        // (possible behind the serial relay) is never taken for this one's.
        let next_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // CAST: any 64 bits of the clock do.
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            timeout,
            next_id,
        })
    }

    /// Sends `request` and waits for its response (skipping lines that answer other requests).
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let envelope = Envelope {
            id: Some(id),
            request: request.clone(),
        };
        let mut line = serde_json::to_string(&envelope).map_err(ClientError::BadAnswer)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let deadline = Instant::now() + self.timeout;
        loop {
            // Each read waits only for what is left of the request's time.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(self.timeout));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let mut answer = String::new();
            match self.reader.read_line(&mut answer) {
                Ok(0) => return Err(ClientError::NoAnswer),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(self.timeout))
                }
                Err(e) => return Err(e.into()),
            }
            let response: Response =
                serde_json::from_str(&answer).map_err(ClientError::BadAnswer)?;
            // Only the answer to this request: lines without an id answer a line the server
            // could not parse, which was not ours (a relay's leftovers).
            if response.id == Some(id) {
                return Ok(response);
            }
        }
    }
}
