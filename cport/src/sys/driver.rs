//! The contract every backend implements ([`Driver`]) and the plain data that crosses it:
//! raw descriptions of operations ([`OpDesc`]) going down, raw results ([`Raw`]) coming up.

use std::io;
use std::time::Instant;

use super::os::{CSockAddr, CSockAddrStorage, MsgHdr, RawSock, SockLen};

/// A finished kernel operation: the token it was pushed with and the kernel's result
/// (bytes, a new fd, or a negative OS error code: `-errno` on Linux, `-(WSA error)` on
/// Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    pub(crate) token: u64,
    pub(crate) res: i32,
    /// The pool buffer a pooled receive filled (`Desc::RecvPool`), whatever `res` says: the
    /// port owns it from here.
    pub(crate) buf: Option<u16>,
}

impl Raw {
    /// A result without a pool buffer.
    pub(crate) fn new(token: u64, res: i32) -> Raw {
        Raw {
            token,
            res,
            buf: None,
        }
    }
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
    /// A receive into a buffer of `pool`, taken only when data is there (io_uring: the
    /// kernel picks it from the pool's provided-buffer ring; epoll: taken when the socket is
    /// readable; IOCP: taken at issue). No buffer free: completes with `-NO_BUFFER`.
    RecvPool {
        pool: *const super::bufring::PoolMem,
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
            Desc::Recv { .. } | Desc::RecvPool { .. } | Desc::RecvMsg { .. } => OpKind::Recv,
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

/// The interface every backend implements — the whole of what the port asks of the kernel.
/// Tokens are the port's generation-tagged operation tokens; `sock` is the socket's table
/// token.
///
/// The contract, for every backend:
/// * [`Driver::push`] is called under the port's table lock, must not block, and must not
///   make a system call that waits; the operation completes later, in `flush`, `wait` or
///   `try_reap`;
/// * every pushed token completes exactly once, as a [`Raw`];
/// * [`Driver::cancel`] makes a pushed, not yet completed token complete promptly (aborted
///   unless it finished first);
/// * any number of threads may be in [`Driver::wait`] at once, and an event (a completion, a
///   [`Driver::wake`], the alarm) makes at least one of them return — one, not all, as
///   epoll's exclusive wake-up and IOCP's own queue do.
pub(crate) trait Driver: Send + Sync {
    /// The backend's state for one socket, which the port keeps in its socket entry and
    /// hands back with every call about that socket, so the backend keeps no registry of
    /// its own for `push` and `cancel` (epoll: the socket's two sides of pending operations;
    /// IOCP: its operations in flight; io_uring: nothing).
    type Sock: Clone + Send + Sync;

    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// The state for a new socket (`stream`: a stream socket).
    fn new_sock(&self, stream: bool) -> Self::Sock;

    /// A socket was associated with the port under `sock` (its table token), its state `io`
    /// already in the port's table. After this, operations may be pushed for it.
    fn register(&self, io: &Self::Sock, sock: u64, fd: RawSock) -> io::Result<()>;

    /// The socket is about to be closed; no operation of it is pending.
    fn deregister(&self, io: &Self::Sock, sock: u64, fd: RawSock);

    /// Starts an operation of the socket whose state is `io`. Called under the port's table
    /// lock: must not block and must not make a system call that waits.
    fn push(&self, io: &Self::Sock, token: u64, op: OpDesc);

    /// Makes a pushed, not yet completed operation complete promptly (aborted unless it
    /// finished first). Same rules as `push`.
    fn cancel(&self, io: &Self::Sock, token: u64);

    /// Submits (io_uring) or attempts (epoll) what was pushed; appends what completed at once.
    fn flush(&self, out: &mut Vec<Raw>);

    /// Submits what was pushed, then, unless something completed already, waits until
    /// `deadline` (forever with `None`), a [`Driver::wake`], the alarm or completions, and
    /// appends what completed. Any number of threads wait here at once; the kernel wakes
    /// one per event. `alone`: no other thread waits now (take a batch of events; there is
    /// nobody to hand them to). `Ok(true)` if the alarm went off. An `Err` is a kernel
    /// failure that is not part of normal operation (an interrupted or timed-out wait is
    /// `Ok` with nothing); the port retries with a growing pause and shuts down if it
    /// persists.
    fn wait(&self, deadline: Option<Instant>, alone: bool, out: &mut Vec<Raw>) -> io::Result<bool>;

    /// What completed by now, without waiting — a busy thread's look.
    fn try_reap(&self, out: &mut Vec<Raw>);

    /// Makes one waiter's `wait` return promptly, or the next one at once.
    fn wake(&self);

    /// Sets the alarm of the wait set to go off at `deadline`, never before.
    fn arm(&self, deadline: Instant);

    /// The kernel runs an operation's follow-up work on the thread that submitted it and
    /// interrupts that thread's blocking calls to do so (io_uring's task work): threads
    /// outside a handler pass should then leave submitting to the workers (`PortInner::issue`).
    fn follow_up_on_submitter(&self) -> bool;

    /// The submission hand-off's combiner, for a backend whose follow-up work runs on the
    /// submitter (`follow_up_on_submitter`); `None` otherwise.
    fn combiner(&self) -> Option<&crate::combine::Combiner>;

    /// A new buffer pool: io_uring registers its provided-buffer ring (and says whether the
    /// pool must be one, `Driver::pool_ring`); the others keep a free list.
    fn register_pool(&self, _pool: &super::bufring::PoolMem) -> io::Result<()> {
        Ok(())
    }

    /// Pools of this backend lend their buffers to the kernel through a ring.
    fn pool_ring(&self) -> bool {
        false
    }

    /// The faults a test may arm on this backend's system calls (feature
    /// `fault-injection`); `None`: this backend has no hooks.
    #[cfg(feature = "fault-injection")]
    fn faults(&self) -> Option<&crate::fault::Faults> {
        None
    }
}
