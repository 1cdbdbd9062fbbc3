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

pub mod args;
pub mod db;
mod game;
pub mod net;
mod persist;
pub mod world;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport_mmo_proto as protocol;
use cport_mmo_proto::splitmix64;
use cport_server::cport::Backend;
use cport_server::{LengthPrefixed, Server, ServerHandle, ShutdownReport, SizeField};
use parking_lot::Mutex;

pub use db::{DbConfig, PlayerRow};
pub use game::{login_name, npc_position, rules, Rng};
pub use net::{Conn, DbResult, Host};

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
    /// Most sessions open at once (`None`: `max_users + overflow_sessions`); connections
    /// beyond are accepted and closed at once. Each session is an open file: `cport mmo`
    /// sets this to what the process's open-files limit can hold when that is less.
    pub max_sessions: Option<usize>,
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
            max_sessions: None,
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
    engine: Engine<ServerHandle>,
}

impl std::fmt::Debug for MmoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmoServer")
            .field("addr", &self.handle().local_addr())
            .finish()
    }
}

/// Most player and NPC ids together: ids are the protocol's `int` (i32), players
/// `0..max_users` and NPCs from `max_users` up, so the last id must be at most `i32::MAX`.
pub const MAX_IDS: usize = i32::MAX as usize + 1;

/// Places the NPCs, binds, listens and starts the workers. `max_users + npcs` above
/// [`MAX_IDS`] is refused (`InvalidInput`). Each session is one open file: a server holds
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
        ..Default::default()
    };
    let server = Server::start(scfg, engine.codec(), GameHandler(engine.game.clone()))?;
    engine.spawn_db(server.handle())?;
    Ok(MmoServer {
        server: Some(server),
        engine,
    })
}

/// The game itself, on any network that implements [`Host`] and [`Conn`]: the world, the
/// rules, the NPCs, login and persistence. [`start`] runs it on the server layer; a
/// benchmark peer runs it on another runtime by calling the `on_*` entry points the way the
/// server layer's handler does (each may be called on any thread, concurrently, except that
/// one connection's packets are handed over one at a time and in order, and its
/// [`Engine::on_close`] comes once, after its last packet).
pub struct Engine<H: Host> {
    game: Arc<Game<H>>,
    /// The DB threads' connections, until [`Engine::spawn_db`].
    stores: Mutex<Vec<Store>>,
    max_sessions: usize,
    max_packet: usize,
}

impl<H: Host> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

impl<H: Host> Engine<H> {
    /// Places the NPCs and opens the database (a file that is locked, read-only or corrupt,
    /// or a server that cannot be reached, is an error here). Nothing runs yet.
    pub fn new(cfg: &Config) -> io::Result<Engine<H>> {
        let size = cfg.world_size.clamp(1, i16::MAX as u16);
        // Ids go on the wire as the protocol's `int`: players `0..max_users`, NPCs after them.
        // Checked before anything is allocated for them.
        if cfg
            .max_users
            .checked_add(cfg.npcs)
            .is_none_or(|n| n > MAX_IDS)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "max_users {} + npcs {} is more ids than the protocol's i32 ids can carry (at most {MAX_IDS})",
                    cfg.max_users, cfg.npcs
                ),
            ));
        }
        let npcs: Vec<(u16, u16)> = (0..cfg.npcs)
            .map(|i| npc_position(cfg.seed, i, size))
            .collect();
        let max_sessions = cfg
            .max_sessions
            .unwrap_or(cfg.max_users + cfg.overflow_sessions)
            .max(1);
        let (persist, stores) = match &cfg.db {
            DbConfig::None => (None, Vec::new()),
            db => {
                let fail = |e: String| io::Error::other(format!("database {db}: {e}"));
                let mut first = Store::open(db).map_err(fail)?;
                first.migrate().map_err(fail)?;
                // The first store did the migrations and is not kept (each DB thread has its
                // own connection).
                let mut stores = Vec::new();
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
        Ok(Engine {
            game,
            stores: Mutex::new(stores),
            max_sessions,
            // The largest client packet is a chat of 100 bytes; a size field above that is a
            // lie.
            max_packet: protocol::header_len(cfg.header) + protocol::CHAT_SIZE,
        })
    }

    /// Most connections at once: `max_users` plus the overflow that is told
    /// `SC_LOGIN_FAIL`; [`Conn::slot`] must be below it. Beyond, close new connections at
    /// once.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The framing of client packets (a size field as the config says, at most a chat's
    /// length): a packet it refuses closes the connection.
    pub fn codec(&self) -> LengthPrefixed {
        LengthPrefixed::new(self.game.header).max_packet(self.max_packet)
    }

    /// Starts the DB threads, which post their results to `host` (nothing with `--db
    /// none`), and the save tick. Once, when `host` can take posts.
    pub fn spawn_db(&self, host: H) -> io::Result<()> {
        if let Some(p) = &self.game.persist {
            // Jobs queued before this wait in the queues.
            let stores = std::mem::take(&mut *self.stores.lock());
            p.pool.spawn(stores, host)?;
        }
        Ok(())
    }

    /// The server is up: starts the save tick (the server layer calls this from its
    /// `on_start`).
    pub fn on_start(&self, host: &H) {
        self.game.on_start(host);
    }

    /// A connection was accepted (before its first packet).
    #[inline]
    pub fn on_connect(&self, conn: &H::Conn) {
        self.game.on_connect(conn);
    }

    /// One whole packet of `conn` (framed by [`Engine::codec`]).
    #[inline]
    pub fn on_packet(&self, conn: &H::Conn, packet: &[u8]) {
        self.game.on_packet(conn, packet);
    }

    /// `conn` closed (once, after its last `on_packet`): its player leaves, its slot and id
    /// are free again.
    pub fn on_close(&self, conn: &H::Conn) {
        self.game.on_close(conn);
    }

    /// A timer posted with [`Host::post_after`] fired.
    #[inline]
    pub fn on_timer(&self, host: &H, key: u64, value: u64) {
        self.game.on_timer(host, key, value);
    }

    /// A result posted with [`Host::post_db`].
    pub fn on_db(&self, host: &H, result: DbResult<H::ConnId>) {
        self.game.on_db(host, result);
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

    /// Test hook (the `mmo_session` fuzz target; not part of the API): checks the world's
    /// invariants once and describes the first one broken. Every object on the board (and
    /// only those) is in exactly the sector of its position, inside the board; every view set
    /// is exactly the objects in range that are on the board (players see players and NPCs,
    /// NPCs see players); an object off the board sees nothing and is seen by none; a
    /// player has a session exactly while on the board; the player and awake-NPC counters
    /// match. Each lock is taken alone, so an object moving meanwhile can make it fail
    /// once: it is meant for a world at rest, and callers retry.
    #[doc(hidden)]
    pub fn check_world(&self) -> Result<(), String> {
        let g = &self.game;
        let w = &g.world;
        let n = w.objs.len();
        let mut on = vec![false; n];
        let mut sets: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut pos = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let life = w
                .is_npc(id)
                .then(|| g.npc_life[(id - w.max_users) as usize].lock().alive);
            let v = w.objs[id as usize].view.lock();
            let p = w.pos(id);
            let in_game = v.state == State::InGame;
            if let Some(alive) = life {
                if alive != in_game {
                    return Err(format!("NPC {id}: alive {alive}, state {:?}", v.state));
                }
            } else if v.session.is_some() != in_game {
                return Err(format!(
                    "player {id}: state {:?} but session {}",
                    v.state,
                    if v.session.is_some() { "set" } else { "none" }
                ));
            }
            let (x, y) = unpack(p);
            if x >= w.size || y >= w.size {
                return Err(format!("object {id} at ({x}, {y}), off a {} board", w.size));
            }
            let mut set: Vec<u32> = v.set.iter().copied().collect();
            set.sort_unstable();
            on[id as usize] = in_game;
            sets.push(set);
            pos.push(p);
        }
        for a in 0..n as u32 {
            let expected: Vec<u32> = if on[a as usize] {
                (0..n as u32)
                    .filter(|&b| {
                        b != a
                            && on[b as usize]
                            && !(w.is_npc(a) && w.is_npc(b))
                            && w.in_range(pos[a as usize], pos[b as usize])
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if sets[a as usize] != expected {
                return Err(format!(
                    "view set of {a} at {:?} ({}): {:?}, objects in range: {expected:?}",
                    unpack(pos[a as usize]),
                    if on[a as usize] {
                        "on the board"
                    } else {
                        "off the board"
                    },
                    sets[a as usize]
                ));
            }
        }
        let mut seen = vec![0u32; n];
        for (sector, id) in w.sector_members() {
            let Some(count) = seen.get_mut(id as usize) else {
                return Err(format!("unknown id {id} in sector {sector}"));
            };
            *count += 1;
            let want = w.sector_index(pos[id as usize]);
            if sector != want {
                return Err(format!(
                    "object {id} at {:?} is in sector {sector}, not {want}",
                    unpack(pos[id as usize])
                ));
            }
        }
        for id in 0..n {
            if seen[id] != u32::from(on[id]) {
                return Err(format!(
                    "object {id} ({}) is in {} sectors",
                    if on[id] {
                        "on the board"
                    } else {
                        "off the board"
                    },
                    seen[id]
                ));
            }
        }
        let players = on[..w.max_users as usize].iter().filter(|&&b| b).count();
        let counted = g.counters.players.load(Relaxed);
        if counted != players {
            return Err(format!(
                "{players} players on the board, counter says {counted}"
            ));
        }
        let awake = w.awake.iter().filter(|a| a.load(Relaxed)).count();
        let counted = g.counters.awake_npcs.load(Relaxed);
        if counted != awake {
            return Err(format!("{awake} NPCs awake, counter says {counted}"));
        }
        Ok(())
    }

    /// Test hook (the `mmo_session` fuzz target; not part of the API): the ids in the view
    /// set of object `id`, sorted (what its client must have been told about).
    #[doc(hidden)]
    pub fn view_set(&self, id: u32) -> Option<Vec<u32>> {
        let obj = self.game.world.objs.get(id as usize)?;
        let mut set: Vec<u32> = obj.view.lock().set.iter().copied().collect();
        set.sort_unstable();
        Some(set)
    }

    /// Writes every row not known to be saved; returns how many.
    pub fn flush_all(&self) -> usize {
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
