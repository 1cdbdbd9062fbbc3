//! Operations: what a completion says (the extended OVERLAPPED), and the owned state of an
//! operation while the kernel may still use it.

use bytes::Bytes;
use socket2::{SockAddr, SockAddrStorage};
use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::buffers::{BufPool, PooledBuf};
use crate::sys::{self, Desc, IoVec, MsgHdr, OpDesc, OpKind, RawSock, SockLen};
use crate::OwnedSock;

/// Which operation a completion is for — the part of an extended OVERLAPPED that says what
/// finished — with what the operation owned, handed back.
///
/// ```
/// use cport::{Op, Port};
/// use std::time::Duration;
///
/// let port = Port::new(1)?;
/// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let addr = socket.local_addr()?;
/// let socket = port.associate(socket, 3)?;
/// socket.recv_from(Vec::with_capacity(64), 1);
/// socket.send_to(&b"to myself"[..], addr, 2);
/// for _ in 0..2 {
///     let c = port.get(Some(Duration::from_secs(10))).unwrap().expect("a completion");
///     match c.op {
///         // The buffer comes back with what arrived, and who sent it.
///         Op::RecvFrom(buf, from) => assert_eq!((&buf[..], from), (&b"to myself"[..], Some(addr))),
///         Op::SendTo(buf) => assert_eq!(c.result?, buf.len()),
///         other => panic!("unexpected {other:?}"),
///     }
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Op {
    /// `AcceptEx`: the accepted connection on success (not yet associated with the port).
    Accept(Option<Accepted>),
    /// `ConnectEx`.
    Connect,
    /// `WSARecv`: the buffer, whose length grew by the bytes received.
    Recv(Vec<u8>),
    /// [`Socket::recv_pooled`](crate::Socket::recv_pooled): the pool buffer the bytes
    /// arrived in (`result` is their count), or `None` when nothing was received (end of
    /// stream: `Ok(0)`; an error; aborted).
    RecvPooled(Option<PooledBuf>),
    /// `WSASend`: the buffer, handed back whole.
    Send(SendBuf),
    /// `WSARecvFrom`: the buffer (grown by the datagram) and the sender.
    RecvFrom(Vec<u8>, Option<SocketAddr>),
    /// `WSASendTo`: the buffer, handed back.
    SendTo(SendBuf),
    /// `PostQueuedCompletionStatus`: a user completion; `result` carries the posted byte count.
    Post,
    /// A completion posted with an owned value by [`Port::post_message`](crate::Port::post_message)
    /// — the result of work done off the port (a database query, a file read) coming back
    /// through the queue. `result` is `Ok(0)`.
    Message(Message),
    /// A timer from [`Port::post_after`](crate::Port::post_after) that fired.
    Timer(TimerId),
}

/// The value a [`Port::post_message`](crate::Port::post_message) completion carries: any
/// `Send + 'static` value, taken back by its type.
///
/// ```
/// use cport::{Op, Port};
/// struct Loaded { name: String, hp: u32 }
/// let port = Port::new(1)?;
/// // A database thread, for instance, posts the result of a query:
/// port.post_message(7, 0, Loaded { name: "ann".into(), hp: 30 })?;
/// let c = port.get(None).unwrap().unwrap();
/// if let Op::Message(m) = c.op {
///     let loaded: Loaded = m.downcast().expect("the key says what was posted");
///     assert_eq!((c.key, loaded.name.as_str(), loaded.hp), (7, "ann", 30));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Message(Box<dyn Any + Send>);

impl Message {
    pub(crate) fn new<T: Any + Send>(value: T) -> Message {
        Message(Box::new(value))
    }

    /// True when the value is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.0.is::<T>()
    }

    /// The value, if it is a `T`; otherwise the message back, unchanged.
    pub fn downcast<T: Any>(self) -> Result<T, Message> {
        self.0.downcast::<T>().map(|b| *b).map_err(Message)
    }

    /// A reference to the value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// A mutable reference to the value, if it is a `T`.
    pub fn downcast_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.0.downcast_mut::<T>()
    }

    /// The value as the box it was posted in.
    pub fn into_inner(self) -> Box<dyn Any + Send> {
        self.0
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Message(..)")
    }
}

/// Identifies a timer started with [`Port::post_after`](crate::Port::post_after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// A connection taken by an accept operation.
#[derive(Debug)]
pub struct Accepted {
    /// The new socket: on Linux an `OwnedFd`, non-blocking and close-on-exec; on Windows an
    /// `OwnedSocket` (made by the port for `AcceptEx`, overlapped, not inheritable, its
    /// accept context updated so that `getpeername` and `shutdown` work).
    pub fd: OwnedSock,
    /// The peer's address, when it is an IP address.
    pub peer: Option<SocketAddr>,
}

impl Accepted {
    /// The connection as a standard TCP stream.
    pub fn into_tcp_stream(self) -> std::net::TcpStream {
        std::net::TcpStream::from(self.fd)
    }
}

/// What a send operation sends; handed back in its completion. Every form keeps its bytes at
/// a stable heap address while the kernel reads them.
#[derive(Debug, Clone)]
pub enum SendBuf {
    /// An owned vector, sent whole.
    Vec(Vec<u8>),
    /// A shared, reference-counted buffer (broadcast without a copy per recipient).
    Bytes(Bytes),
    /// Several buffers sent in order by one gathering send
    /// ([`Socket::send_vectored`](crate::Socket::send_vectored)). No `From<Vec<Bytes>>`, so
    /// that `sock.send(Vec::new(), 0)` needs no annotation.
    Vectored(Vec<Bytes>),
}

impl SendBuf {
    /// Total bytes to send.
    pub fn len(&self) -> usize {
        match self {
            SendBuf::Vec(v) => v.len(),
            SendBuf::Bytes(b) => b.len(),
            SendBuf::Vectored(v) => v.iter().map(Bytes::len).sum(),
        }
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer back as a vector, if it was one: `None` for [`SendBuf::Bytes`] and
    /// [`SendBuf::Vectored`]. A worker loop that reuses send buffers must handle those too
    /// (a static string or a broadcast is sent as `Bytes`), not unwrap this; see the
    /// [crate documentation](crate)'s worker loop.
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self {
            SendBuf::Vec(v) => Some(v),
            _ => None,
        }
    }
}

impl From<Vec<u8>> for SendBuf {
    fn from(v: Vec<u8>) -> Self {
        SendBuf::Vec(v)
    }
}

impl From<Bytes> for SendBuf {
    fn from(b: Bytes) -> Self {
        SendBuf::Bytes(b)
    }
}

impl From<&'static [u8]> for SendBuf {
    fn from(s: &'static [u8]) -> Self {
        SendBuf::Bytes(Bytes::from_static(s))
    }
}

impl<const N: usize> From<&'static [u8; N]> for SendBuf {
    /// `sock.send(b"bytes", 0)`: a static byte string, sent without a copy.
    fn from(s: &'static [u8; N]) -> Self {
        SendBuf::Bytes(Bytes::from_static(s))
    }
}

impl From<&'static str> for SendBuf {
    /// `sock.send("text", 0)`: a static string's bytes, sent without a copy.
    fn from(s: &'static str) -> Self {
        SendBuf::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for SendBuf {
    /// `sock.send(format!(..), 0)`: the string's bytes (its buffer, no copy).
    fn from(s: String) -> Self {
        SendBuf::Vec(s.into_bytes())
    }
}

/// One dequeued completion — what `GetQueuedCompletionStatus` returns: the completion key of
/// the socket, the operation with its buffer, its result, and the per-operation user value.
///
/// ```
/// use cport::{Op, Port};
/// use std::time::Duration;
///
/// let port = Port::new(1)?;
/// port.post(42, 7, 99)?; // PostQueuedCompletionStatus(port, 7, 42, …)
/// let c = port.get(Some(Duration::from_secs(1))).unwrap().expect("the posted completion");
/// assert_eq!((c.key, c.user, c.result.unwrap()), (42, 99, 7));
/// assert!(matches!(c.op, Op::Post));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Completion {
    /// The completion key the socket was associated with (or the posted key).
    pub key: u64,
    /// The per-operation user value given when the operation was started (or posted).
    pub user: u64,
    /// Bytes transferred, or the error. An operation aborted by cancel or close fails with
    /// `ECANCELED` (see [`Completion::is_aborted`]).
    pub result: io::Result<usize>,
    /// Which operation finished, with what it owned.
    pub op: Op,
}

impl Completion {
    /// True when the operation was aborted by [`Socket::cancel`](crate::Socket::cancel), by
    /// closing its socket, or by shutting the port down (`ERROR_OPERATION_ABORTED`; on Linux
    /// the error is `ECANCELED`).
    ///
    /// After `match c.op { … }` has moved the buffer out of `c`, ask the result instead:
    /// `c.result.is_aborted()` (with [`Aborted`] in scope).
    pub fn is_aborted(&self) -> bool {
        self.result.is_aborted()
    }
}

/// "Was this operation aborted?" asked of a completion's `result` (or its error), which stays
/// usable after the completion's `op` was moved out:
///
/// ```
/// use cport::{Aborted, Op};
/// # let port = cport::Port::new(1)?;
/// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
/// # let _b = std::net::TcpStream::connect(l.local_addr()?)?;
/// # let (a, _) = l.accept()?;
/// # let sock = port.associate(a, 1)?;
/// # sock.recv(Vec::with_capacity(16), 0);
/// # drop(sock); // closing aborts the receive
/// let c = port.get(None).unwrap().unwrap();
/// match c.op {
///     Op::Recv(buf) if c.result.is_aborted() => drop(buf), // closed or cancelled
///     Op::Recv(buf) => println!("{} bytes", buf.len()),
///     _ => {}
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Aborted {
    /// True for the error of an operation aborted by cancel, close or shutdown (`ECANCELED`
    /// on Linux, `ERROR_OPERATION_ABORTED` on Windows).
    fn is_aborted(&self) -> bool;
}

impl Aborted for io::Error {
    fn is_aborted(&self) -> bool {
        self.raw_os_error() == Some(sys::ABORTED)
    }
}

impl<T> Aborted for io::Result<T> {
    fn is_aborted(&self) -> bool {
        matches!(self, Err(e) if e.is_aborted())
    }
}

pub(crate) fn aborted() -> io::Error {
    io::Error::from_raw_os_error(sys::ABORTED)
}

/// The kernel-facing part of a message operation, boxed so its address is stable however the
/// operation table moves.
pub(crate) struct MsgState {
    hdr: MsgHdr,
    iov: Vec<IoVec>,
    addr: SockAddrStorage,
}

// SAFETY: the raw pointers inside `hdr` and `iov` point only into this MsgState and into the
// buffer of the same operation; they are dereferenced only by the kernel (or the epoll
// backend's syscalls) while the operation is in flight, never through a shared reference.
unsafe impl Send for MsgState {}

impl MsgState {
    fn new() -> Box<MsgState> {
        Box::new(MsgState {
            hdr: sys::msg_new(),
            iov: Vec::new(),
            addr: SockAddrStorage::zeroed(),
        })
    }
}

/// The owned state of one operation. Everything the kernel may read or write while the
/// operation is in flight lives in a heap allocation owned here.
pub(crate) enum OpData {
    Accept(Box<AcceptState>),
    Connect(Box<SockAddr>),
    Recv(Vec<u8>),
    /// A receive into a buffer of the pool, taken when data is there.
    RecvPool(BufPool),
    Send(SendBuf, Option<Box<MsgState>>),
    RecvFrom(Vec<u8>, Box<MsgState>),
    SendTo(SendBuf, Box<SockAddr>, Box<MsgState>),
}

/// What an accept fills in: the peer's address and (Windows) the accepted socket.
pub(crate) struct AcceptState {
    addr: SockAddrStorage,
    len: SockLen,
    #[cfg(windows)]
    sock: RawSock,
}

impl OpData {
    pub(crate) fn accept() -> OpData {
        OpData::Accept(Box::new(AcceptState {
            addr: SockAddrStorage::zeroed(),
            len: 0,
            #[cfg(windows)]
            sock: 0,
        }))
    }

    pub(crate) fn recv_from(buf: Vec<u8>) -> OpData {
        OpData::RecvFrom(buf, MsgState::new())
    }

    pub(crate) fn send(buf: SendBuf) -> OpData {
        let msg = matches!(buf, SendBuf::Vectored(_)).then(MsgState::new);
        OpData::Send(buf, msg)
    }

    pub(crate) fn send_to(buf: SendBuf, addr: SockAddr) -> OpData {
        OpData::SendTo(buf, Box::new(addr), MsgState::new())
    }

    pub(crate) fn kind(&self) -> OpKind {
        match self {
            OpData::Recv(_) | OpData::RecvPool(_) | OpData::RecvFrom(..) => OpKind::Recv,
            OpData::Send(..) | OpData::SendTo(..) => OpKind::Send,
            OpData::Accept(_) => OpKind::Accept,
            OpData::Connect(_) => OpKind::Connect,
        }
    }

    /// Total bytes a send must transfer (0 for other operations).
    pub(crate) fn send_len(&self) -> usize {
        match self {
            OpData::Send(b, _) | OpData::SendTo(b, ..) => b.len(),
            _ => 0,
        }
    }

    /// Builds the raw description the backend submits, starting `done` bytes into a send.
    /// The pointers stay valid until this `OpData` is dropped, which happens only after the
    /// backend has reported the operation complete.
    pub(crate) fn desc(&mut self, fd: RawSock, done: usize) -> OpDesc {
        let desc = match self {
            OpData::Accept(b) => {
                b.len = b.addr.size_of();
                Desc::Accept {
                    addr: (&mut b.addr as *mut SockAddrStorage).cast(),
                    len: &mut b.len,
                    #[cfg(windows)]
                    sock: &mut b.sock,
                }
            }
            OpData::Connect(a) => Desc::Connect {
                addr: a.as_ptr().cast(),
                len: a.len(),
            },
            OpData::Recv(buf) => {
                let spare = buf.spare_capacity_mut();
                Desc::Recv {
                    ptr: spare.as_mut_ptr().cast(),
                    len: spare.len(),
                }
            }
            OpData::RecvPool(pool) => Desc::RecvPool { pool: pool.mem() },
            OpData::Send(SendBuf::Vec(v), _) => Desc::Send {
                ptr: v[done..].as_ptr(),
                len: v.len() - done,
            },
            OpData::Send(SendBuf::Bytes(b), _) => Desc::Send {
                ptr: b[done..].as_ptr(),
                len: b.len() - done,
            },
            OpData::Send(SendBuf::Vectored(parts), Some(m)) => {
                fill_iov(&mut m.iov, parts, done);
                sys::msg_set_iov(&mut m.hdr, &mut m.iov);
                Desc::SendMsg { msg: &m.hdr }
            }
            OpData::Send(SendBuf::Vectored(_), None) => {
                unreachable!("vectored send without msghdr")
            }
            OpData::RecvFrom(buf, m) => {
                let spare = buf.spare_capacity_mut();
                m.iov.clear();
                m.iov
                    .push(sys::iovec(spare.as_mut_ptr().cast(), spare.len()));
                sys::msg_set_iov(&mut m.hdr, &mut m.iov);
                let len = m.addr.size_of();
                sys::msg_set_name(
                    &mut m.hdr,
                    (&mut m.addr as *mut SockAddrStorage).cast(),
                    len,
                );
                Desc::RecvMsg { msg: &mut m.hdr }
            }
            OpData::SendTo(buf, addr, m) => {
                match buf {
                    SendBuf::Vec(v) => set_one_iov(&mut m.iov, v),
                    SendBuf::Bytes(b) => set_one_iov(&mut m.iov, b),
                    SendBuf::Vectored(parts) => fill_iov(&mut m.iov, parts, 0),
                }
                sys::msg_set_iov(&mut m.hdr, &mut m.iov);
                sys::msg_set_name(&mut m.hdr, addr.as_ptr() as *mut _, addr.len());
                Desc::SendMsg { msg: &m.hdr }
            }
        };
        OpDesc { fd, desc }
    }

    /// Refuses, before anything is submitted, an operation the kernel could only misreport:
    /// a receive into a buffer with no spare capacity would complete with 0, which reads as
    /// end of stream.
    pub(crate) fn check(&self) -> io::Result<()> {
        match self {
            OpData::Recv(buf) | OpData::RecvFrom(buf, _) if buf.len() == buf.capacity() => {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "receive buffer has no spare capacity (reserve some before receiving)",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Turns the finished operation into what its completion hands back. `res` is the
    /// kernel's result (bytes, a new fd, or a negative errno) for the last submission; `total`
    /// is the byte count to report for a send that needed several submissions; `buf` the pool
    /// buffer a pooled receive filled (the caller gave back any other: see `Table::finish`).
    pub(crate) fn finish(
        self,
        res: i32,
        total: usize,
        buf: Option<u16>,
    ) -> (io::Result<usize>, Op) {
        let result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as usize)
        };
        match self {
            OpData::Accept(b) => match result {
                Ok(_fd) => {
                    #[cfg(unix)]
                    // SAFETY: a successful accept returned a new descriptor that nothing else
                    // owns; from here the OwnedFd closes it.
                    let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(_fd as RawSock) };
                    #[cfg(windows)]
                    // SAFETY: a successful accept put the accepted socket, which nothing else
                    // owns, in `b.sock`; from here the OwnedSocket closes it.
                    let fd =
                        unsafe { std::os::windows::io::FromRawSocket::from_raw_socket(b.sock) };
                    let AcceptState {
                        addr: storage, len, ..
                    } = *b;
                    // SAFETY: the kernel filled `len` bytes of the storage with the address.
                    let addr = unsafe { SockAddr::new(storage, len) };
                    (
                        Ok(0),
                        Op::Accept(Some(Accepted {
                            fd,
                            peer: addr.as_socket(),
                        })),
                    )
                }
                Err(e) => (Err(e), Op::Accept(None)),
            },
            OpData::Connect(_) => (result, Op::Connect),
            OpData::RecvPool(pool) => {
                let filled = match (&result, buf) {
                    (Ok(n), Some(bid)) if *n > 0 => Some(pool.filled(bid, *n)),
                    _ => None,
                };
                (result, Op::RecvPooled(filled))
            }
            OpData::Recv(mut buf) => {
                if let Ok(n) = result {
                    // SAFETY: the kernel wrote `n` bytes into the spare capacity starting at
                    // `len` (the descriptor covered exactly that capacity).
                    unsafe { buf.set_len(buf.len() + n) };
                }
                (result, Op::Recv(buf))
            }
            OpData::Send(buf, _) => (result.map(|_| total), Op::Send(buf)),
            OpData::RecvFrom(mut buf, m) => match result {
                Ok(n) => {
                    // SAFETY: as for Recv: `n` bytes were written into the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    let len = sys::msg_namelen(&m.hdr);
                    // SAFETY: the kernel wrote `len` bytes of the sender's address.
                    let addr = unsafe { SockAddr::new(m.addr, len) };
                    (Ok(n), Op::RecvFrom(buf, addr.as_socket()))
                }
                Err(e) => (Err(e), Op::RecvFrom(buf, None)),
            },
            OpData::SendTo(buf, ..) => (result, Op::SendTo(buf)),
        }
    }
}

fn set_one_iov(iov: &mut Vec<IoVec>, bytes: &[u8]) {
    iov.clear();
    iov.push(sys::iovec(bytes.as_ptr(), bytes.len()));
}

/// iovecs covering `parts` from byte `skip` on.
fn fill_iov(iov: &mut Vec<IoVec>, parts: &[Bytes], mut skip: usize) {
    iov.clear();
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let rest = &p[skip..];
        skip = 0;
        iov.push(sys::iovec(rest.as_ptr(), rest.len()));
    }
}
