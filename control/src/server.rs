//! The server end: a Unix socket, a thread accepting connections, a thread per connection
//! answering one JSON line with one JSON line.
//!
//! Whatever a client sends, the server answers with an error line or closes the connection;
//! it never panics and never reads more than [`MAX_REQUEST_BYTES`] for one request.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::handler::DeviceControl;
use crate::protocol::{Envelope, Response, MAX_REQUEST_BYTES};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket path is taken.
    #[error("control socket {0}: already exists (remove it, or pick another path)")]
    Exists(PathBuf),
    /// Binding failed.
    #[error("control socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    /// The accept thread could not start.
    #[error("control socket thread: {0}")]
    Thread(std::io::Error),
}

/// Connections served at once; more are refused (closed at once).
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed (a client that never finishes a
/// line cannot hold its thread forever).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A running control API server; dropping it stops accepting and removes the socket.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// Reads one request line (without its newline); `Ok(None)` at end of stream.
pub(crate) fn read_request_line(
    reader: &mut impl BufRead,
) -> std::io::Result<Option<Result<String, String>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_REQUEST_BYTES).unwrap_or(u64::MAX) + 1;
    reader.take(limit).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST_BYTES {
        return Ok(Some(Err(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes"
        ))));
    }
    Ok(Some(
        String::from_utf8(line)
            .map(|s| s.trim_end().to_string())
            .map_err(|_| "request is not UTF-8".to_string()),
    ))
}

/// Answers one request line.
pub fn answer(control: &DeviceControl, line: &str) -> Response {
    match serde_json::from_str::<Envelope>(line) {
        Ok(envelope) => Response {
            id: envelope.id,
            ..control.handle(&envelope.request)
        },
        Err(e) => Response::error(format!("bad request: {e}")),
    }
}

fn serve_connection(control: &DeviceControl, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let (response, last) = match read_request_line(&mut reader) {
            Ok(None) | Err(_) => return,
            Ok(Some(Ok(line))) if line.is_empty() => continue,
            Ok(Some(Ok(line))) => (answer(control, &line), false),
            Ok(Some(Err(message))) => (Response::error(message), true),
        };
        let mut text = serde_json::to_string(&response)
            .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"response: {e}"}}"#));
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() || last {
            return;
        }
    }
}

impl ApiServer {
    /// Listens on `path` (which must not exist) and serves `control` until dropped.
    pub fn start(path: &Path, control: DeviceControl) -> Result<Self, ServerError> {
        if path.exists() {
            return Err(ServerError::Exists(path.to_path_buf()));
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ServerError::Bind(path.to_path_buf(), e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let live = Arc::new(AtomicUsize::new(0));
        let acceptor = std::thread::Builder::new()
            .name("rmnic-api".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                        live.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!("control API: more than {MAX_CONNECTIONS} connections");
                        continue;
                    }
                    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
                    let control = control.clone();
                    let done = live.clone();
                    let spawned = std::thread::Builder::new()
                        .name("rmnic-api-conn".into())
                        .spawn(move || {
                            serve_connection(&control, stream);
                            done.fetch_sub(1, Ordering::AcqRel);
                        });
                    if let Err(e) = spawned {
                        live.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!("control API: no thread for a connection: {e}");
                    }
                }
            })
            .map_err(ServerError::Thread)?;
        Ok(Self {
            path: path.to_path_buf(),
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the acceptor so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
