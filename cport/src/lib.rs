//! # cport — I/O completion ports for Linux
//!
//! cport gives Linux the programming model of Windows I/O completion ports (IOCP): **one
//! queue of finished I/O shared by a pool of worker threads**. Any idle worker takes the next
//! completion, so one slow handler never holds the others back. It runs on io_uring, and on
//! epoll where io_uring is unavailable (containers' seccomp profiles, `kernel.io_uring_disabled`,
//! old kernels), with the same semantics. On Windows the same program runs on the kernel's
//! own completion port ([`Backend::Iocp`]); there sockets are `OwnedSocket`/`RawSocket` where
//! Linux has `OwnedFd`/`RawFd`, and an aborted operation's error is `ERROR_OPERATION_ABORTED`
//! where Linux has `ECANCELED`.
//!
//! ## IOCP → cport
//!
//! | IOCP | cport |
//! |---|---|
//! | `CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, n)` | [`Port::new(n)`](Port::new) (`0` = available parallelism), or [`Port::builder`] |
//! | `CreateIoCompletionPort(socket, port, key, 0)` | [`Port::associate(fd, key)`](Port::associate) → [`Socket`] |
//! | `AcceptEx` / `ConnectEx` / `WSARecv` / `WSASend` | [`Socket::accept`], [`Socket::connect`], [`Socket::recv`], [`Socket::send`] (and [`Socket::recv_from`] / [`Socket::send_to`]) with owned buffers, issued at once; a [`Pool`] worker's (a thread that called [`Port::defer_submissions`]) go out together when it comes back to `get` |
//! | the extended `OVERLAPPED` | [`Completion::op`] ([`Op`]: which operation, with its buffer handed back) and [`Completion::user`], a per-operation value |
//! | `GetQueuedCompletionStatus` | [`Port::get(timeout)`](Port::get): `Ok(Some(completion))`, `Ok(None)` on timeout, `Err(Closed)` once shut down |
//! | `GetQueuedCompletionStatusEx` | [`Port::get_many`] |
//! | `PostQueuedCompletionStatus` | [`Port::post`]; with an owned value (a DB thread's result, the `EV_DB` pattern): [`Port::post_message`] → [`Op::Message`] |
//! | a timer thread that posts | [`Port::post_after`], cancellable with [`Port::cancel_timer`] |
//! | `CancelIoEx`, `closesocket` with pending I/O | [`Socket::cancel`], dropping the [`Socket`]: each pending operation completes once, aborted ([`Completion::is_aborted`]), with its buffer |
//! | the concurrency value | at most `n` threads between a `get` that returned and their next `get`; [`Port::blocking`] lends a thread's slot to a spare thread while it blocks |
//! | LIFO waiter release | the most recently parked waiter is woken first |
//! | a pool of worker threads (more than the concurrency value) | [`Pool`]; `0` threads = twice the concurrency value |
//!
//! ## Rules that hold on every backend
//!
//! * Buffers are owned: an operation takes its buffer and the completion hands it back.
//!   Nothing the kernel may still write is freed or reused before its completion is reaped.
//! * Every started operation completes exactly once (while the port is open).
//! * Sends on one socket leave in the order they were started, and each completes only when
//!   its whole buffer was sent; receives on one socket fill their buffers in start order.
//! * Completions are matched to operations by generation-tagged tokens, never by fd, so a
//!   completion of a closed socket can never reach a new socket that reused its fd number.
//! * The port never makes a blocking system call of a thread outside its handler passes
//!   (`main`, a database thread) fail with `EINTR`, though that thread starts operations: on
//!   io_uring such a thread leaves the submission to a worker. Inside a handler (and in
//!   [`Port::blocking`]) a timed blocking call on io_uring may be interrupted once; see there.
//!
//! ## A complete worker loop
//!
//! An echo server that greets each client: accept, send a greeting, then receive, send back
//! what arrived, receive again. Each receive starts when the send before it has completed.
//! The loop runs on two threads at once, so everything it shares is shared for real: the key
//! counter is an atomic, the table of sockets is behind a lock, and a completion whose key
//! is no longer in the table (its socket was closed meanwhile) is ignored.
//!
//! A send hands its buffer back in whatever form it was sent: the greeting is a shared,
//! static [`Bytes`] ([`SendBuf::Bytes`]), an echo is the receive's `Vec`
//! ([`SendBuf::Vec`]). The loop reuses a `Vec` and takes a new one for the other forms, so
//! it stays correct when the program sends shared buffers too (a broadcast).
//!
//! ```
//! use cport::{Op, Port, SendBuf, Socket};
//! use std::collections::HashMap;
//! use std::io::{Read, Write};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Mutex;
//!
//! const LISTENER: u64 = 0;
//! let port = Port::new(2)?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let listener = port.associate(listener, LISTENER)?;
//! listener.accept(0);
//!
//! // The completion key names the connection; the table owns the sockets.
//! let next_key = AtomicU64::new(1);
//! let conns: Mutex<HashMap<u64, Socket>> = Mutex::new(HashMap::new());
//! let worker = || {
//!     while let Ok(Some(c)) = port.get(None) {
//!         match c.op {
//!             Op::Accept(Some(accepted)) => {
//!                 let key = next_key.fetch_add(1, Ordering::Relaxed);
//!                 let sock = port.associate(accepted.fd, key).unwrap();
//!                 // Into the table before the first send: its completion may reach the
//!                 // other worker at once.
//!                 let mut conns = conns.lock().unwrap();
//!                 conns.entry(key).or_insert(sock).send(b"hello\n", 0); // a static `Bytes`
//!                 listener.accept(0); // keep one accept outstanding
//!             }
//!             Op::Recv(buf) => {
//!                 let mut conns = conns.lock().unwrap();
//!                 match c.result {
//!                     Ok(n) if n > 0 => {
//!                         if let Some(sock) = conns.get(&c.key) {
//!                             sock.send(buf, 0); // the buffer goes out as it came in
//!                         }
//!                     }
//!                     _ => drop(conns.remove(&c.key)), // end of stream or error: close
//!                 }
//!             }
//!             Op::Send(buf) => {
//!                 let mut conns = conns.lock().unwrap();
//!                 if c.result.is_err() {
//!                     drop(conns.remove(&c.key)); // the peer is gone: close
//!                     continue;
//!                 }
//!                 // The next receive: into the vector that came back, or into a new one
//!                 // when what was sent was shared (`Bytes`, a vectored send).
//!                 let buf = match buf {
//!                     SendBuf::Vec(mut v) => {
//!                         v.clear();
//!                         v
//!                     }
//!                     SendBuf::Bytes(_) | SendBuf::Vectored(_) => Vec::with_capacity(4096),
//!                 };
//!                 if let Some(sock) = conns.get(&c.key) {
//!                     sock.recv(buf, 0);
//!                 }
//!             }
//!             Op::Post => break, // our own "quit" event
//!             _ => {}
//!         }
//!     }
//! };
//!
//! std::thread::scope(|s| {
//!     s.spawn(worker);
//!     s.spawn(worker);
//!     let mut clients: Vec<_> = (0..4)
//!         .map(|_| std::net::TcpStream::connect(addr).unwrap())
//!         .collect();
//!     for client in &mut clients {
//!         let mut greeting = [0u8; 6];
//!         client.read_exact(&mut greeting).unwrap();
//!         assert_eq!(&greeting, b"hello\n");
//!         for _ in 0..3 {
//!             client.write_all(b"hello, port").unwrap();
//!             let mut back = [0u8; 11];
//!             client.read_exact(&mut back).unwrap();
//!             assert_eq!(&back, b"hello, port");
//!         }
//!     }
//!     // PostQueuedCompletionStatus: tell each worker to stop.
//!     port.post(0, 0, 0).unwrap();
//!     port.post(0, 0, 0).unwrap();
//! });
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The same with a [`Pool`], which runs the loop on each of its threads, catches a panicking
//! handler, and batches each worker's operations until it comes back to `get`:
//!
//! ```
//! use cport::{Op, Pool, Port, Socket};
//! use std::collections::HashMap;
//! use std::io::{Read, Write};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::{Arc, Mutex};
//!
//! let port = Port::new(2)?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let listener = Arc::new(port.associate(listener, 0)?);
//! listener.accept(0);
//! let next_key = AtomicU64::new(1);
//! let conns: Mutex<HashMap<u64, Socket>> = Mutex::new(HashMap::new());
//! let l = listener.clone();
//! let pool = Pool::spawn(&port, 2, move |port, c| match c.op {
//!     Op::Accept(Some(accepted)) => {
//!         let key = next_key.fetch_add(1, Ordering::Relaxed);
//!         let sock = port.associate(accepted.fd, key).unwrap();
//!         let mut conns = conns.lock().unwrap();
//!         conns.entry(key).or_insert(sock).recv(Vec::with_capacity(4096), 0);
//!         l.accept(0);
//!     }
//!     Op::Recv(buf) => {
//!         let mut conns = conns.lock().unwrap();
//!         match c.result {
//!             Ok(n) if n > 0 => {
//!                 if let Some(sock) = conns.get(&c.key) {
//!                     sock.send(buf, 0);
//!                     sock.recv(Vec::with_capacity(4096), 0);
//!                 }
//!             }
//!             _ => drop(conns.remove(&c.key)),
//!         }
//!     }
//!     _ => {}
//! })?;
//!
//! let mut client = std::net::TcpStream::connect(addr)?;
//! client.write_all(b"hello, pool")?;
//! let mut back = [0u8; 11];
//! client.read_exact(&mut back)?;
//! assert_eq!(&back, b"hello, pool");
//! pool.shutdown(); // shuts the port down and joins the workers
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The server layer, [`cport-server`](https://docs.rs/cport-server) (a crate of its own),
//! builds sessions, framing, ordered send queues, broadcast, limits and graceful shutdown on
//! this port: start there for a server that speaks a protocol.
//!
//! See `ARCHITECTURE.md` in the repository for the life of an operation, the waiter rules
//! and every `unsafe` invariant.

#![warn(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

#[cfg(not(loom))]
mod buffers;
mod combine;
#[cfg(all(feature = "fault-injection", not(loom)))]
#[doc(hidden)]
pub mod fault;
mod sync;

#[cfg(loom)]
#[doc(hidden)]
pub mod sched;
#[cfg(not(loom))]
mod sched;

#[cfg(not(loom))]
mod fifo;
#[cfg(not(loom))]
mod op;
#[cfg(not(loom))]
mod pool;
#[cfg(not(loom))]
mod port;
#[cfg(not(loom))]
mod slab;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
mod timer;

#[cfg(not(loom))]
pub use buffers::{BufPool, PoolStats, PooledBuf};
#[cfg(not(loom))]
pub use op::{Aborted, Accepted, Completion, Message, Op, SendBuf, TimerId};
#[cfg(not(loom))]
pub use pool::Pool;
#[cfg(not(loom))]
pub use port::socket::Socket;
#[cfg(not(loom))]
pub use port::{Closed, Port, PortBuilder, PortStats};
#[cfg(not(loom))]
pub use sys::{Backend, MAX_POOL_BUFFERS};

/// `bytes::Bytes`, the shared buffer type of [`SendBuf::Bytes`] (re-exported).
#[cfg(not(loom))]
pub use bytes::Bytes;

/// The owned socket the port takes and hands back: [`OwnedFd`](std::os::fd::OwnedFd) on
/// Linux (an alias of the standard type, not a new one; `OwnedSocket` on Windows).
///
/// [`Port::associate`] takes anything that converts into it, so the sockets of `std` and
/// `socket2` go in as they are: `TcpListener`, `TcpStream`, `UdpSocket`, `UnixListener`,
/// `UnixStream`, `UnixDatagram`, `socket2::Socket`, and an `OwnedFd` of any descriptor
/// that epoll can wait on. [`Accepted::fd`] is one; `TcpStream::from(fd)` (or
/// [`Accepted::into_tcp_stream`]) makes it a stream again.
///
/// ```
/// use cport::{OwnedSock, Port};
/// use std::net::{TcpListener, UdpSocket};
/// use std::os::unix::net::UnixStream;
///
/// let port = Port::new(1)?;
/// let _listener = port.associate(TcpListener::bind("127.0.0.1:0")?, 1)?;
/// let _udp = port.associate(UdpSocket::bind("127.0.0.1:0")?, 2)?;
/// let (a, _b) = UnixStream::pair()?;
/// let _unix = port.associate(a, 3)?;
/// // A socket made with socket2, or already an owned descriptor:
/// let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
/// let fd: OwnedSock = raw.into();
/// let _owned = port.associate(fd, 4)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[cfg(all(unix, not(loom)))]
pub type OwnedSock = std::os::fd::OwnedFd;

/// The owned socket the port takes and hands back: `OwnedSocket` on Windows (an alias of the
/// standard type, not a new one; `OwnedFd` on Linux).
///
/// [`Port::associate`] takes anything that converts into it: `TcpListener`, `TcpStream`,
/// `UdpSocket`, `socket2::Socket`, an `OwnedSocket`. [`Accepted::fd`] is one;
/// `TcpStream::from(fd)` (or [`Accepted::into_tcp_stream`]) makes it a stream again.
#[cfg(all(windows, not(loom)))]
pub type OwnedSock = std::os::windows::io::OwnedSocket;
