//! The client end (`rmnic-vmm ctl`): one connection, one request line, one response line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{Request, Response};

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
}

/// A connection to a control API.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the server at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and waits for its response.
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_string(request).map_err(ClientError::BadAnswer)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::NoAnswer);
        }
        serde_json::from_str(&answer).map_err(ClientError::BadAnswer)
    }
}
