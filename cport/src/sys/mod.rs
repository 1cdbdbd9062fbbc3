//! Backends: what turns started operations into kernel work and kernel events into raw
//! completions. Three implement the same small contract ([`Driver`]): on Linux `uring`
//! (io_uring) and `epoll` (readiness turned into completions), on Windows `iocp` (the
//! kernel's own completion port). The port above them owns every buffer, orders the
//! operations of each socket, and never lets a backend see a stale token.
//!
//! Layers, each using only those before it: `os` (the platform's socket types and C
//! structures) → `driver` (the contract and the data that crosses it) → `wait` (the Linux
//! wait set) → the backends → this module, which opens one at run time ([`open`]) and
//! dispatches to it ([`AnyDriver`]). Each backend's per-socket state has its own type
//! ([`Driver::Sock`]); the port keeps it as a [`SockIo`], whose variant is the backend's.

mod bufring;
mod driver;
#[cfg(target_os = "linux")]
mod epoll;
#[cfg(windows)]
mod iocp;
#[cfg(all(test, unix))]
pub(crate) mod model;
mod os;
#[cfg(target_os = "linux")]
mod uring;
#[cfg(target_os = "linux")]
mod wait;

use std::io;
use std::time::Instant;

pub use bufring::MAX_POOL_BUFFERS;
pub(crate) use bufring::{PoolMem, NO_BUFFER};
pub use driver::Backend;
pub(crate) use driver::{Desc, Driver, OpDesc, OpKind, Raw};
pub(crate) use os::{
    iovec, msg_namelen, msg_new, msg_set_iov, msg_set_name, raw_of, IoVec, MsgHdr, OwnedSock,
    RawSock, SockLen, ABORTED,
};

/// The backend a port runs on, chosen when the port is built.
// One per port, inside its `Arc`: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AnyDriver {
    #[cfg(target_os = "linux")]
    Uring(uring::Uring),
    #[cfg(target_os = "linux")]
    Epoll(epoll::Epoll),
    #[cfg(windows)]
    Iocp(iocp::Iocp),
    /// The modelled kernel of the port's unit tests (the test keeps a handle on it).
    #[cfg(all(test, unix))]
    Model(std::sync::Arc<model::Model>),
}

/// A backend's state for one socket ([`Driver::Sock`]), kept in the port's socket entry:
/// the variant of the backend that made it.
#[derive(Clone)]
pub(crate) enum SockIo {
    #[cfg(target_os = "linux")]
    Uring(<uring::Uring as Driver>::Sock),
    #[cfg(target_os = "linux")]
    Epoll(<epoll::Epoll as Driver>::Sock),
    #[cfg(windows)]
    Iocp(<iocp::Iocp as Driver>::Sock),
    #[cfg(all(test, unix))]
    Model(<model::Model as Driver>::Sock),
}

/// Calls `$call` on the driver, whichever backend it is.
macro_rules! each {
    ($driver:expr, |$d:ident| $call:expr) => {
        match $driver {
            #[cfg(target_os = "linux")]
            AnyDriver::Uring($d) => $call,
            #[cfg(target_os = "linux")]
            AnyDriver::Epoll($d) => $call,
            #[cfg(windows)]
            AnyDriver::Iocp($d) => $call,
            #[cfg(all(test, unix))]
            AnyDriver::Model($d) => $call,
        }
    };
}

/// Calls `$call` on the driver with its own state of the socket.
macro_rules! with_sock {
    ($driver:expr, $io:expr, |$d:ident, $s:ident| $call:expr) => {
        match ($driver, $io) {
            #[cfg(target_os = "linux")]
            (AnyDriver::Uring($d), SockIo::Uring($s)) => $call,
            #[cfg(target_os = "linux")]
            (AnyDriver::Epoll($d), SockIo::Epoll($s)) => $call,
            #[cfg(windows)]
            (AnyDriver::Iocp($d), SockIo::Iocp($s)) => $call,
            #[cfg(all(test, unix))]
            (AnyDriver::Model($d), SockIo::Model($s)) => $call,
            #[allow(unreachable_patterns)]
            _ => unreachable!("a socket's state is made by its own port's backend"),
        }
    };
}

/// The [`Driver`] calls, passed on to the backend in use (see the trait for each).
impl AnyDriver {
    pub(crate) fn backend(&self) -> Backend {
        each!(self, |d| d.backend())
    }

    pub(crate) fn new_sock(&self, stream: bool) -> SockIo {
        match self {
            #[cfg(target_os = "linux")]
            AnyDriver::Uring(d) => {
                let () = d.new_sock(stream);
                SockIo::Uring(())
            }
            #[cfg(target_os = "linux")]
            AnyDriver::Epoll(d) => SockIo::Epoll(d.new_sock(stream)),
            #[cfg(windows)]
            AnyDriver::Iocp(d) => SockIo::Iocp(d.new_sock(stream)),
            #[cfg(all(test, unix))]
            AnyDriver::Model(d) => SockIo::Model(d.new_sock(stream)),
        }
    }

    pub(crate) fn register(&self, io: &SockIo, sock: u64, fd: RawSock) -> io::Result<()> {
        with_sock!(self, io, |d, s| d.register(s, sock, fd))
    }

    pub(crate) fn deregister(&self, io: &SockIo, sock: u64, fd: RawSock) {
        with_sock!(self, io, |d, s| d.deregister(s, sock, fd))
    }

    pub(crate) fn push(&self, io: &SockIo, token: u64, op: OpDesc) {
        with_sock!(self, io, |d, s| d.push(s, token, op))
    }

    pub(crate) fn cancel(&self, io: &SockIo, token: u64) {
        with_sock!(self, io, |d, s| d.cancel(s, token))
    }

    pub(crate) fn flush(&self, out: &mut Vec<Raw>) {
        each!(self, |d| d.flush(out))
    }

    pub(crate) fn wait(
        &self,
        deadline: Option<Instant>,
        alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        each!(self, |d| d.wait(deadline, alone, out))
    }

    pub(crate) fn try_reap(&self, out: &mut Vec<Raw>) {
        each!(self, |d| d.try_reap(out))
    }

    pub(crate) fn wake(&self) {
        each!(self, |d| d.wake())
    }

    pub(crate) fn arm(&self, deadline: Instant) {
        each!(self, |d| d.arm(deadline))
    }

    pub(crate) fn follow_up_on_submitter(&self) -> bool {
        each!(self, |d| d.follow_up_on_submitter())
    }

    pub(crate) fn combiner(&self) -> Option<&crate::combine::Combiner> {
        each!(self, |d| d.combiner())
    }

    pub(crate) fn register_pool(&self, pool: &PoolMem) -> io::Result<()> {
        each!(self, |d| d.register_pool(pool))
    }

    pub(crate) fn pool_ring(&self) -> bool {
        each!(self, |d| d.pool_ring())
    }

    #[cfg(feature = "fault-injection")]
    pub(crate) fn faults(&self) -> Option<&crate::fault::Faults> {
        each!(self, |d| d.faults())
    }
}

/// Opens the backend asked for; `Auto` falls back to epoll with one warning. `concurrency`
/// is the port's concurrency value (IOCP gives it to the kernel's port too).
#[cfg(target_os = "linux")]
pub(crate) fn open(backend: Backend, entries: u32, _concurrency: usize) -> io::Result<AnyDriver> {
    let epoll = || -> io::Result<AnyDriver> { Ok(AnyDriver::Epoll(epoll::Epoll::new()?)) };
    match backend {
        Backend::Uring => Ok(AnyDriver::Uring(uring::Uring::new(entries)?)),
        Backend::Epoll => epoll(),
        // Auto, by measurement (BENCHMARKS.md, "Buffer pools"): io_uring where the kernel
        // has provided-buffer rings, since a server's idle connections then hold no receive
        // buffer; on an older kernel io_uring would need a buffer per waiting receive (5 KB
        // per idle connection against epoll's 1), so epoll is the better choice there.
        Backend::Auto => match uring::Uring::new(entries).and_then(|u| u.check_pools().map(|()| u))
        {
            Ok(u) => {
                tracing::info!(
                    "backend auto: io_uring (every operation the port uses, and provided-buffer rings)"
                );
                Ok(AnyDriver::Uring(u))
            }
            Err(e) => {
                tracing::warn!("backend auto: falling back to epoll, because {e}");
                epoll()
            }
        },
        Backend::Iocp => Err(unavailable(backend)),
    }
}

/// Opens the backend asked for: IOCP (`Auto` is IOCP on Windows).
#[cfg(windows)]
pub(crate) fn open(backend: Backend, _entries: u32, concurrency: usize) -> io::Result<AnyDriver> {
    match backend {
        Backend::Auto | Backend::Iocp => Ok(AnyDriver::Iocp(iocp::Iocp::new(concurrency)?)),
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
