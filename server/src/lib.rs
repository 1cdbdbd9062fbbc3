//! # cport-server — sessions on a completion port
//!
//! The layer every IOCP server writes by hand, written once on [`cport`]:
//!
//! * an accept loop with several accepts outstanding, `TCP_NODELAY` by default;
//! * sessions with generational ids ([`SessionId`]): a completion or a send for a session
//!   that closed never reaches the session that reused its slot;
//! * framing through a [`Codec`]: [`LengthPrefixed`] (the course protocol's `[size][type]`
//!   header, `u8` or `u16` little-endian), [`Delimited`] (text lines or any delimiter byte,
//!   the length limit enforced on complete and partial lines) and [`RawStream`]; packets
//!   split across receives are reassembled, many packets in one receive are handled in one
//!   pass;
//! * one ordered send queue per session: bytes leave in the order [`Session::send`] was
//!   called from any thread, one send in flight, everything queued meanwhile gathered into the
//!   next (vectored) send; a handler's sends start when its worker's handler passes end, so
//!   what a session was sent over those passes leaves in one send (write coalescing,
//!   [`Metrics::sends`]);
//! * per-session state of the program's own type ([`Session::set_state`],
//!   [`Session::with_state`]), each behind its session's own lock, dropped after the
//!   session's `on_close`;
//! * broadcast of one encoded packet shared by all its recipients ([`ServerHandle::broadcast`]);
//! * limits with clear close reasons ([`CloseReason`]): max sessions, max packet size (the
//!   codec), max queued send bytes per session (slow consumers), idle timeout, packet rate;
//! * posted events, timers (once, [`ServerHandle::post_after`], or repeating,
//!   [`ServerHandle::post_every`]) and posted completions that own a value
//!   ([`ServerHandle::post`], [`ServerHandle::post_message`] →
//!   [`Handler::on_message`]: a database thread's result handed back to the workers, the
//!   course's `EV_DB`);
//! * graceful shutdown ([`Server::shutdown`]) and [`Metrics`].
//!
//! ```
//! use cport_server::{Config, Handler, RawStream, Server, Session};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_packet(&self, session: &Session, packet: &[u8]) {
//!         let _ = session.send(packet.to_vec());
//!     }
//! }
//!
//! let server = Server::start(Config::default(), RawStream, Echo)?;
//! let mut client = std::net::TcpStream::connect(server.local_addr())?;
//! use std::io::{Read, Write};
//! client.write_all(b"hello")?;
//! let mut back = [0u8; 5];
//! client.read_exact(&mut back)?;
//! assert_eq!(&back, b"hello");
//! drop(client);
//! let report = server.shutdown(std::time::Duration::from_secs(1));
//! assert_eq!(report.forced, 0);
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs)]

// Layers, each using only those below it: `server` (handler, accept, dispatch, shutdown) →
// `handle` (what handlers and other threads reach the server through) and `state` (the
// program's per-session values) → `session` (a connection's send queue, receive path and
// close) → `core` (settings, shared state, keys) and `table` (the generational session
// table).
mod codec;
mod core;
mod handle;
mod metrics;
pub mod os;
mod server;
mod session;
mod state;
mod table;

pub use crate::core::{Config, MAX_USER_KEY};
pub use codec::{Codec, Delimited, FrameError, LengthPrefixed, RawStream, SizeField};
pub use handle::{PostError, RepeatId, ServerHandle};
pub use metrics::{CloseReason, Metrics, REASONS};
pub use server::{Handler, Server, ShutdownReport};
pub use session::{Session, SessionId};

pub use bytes::Bytes;
pub use cport;
