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
//!
//! Keep the [`Server`] for as long as it serves: dropping it stops it (hence its
//! `#[must_use]`).
//!
//! ## Several listeners
//!
//! A server listens on one address ([`Config::addr`]). For several (a public port and an
//! admin port, IPv4 and IPv6), start one [`Server`] per address and let them share what
//! they share: an `Arc` of the program's state, and each other's [`ServerHandle`]s (cheap to
//! clone). Each server has its own port, workers and limits, so a busy public port never
//! starves the admin one; a small one needs one worker (`threads: 1`).
//!
//! A line chat on one port and, on another, an admin port that answers `WHO` with the number
//! of chatters and `SAY text` with a broadcast to them:
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::TcpStream;
//!
//! use cport_server::{Bytes, Config, Delimited, Handler, Server, ServerHandle, Session};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     fn on_packet(&self, session: &Session, line: &[u8]) {
//!         let mut msg = line.to_vec();
//!         msg.push(b'\n');
//!         session.server().broadcast_all(&Bytes::from(msg), Some(session.id()));
//!     }
//! }
//!
//! /// The admin port's handler: it holds the chat server's handle.
//! struct Admin {
//!     chat: ServerHandle,
//! }
//!
//! impl Handler for Admin {
//!     fn on_packet(&self, session: &Session, line: &[u8]) {
//!         let reply = if line == b"WHO" {
//!             format!("{} chatting\n", self.chat.metrics().open)
//!         } else if let Some(text) = line.strip_prefix(b"SAY ") {
//!             let mut msg = b"admin: ".to_vec();
//!             msg.extend_from_slice(text);
//!             msg.push(b'\n');
//!             let n = self.chat.broadcast_all(&Bytes::from(msg), None);
//!             format!("sent to {n}\n")
//!         } else {
//!             "ERR\n".to_string()
//!         };
//!         let _ = session.send(reply);
//!     }
//! }
//!
//! let chat = Server::start(Config::default(), Delimited::lines(1024), Chat)?;
//! let admin_cfg = Config { threads: 1, ..Config::default() };
//! let admin = Server::start(admin_cfg, Delimited::lines(1024), Admin { chat: chat.handle() })?;
//!
//! let chatter = TcpStream::connect(chat.local_addr())?;
//! let mut admin_client = TcpStream::connect(admin.local_addr())?;
//! # for c in [&chatter, &admin_client] {
//! #     c.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! # }
//! let mut answers = BufReader::new(admin_client.try_clone()?);
//! let mut line = String::new();
//! // The chatter's session may still be opening: ask until it counts (for 10 s at most).
//! for _ in 0..1000 {
//!     line.clear();
//!     admin_client.write_all(b"WHO\n")?;
//!     answers.read_line(&mut line)?;
//!     if line == "1 chatting\n" {
//!         break;
//!     }
//!     std::thread::sleep(std::time::Duration::from_millis(10));
//! }
//! assert_eq!(line, "1 chatting\n");
//! admin_client.write_all(b"SAY hello\n")?;
//! line.clear();
//! answers.read_line(&mut line)?;
//! assert_eq!(line, "sent to 1\n");
//! line.clear();
//! BufReader::new(&chatter).read_line(&mut line)?;
//! assert_eq!(line, "admin: hello\n");
//! # drop((chatter, admin_client, answers));
//! # admin.shutdown(std::time::Duration::from_secs(1));
//! # chat.shutdown(std::time::Duration::from_secs(1));
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
