//! [`Socket`]: [`Port::associate`], a socket associated with a port, and the start of its
//! operations.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use socket2::{SockAddr, SockRef};

use super::local::LOCAL;
use super::table::{fail, SockEntry};
use super::{Closed, Port};
#[cfg(doc)]
use crate::op::Op;
use crate::op::{OpData, SendBuf};
use crate::sys::RawSock;
use crate::OwnedSock;

impl Port {
    /// Associates a socket (listener, stream, datagram socket, any pollable fd) with the port
    /// under a completion key, once. `fd` is anything that converts into an [`OwnedSock`]
    /// (`OwnedFd` on Linux): a `TcpListener`, `TcpStream`, `UdpSocket`, Unix socket or
    /// `socket2::Socket` as it is. The port owns the descriptor from now on; it is closed
    /// when the returned [`Socket`] is dropped and its last operation has completed.
    /// On Linux `associate` puts the descriptor in non-blocking mode (its operations never
    /// block a thread; a blocking read of your own on it would fail with `WouldBlock`).
    ///
    /// On Windows it takes anything that becomes an `OwnedSocket` (an overlapped socket, as
    /// std and `socket2` make them), associates it with the kernel's port and leaves its mode
    /// alone: overlapped operations never block whatever the mode.
    #[doc(alias = "CreateIoCompletionPort")]
    pub fn associate(&self, fd: impl Into<OwnedSock>, key: u64) -> io::Result<Socket> {
        let fd: OwnedSock = fd.into();
        if self.inner.sched.is_closed() {
            return Err(Closed.into());
        }
        let sref = SockRef::from(&fd);
        #[cfg(unix)]
        sref.set_nonblocking(true)?;
        let stream = sref
            .r#type()
            .map(|t| t == socket2::Type::STREAM)
            .unwrap_or(false);
        let raw = crate::sys::raw_of(&fd);
        let io = self.inner.driver.new_sock(stream);
        let token = self.inner.table.lock().socks.insert(SockEntry {
            fd,
            io: io.clone(),
            key,
            stream,
            recv_q: Default::default(),
            send_q: Default::default(),
            free: Vec::new(),
            closed: false,
        });
        if let Err(e) = self.inner.driver.register(&io, token, raw) {
            self.inner.table.lock().socks.remove(token);
            return Err(e);
        }
        Ok(Socket {
            port: self.clone(),
            token,
            key,
            fd: raw,
        })
    }
}

/// A socket associated with a port — the `SOCKET` of IOCP after
/// `CreateIoCompletionPort(socket, port, key, 0)`.
///
/// Operations never fail synchronously: each one started completes exactly once through the
/// port (a failure is a completion with an error), unless the port has been shut down, in
/// which case nothing more is delivered. Dropping the socket closes it: pending operations
/// complete with an aborted error, and the descriptor is closed once the last has completed.
///
/// ```
/// use cport::{Op, Port};
/// use std::io::Write;
/// use std::time::Duration;
///
/// let port = Port::new(1)?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
/// let server = port.associate(server, 5)?; // completion key 5
/// server.recv(Vec::with_capacity(1024), 0);
/// client.write_all(b"hello")?;
/// let c = port.get(Some(Duration::from_secs(10))).unwrap().expect("the receive");
/// assert_eq!((c.key, c.result?), (5, 5));
/// let Op::Recv(buf) = c.op else { unreachable!() };
/// assert_eq!(&buf[..], b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Socket {
    pub(super) port: Port,
    pub(super) token: u64,
    pub(super) key: u64,
    pub(super) fd: RawSock,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd)
            .field("key", &self.key)
            .finish()
    }
}

impl Socket {
    /// The completion key this socket was associated with.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The port this socket belongs to.
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Accepts one connection (on a listening socket); completes with [`Op::Accept`]:
    /// `result` is `Ok(0)` and the op holds the new connection ([`Accepted`](crate::Accepted):
    /// its fd, not yet associated, and the peer's address), or `result` is the error and the
    /// op holds `None`. Several accepts may be outstanding at once.
    #[doc(alias = "AcceptEx")]
    pub fn accept(&self, user: u64) {
        self.start(OpData::accept(), user);
    }

    /// Connects to `addr`; completes with [`Op::Connect`] and `result` `Ok(0)` once connected
    /// (or the error, e.g. `ConnectionRefused`). The socket is one you made and associated
    /// first, unconnected — for example `socket2::Socket::new(Domain::IPV4, Type::STREAM,
    /// None)`, then [`Port::associate`] (which makes it non-blocking) and `connect`.
    #[doc(alias = "ConnectEx")]
    pub fn connect(&self, addr: SocketAddr, user: u64) {
        self.start(OpData::Connect(Box::new(SockAddr::from(addr))), user);
    }

    /// Receives into the spare capacity of `buf` (`buf.capacity() - buf.len()` bytes at
    /// most); completes with [`Op::Recv`] and the buffer grown by what arrived. `Ok(0)` is
    /// the end of the stream. A buffer with no spare capacity (`Vec::new()`, or a full one)
    /// completes at once with an `InvalidInput` error and nothing is received. Receives on
    /// one socket complete in the order they were started, and fill their buffers in that
    /// order.
    #[doc(alias = "WSARecv")]
    pub fn recv(&self, buf: Vec<u8>, user: u64) {
        self.start(OpData::Recv(buf), user);
    }

    /// Sends the whole buffer; completes with [`Op::Send`] and the byte count once every
    /// byte was handed to the kernel (short sends are continued internally). Sends on one
    /// socket go out in the order they were started, whatever thread started them.
    #[doc(alias = "WSASend")]
    pub fn send(&self, buf: impl Into<SendBuf>, user: u64) {
        self.start(OpData::send(buf.into()), user);
    }

    /// Sends several buffers in order as one operation (one gathering `sendmsg`, continued
    /// internally if short) — `WSASend` with several `WSABUF`s; completes once with
    /// [`Op::Send`]`(`[`SendBuf::Vectored`]`(parts))` and the total byte count. Shared
    /// [`Bytes`] parts let one packet go to many sockets without a copy.
    #[doc(alias = "WSASend")]
    pub fn send_vectored(&self, parts: Vec<Bytes>, user: u64) {
        self.start(OpData::send(SendBuf::Vectored(parts)), user);
    }

    /// Receives one datagram into the spare capacity of `buf`; completes with
    /// [`Op::RecvFrom`] and the sender's address.
    #[doc(alias = "WSARecvFrom")]
    pub fn recv_from(&self, buf: Vec<u8>, user: u64) {
        self.start(OpData::recv_from(buf), user);
    }

    /// Sends one datagram to `addr`; completes with [`Op::SendTo`].
    #[doc(alias = "WSASendTo")]
    pub fn send_to(&self, buf: impl Into<SendBuf>, addr: SocketAddr, user: u64) {
        self.start(OpData::send_to(buf.into(), SockAddr::from(addr)), user);
    }

    /// Aborts every pending operation of this socket: each completes exactly once, with an
    /// aborted error (or with its real result if it finished first), and hands back its
    /// buffer. The socket stays open and usable.
    #[doc(alias = "CancelIoEx")]
    pub fn cancel(&self) {
        let shared = &*self.port.inner;
        let done = shared
            .table
            .lock()
            .cancel(&shared.driver, self.token, false);
        shared.settle(done);
    }

    /// Shuts down the read, write or both halves of the connection (`shutdown(2)`).
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        SockRef::from(self).shutdown(how)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(self).local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(self).peer_addr()?)
    }

    /// Closes the socket (the same as dropping it) — `closesocket` with pending I/O: every
    /// pending operation completes exactly once with an aborted error.
    #[doc(alias = "closesocket")]
    pub fn close(self) {}

    pub(super) fn start(&self, data: OpData, user: u64) {
        let shared = &*self.port.inner;
        let immediate = match data.check() {
            Err(e) => Some(fail(self.key, user, data, e)),
            Ok(()) => {
                let mut table = shared.table.lock();
                // Checked under the table lock: `shutdown` closes the scheduler and then
                // cancels everything in the table under this lock, so an operation either
                // is in the table by then (and is cancelled) or sees the port closed here.
                if shared.sched.is_closed() {
                    // Never reaches the kernel; the completion (with its buffer) is dropped
                    // below, as every completion queued at shutdown is.
                    Some(fail(self.key, user, data, Closed.into()))
                } else {
                    table.start(&shared.driver, self.token, data, user)
                }
            }
        };
        match immediate {
            Some(c) => shared.settle(vec![c]),
            None => {
                // Inside a handler pass of this port, on a thread that opted in: submitted at
                // the thread's next `get`.
                // One look at the thread's state: deferred (a deferring thread in a handler
                // pass), or issued — by this thread if it is in a handler pass.
                let in_pass = LOCAL.with(|l| match l.borrow_mut().find(shared.id) {
                    Some(e) if e.held && e.defer => {
                        e.dirty = true;
                        None
                    }
                    Some(e) => Some(e.held),
                    None => Some(false),
                });
                if let Some(in_pass) = in_pass {
                    shared.issue_from(in_pass);
                }
            }
        }
    }
}

pub(super) fn sock_addr(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "not an IP socket address"))
}

#[cfg(unix)]
impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by the port's table and closed only after this
        // Socket is dropped (and its operations completed), so it is open for `'_`.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Socket {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        // SAFETY: the socket is owned by the port's table and closed only after this Socket
        // is dropped (and its operations completed), so it is open for `'_`.
        unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(self.fd) }
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsRawSocket for Socket {
    fn as_raw_socket(&self) -> std::os::windows::io::RawSocket {
        self.fd
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let shared = &*self.port.inner;
        let done = shared.table.lock().cancel(&shared.driver, self.token, true);
        shared.settle(done);
    }
}
