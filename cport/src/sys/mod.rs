//! Backends: what turns started operations into kernel work and kernel events into raw
//! completions. Two implement the same small contract: [`uring`] (io_uring) and [`epoll`]
//! (readiness turned into completions). The port above them owns every buffer, orders the
//! operations of each socket, and never lets a backend see a stale token.
//!
//! The contract, for both:
//! * [`Driver::push`] is called under the port's table lock, must not block, and must not make
//!   a system call that waits; it may make the operation complete later, in `flush` or `wait`.
//! * every pushed token completes exactly once, as a [`Raw`] from `flush` or `wait`;
//! * [`Driver::cancel`] makes a pushed, not yet completed token complete promptly (with
//!   `-ECANCELED` unless it finished first);
//! * [`Driver::wait`] is called by one thread at a time (the poller); [`Driver::wake`] makes it
//!   return promptly from any thread.

pub(crate) mod epoll;
pub(crate) mod uring;
pub(crate) mod wait;

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// A finished kernel operation: the token it was pushed with and the kernel's result
/// (bytes, a new fd, or a negative errno).
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
        addr: *mut libc::sockaddr_storage,
        len: *mut libc::socklen_t,
    },
    Connect {
        addr: *const libc::sockaddr,
        len: libc::socklen_t,
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
        msg: *const libc::msghdr,
    },
    RecvMsg {
        msg: *mut libc::msghdr,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct OpDesc {
    pub(crate) fd: RawFd,
    pub(crate) desc: Desc,
}

// SAFETY: the pointers in an OpDesc target heap memory owned by the operation's OpData, which
// is not touched by any thread other than through the backend until the operation's raw
// completion has been reaped; handing the description to another thread is therefore sound.
unsafe impl Send for OpDesc {}

/// The backend a port runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// io_uring if a ring can be set up and supports every operation the port needs, else
    /// epoll (with one warning in the log saying why).
    #[default]
    Auto,
    /// io_uring, or an error if it is unavailable.
    Uring,
    /// epoll (readiness turned into completions).
    Epoll,
}

impl Backend {
    /// The lower-case name (`auto`, `uring`, `epoll`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
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
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {other:?} (expected auto, uring or epoll)"),
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

pub(crate) enum Driver {
    Uring(uring::Uring),
    Epoll(epoll::Epoll),
}

impl Driver {
    /// Opens the backend asked for; `Auto` falls back to epoll with one warning. With
    /// `shared`, every idle thread will wait in [`Driver::wait_shared`] at once (see
    /// [`shared_wait_wanted`]); else one poller at a time calls [`Driver::wait`].
    pub(crate) fn open(backend: Backend, entries: u32, shared: bool) -> io::Result<Driver> {
        match backend {
            Backend::Uring => uring::Uring::new(entries, shared).map(Driver::Uring),
            Backend::Epoll => epoll::Epoll::new().map(Driver::Epoll),
            Backend::Auto => match uring::Uring::new(entries, shared) {
                Ok(u) => Ok(Driver::Uring(u)),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); falling back to epoll");
                    epoll::Epoll::new().map(Driver::Epoll)
                }
            },
        }
    }

    /// Waits, with any number of threads in it at once, until `deadline`, a wake-up or an
    /// event (the kernel wakes one waiter per event); submits or attempts what was started
    /// first, and returns at once if that completed something. True if the alarm went off.
    /// `alone`: no other thread waits now (take a batch of events, there is nobody to hand
    /// them to).
    pub(crate) fn wait_shared(
        &self,
        deadline: Option<Instant>,
        alone: bool,
        out: &mut Vec<Raw>,
    ) -> bool {
        match self {
            Driver::Uring(u) => u.wait_shared(deadline, out),
            Driver::Epoll(e) => e.wait_shared(deadline, false, alone, out),
        }
    }

    /// Sets the alarm of the wait set to go off at `deadline` (shared waiting only).
    pub(crate) fn arm(&self, deadline: Instant) {
        match self {
            Driver::Uring(u) => u.arm(deadline),
            Driver::Epoll(e) => e.arm(deadline),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::Uring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// A socket was associated with the port under `sock` (its table token); `stream`
    /// says it is a stream socket.
    pub(crate) fn register(&self, sock: u64, fd: RawFd, stream: bool) -> io::Result<()> {
        match self {
            Driver::Uring(_) => Ok(()),
            Driver::Epoll(e) => e.register(sock, fd, stream),
        }
    }

    /// The socket is about to be closed; no operation of it is pending.
    pub(crate) fn deregister(&self, sock: u64, fd: RawFd) {
        match self {
            Driver::Uring(_) => {}
            Driver::Epoll(e) => e.deregister(sock, fd),
        }
    }

    pub(crate) fn push(&self, token: u64, sock: u64, op: OpDesc) {
        match self {
            Driver::Uring(u) => u.push(token, op),
            Driver::Epoll(e) => e.push(token, sock, op),
        }
    }

    pub(crate) fn cancel(&self, token: u64, sock: u64) {
        match self {
            Driver::Uring(u) => u.cancel(token),
            Driver::Epoll(e) => e.cancel(token, sock),
        }
    }

    pub(crate) fn flush(&self, out: &mut Vec<Raw>) {
        match self {
            Driver::Uring(u) => u.flush(),
            Driver::Epoll(e) => e.flush(out),
        }
    }

    pub(crate) fn wait(&self, deadline: Option<Instant>, out: &mut Vec<Raw>) {
        match self {
            Driver::Uring(u) => u.wait(deadline, out),
            Driver::Epoll(e) => e.wait(deadline, out),
        }
    }

    /// What completed by now, without waiting; nothing if the poller is at it.
    pub(crate) fn try_reap(&self, out: &mut Vec<Raw>) {
        match self {
            Driver::Uring(u) => u.try_reap(out),
            Driver::Epoll(e) => e.try_reap(out),
        }
    }

    pub(crate) fn wake(&self) {
        match self {
            Driver::Uring(u) => u.wake(),
            Driver::Epoll(e) => e.wake(),
        }
    }
}

/// Milliseconds until `deadline` for epoll_wait-style timeouts (rounded up; -1 = forever).
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
