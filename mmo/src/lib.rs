//! # cport-mmo — the IOCP course's game server on cport
//!
//! The course's term project (`shared/course-protocol.md`): a 2000×2000 board, players who
//! log in, move one cell per request and see everything within a square view range, and
//! NPCs that move once a second while a player sees them and sleep otherwise.
//!
//! IOCP style: the game runs on the server layer's worker threads, whichever takes the
//! completion; there is no game thread and no world lock. Per-object view locks (two at a
//! time, lower id first), per-sector locks (leaves) and atomic positions — the design and
//! the lock order are in [`world`]'s docs. NPC moves are timers posted to the port
//! ([`ServerHandle::post_after`](cport_server::ServerHandle::post_after) → `on_timer`).
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

mod game;
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

pub use game::{npc_position, splitmix64, Rng};

use game::{Counters, Game, GameHandler};
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
    server: Server,
    game: Arc<Game>,
}

impl std::fmt::Debug for MmoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmoServer")
            .field("addr", &self.server.local_addr())
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
    Ok(MmoServer { server, game })
}

impl MmoServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The server layer's handle (backend, metrics, port).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
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
        }
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

    /// Graceful shutdown of the server layer (see [`Server::shutdown`]).
    pub fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.server.shutdown(deadline)
    }
}
