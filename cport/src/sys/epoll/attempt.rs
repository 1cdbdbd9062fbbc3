//! The speculative attempts: one non-blocking system call per try of an operation, whose
//! result is final (done, or an error) or says to wait for readiness. The Linux cousin of
//! `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`, minus the skip: the result still arrives as a
//! completion through the port.

use std::mem;
use std::os::fd::RawFd;

use crate::sys::driver::{Desc, OpDesc};
use crate::sys::wait::errno;

/// What one attempt of an operation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// Finished with this result (bytes, new fd, 0, or -errno).
    Done(i32),
    /// A pooled receive got this many bytes (more than 0) into this pool buffer.
    Filled(i32, u16),
    /// Would block: wait for readiness.
    WouldBlock,
    /// A connect is now in progress: wait for writability.
    Started,
}

impl Attempt {
    /// The result and pool buffer of a finished attempt; `None` if it waits for readiness.
    pub(super) fn finished(self) -> Option<(i32, Option<u16>)> {
        match self {
            Attempt::Done(res) => Some((res, None)),
            Attempt::Filled(res, bid) => Some((res, Some(bid))),
            Attempt::WouldBlock | Attempt::Started => None,
        }
    }
}

/// Lengths above what the result (an i32) can report are cut.
fn clamp(len: usize) -> usize {
    len.min(i32::MAX as usize)
}

/// One non-blocking attempt of an operation (retried on EINTR).
///
/// The pointers in `op` target memory owned by the operation, which the port frees only after
/// this backend has reported the token complete; an operation is attempted only while its
/// token is still pending here, so that memory is alive for the whole call.
pub(super) fn attempt(op: OpDesc, connecting: bool) -> Attempt {
    let fd = op.fd;
    loop {
        let res: isize = match op.desc {
            Desc::Accept { addr, len } => {
                // SAFETY: the token is pending, so `addr` (a sockaddr_storage) and `len` (its
                // size) are the operation's live address buffer.
                let fd = unsafe {
                    libc::accept4(
                        fd,
                        addr.cast(),
                        len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                fd as isize
            }
            Desc::RecvPool { pool } => {
                // SAFETY: the token is pending, so the operation's handle keeps the pool
                // alive for this call.
                return recv_pooled(fd, unsafe { &*pool });
            }
            Desc::Recv { ptr, len } => {
                // SAFETY: the token is pending, so `ptr` is the operation's live buffer,
                // writable for `len` bytes.
                unsafe { libc::recv(fd, ptr.cast(), clamp(len), 0) }
            }
            Desc::RecvMsg { msg } => {
                // SAFETY: the token is pending, so `msg` and the iovecs and address buffer it
                // names are the operation's live memory.
                unsafe { libc::recvmsg(fd, msg, 0) }
            }
            Desc::Send { ptr, len } => {
                // SAFETY: the token is pending, so `ptr` is the operation's live buffer,
                // readable for `len` bytes.
                unsafe { libc::send(fd, ptr.cast(), clamp(len), libc::MSG_NOSIGNAL) }
            }
            Desc::SendMsg { msg } => {
                // SAFETY: the token is pending, so `msg` and the iovecs and address it names
                // are the operation's live memory.
                unsafe { libc::sendmsg(fd, msg, libc::MSG_NOSIGNAL) }
            }
            Desc::Connect { addr, len } => {
                return if connecting {
                    connect_result(fd)
                } else {
                    start_connect(fd, addr, len)
                };
            }
        };
        if res >= 0 {
            return Attempt::Done(res.min(i32::MAX as isize) as i32);
        }
        match errno() {
            libc::EINTR => continue,
            e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => return Attempt::WouldBlock,
            e => return Attempt::Done(-e),
        }
    }
}

/// A pooled receive: a buffer from the pool only for the call; given back at once if nothing
/// arrived (the receive then waits for readiness holding no buffer).
fn recv_pooled(fd: RawFd, pool: &crate::sys::PoolMem) -> Attempt {
    let Some(bid) = pool.take() else {
        return Attempt::Done(-crate::sys::NO_BUFFER);
    };
    loop {
        // SAFETY: buffer `bid` was just taken from the pool: nobody else writes it, and it
        // is `pool.size()` bytes long.
        let res = unsafe { libc::recv(fd, pool.ptr(bid).cast(), clamp(pool.size()), 0) };
        if res > 0 {
            return Attempt::Filled(res.min(i32::MAX as isize) as i32, bid);
        }
        let e = if res == 0 { 0 } else { errno() };
        if e == libc::EINTR {
            continue;
        }
        pool.give_quiet(bid);
        return match e {
            0 => Attempt::Done(0),
            e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => Attempt::WouldBlock,
            e => Attempt::Done(-e),
        };
    }
}

fn start_connect(fd: RawFd, addr: *const libc::sockaddr, len: libc::socklen_t) -> Attempt {
    // SAFETY: the token is pending, so `addr` targets `len` live bytes of the operation's
    // address (see `attempt`).
    if unsafe { libc::connect(fd, addr, len) } == 0 {
        return Attempt::Done(0);
    }
    match errno() {
        // An interrupted connect goes on in the background, as EINPROGRESS does.
        libc::EINPROGRESS | libc::EINTR => Attempt::Started,
        e => Attempt::Done(-e),
    }
}

/// The outcome of a connect in progress, once the socket reported writable.
fn connect_result(fd: RawFd) -> Attempt {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live locals, `len` holding the size of `err`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Attempt::Done(-errno());
    }
    if err != 0 {
        return Attempt::Done(-err);
    }
    // SO_ERROR is 0 also while the connect is still in progress (an unconnected socket is
    // reported writable): only a connected socket has a peer.
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut peer: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut peer_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `peer` and `peer_len` are live locals, `peer_len` holding the size of `peer`.
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut peer_len,
        )
    };
    if r == 0 {
        return Attempt::Done(0);
    }
    match errno() {
        libc::ENOTCONN => Attempt::WouldBlock,
        e => Attempt::Done(-e),
    }
}
