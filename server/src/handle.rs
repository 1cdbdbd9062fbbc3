//! The server's handle: what handlers and other threads reach a running server through — its
//! address, configuration, metrics and sessions, broadcast, and the posts and timers that come
//! back to the handler. It builds on `session` and `core`; `server` (the handler, the accept
//! loop, dispatch, shutdown) builds on it, and it knows nothing of `server`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cport::{Backend, Port, TimerId};

use crate::core::{
    Config, Core, Repeat, MAX_USER_KEY, REPEAT, USER_MESSAGE, USER_POST, USER_TIMER,
};
use crate::metrics::Metrics;
use crate::session::{Session, SessionId};
use crate::table::Slots;

/// Why the server refused a post or a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// The server's port was shut down.
    Closed,
    /// The key is above [`MAX_USER_KEY`] (the keys above it are the server's own).
    KeyTooLarge(u64),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Closed => f.write_str("the server's completion port is shut down"),
            PostError::KeyTooLarge(k) => {
                write!(f, "user key {k} is above MAX_USER_KEY ({MAX_USER_KEY})")
            }
        }
    }
}

impl std::error::Error for PostError {}

impl From<cport::Closed> for PostError {
    fn from(_: cport::Closed) -> Self {
        PostError::Closed
    }
}

/// A handle to a running server, for handlers and other threads. Cheap to clone.
///
/// Handlers get one in the server's own calls ([`Handler::on_start`](crate::Handler::on_start), `on_timer`, …) and from
/// any session ([`Session::server`]); other threads from [`Server::handle`](crate::Server::handle). A ticker that
/// sends `tick` to every session every 10 ms, on a timer it sets again at each tick (the
/// way to vary the delay each time; for a fixed period, [`ServerHandle::post_every`] does
/// it in one call):
///
/// ```
/// use std::io::Read;
/// use std::net::TcpStream;
/// use std::time::Duration;
///
/// use cport_server::{Bytes, Config, Handler, RawStream, Server, ServerHandle, Session};
///
/// const TICK: u64 = 1;
///
/// struct Ticker;
///
/// impl Handler for Ticker {
///     fn on_start(&self, server: &ServerHandle) {
///         server.post_after(Duration::from_millis(10), TICK, 0).unwrap();
///     }
///     fn on_packet(&self, _: &Session, _: &[u8]) {}
///     fn on_timer(&self, server: &ServerHandle, key: u64, _value: u64) {
///         if key == TICK {
///             server.broadcast_all(&Bytes::from_static(b"tick"), None);
///             // Refused once the server shuts down: the ticking stops.
///             let _ = server.post_after(Duration::from_millis(10), TICK, 0);
///         }
///     }
/// }
///
/// let server = Server::start(Config::default(), RawStream, Ticker)?;
/// let mut client = TcpStream::connect(server.local_addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// let mut got = [0u8; 8];
/// client.read_exact(&mut got)?;
/// assert_eq!(&got, b"ticktick");
/// assert_eq!(server.handle().sessions().len(), 1);
/// drop(client);
/// server.shutdown(Duration::from_secs(1));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) sessions: Arc<Slots<Session>>,
}

impl Session {
    /// The server this session belongs to.
    pub fn server(&self) -> ServerHandle {
        let (core, sessions) = self.parts();
        ServerHandle {
            core: core.clone(),
            sessions: sessions.clone(),
        }
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.core.local_addr)
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.core.local_addr
    }

    /// The port's backend.
    pub fn backend(&self) -> Backend {
        self.core.port.backend()
    }

    /// The completion port under the server.
    pub fn port(&self) -> &Port {
        &self.core.port
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.core.cfg
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        self.core.counters.snapshot()
    }

    /// The open session with this id, if it is still open.
    pub fn session(&self, id: SessionId) -> Option<Session> {
        self.sessions.get(id.0)
    }

    /// Every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.all()
    }

    /// Sends one packet to every open session but `except` (typically the sender; `None`:
    /// all), walking the session table without collecting a list; the bytes are shared, not
    /// copied per session. Returns how many sessions took it. The walk visits every slot
    /// (`Config::max_sessions`); for a known subset, [`ServerHandle::broadcast`] is cheaper.
    pub fn broadcast_all(&self, packet: &Bytes, except: Option<SessionId>) -> usize {
        let mut sent = 0;
        // Each session is cloned out of its slot's lock and sent to outside it.
        self.sessions.for_each(|s| {
            if Some(s.id()) != except && s.send(packet.clone()) {
                sent += 1;
            }
        });
        sent
    }

    /// Sends one packet to every session of `sessions` but `except` (typically the sender),
    /// without collecting a new list; the bytes are shared, not copied per session. Returns
    /// how many sessions took it.
    pub fn broadcast_except<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a Session>,
        except: SessionId,
        packet: &Bytes,
    ) -> usize {
        self.broadcast(sessions.into_iter().filter(|s| s.id() != except), packet)
    }

    /// Sends one packet to many sessions; the bytes are shared, not copied per session.
    /// Returns how many sessions took it.
    pub fn broadcast<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a Session>,
        packet: &Bytes,
    ) -> usize {
        sessions
            .into_iter()
            .filter(|s| s.send(packet.clone()))
            .count()
    }

    /// Posts an event to the handler's `on_posted` (`PostQueuedCompletionStatus`).
    /// `key` must be at most [`MAX_USER_KEY`], else [`PostError::KeyTooLarge`].
    pub fn post(&self, key: u64, value: u64) -> Result<(), PostError> {
        if key > MAX_USER_KEY {
            return Err(PostError::KeyTooLarge(key));
        }
        Ok(self.core.port.post(USER_POST, key as usize, value)?)
    }

    /// Posts a completion that owns `value` (the `EV_DB` pattern: a database or other
    /// blocking thread hands its result back to the port's workers): the handler's
    /// `on_message(key, message)` gets it exactly once, on a worker thread, and takes it back
    /// with [`Message::downcast`](cport::Message::downcast). `key` must be at most
    /// [`MAX_USER_KEY`], else [`PostError::KeyTooLarge`]; after shutdown the post is refused
    /// with [`PostError::Closed`]. Either way `value` is dropped; a value posted but not
    /// delivered before shutdown is dropped with the port's queue.
    ///
    /// ```
    /// use cport_server::{cport::Message, Config, Handler, RawStream, Server, ServerHandle, Session};
    /// use std::sync::mpsc;
    ///
    /// struct Db(mpsc::Sender<(u64, String)>);
    /// impl Handler for Db {
    ///     fn on_packet(&self, _: &Session, _: &[u8]) {}
    ///     fn on_message(&self, _: &ServerHandle, key: u64, m: Message) {
    ///         if let Ok(row) = m.downcast::<String>() {
    ///             let _ = self.0.send((key, row));
    ///         }
    ///     }
    /// }
    /// let (tx, rx) = mpsc::channel();
    /// let server = Server::start(Config::default(), RawStream, Db(tx))?;
    /// let handle = server.handle();
    /// // A blocking thread does the query, then posts its result to the port.
    /// std::thread::spawn(move || handle.post_message(7, String::from("alice at (3, 4)")))
    ///     .join()
    ///     .unwrap()
    ///     .unwrap();
    /// assert_eq!(rx.recv().unwrap(), (7, "alice at (3, 4)".to_string()));
    /// server.shutdown(std::time::Duration::from_secs(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "PostQueuedCompletionStatus")]
    pub fn post_message<T: std::any::Any + Send>(
        &self,
        key: u64,
        value: T,
    ) -> Result<(), PostError> {
        if key > MAX_USER_KEY {
            return Err(PostError::KeyTooLarge(key));
        }
        Ok(self.core.port.post_message(USER_MESSAGE, key, value)?)
    }

    /// Calls the handler's `on_timer(key, value)` after `delay`, through the port.
    /// `key` must be at most [`MAX_USER_KEY`], else [`PostError::KeyTooLarge`].
    pub fn post_after(&self, delay: Duration, key: u64, value: u64) -> Result<TimerId, PostError> {
        if key > MAX_USER_KEY {
            return Err(PostError::KeyTooLarge(key));
        }
        Ok(self.core.port.post_after(delay, USER_TIMER | key, value)?)
    }

    /// Cancels a timer; true if it had not fired.
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        self.core.port.cancel_timer(id)
    }

    /// Calls the handler's `on_timer(key, value)` every `interval`, through the port, until
    /// [`cancel_repeat`](ServerHandle::cancel_repeat) or shutdown. The first tick comes one
    /// interval from now, tick `n` at `n` intervals from now, never earlier: the ticks do not
    /// drift with the time each takes to deliver. Ticks missed while every worker was busy
    /// are skipped, not delivered in a burst. Ticks of one timer may overlap if `on_timer`
    /// takes longer than the interval (it runs on whichever worker is free).
    ///
    /// `key` must be at most [`MAX_USER_KEY`], else [`PostError::KeyTooLarge`]. Panics if
    /// `interval` is zero.
    ///
    /// A broadcast to every session every 10 ms, set when the server starts:
    ///
    /// ```
    /// use std::io::Read;
    /// use std::net::TcpStream;
    /// use std::time::Duration;
    ///
    /// use cport_server::{Bytes, Config, Handler, RawStream, Server, ServerHandle, Session};
    ///
    /// const TICK: u64 = 1;
    ///
    /// struct Ticker;
    ///
    /// impl Handler for Ticker {
    ///     fn on_start(&self, server: &ServerHandle) {
    ///         server
    ///             .post_every(Duration::from_millis(10), TICK, 0)
    ///             .expect("the server runs");
    ///     }
    ///     fn on_packet(&self, _: &Session, _: &[u8]) {}
    ///     fn on_timer(&self, server: &ServerHandle, key: u64, _value: u64) {
    ///         if key == TICK {
    ///             server.broadcast_all(&Bytes::from_static(b"tick"), None);
    ///         }
    ///     }
    /// }
    ///
    /// let server = Server::start(Config::default(), RawStream, Ticker)?;
    /// let mut client = TcpStream::connect(server.local_addr())?;
    /// client.set_read_timeout(Some(Duration::from_secs(10)))?;
    /// let mut got = [0u8; 8];
    /// client.read_exact(&mut got)?;
    /// assert_eq!(&got, b"ticktick");
    /// drop(client);
    /// server.shutdown(Duration::from_secs(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "CreateTimerQueueTimer")]
    pub fn post_every(
        &self,
        interval: Duration,
        key: u64,
        value: u64,
    ) -> Result<RepeatId, PostError> {
        assert!(!interval.is_zero(), "post_every: the interval is zero");
        if key > MAX_USER_KEY {
            return Err(PostError::KeyTooLarge(key));
        }
        // The timer goes into the table under the lock its ticks take, so a first tick that
        // comes at once still finds it.
        let mut repeats = self.core.repeats.lock();
        let id = repeats.next_id;
        let timer = self.core.port.post_after(interval, REPEAT, id)?;
        repeats.next_id += 1;
        let due = std::time::Instant::now() + interval;
        repeats.map.insert(
            id,
            Repeat {
                interval,
                key,
                value,
                due,
                timer,
            },
        );
        Ok(RepeatId(id))
    }

    /// Stops a timer of [`post_every`](ServerHandle::post_every): no tick starts after this
    /// returns (one already running on a worker finishes). True if it was running; false if
    /// it was cancelled before or ended with the server.
    pub fn cancel_repeat(&self, id: RepeatId) -> bool {
        let removed = self.core.repeats.lock().map.remove(&id.0);
        match removed {
            Some(r) => {
                self.core.port.cancel_timer(r.timer);
                true
            }
            None => false,
        }
    }
}

/// Names a repeating timer of [`ServerHandle::post_every`], to cancel it with
/// [`ServerHandle::cancel_repeat`]. Dropping it does not stop the timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepeatId(u64);
