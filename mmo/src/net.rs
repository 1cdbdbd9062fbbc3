//! What the game needs from the network, as two small traits: a [`Host`] (post a timer,
//! post a database result, find a connection by id) and its [`Conn`]s (send a packet, close,
//! a slot number). The cport build implements them with the server layer
//! ([`ServerHandle`], [`Session`]); a benchmark peer can implement them with another
//! runtime (the `mmo-tokio` binary of the `cport-bench-peers` package does, with tokio) and run the
//! very same game through [`Engine`](crate::Engine).
//!
//! The game calls them with its view locks held (a send is queued under both view locks, so
//! that a client's packets about an object come in the order its view set changed): an
//! implementation must never block, wait for the network or call back into the game from
//! them.

use std::fmt::{Debug, Display};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cport_server::{CloseReason, ServerHandle, Session, SessionId};

use crate::cluster::wire::Msg;
use crate::db::Done;

/// The server a game runs on: timers and posted results come back to the game through it
/// ([`Engine::on_timer`](crate::Engine::on_timer), [`Engine::on_db`](crate::Engine::on_db)).
pub trait Host: Clone + Send + Sync + 'static {
    /// Its connections.
    type Conn: Conn<Host = Self>;
    /// A connection's id: names it for as long as it is open, and never another after.
    type ConnId: Copy + Send + Sync + Debug + Display + 'static;

    /// Calls `Engine::on_timer(key, value)` once, `delay` from now, on some worker. `false`
    /// when the server is shutting down (the timer will never fire).
    fn post_after(&self, delay: Duration, key: u64, value: u64) -> bool;

    /// Hands a database thread's result to a worker (`Engine::on_db`). `false` when the
    /// server is shutting down.
    fn post_db(&self, result: DbResult<Self::ConnId>) -> bool;

    /// The connection with this id, if it is still open.
    fn conn(&self, id: Self::ConnId) -> Option<Self::Conn>;

    /// Cluster only (a zone's host; a single server keeps the default, which does nothing):
    /// queues `msg` for zone `zone`'s inbox. Never blocks (batched, sent when a worker gets to
    /// it).
    fn to_zone(&self, zone: u16, msg: &Msg) {
        let _ = (zone, msg);
    }

    /// Cluster only: queues `msg` for gateway `gateway`'s inbox.
    fn to_gateway(&self, gateway: u16, msg: &Msg) {
        let _ = (gateway, msg);
    }

    /// Cluster only: the connection of session `session` on gateway `gateway`, whose player
    /// is `player` (`None` for a single server).
    fn remote(&self, gateway: u16, session: u64, player: u32) -> Option<Self::Conn> {
        let _ = (gateway, session, player);
        None
    }
}

/// One client's connection.
pub trait Conn: Clone + Send + Sync + 'static {
    /// The server it belongs to.
    type Host: Host<Conn = Self>;

    /// Queues a whole packet for sending (never blocks; a connection too slow to take what
    /// is queued is closed by the implementation).
    fn send(&self, packet: Bytes);
    /// Closes at once, for what the client sent (logged by the game with `why`).
    fn reject(&self, why: String);
    /// Closes once everything queued so far is sent; what arrives meanwhile is ignored.
    fn close_after_flush(&self);
    /// Its id.
    fn id(&self) -> <Self::Host as Host>::ConnId;
    /// A small dense number, below the server's most connections, unique among open ones.
    fn slot(&self) -> usize;
    /// The client's address.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// Its server.
    fn server(&self) -> Self::Host;
    /// Cluster only: the gateway and the session there this connection is (`None` for a
    /// connection of this process).
    fn route(&self) -> Option<(u16, u64)> {
        None
    }
}

/// The completion key of a DB result (the game's only message).
pub(crate) const DB_KEY: u64 = 1;

/// What a database thread posts back to the game (opaque: hand it to
/// [`Engine::on_db`](crate::Engine::on_db)).
#[derive(Debug)]
pub struct DbResult<I>(pub(crate) Done<I>);

impl Host for ServerHandle {
    type Conn = Session;
    type ConnId = SessionId;

    #[inline]
    fn post_after(&self, delay: Duration, key: u64, value: u64) -> bool {
        ServerHandle::post_after(self, delay, key, value).is_ok()
    }

    fn post_db(&self, result: DbResult<SessionId>) -> bool {
        self.post_message(DB_KEY, result).is_ok()
    }

    fn conn(&self, id: SessionId) -> Option<Session> {
        self.session(id)
    }
}

impl Conn for Session {
    type Host = ServerHandle;

    #[inline]
    fn send(&self, packet: Bytes) {
        // A session that refuses a packet is closing: the game hears of it in `on_close`.
        let _ = Session::send(self, packet);
    }

    fn reject(&self, why: String) {
        self.close(CloseReason::Rejected(why));
    }

    fn close_after_flush(&self) {
        Session::close_after_flush(self);
    }

    #[inline]
    fn id(&self) -> SessionId {
        Session::id(self)
    }

    #[inline]
    fn slot(&self) -> usize {
        Session::id(self).slot()
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        Session::peer_addr(self)
    }

    #[inline]
    fn server(&self) -> ServerHandle {
        Session::server(self)
    }
}
