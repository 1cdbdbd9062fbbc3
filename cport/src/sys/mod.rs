//! Backends: what turns started operations into kernel work and kernel events into raw
//! completions. Three implement the same small contract: on Linux [`uring`] (io_uring) and
//! [`epoll`] (readiness turned into completions), on Windows `iocp` (the kernel's own
//! completion port). The port above them owns every buffer, orders the
//! operations of each socket, and never lets a backend see a stale token.
//!
//! The contract, for all of them:
//! * [`Driver::push`] is called under the port's table lock, must not block, and must not make
//!   a system call that waits; it may make the operation complete later, in `flush` or `wait`.
//! * every pushed token completes exactly once, as a [`Raw`] from `flush` or `wait`;
//! * [`Driver::cancel`] makes a pushed, not yet completed token complete promptly (with
//!   `-ECANCELED` unless it finished first);
//! * [`Driver::wait`] is called by one thread at a time (the poller); [`Driver::wake`] makes it
//!   return promptly from any thread.
//!
//! [`Driver`] states the whole interface; the port holds a `Box<dyn Driver>` and has no
//! backend-specific branch.

#[cfg(target_os = "linux")]
pub(crate) mod epoll;
#[cfg(windows)]
pub(crate) mod iocp;
#[cfg(all(test, unix))]
pub(crate) mod model;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
#[cfg(target_os = "linux")]
pub(crate) mod wait;

use std::any::Any;
use std::io;
use std::sync::Arc;
use std::time::Instant;

#[cfg(unix)]
pub(crate) use std::os::fd::{OwnedFd as OwnedSock, RawFd as RawSock};
#[cfg(windows)]
pub(crate) use std::os::windows::io::{OwnedSocket as OwnedSock, RawSocket as RawSock};

/// The OS handle of an owned socket (a file descriptor on Linux, a `SOCKET` on Windows).
pub(crate) fn raw_of(s: &OwnedSock) -> RawSock {
    #[cfg(unix)]
    {
        std::os::fd::AsRawFd::as_raw_fd(s)
    }
    #[cfg(windows)]
    {
        std::os::windows::io::AsRawSocket::as_raw_socket(s)
    }
}

/// The OS error code of an aborted operation: `ECANCELED` on Linux, `ERROR_OPERATION_ABORTED`
/// (995, `WSA_OPERATION_ABORTED`) on Windows. A `Raw.res` of `-ABORTED` is an aborted
/// operation on every backend.
#[cfg(unix)]
pub(crate) const ABORTED: i32 = libc::ECANCELED;
/// The OS error code of an aborted operation (see the Linux definition).
#[cfg(windows)]
pub(crate) const ABORTED: i32 = windows_sys::Win32::Foundation::ERROR_OPERATION_ABORTED as i32;

/// The C socket address types of the platform.
#[cfg(unix)]
pub(crate) type CSockAddr = libc::sockaddr;
#[cfg(unix)]
pub(crate) type CSockAddrStorage = libc::sockaddr_storage;
#[cfg(windows)]
pub(crate) type CSockAddr = windows_sys::Win32::Networking::WinSock::SOCKADDR;
#[cfg(windows)]
pub(crate) type CSockAddrStorage = windows_sys::Win32::Networking::WinSock::SOCKADDR_STORAGE;
pub(crate) use socket2::socklen_t as SockLen;

/// One buffer of a gathering or scattering operation: `iovec` on Linux, `WSABUF` on Windows.
#[cfg(unix)]
pub(crate) type IoVec = libc::iovec;
/// One buffer of a gathering or scattering operation: `iovec` on Linux, `WSABUF` on Windows.
#[cfg(windows)]
pub(crate) type IoVec = windows_sys::Win32::Networking::WinSock::WSABUF;

/// An `IoVec` for `len` bytes at `ptr` (on Windows at most `i32::MAX`, so that the byte count
/// fits a `Raw.res`; a stream send is continued by the port, and a receive gets less).
pub(crate) fn iovec(ptr: *const u8, len: usize) -> IoVec {
    #[cfg(unix)]
    {
        libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        }
    }
    #[cfg(windows)]
    {
        windows_sys::Win32::Networking::WinSock::WSABUF {
            len: len.min(i32::MAX as usize) as u32,
            buf: ptr as *mut u8,
        }
    }
}

/// A message operation's header: `msghdr` on Linux; on Windows the arguments of
/// `WSASendTo`/`WSARecvFrom` (or of a gathering `WSASend` when `name` is null).
#[cfg(unix)]
pub(crate) type MsgHdr = libc::msghdr;

/// A message operation's header: the arguments of `WSASendTo`/`WSARecvFrom` (or of a
/// gathering `WSASend` when `name` is null).
#[cfg(windows)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgHdr {
    pub(crate) name: *mut CSockAddr,
    /// In: the room at `name`; out (a receive): the sender address's length.
    pub(crate) namelen: i32,
    pub(crate) bufs: *mut IoVec,
    pub(crate) nbufs: u32,
}

pub(crate) fn msg_new() -> MsgHdr {
    #[cfg(unix)]
    {
        // SAFETY: msghdr is a plain C struct for which all-zero (null pointers, zero
        // lengths) is a valid value.
        unsafe { std::mem::zeroed() }
    }
    #[cfg(windows)]
    {
        MsgHdr {
            name: std::ptr::null_mut(),
            namelen: 0,
            bufs: std::ptr::null_mut(),
            nbufs: 0,
        }
    }
}

/// Points the header at `iov`'s buffers.
pub(crate) fn msg_set_iov(h: &mut MsgHdr, iov: &mut [IoVec]) {
    #[cfg(unix)]
    {
        h.msg_iov = iov.as_mut_ptr();
        h.msg_iovlen = iov.len() as _;
    }
    #[cfg(windows)]
    {
        h.bufs = iov.as_mut_ptr();
        h.nbufs = iov.len() as u32;
    }
}

/// Points the header at an address of `len` bytes.
pub(crate) fn msg_set_name(h: &mut MsgHdr, name: *mut CSockAddr, len: SockLen) {
    #[cfg(unix)]
    {
        h.msg_name = name.cast();
        h.msg_namelen = len;
    }
    #[cfg(windows)]
    {
        h.name = name;
        h.namelen = len;
    }
}

/// The address length the kernel wrote into the header (a receive).
pub(crate) fn msg_namelen(h: &MsgHdr) -> SockLen {
    #[cfg(unix)]
    {
        h.msg_namelen
    }
    #[cfg(windows)]
    {
        h.namelen
    }
}

/// A finished kernel operation: the token it was pushed with and the kernel's result
/// (bytes, a new fd, or a negative OS error code: `-errno` on Linux, `-(WSA error)` on
/// Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    pub(crate) token: u64,
    pub(crate) res: i32,
}

/// The raw arguments of one submission. Every pointer targets memory owned by the
/// operation's `OpData`, which the port keeps alive until the token's completion is reaped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Desc {
    Accept {
        addr: *mut CSockAddrStorage,
        len: *mut SockLen,
        /// Windows: where the backend puts the accepted socket (`AcceptEx` takes a socket
        /// made beforehand; Linux returns the new fd as the result).
        #[cfg(windows)]
        sock: *mut RawSock,
    },
    Connect {
        addr: *const CSockAddr,
        len: SockLen,
    },
    Recv {
        ptr: *mut u8,
        len: usize,
    },
    Send {
        ptr: *const u8,
        len: usize,
    },
    SendMsg {
        msg: *const MsgHdr,
    },
    RecvMsg {
        msg: *mut MsgHdr,
    },
}

/// The one classification of operations. The port keeps receives and sends in per-socket
/// lanes (one of each in flight, completed in start order) and lets accepts and connects run
/// freely; a readiness backend waits on the read side for accepts and receives and on the
/// write side for connects and sends ([`OpKind::reads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Accept,
    Connect,
    Recv,
    Send,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl OpKind {
    /// It waits for something to take (a connection, data) rather than for room to give.
    pub(crate) fn reads(self) -> bool {
        matches!(self, OpKind::Accept | OpKind::Recv)
    }
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl Desc {
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Desc::Accept { .. } => OpKind::Accept,
            Desc::Connect { .. } => OpKind::Connect,
            Desc::Recv { .. } | Desc::RecvMsg { .. } => OpKind::Recv,
            Desc::Send { .. } | Desc::SendMsg { .. } => OpKind::Send,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct OpDesc {
    pub(crate) fd: RawSock,
    pub(crate) desc: Desc,
}

// SAFETY: the pointers in an OpDesc target heap memory owned by the operation's OpData, which
// is not touched by any thread other than through the backend until the operation's raw
// completion has been reaped; handing the description to another thread is therefore sound.
unsafe impl Send for OpDesc {}

/// The backend a port runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// Linux: io_uring if a ring can be set up and supports every operation the port needs,
    /// else epoll (with one warning in the log saying why). Windows: IOCP.
    #[default]
    Auto,
    /// io_uring (Linux), or an error if it is unavailable.
    Uring,
    /// epoll (Linux; readiness turned into completions).
    Epoll,
    /// Windows' own I/O completion port (Windows only).
    Iocp,
}

impl Backend {
    /// The lower-case name (`auto`, `uring`, `epoll`, `iocp`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
            Backend::Iocp => "iocp",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = io::Error;
    fn from_str(s: &str) -> io::Result<Backend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Backend::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "epoll" => Ok(Backend::Epoll),
            "iocp" => Ok(Backend::Iocp),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {other:?} (expected auto, uring, epoll or iocp)"),
            )),
        }
    }
}

/// Whether the port's idle threads all wait in the backend's wait set at once
/// ([`wait::WaitSet`]): yes, unless `CPORT_WAIT=leader` asks for one poller at a time (the
/// design before; kept for A/B measurements, not a public setting).
pub(crate) fn shared_wait_wanted() -> bool {
    std::env::var("CPORT_WAIT").map_or(true, |v| v != "leader")
}

/// A backend's state for one socket, kept in the port's socket entry: opaque to the port,
/// made by [`Driver::new_sock`] and handed back with every call about the socket (epoll: its
/// two sides of pending operations; io_uring: nothing). A readiness backend also needs to
/// find it from the token an event carries: epoll keeps a dispatch index of its own for that
/// (token slot → state, as mio's token and tokio's registration slab), touched only by
/// `register`, `deregister` and event batches.
#[derive(Clone, Default)]
pub(crate) struct SockIo(Option<Arc<dyn Any + Send + Sync>>);

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl SockIo {
    /// No state (a backend that needs none).
    pub(crate) fn none() -> SockIo {
        SockIo(None)
    }

    pub(crate) fn new<T: Any + Send + Sync>(state: T) -> SockIo {
        SockIo(Some(Arc::new(state)))
    }

    /// The state, if it is a `T` (a new reference to it).
    pub(crate) fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.0.clone()?.downcast().ok()
    }
}

/// The interface every backend implements, with the same signatures — the whole of what the
/// port asks of the kernel (io_uring and epoll today; Windows' IOCP next). Tokens are the
/// port's generation-tagged operation tokens; `sock` is the socket's table token.
pub(crate) trait Driver: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// The backend's state for a new socket (`stream`: a stream socket), which the port
    /// keeps in its socket entry and passes back with every call about that socket — the
    /// backend keeps no registry of its own.
    fn new_sock(&self, stream: bool) -> SockIo;

    /// A socket was associated with the port under `sock` (its table token), its state `io`
    /// already in the port's table. After this, operations may be pushed for it.
    fn register(&self, io: &SockIo, sock: u64, fd: RawSock) -> io::Result<()>;

    /// The socket is about to be closed; no operation of it is pending.
    fn deregister(&self, io: &SockIo, sock: u64, fd: RawSock);

    /// Starts an operation of the socket whose state is `io`. Called under the port's table
    /// lock: must not block and must not make a system call that waits. The operation
    /// completes, once, as a [`Raw`] from a later `flush`, `wait`, `wait_shared` or
    /// `try_reap`.
    fn push(&self, io: &SockIo, token: u64, op: OpDesc);

    /// Makes a pushed, not yet completed operation complete promptly (with `-ECANCELED`
    /// unless it finished first). Same rules as `push`.
    fn cancel(&self, io: &SockIo, token: u64);

    /// Submits (io_uring) or attempts (epoll) what was pushed; appends what completed at once.
    fn flush(&self, out: &mut Vec<Raw>);

    /// One poller at a time (`CPORT_WAIT=leader`): submits what was pushed, then waits until
    /// `deadline` (forever with `None`), a [`Driver::wake`] or completions, and appends them.
    /// Does not sleep if something completed already. An `Err` is a kernel failure that is not
    /// part of normal operation (an interrupted or timed-out wait is `Ok` with nothing); the
    /// port retries with a growing pause and shuts down if it persists.
    fn wait(&self, deadline: Option<Instant>, out: &mut Vec<Raw>) -> io::Result<()>;

    /// Every idle thread at once (the default): like `wait`, with any number of threads in
    /// it; the kernel wakes one waiter per event. `alone`: no other thread waits now (take a
    /// batch of events; there is nobody to hand them to). `Ok(true)` if the alarm went off.
    fn wait_shared(
        &self,
        deadline: Option<Instant>,
        alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool>;

    /// What completed by now, without waiting; nothing if a poller is at it (one poller at a
    /// time) — a busy thread's look.
    fn try_reap(&self, out: &mut Vec<Raw>);

    /// Makes a waiter's `wait` or `wait_shared` return promptly (one of them), or the next
    /// one at once.
    fn wake(&self);

    /// Sets the alarm of the wait set to go off at `deadline`, never before (shared waiting
    /// only; with one poller at a time the poller's deadline covers timers).
    fn arm(&self, deadline: Instant);

    /// The kernel runs an operation's follow-up work on the thread that submitted it and
    /// interrupts that thread's blocking calls to do so (io_uring's task work): threads
    /// outside a handler pass should then leave submitting to the workers (`Shared::issue`).
    fn follow_up_on_submitter(&self) -> bool;

    /// The submission hand-off's combiner, for a backend whose follow-up work runs on the
    /// submitter (`follow_up_on_submitter`); `None` otherwise.
    fn combiner(&self) -> Option<&crate::combine::Combiner>;

    /// The faults a test may arm on this backend's system calls (feature
    /// `fault-injection`); `None`: this backend has no hooks.
    #[cfg(feature = "fault-injection")]
    fn faults(&self) -> Option<&crate::fault::Faults> {
        None
    }
}

/// A shared driver is a driver (tests keep a handle on a modelled one while the port uses it).
#[cfg(test)]
impl<D: Driver + ?Sized> Driver for std::sync::Arc<D> {
    fn backend(&self) -> Backend {
        (**self).backend()
    }
    fn new_sock(&self, stream: bool) -> SockIo {
        (**self).new_sock(stream)
    }
    fn register(&self, io: &SockIo, sock: u64, fd: RawSock) -> io::Result<()> {
        (**self).register(io, sock, fd)
    }
    fn deregister(&self, io: &SockIo, sock: u64, fd: RawSock) {
        (**self).deregister(io, sock, fd)
    }
    fn push(&self, io: &SockIo, token: u64, op: OpDesc) {
        (**self).push(io, token, op)
    }
    fn cancel(&self, io: &SockIo, token: u64) {
        (**self).cancel(io, token)
    }
    fn flush(&self, out: &mut Vec<Raw>) {
        (**self).flush(out)
    }
    fn wait(&self, deadline: Option<Instant>, out: &mut Vec<Raw>) -> io::Result<()> {
        (**self).wait(deadline, out)
    }
    fn wait_shared(
        &self,
        deadline: Option<Instant>,
        alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        (**self).wait_shared(deadline, alone, out)
    }
    fn try_reap(&self, out: &mut Vec<Raw>) {
        (**self).try_reap(out)
    }
    fn wake(&self) {
        (**self).wake()
    }
    fn arm(&self, deadline: Instant) {
        (**self).arm(deadline)
    }
    fn follow_up_on_submitter(&self) -> bool {
        (**self).follow_up_on_submitter()
    }
    fn combiner(&self) -> Option<&crate::combine::Combiner> {
        (**self).combiner()
    }
    #[cfg(feature = "fault-injection")]
    fn faults(&self) -> Option<&crate::fault::Faults> {
        (**self).faults()
    }
}

/// Opens the backend asked for; `Auto` falls back to epoll with one warning. With `shared`,
/// every idle thread will wait in [`Driver::wait_shared`] at once (see
/// [`shared_wait_wanted`]); else one poller at a time calls [`Driver::wait`]. `concurrency`
/// is the port's concurrency value (IOCP gives it to the kernel's port too).
#[cfg(target_os = "linux")]
pub(crate) fn open(
    backend: Backend,
    entries: u32,
    shared: bool,
    _concurrency: usize,
) -> io::Result<Box<dyn Driver>> {
    let epoll = || -> io::Result<Box<dyn Driver>> { Ok(Box::new(epoll::Epoll::new()?)) };
    match backend {
        Backend::Uring => Ok(Box::new(uring::Uring::new(entries, shared)?)),
        Backend::Epoll => epoll(),
        Backend::Auto => match uring::Uring::new(entries, shared) {
            Ok(u) => Ok(Box::new(u)),
            Err(e) => {
                tracing::warn!("io_uring unavailable ({e}); falling back to epoll");
                epoll()
            }
        },
        Backend::Iocp => Err(unavailable(backend)),
    }
}

/// Opens the backend asked for: IOCP (`Auto` is IOCP on Windows).
#[cfg(windows)]
pub(crate) fn open(
    backend: Backend,
    _entries: u32,
    _shared: bool,
    concurrency: usize,
) -> io::Result<Box<dyn Driver>> {
    match backend {
        Backend::Auto | Backend::Iocp => Ok(Box::new(iocp::Iocp::new(concurrency)?)),
        Backend::Uring | Backend::Epoll => Err(unavailable(backend)),
    }
}

/// The backend does not exist on this platform.
fn unavailable(backend: Backend) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "the {backend} backend is not available on {}",
            std::env::consts::OS
        ),
    )
}

/// Milliseconds until `deadline` for epoll_wait-style timeouts (rounded up; -1 = forever).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn timeout_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}
