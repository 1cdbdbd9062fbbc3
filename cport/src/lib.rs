//! # cport — I/O completion ports for Linux
//!
//! cport gives Linux the programming model of Windows I/O completion ports (IOCP): **one
//! queue of finished I/O shared by a pool of worker threads**. Any idle worker takes the next
//! completion, so one slow handler never holds the others back. It runs on io_uring, and on
//! epoll where io_uring is unavailable (containers' seccomp profiles, `kernel.io_uring_disabled`,
//! old kernels), with the same semantics.
//!
//! ## IOCP → cport
//!
//! | IOCP | cport |
//! |---|---|
//! | `CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, n)` | [`Port::new(n)`](Port::new) (`0` = available parallelism), or [`Port::builder`] |
//! | `CreateIoCompletionPort(socket, port, key, 0)` | [`Port::associate(fd, key)`](Port::associate) → [`Socket`] |
//! | `AcceptEx` / `ConnectEx` / `WSARecv` / `WSASend` | [`Socket::accept`], [`Socket::connect`], [`Socket::recv`], [`Socket::send`] (and [`Socket::recv_from`] / [`Socket::send_to`]) with owned buffers |
//! | the extended `OVERLAPPED` | [`Completion::op`] ([`Op`]: which operation, with its buffer handed back) and [`Completion::user`], a per-operation value |
//! | `GetQueuedCompletionStatus` | [`Port::get(timeout)`](Port::get): `Ok(Some(completion))`, `Ok(None)` on timeout, `Err(Closed)` once shut down |
//! | `GetQueuedCompletionStatusEx` | [`Port::get_many`] |
//! | `PostQueuedCompletionStatus` | [`Port::post`] |
//! | a timer thread that posts | [`Port::post_after`], cancellable with [`Port::cancel_timer`] |
//! | `CancelIoEx`, `closesocket` with pending I/O | [`Socket::cancel`], dropping the [`Socket`]: each pending operation completes once, aborted ([`Completion::is_aborted`]), with its buffer |
//! | the concurrency value | at most `n` threads between a `get` that returned and their next `get`; [`Port::blocking`] lends a thread's slot while it blocks |
//! | LIFO waiter release | the most recently parked waiter is woken first |
//! | a pool of worker threads | [`Pool`] |
//!
//! ## Rules that hold on both backends
//!
//! * Buffers are owned: an operation takes its buffer and the completion hands it back.
//!   Nothing the kernel may still write is freed or reused before its completion is reaped.
//! * Every started operation completes exactly once (while the port is open).
//! * Sends on one socket leave in the order they were started, and each completes only when
//!   its whole buffer was sent; receives on one socket fill their buffers in start order.
//! * Completions are matched to operations by generation-tagged tokens, never by fd, so a
//!   completion of a closed socket can never reach a new socket that reused its fd number.
//!
//! ## A complete worker loop
//!
//! An echo server: accept, receive, send back what arrived, receive again.
//!
//! ```
//! use cport::{Op, Port, Socket};
//! use std::collections::HashMap;
//! use std::io::{Read, Write};
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
//! let conns: Mutex<HashMap<u64, Socket>> = Mutex::new(HashMap::new());
//! let worker = |port: &Port| {
//!     let mut next_key = 1;
//!     while let Ok(Some(c)) = port.get(None) {
//!         match c.op {
//!             Op::Accept(Some(accepted)) => {
//!                 let sock = port.associate(accepted.fd, next_key).unwrap();
//!                 sock.recv(Vec::with_capacity(4096), 0);
//!                 conns.lock().unwrap().insert(next_key, sock);
//!                 next_key += 1;
//!                 listener.accept(0); // keep one accept outstanding
//!             }
//!             Op::Recv(buf) => match c.result {
//!                 Ok(n) if n > 0 => {
//!                     let conns = conns.lock().unwrap();
//!                     conns[&c.key].send(buf, 0); // the buffer goes out as it came in
//!                 }
//!                 _ => {
//!                     conns.lock().unwrap().remove(&c.key); // end of stream: close
//!                 }
//!             },
//!             Op::Send(buf) => {
//!                 let mut buf = buf.into_vec().unwrap();
//!                 buf.clear(); // reuse the buffer for the next receive
//!                 if let Some(sock) = conns.lock().unwrap().get(&c.key) {
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
//!     s.spawn(|| worker(&port));
//!     let mut client = std::net::TcpStream::connect(addr).unwrap();
//!     client.write_all(b"hello, port").unwrap();
//!     let mut back = [0u8; 11];
//!     client.read_exact(&mut back).unwrap();
//!     assert_eq!(&back, b"hello, port");
//!     port.post(0, 0, 0).unwrap(); // PostQueuedCompletionStatus: tell the worker to stop
//! });
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! With several workers, run the same loop on each (or use [`Pool`]); the key/table pattern
//! stays the same. The `cport` server layer builds sessions, framing and send queues on this.
//!
//! See `ARCHITECTURE.md` in the repository for the life of an operation, the waiter rules
//! and every `unsafe` invariant.

#![warn(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod combine;
mod sync;

#[cfg(loom)]
#[doc(hidden)]
pub mod sched;
#[cfg(not(loom))]
mod sched;

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
pub use op::{Accepted, Completion, Op, SendBuf, TimerId};
#[cfg(not(loom))]
pub use pool::Pool;
#[cfg(not(loom))]
pub use port::{Closed, Port, PortBuilder, PortStats, Socket};
#[cfg(not(loom))]
pub use sys::Backend;

/// `bytes::Bytes`, the shared buffer type of [`SendBuf::Bytes`] (re-exported).
#[cfg(not(loom))]
pub use bytes::Bytes;
