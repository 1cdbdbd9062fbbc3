//! The game on cport's server layer: [`start`] runs an [`Engine`] under a
//! [`Server`](cport_server::Server) whose handler hands every packet, timer and DB result
//! to it; [`MmoServer`] is the running server.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cport_server::cport::Message;
use cport_server::{
    CloseReason, Handler, Server, ServerHandle, Session, SessionId, ShutdownReport,
};

use crate::config::Config;
use crate::engine::Engine;
use crate::game::Game;
use crate::net::{DbResult, DB_KEY};
use crate::stats::{DbStats, Snapshot, Stats};

/// A running game server.
pub struct MmoServer {
    server: Option<Server>,
    engine: Engine<ServerHandle>,
}

impl std::fmt::Debug for MmoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmoServer")
            .field("addr", &self.handle().local_addr())
            .finish()
    }
}

/// Places the NPCs, binds, listens and starts the workers. `max_users + npcs` above
/// [`MAX_IDS`](crate::MAX_IDS) is refused (`InvalidInput`). Each session is one open file: a server holds
/// at most its open-files limit less a few clients, whatever `max_users` says (`cport mmo`
/// warns at start when `max_users` is above that).
pub fn start(cfg: Config) -> io::Result<MmoServer> {
    let engine = Engine::<ServerHandle>::new(&cfg)?;
    let scfg = cport_server::Config {
        addr: cfg.addr,
        threads: cfg.threads,
        backend: cfg.backend,
        max_sessions: engine.max_sessions(),
        max_send_queue: cfg.max_send_queue,
        recv_pool: cfg.recv_pool,
        ..Default::default()
    };
    let server = Server::start(scfg, engine.codec(), GameHandler(engine.game.clone()))?;
    engine.spawn_db(server.handle())?;
    Ok(MmoServer {
        server: Some(server),
        engine,
    })
}

impl MmoServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle().local_addr()
    }

    /// The server layer's handle (backend, metrics, port).
    pub fn handle(&self) -> ServerHandle {
        self.server.as_ref().expect("running").handle()
    }

    /// The game (counters, positions, stats).
    pub fn engine(&self) -> &Engine<ServerHandle> {
        &self.engine
    }

    /// The game's counters now.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// What persistence did so far.
    pub fn db_stats(&self) -> DbStats {
        self.engine.db_stats()
    }

    /// The stats (hp, max_hp, exp, level) of the player with this id, if on the board.
    pub fn player_stats(&self, id: u32) -> Option<(i32, i32, i32, i32)> {
        self.engine.player_stats(id)
    }

    /// Whether NPC `id` is alive now (`None` if `id` is not an NPC).
    pub fn npc_alive(&self, id: u32) -> Option<bool> {
        self.engine.npc_alive(id)
    }

    /// Lua memory of the NPC scripts now, in bytes ([`Engine::script_memory`]).
    pub fn script_memory(&self) -> usize {
        self.engine.script_memory()
    }

    /// The NPC script read again and swapped in if it loads ([`Engine::reload_scripts`]:
    /// what a SIGHUP is meant to do).
    pub fn reload_scripts(&self) -> std::io::Result<()> {
        self.engine.reload_scripts()
    }

    /// Every NPC's script environment made now ([`Engine::prepare_scripts`]).
    pub fn prepare_scripts(&self) -> std::io::Result<()> {
        self.engine.prepare_scripts(&self.handle())
    }

    /// Where the players and the awake NPCs are now.
    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// Where object `id` (player or NPC) is now.
    pub fn position(&self, id: u32) -> Option<(u16, u16)> {
        self.engine.position(id)
    }

    /// Test hook: [`Engine::check_world`].
    #[doc(hidden)]
    pub fn check_world(&self) -> Result<(), String> {
        self.engine.check_world()
    }

    /// Test hook: [`Engine::view_set`].
    #[doc(hidden)]
    pub fn view_set(&self, id: u32) -> Option<Vec<u32>> {
        self.engine.view_set(id)
    }

    /// Graceful shutdown: the server layer's (see [`Server::shutdown`]: every session
    /// flushed and closed, so every player's row is written behind), then the DB threads
    /// finish their queues, then every row not yet known to be saved is written on this
    /// thread (an error is logged, with how many rows were lost).
    pub fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.shutdown_with_db(deadline).0
    }

    /// [`MmoServer::shutdown`], and what persistence did in all (the final write included:
    /// [`DbStats::final_rows`]).
    pub fn shutdown_with_db(mut self, deadline: Duration) -> (ShutdownReport, DbStats) {
        let report = self.server.take().expect("running").shutdown(deadline);
        let final_rows = self.engine.flush_all();
        let mut db = self.db_stats();
        db.final_rows = final_rows;
        (report, db)
    }
}

impl Drop for MmoServer {
    /// Stops at once (see [`Server`]'s drop), then writes every unsaved row.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            drop(server);
            let _ = self.engine.flush_all();
        }
    }
}

/// The server layer's handler: the game on cport.
pub(crate) struct GameHandler(pub Arc<Game<ServerHandle>>);

impl Handler for GameHandler {
    fn on_start(&self, server: &ServerHandle) {
        self.0.on_start(server);
    }

    #[inline]
    fn on_connect(&self, session: &Session) {
        self.0.on_connect(session);
    }

    #[inline]
    fn on_packet(&self, session: &Session, packet: &[u8]) {
        self.0.on_packet(session, packet);
    }

    fn on_close(&self, session: &Session, _reason: &CloseReason) {
        self.0.on_close(session);
    }

    #[inline]
    fn on_timer(&self, server: &ServerHandle, key: u64, value: u64) {
        self.0.on_timer(server, key, value);
    }

    fn on_message(&self, server: &ServerHandle, key: u64, message: Message) {
        if key != DB_KEY {
            return;
        }
        match message.downcast::<DbResult<SessionId>>() {
            Ok(result) => self.0.on_db(server, result),
            Err(_) => tracing::error!("a message of an unknown type on the DB key"),
        }
    }
}
