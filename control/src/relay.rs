//! The relay that makes a control API reachable through a serial port: in the emulated host
//! mode rmnic-vmm runs inside a QEMU machine, and that machine's second serial port is a Unix
//! socket on the user's machine (`-chardev socket`). The relay, started by the emulated host's
//! init, reads request lines from the port, asks the local control socket, and writes each
//! response line back (docs/vmm.md, "Control API").
//!
//! One request at a time: the serial line is one stream, so the outside client must wait for a
//! response before the next request (the `Client` does).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use crate::client::Client;
use crate::protocol::{Envelope, Response};
use crate::server::read_request_line;

/// Puts the terminal `port` into raw mode: no echo, no line editing, no CR/LF translation, 8
/// bits, so JSON lines pass unchanged.
fn make_raw(port: &File) -> std::io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open descriptor and a valid termios pointer.
    if unsafe { libc::tcgetattr(port.as_raw_fd(), &mut termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a valid termios.
    unsafe { libc::cfmakeraw(&mut termios) };
    // SAFETY: a valid termios; the speed constant is valid.
    unsafe {
        libc::cfsetspeed(&mut termios, libc::B115200);
    }
    // SAFETY: a valid open descriptor and a valid termios pointer.
    if unsafe { libc::tcsetattr(port.as_raw_fd(), libc::TCSANOW, &termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn forward(socket: &Path, line: &str) -> Response {
    let envelope = match serde_json::from_str::<Envelope>(line) {
        Ok(envelope) => envelope,
        Err(e) => return Response::error(format!("bad request: {e}")),
    };
    // The VMM may not be up yet (or already gone): say so rather than wait.
    let response = Client::connect(socket)
        .and_then(|mut c| c.request(&envelope.request))
        .unwrap_or_else(|e| Response::error(format!("relay: {e}")));
    Response {
        id: envelope.id,
        ..response
    }
}

/// Relays between the serial `port` and the control `socket` until the port closes.
pub fn run(port: &Path, socket: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(port)?;
    if let Err(e) = make_raw(&file) {
        // Not a terminal (a pipe or file in tests): relay anyway.
        tracing::debug!("relay: {}: not made raw: {e}", port.display());
    }
    let mut writer = file.try_clone()?;
    let mut reader = BufReader::new(file);
    loop {
        let response = match read_request_line(&mut reader)? {
            None => {
                // A serial port reads end-of-file while nobody is connected on the far side
                // with some QEMU versions: wait, don't spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Some(Ok(line)) if line.is_empty() => continue,
            Some(Ok(line)) => forward(socket, &line),
            Some(Err(message)) => {
                // The rest of an over-long line is not a request: drop it up to its newline.
                let mut rest = Vec::new();
                std::io::BufRead::read_until(&mut reader, b'\n', &mut rest)?;
                Response::error(message)
            }
        };
        let mut text = serde_json::to_string(&response)
            .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"response: {e}"}}"#));
        text.push('\n');
        writer.write_all(text.as_bytes())?;
        writer.flush()?;
    }
}
