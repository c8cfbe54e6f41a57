//! Other processes for the segment checks. An [`Agent`] is a forked child that opens a device
//! context of its own after the fork (never the test process's) and does what the test process
//! asks over a pair of pipes, one request at a time, so a check reads as straight-line code.
//!
//! Every wait is bounded on both sides: the test process gives up on a reply after
//! [`REPLY_TIMEOUT`] (the check fails, the agent is killed), an agent exits when no request
//! comes for [`IDLE_TIMEOUT`] or the test process closes its end.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rmnic_abi::{command, opcode, Address, Attachment, Command, Context};

/// How long the test process waits for an agent's reply (a device command takes milliseconds;
/// the driver's own limit is [`rmnic_abi::EXECUTE_TIMEOUT_MS`]).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an agent waits for its next request before it gives up and exits.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long [`Agent::exit`] waits for the agent to be gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status of an agent that could not set itself up.
const STATUS_SETUP_FAILED: i32 = 2;
/// Exit status of an agent whose test process went away or fell silent.
const STATUS_ABANDONED: i32 = 3;

/// What an agent is asked to do.
#[derive(Clone, Copy, Debug)]
enum Request {
    /// `Context::export`.
    Export {
        va: u64,
        length: u64,
        writable: bool,
        mode: u32,
    },
    /// `Context::remove_segment`.
    Remove { segid: u64 },
    /// `Context::attach`.
    Attach { segid: u64, writable: bool },
    /// `Context::detach`.
    Detach { slot: u32 },
    /// `Context::execute`.
    Run(Command),
    /// FNV-1a of `[addr, addr + len)` of the agent's memory.
    Hash { addr: u64, len: u64 },
    /// The u64 at `addr` in the agent's memory.
    Peek { addr: u64 },
    /// Close the context (the process lives on).
    Close,
    /// Exit with status 0, context and attachments as they are; no reply.
    Exit,
}

const WORDS: usize = 7;

impl Request {
    fn encode(self) -> [u64; WORDS] {
        match self {
            Self::Export {
                va,
                length,
                writable,
                mode,
            } => [1, va, length, u64::from(writable), u64::from(mode), 0, 0],
            Self::Remove { segid } => [2, segid, 0, 0, 0, 0, 0],
            Self::Attach { segid, writable } => [3, segid, u64::from(writable), 0, 0, 0, 0],
            Self::Detach { slot } => [4, u64::from(slot), 0, 0, 0, 0, 0],
            Self::Run(c) => [
                5 | u64::from(c.opcode) << 8 | u64::from(c.flags) << 16,
                c.addr0,
                c.addr1,
                c.length,
                c.operand0,
                c.operand1,
                0,
            ],
            Self::Hash { addr, len } => [6, addr, len, 0, 0, 0, 0],
            Self::Peek { addr } => [7, addr, 0, 0, 0, 0, 0],
            Self::Close => [8, 0, 0, 0, 0, 0, 0],
            Self::Exit => [9, 0, 0, 0, 0, 0, 0],
        }
    }

    fn decode(w: [u64; WORDS]) -> Option<Self> {
        // CAST: the fields were widened from these types by `encode`.
        Some(match w[0] & 0xff {
            1 => Self::Export {
                va: w[1],
                length: w[2],
                writable: w[3] != 0,
                mode: w[4] as u32,
            },
            2 => Self::Remove { segid: w[1] },
            3 => Self::Attach {
                segid: w[1],
                writable: w[2] != 0,
            },
            4 => Self::Detach { slot: w[1] as u32 },
            5 => Self::Run(Command {
                opcode: (w[0] >> 8) as u8,
                flags: (w[0] >> 16) as u8,
                addr0: w[1],
                addr1: w[2],
                length: w[3],
                operand0: w[4],
                operand1: w[5],
                ..Command::default()
            }),
            6 => Self::Hash {
                addr: w[1],
                len: w[2],
            },
            7 => Self::Peek { addr: w[1] },
            8 => Self::Close,
            9 => Self::Exit,
            _ => return None,
        })
    }
}

/// What a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done, with up to two values: the segid (export), slot and length (attach), the
    /// completion's result (a command), the hash or the word (hash, peek).
    Done(u64, u64),
    /// The command completed with a status other than OK.
    Status {
        /// The completion's status.
        status: u32,
        /// The completion's fault address.
        fault_va: u64,
    },
    /// The ioctl failed with this errno.
    Errno(i32),
}

impl Reply {
    /// An ioctl's result in this process: its value, or its errno.
    pub fn of_ioctl(result: Result<u64, rmnic_abi::Error>) -> Self {
        result.map_or_else(Self::of_error, |value| Self::Done(value, 0))
    }

    /// An attach's result in this process: the slot and the length, or the errno.
    pub fn of_attach(result: Result<Attachment, rmnic_abi::Error>) -> Self {
        result.map_or_else(Self::of_error, |a| Self::Done(u64::from(a.slot), a.length))
    }

    /// A command's result in this process: its completion's result or status, or the errno.
    pub fn of_command(
        result: Result<Result<u64, rmnic_abi::CommandError>, rmnic_abi::Error>,
    ) -> Self {
        match result {
            Ok(Ok(value)) => Self::Done(value, 0),
            Ok(Err(e)) => Self::Status {
                status: e.status,
                fault_va: e.fault_va,
            },
            Err(e) => Self::of_error(e),
        }
    }

    fn of_error(error: rmnic_abi::Error) -> Self {
        Self::Errno(error.errno().unwrap_or(libc::EIO))
    }

    fn encode(self) -> [u64; 3] {
        match self {
            Self::Done(a, b) => [0, a, b],
            Self::Status { status, fault_va } => [1, u64::from(status), fault_va],
            // CAST: errnos are small and positive.
            Self::Errno(errno) => [2, errno as u64, 0],
        }
    }

    fn decode(w: [u64; 3]) -> Option<Self> {
        // CAST: widened from these types by `encode`.
        Some(match w[0] {
            0 => Self::Done(w[1], w[2]),
            1 => Self::Status {
                status: w[1] as u32,
                fault_va: w[2],
            },
            2 => Self::Errno(w[1] as i32),
            _ => return None,
        })
    }

    /// The device status: OK when done, `u32::MAX` when an ioctl failed.
    pub fn status(&self) -> u32 {
        match self {
            Self::Done(..) => rmnic_abi::status::OK,
            Self::Status { status, .. } => *status,
            Self::Errno(_) => u32::MAX,
        }
    }

    /// The errno, if an ioctl failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Errno(errno) => Some(*errno),
            _ => None,
        }
    }

    /// The first value, if done.
    pub fn value(&self) -> Option<u64> {
        match self {
            Self::Done(a, _) => Some(*a),
            _ => None,
        }
    }

    /// The attachment, if this is an attach that succeeded.
    pub fn attachment(&self) -> Option<Attachment> {
        match self {
            // CAST: the slot was widened from u32.
            Self::Done(slot, length) => Some(Attachment {
                slot: *slot as u32,
                length: *length,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done(a, b) => write!(f, "done ({a:#x}, {b:#x})"),
            Self::Status { status, fault_va } => write!(
                f,
                "status {} ({status}) at {fault_va:#x}",
                rmnic_abi::status_name(*status)
            ),
            Self::Errno(errno) => write!(f, "{}", errno_name(*errno)),
        }
    }
}

/// The symbol of the errnos the segment ioctls return, else the number.
fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EIO => "EIO".into(),
        libc::EBADF => "EBADF".into(),
        libc::EACCES => "EACCES".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::ENOTTY => "ENOTTY".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        other => format!("errno {other}"),
    }
}

/// FNV-1a, 64 bits: enough to compare a copied range without sending it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Credentials an agent takes before it opens its context.
#[derive(Clone, Copy, Debug)]
pub struct Creds {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id (no supplementary groups).
    pub gid: u32,
}

/// A forked child serving requests; killed and reaped on drop if still there.
pub struct Agent {
    pid: i32,
    requests: OwnedFd,
    replies: OwnedFd,
    exited: bool,
}

impl Agent {
    /// An agent running as root with a context of its own.
    pub fn spawn() -> Result<Self> {
        Self::spawn_with(None, true)
    }

    /// An agent that takes `creds` (setgroups, setgid, then setuid) before it opens its
    /// context: the driver sees them whether it checks the opener's or the caller's.
    pub fn spawn_as(creds: Creds) -> Result<Self> {
        Self::spawn_with(Some(creds), true)
    }

    /// An agent with no context: a fork child that only keeps its copy of the memory, for
    /// [`Agent::peek`].
    pub fn spawn_without_context() -> Result<Self> {
        Self::spawn_with(None, false)
    }

    fn spawn_with(creds: Option<Creds>, open_context: bool) -> Result<Self> {
        let (request_read, request_write) = pipe()?;
        let (reply_read, reply_write) = pipe()?;
        let (child_in, child_out) = (request_read.as_raw_fd(), reply_write.as_raw_fd());
        // SAFETY: the child runs `serve`, which returns only into `_exit`. The test process
        // forks from its main thread; the only other thread is the watchdog, asleep and
        // holding no lock the child needs.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork failed: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // Keep only stdio and this agent's two pipe ends: the test process's context and
            // other agents' pipes stay out of this process (a held context file would keep
            // an exporter's segments alive; held pipe ends would hide an EOF).
            close_all_but(&[child_in, child_out]);
            let status = serve(child_in, child_out, creds, open_context);
            // SAFETY: ends the child without running the test process's destructors; the
            // `OwnedFd`s above are never dropped here (their numbers were closed or kept).
            unsafe { libc::_exit(status) };
        }
        drop((request_read, reply_write));
        let mut agent = Self {
            pid,
            requests: request_write,
            replies: reply_read,
            exited: false,
        };
        match agent.receive() {
            Ok(Reply::Done(..)) => Ok(agent),
            Ok(other) => bail!("agent {pid} could not set up: {other:?} (see its stderr)"),
            Err(e) => Err(e.context(format!("agent {pid} did not start"))),
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn request(&mut self, request: Request) -> Result<Reply> {
        let words = request.encode();
        let mut bytes = Vec::with_capacity(WORDS * 8);
        words
            .iter()
            .for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
        write_all(self.requests.as_raw_fd(), &bytes)
            .with_context(|| format!("agent {}: sending {request:?}", self.pid))?;
        self.receive()
            .with_context(|| format!("agent {}: no reply to {request:?}", self.pid))
    }

    fn receive(&mut self) -> Result<Reply> {
        let mut bytes = [0u8; 24];
        read_exact(self.replies.as_raw_fd(), &mut bytes, REPLY_TIMEOUT)?;
        let words = words_of::<3>(&bytes);
        Reply::decode(words).with_context(|| format!("malformed reply {words:?}"))
    }

    /// Exports `[va, va + length)` of the agent's memory; `Done(segid, 0)`.
    pub fn export(&mut self, va: u64, length: u64, writable: bool, mode: u32) -> Result<Reply> {
        self.request(Request::Export {
            va,
            length,
            writable,
            mode,
        })
    }

    /// Removes a segment.
    pub fn remove_segment(&mut self, segid: u64) -> Result<Reply> {
        self.request(Request::Remove { segid })
    }

    /// Attaches a segment; [`Reply::attachment`] on success.
    pub fn attach(&mut self, segid: u64, writable: bool) -> Result<Reply> {
        self.request(Request::Attach { segid, writable })
    }

    /// Detaches a slot.
    pub fn detach(&mut self, slot: u32) -> Result<Reply> {
        self.request(Request::Detach { slot })
    }

    /// Runs one device command; `Done(result, 0)` when it completed OK.
    pub fn run(&mut self, command: Command) -> Result<Reply> {
        self.request(Request::Run(command))
    }

    /// Device READ64 of a segment address.
    pub fn read64_seg(&mut self, addr: u64) -> Result<Reply> {
        self.run(command(
            opcode::READ64,
            Address::Segment(addr),
            Address::Local(0),
        ))
    }

    /// Device WRITE64 of `value` to a segment address.
    pub fn write64_seg(&mut self, addr: u64, value: u64) -> Result<Reply> {
        self.run(Command {
            operand0: value,
            ..command(opcode::WRITE64, Address::Segment(addr), Address::Local(0))
        })
    }

    /// FNV-1a of `[addr, addr + len)` of the agent's memory (a mapping the test process made
    /// before it forked the agent).
    pub fn hash(&mut self, addr: u64, len: u64) -> Result<u64> {
        match self.request(Request::Hash { addr, len })? {
            Reply::Done(h, _) => Ok(h),
            other => bail!("agent {}: hash answered {other:?}", self.pid),
        }
    }

    /// The u64 at `addr` of the agent's memory (a mapping made before the fork).
    pub fn peek(&mut self, addr: u64) -> Result<u64> {
        match self.request(Request::Peek { addr })? {
            Reply::Done(v, _) => Ok(v),
            other => bail!("agent {}: peek answered {other:?}", self.pid),
        }
    }

    /// Closes the agent's context; the process lives on.
    pub fn close_context(&mut self) -> Result<Reply> {
        self.request(Request::Close)
    }

    /// Tells the agent to exit as it is (context open, attachments in place) and reaps it:
    /// its exit status, or 128 + the signal that ended it.
    pub fn exit(&mut self) -> Result<i32> {
        let mut bytes = Vec::with_capacity(WORDS * 8);
        Request::Exit
            .encode()
            .iter()
            .for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
        write_all(self.requests.as_raw_fd(), &bytes)
            .with_context(|| format!("agent {}: sending exit", self.pid))?;
        let status = reap(self.pid, EXIT_TIMEOUT);
        self.exited = status.is_ok();
        status.with_context(|| format!("agent {} did not exit", self.pid))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.exited {
            // SAFETY: signalling our own child, not yet reaped (its pid is still ours).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            // A child stuck in the kernel may not die at once; give up rather than hang.
            let _ = reap(self.pid, EXIT_TIMEOUT);
        }
    }
}

/// Waits up to `timeout` for child `pid` to end: its exit status, or 128 + the signal.
fn reap(pid: i32, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut wstatus = 0;
        // SAFETY: polling our own child into a local.
        let rc = unsafe { libc::waitpid(pid, &mut wstatus, libc::WNOHANG) };
        if rc == pid {
            return Ok(if libc::WIFEXITED(wstatus) {
                libc::WEXITSTATUS(wstatus)
            } else {
                128 + libc::WTERMSIG(wstatus)
            });
        }
        if rc < 0 {
            bail!("waitpid({pid}): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            bail!("process {pid} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The agent's side: set up, say so, then answer requests until told to exit, the test
/// process closes its end, or it stays silent for [`IDLE_TIMEOUT`]. Returns the exit status.
fn serve(requests: RawFd, replies: RawFd, creds: Option<Creds>, open_context: bool) -> i32 {
    let setup = (|| -> Result<Option<Context>> {
        if let Some(creds) = creds {
            drop_privileges(creds)?;
        }
        Ok(if open_context {
            Some(Context::open()?)
        } else {
            None
        })
    })();
    let mut dev = match setup {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("rmnic-guest: segments: agent setup failed: {e:#}");
            let errno = e
                .downcast_ref::<rmnic_abi::Error>()
                .and_then(rmnic_abi::Error::errno)
                .unwrap_or(libc::EIO);
            let _ = send_reply(replies, Reply::Errno(errno));
            return STATUS_SETUP_FAILED;
        }
    };
    if send_reply(replies, Reply::Done(0, 0)).is_err() {
        return STATUS_ABANDONED;
    }
    loop {
        let mut bytes = [0u8; WORDS * 8];
        if read_exact(requests, &mut bytes, IDLE_TIMEOUT).is_err() {
            return STATUS_ABANDONED;
        }
        let Some(request) = Request::decode(words_of::<WORDS>(&bytes)) else {
            return STATUS_ABANDONED;
        };
        let reply = match request {
            Request::Exit => {
                // Leave the context open: the kernel closes it in do_exit, after the mm is
                // gone, which is the order an exiting exporter or importer meets.
                std::mem::forget(dev);
                return 0;
            }
            Request::Close => {
                dev = None;
                Reply::Done(0, 0)
            }
            Request::Hash { addr, len } => {
                // SAFETY: the test process names a range of a mapping it made before forking
                // this agent, so it is mapped here too, and readable.
                let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
                Reply::Done(fnv1a(bytes), 0)
            }
            Request::Peek { addr } => Reply::Done(crate::scenarios::peek(addr), 0),
            _ => match &dev {
                Some(dev) => with_context(dev, request),
                None => Reply::Errno(libc::EBADF),
            },
        };
        if send_reply(replies, reply).is_err() {
            return STATUS_ABANDONED;
        }
    }
}

/// Runs a request that needs the context.
fn with_context(dev: &Context, request: Request) -> Reply {
    let done = |r: Result<(), rmnic_abi::Error>| Reply::of_ioctl(r.map(|()| 0));
    match request {
        Request::Export {
            va,
            length,
            writable,
            mode,
        } => Reply::of_ioctl(dev.export(va, length, writable, mode)),
        Request::Remove { segid } => done(dev.remove_segment(segid)),
        Request::Attach { segid, writable } => Reply::of_attach(dev.attach(segid, writable)),
        Request::Detach { slot } => done(dev.detach(slot)),
        Request::Run(cmd) => Reply::of_command(dev.execute(cmd).map(|r| r.map(|c| c.result))),
        Request::Hash { .. } | Request::Peek { .. } | Request::Close | Request::Exit => {
            Reply::Errno(libc::EINVAL)
        }
    }
}

/// setgroups (none), setgid, setuid: in that order, since each needs the privilege the next
/// one drops.
fn drop_privileges(creds: Creds) -> Result<()> {
    // SAFETY: plain credential syscalls on this process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            bail!("setgroups: {}", std::io::Error::last_os_error());
        }
        if libc::setgid(creds.gid) != 0 {
            bail!("setgid({}): {}", creds.gid, std::io::Error::last_os_error());
        }
        if libc::setuid(creds.uid) != 0 {
            bail!("setuid({}): {}", creds.uid, std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Closes every file descriptor above stdio except `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut first = 3;
    for fd in keep.into_iter().chain([RawFd::MAX]) {
        if fd > first {
            // CAST: both ends are non-negative.
            let last = if fd == RawFd::MAX {
                u32::MAX
            } else {
                (fd - 1) as u32
            };
            // SAFETY: closes descriptors this process owns; `keep`'s are outside the range.
            unsafe { libc::syscall(libc::SYS_close_range, first as u32, last, 0u32) };
        }
        first = fd.saturating_add(1);
    }
}

/// A pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a local array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn send_reply(fd: RawFd, reply: Reply) -> Result<()> {
    let mut bytes = Vec::with_capacity(24);
    reply
        .encode()
        .iter()
        .for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
    write_all(fd, &bytes)
}

fn words_of<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut words = [0u64; N];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice to a descriptor we own.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("write: {err}");
        }
        // CAST: non-negative, at most `bytes.len()`.
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Fills `buf` from `fd`, giving up after `timeout` in all or at end of file.
fn read_exact(fd: RawFd, buf: &mut [u8], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out after {timeout:?}");
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // CAST: at most the timeout, in milliseconds, well below i32::MAX.
        let ms = left.as_millis().clamp(1, 60_000) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {err}");
        }
        if rc == 0 {
            continue;
        }
        // SAFETY: reads into the unfilled tail of a live buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("read: {err}");
        }
        if n == 0 {
            bail!("the other process closed the pipe (exited?)");
        }
        // CAST: positive, at most the room left.
        got += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_survive_encoding() {
        let cmd = Command {
            opcode: opcode::CAS,
            flags: rmnic_abi::abi::CMD_FLAG_SEGMENT_ADDR0,
            addr0: rmnic_abi::segment_address(7, 0x10),
            operand0: 1,
            operand1: 2,
            ..Command::default()
        };
        match Request::decode(Request::Run(cmd).encode()) {
            Some(Request::Run(back)) => assert_eq!(back, cmd),
            other => panic!("{other:?}"),
        }
        match Request::decode(
            Request::Export {
                va: 0x1000,
                length: 0x2000,
                writable: true,
                mode: 0o604,
            }
            .encode(),
        ) {
            Some(Request::Export {
                va: 0x1000,
                length: 0x2000,
                writable: true,
                mode: 0o604,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_survive_encoding() {
        for reply in [
            Reply::Done(3, 4096),
            Reply::Status {
                status: rmnic_abi::status::SEGMENT_INVALID,
                fault_va: rmnic_abi::segment_address(1, 8),
            },
            Reply::Errno(libc::EACCES),
        ] {
            assert_eq!(Reply::decode(reply.encode()), Some(reply));
        }
    }

    #[test]
    fn an_agent_answers_and_exits() {
        let buf = rmnic_guest::Mapping::new(rmnic_guest::PAGE, false).expect("mmap");
        buf.write_u64(8, 0x5e9);
        let mut agent = Agent::spawn_without_context().expect("spawn");
        assert_eq!(agent.peek(buf.addr() + 8).expect("peek"), 0x5e9);
        assert_eq!(
            agent.hash(buf.addr(), 4096).expect("hash"),
            fnv1a(buf.bytes())
        );
        // No context: requests that need one fail with EBADF.
        assert_eq!(agent.detach(0).expect("detach"), Reply::Errno(libc::EBADF));
        assert_eq!(agent.exit().expect("exit"), 0);
    }
}
