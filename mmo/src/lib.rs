//! # cport-mmo — the IOCP course's game server on cport
//!
//! The course's term project: a 2000×2000 board, players who
//! log in, move one cell per request and see everything within a square view range, and
//! NPCs that move once a second while a player sees them and sleep otherwise.
//!
//! IOCP style: the game runs on the server layer's worker threads, whichever takes the
//! completion; there is no game thread and no world lock. Per-object view locks (two at a
//! time, lower id first), per-sector locks (leaves) and atomic positions — the design and
//! the lock order are in [`world`]'s docs. NPC moves are timers posted to the port
//! ([`ServerHandle::post_after`](cport_server::ServerHandle::post_after) → `on_timer`).
//!
//! Players persist ([`DbConfig`]: SQLite embedded, PostgreSQL, or none): the workers never
//! wait on the database. Loads and batches of saves are jobs for blocking DB threads, whose
//! results come back through the port as posted completions that own them
//! ([`ServerHandle::post_message`](cport_server::ServerHandle::post_message) → `on_message`),
//! the course's `EV_DB`. Changes are written behind, at most [`Config::save_interval`] after
//! they happen, at once on logout, and all of them at shutdown. Combat follows the course:
//! [`rules`].
//!
//! ```no_run
//! let server = cport_mmo::start(cport_mmo::Config { npcs: 1000, ..Default::default() })?;
//! println!("listening on {}", server.local_addr());
//! let stats = server.stats();
//! println!("{} players, {} NPCs awake", stats.players, stats.awake_npcs);
//! server.shutdown(std::time::Duration::from_secs(1));
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs)]

pub mod db;
mod game;
pub mod os;
mod persist;
pub mod protocol;
pub mod stress;
pub mod world;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport_server::cport::Backend;
use cport_server::{LengthPrefixed, Server, ServerHandle, ShutdownReport, SizeField};
use parking_lot::Mutex;

pub use db::{DbConfig, PlayerRow};
pub use game::{login_name, npc_position, rules, splitmix64, Rng};

use db::{DbPool, Store};
use game::{Counters, Game, GameHandler, NpcLife, Player};
use persist::Persist;
use world::{unpack, State, World};

/// Game server settings. `Config::default()` is the course's game on loopback, port 0.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Worker threads (`0` = available parallelism).
    pub threads: usize,
    /// Backend; `None` = the port's default (`CPORT_BACKEND`, else auto).
    pub backend: Option<Backend>,
    /// Width of the size field (`u8` is the course's default).
    pub header: SizeField,
    /// `VIEW_RANGE`: A sees B when `|dx| ≤ R` and `|dy| ≤ R`.
    pub view_range: u16,
    /// `MAX_USER`: player ids are `0..max_users` (a session gets a free one at login, the
    /// most recently freed first); logins when none is free get `SC_LOGIN_FAIL`.
    pub max_users: usize,
    /// NPCs, ids from `max_users` up.
    pub npcs: usize,
    /// Seeds NPC placement, login positions, teleports and NPC moves.
    pub seed: u64,
    /// Board width and height (`W_WIDTH`; the protocol's is 2000, tests use small boards).
    pub world_size: u16,
    /// How often an awake NPC moves (the course: once a second).
    pub npc_interval: Duration,
    /// Connections accepted beyond `max_users`, so that they can be told `SC_LOGIN_FAIL`
    /// rather than just closed (beyond that, the server layer closes them at once).
    pub overflow_sessions: usize,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    pub max_send_queue: usize,
    /// Where players are kept (`DbConfig::None`: nowhere, every login starts fresh).
    pub db: DbConfig,
    /// DB threads that load players at login (one more thread writes the saves).
    pub db_threads: usize,
    /// A changed player is written at most this long after the change (at once on logout
    /// and disconnect, and everything at shutdown).
    pub save_interval: Duration,
    /// How long a killed NPC stays dead.
    pub npc_respawn: Duration,
    /// How often a hurt player regains hit points.
    pub regen_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 0,
            backend: None,
            header: SizeField::U8,
            view_range: protocol::VIEW_RANGE,
            max_users: protocol::MAX_USER,
            npcs: 0,
            seed: 1,
            world_size: protocol::W_WIDTH,
            npc_interval: Duration::from_secs(1),
            overflow_sessions: 64,
            max_send_queue: 1 << 20,
            db: DbConfig::None,
            db_threads: 2,
            save_interval: Duration::from_secs(1),
            npc_respawn: Duration::from_secs(30),
            regen_interval: Duration::from_secs(5),
        }
    }
}

/// Counters of the game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Players on the board now.
    pub players: usize,
    /// NPCs awake now (a move timer pending or running for each).
    pub awake_npcs: usize,
    /// NPC move timers scheduled and not yet handled.
    pub npc_timers: usize,
    /// NPC moves so far.
    pub npc_moves: u64,
    /// Logins so far.
    pub logins: u64,
    /// `SC_LOGIN_FAIL`s sent so far.
    pub login_fails: u64,
    /// Sessions closed for what they sent.
    pub rejected: u64,
    /// Player moves and teleports so far.
    pub moves: u64,
    /// `CS_ATTACK`s so far.
    pub attacks: u64,
    /// NPCs killed so far.
    pub npc_kills: u64,
    /// NPCs respawned so far.
    pub npc_respawns: u64,
    /// Levels gained so far.
    pub level_ups: u64,
    /// Players killed (by NPCs striking back) so far.
    pub player_deaths: u64,
    /// `SC_STAT_CHANGE`s sent so far.
    pub stat_changes: u64,
}

/// What persistence did so far (all zero with `DbConfig::None`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DbStats {
    /// Players loaded by the DB threads (found or not).
    pub loads: u64,
    /// Loads that failed (each a `SC_LOGIN_FAIL`).
    pub load_errors: u64,
    /// Batches committed (one transaction each).
    pub batches: u64,
    /// Rows written by those batches.
    pub rows_saved: u64,
    /// Largest batch committed.
    pub max_batch: u64,
    /// Batches that failed (their rows are sent again).
    pub save_errors: u64,
    /// Batches not queued because the writer's queue was full (sent at the next tick).
    pub deferred: u64,
    /// Rows not yet known to be in the database.
    pub pending_rows: usize,
    /// Time the writer spent in save transactions.
    pub save_time: Duration,
    /// CPU time of the DB threads.
    pub cpu: Duration,
    /// Login latency (`CS_LOGIN` in → `SC_LOGIN_INFO` queued), µs: p50, p99, max, count.
    pub login_p50_us: u64,
    /// See `login_p50_us`.
    pub login_p99_us: u64,
    /// See `login_p50_us`.
    pub login_max_us: u64,
    /// Logins measured.
    pub login_count: u64,
    /// Rows written by the final write at shutdown.
    pub final_rows: usize,
}

impl std::fmt::Display for DbStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean = if self.batches > 0 {
            self.rows_saved as f64 / self.batches as f64
        } else {
            0.0
        };
        write!(
            f,
            "logins {} (latency p50 {} µs, p99 {} µs, max {} µs); loads {} ({} failed); saves {} rows in {} batches (mean {:.1}, max {}), {} failed, {} deferred, {} pending, {} written at shutdown; writer busy {:.1?}; DB threads CPU {:.1?}",
            self.login_count,
            self.login_p50_us,
            self.login_p99_us,
            self.login_max_us,
            self.loads,
            self.load_errors,
            self.rows_saved,
            self.batches,
            mean,
            self.max_batch,
            self.save_errors,
            self.deferred,
            self.pending_rows,
            self.final_rows,
            self.save_time,
            self.cpu
        )
    }
}

/// One object on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Its id.
    pub id: u32,
    /// Column.
    pub x: u16,
    /// Row.
    pub y: u16,
}

/// Where the players and the awake NPCs are (for maps).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Board width and height.
    pub world_size: u16,
    /// Players on the board.
    pub players: Vec<Placed>,
    /// NPCs awake.
    pub awake_npcs: Vec<Placed>,
}

/// A running game server.
pub struct MmoServer {
    server: Option<Server>,
    game: Arc<Game>,
}

impl std::fmt::Debug for MmoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmoServer")
            .field("addr", &self.handle().local_addr())
            .finish()
    }
}

/// Places the NPCs, binds, listens and starts the workers.
pub fn start(cfg: Config) -> io::Result<MmoServer> {
    let size = cfg.world_size.clamp(1, i16::MAX as u16);
    let npcs: Vec<(u16, u16)> = (0..cfg.npcs)
        .map(|i| npc_position(cfg.seed, i, size))
        .collect();
    if cfg.max_users + cfg.npcs > i32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many players and NPCs for i32 ids",
        ));
    }
    let max_sessions = cfg.max_users + cfg.overflow_sessions;
    // The database first: a file that is locked, read-only or corrupt, or a server that
    // cannot be reached, stops the start with a clear error.
    let (persist, stores) = match &cfg.db {
        DbConfig::None => (None, Vec::new()),
        db => {
            let fail = |e: String| io::Error::other(format!("database {db}: {e}"));
            let mut first = Store::open(db).map_err(fail)?;
            first.migrate().map_err(fail)?;
            let mut stores = vec![first];
            for _ in 0..cfg.db_threads.max(1) {
                stores.push(Store::open(db).map_err(fail)?);
            }
            let pool = DbPool::new(cfg.db_threads.max(1));
            (
                Some(Persist::new(db.clone(), pool, cfg.save_interval)),
                stores,
            )
        }
    };
    let game = Arc::new(Game {
        world: World::new(size, cfg.view_range, cfg.max_users, &npcs),
        free_ids: Mutex::new((0..cfg.max_users as u32).rev().collect()),
        player_of: (0..max_sessions)
            .map(|_| AtomicU32::new(game::NO_PLAYER))
            .collect(),
        last_move_time: (0..cfg.max_users).map(|_| AtomicU32::new(0)).collect(),
        header: cfg.header,
        npc_interval: cfg.npc_interval,
        rng: Rng::new(splitmix64(cfg.seed)),
        counters: Counters::default(),
        players: (0..cfg.max_users).map(|_| Player::new()).collect(),
        online: Mutex::new(Default::default()),
        npc_life: (0..cfg.npcs)
            .map(|_| {
                Mutex::new(NpcLife {
                    hp: rules::NPC_HP,
                    alive: true,
                })
            })
            .collect(),
        npc_spawn: npcs.iter().map(|&(x, y)| world::pack(x, y)).collect(),
        npc_respawn: cfg.npc_respawn,
        regen_interval: cfg.regen_interval,
        persist,
        login_us: Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                .expect("valid histogram bounds"),
        ),
    });
    let scfg = cport_server::Config {
        addr: cfg.addr,
        threads: cfg.threads,
        backend: cfg.backend,
        max_sessions,
        max_send_queue: cfg.max_send_queue,
        ..Default::default()
    };
    // The largest client packet is a chat of 100 bytes; a size field above that is a lie.
    let codec = LengthPrefixed::new(cfg.header)
        .max_packet(protocol::header_len(cfg.header) + protocol::CHAT_SIZE);
    let server = Server::start(scfg, codec, GameHandler(game.clone()))?;
    if let Some(p) = &game.persist {
        // Jobs queued before this wait in the queues. The first store did the migrations
        // and is not kept (each thread has its own connection).
        let mut stores = stores;
        stores.remove(0);
        p.pool.spawn(stores, server.handle())?;
    }
    Ok(MmoServer {
        server: Some(server),
        game,
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

    /// The game's counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.game.counters;
        Stats {
            players: c.players.load(Relaxed),
            awake_npcs: c.awake_npcs.load(Relaxed),
            npc_timers: c.npc_timers.load(Relaxed),
            npc_moves: c.npc_moves.load(Relaxed),
            logins: c.logins.load(Relaxed),
            login_fails: c.login_fails.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            moves: c.moves.load(Relaxed),
            attacks: c.attacks.load(Relaxed),
            npc_kills: c.npc_kills.load(Relaxed),
            npc_respawns: c.npc_respawns.load(Relaxed),
            level_ups: c.level_ups.load(Relaxed),
            player_deaths: c.player_deaths.load(Relaxed),
            stat_changes: c.stat_changes.load(Relaxed),
        }
    }

    /// What persistence did so far.
    pub fn db_stats(&self) -> DbStats {
        let g = &self.game;
        let h = g.login_us.lock();
        let mut s = DbStats {
            login_p50_us: h.value_at_quantile(0.5),
            login_p99_us: h.value_at_quantile(0.99),
            login_max_us: h.max(),
            login_count: h.len(),
            ..DbStats::default()
        };
        drop(h);
        if let Some(p) = &g.persist {
            let c = &p.pool.counters;
            s.loads = c.loads.load(Relaxed);
            s.load_errors = c.load_errors.load(Relaxed);
            s.batches = c.batches.load(Relaxed);
            s.rows_saved = c.rows_saved.load(Relaxed);
            s.max_batch = c.max_batch.load(Relaxed);
            s.save_errors = c.save_errors.load(Relaxed);
            s.deferred = p.deferred.load(Relaxed);
            s.pending_rows = p.pending();
            s.save_time = Duration::from_nanos(c.save_ns.load(Relaxed));
            s.cpu = p.pool.cpu();
        }
        s
    }

    /// The stats (hp, max_hp, exp, level) of the player with this id, if on the board.
    pub fn player_stats(&self, id: u32) -> Option<(i32, i32, i32, i32)> {
        let p = self.game.players.get(id as usize)?;
        if !p.login.lock().placed {
            return None;
        }
        let s = *p.stats.lock();
        Some((s.hp, s.max_hp, s.exp, s.level))
    }

    /// Whether NPC `id` is alive now (`None` if `id` is not an NPC).
    pub fn npc_alive(&self, id: u32) -> Option<bool> {
        let w = &self.game.world;
        let i = id.checked_sub(w.max_users)? as usize;
        Some(self.game.npc_life.get(i)?.lock().alive)
    }

    /// Where the players and the awake NPCs are now.
    pub fn snapshot(&self) -> Snapshot {
        let w = &self.game.world;
        let placed = |id: u32| {
            let (x, y) = unpack(w.pos(id));
            Placed { id, x, y }
        };
        let players = (0..w.max_users)
            .filter(|&id| w.objs[id as usize].view.lock().state == State::InGame)
            .map(placed)
            .collect();
        let awake_npcs = (0..w.npc_count())
            .filter(|&i| w.awake[i].load(Relaxed))
            .map(|i| placed(w.max_users + i as u32))
            .collect();
        Snapshot {
            world_size: w.size,
            players,
            awake_npcs,
        }
    }

    /// Where object `id` (player or NPC) is now.
    pub fn position(&self, id: u32) -> Option<(u16, u16)> {
        let w = &self.game.world;
        ((id as usize) < w.objs.len()).then(|| unpack(w.pos(id)))
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
        let final_rows = self.flush_all();
        let mut db = self.db_stats();
        db.final_rows = final_rows;
        (report, db)
    }

    /// Writes every row not known to be saved; returns how many.
    fn flush_all(&self) -> usize {
        let g = &self.game;
        let Some(p) = &g.persist else { return 0 };
        // No worker runs now: a player still on the board (a session not closed by the
        // deadline) is written too.
        for (id, pl) in g.players.iter().enumerate() {
            let l = pl.login.lock();
            if l.placed {
                let (x, y) = unpack(g.world.pos(id as u32));
                let s = *pl.stats.lock();
                p.put(PlayerRow {
                    name: l.name.clone(),
                    x,
                    y,
                    hp: s.hp,
                    max_hp: s.max_hp,
                    exp: s.exp,
                    level: s.level,
                });
            }
        }
        match p.final_flush(Duration::from_secs(10)) {
            Ok(n) => {
                tracing::info!("shutdown: {n} player rows written");
                n
            }
            Err(e) => {
                tracing::error!("shutdown: {e}");
                0
            }
        }
    }
}

impl Drop for MmoServer {
    /// Stops at once (see [`Server`]'s drop), then writes every unsaved row.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            drop(server);
            let _ = self.flush_all();
        }
    }
}
