//! The game on the worker threads of whatever network runs it (the server layer's, or a
//! [`Host`]'s): login (loaded from the database off the workers), move, teleport, chat,
//! combat, logout, and NPCs that move, die and respawn on timers posted to the port. See
//! [`crate::world`] for the locks.
//!
//! One `Game` and its `impl` blocks, by concern: this file holds the state (the `Game`
//! struct, players, NPC lives, counters) and the entry points that dispatch a packet, a
//! timer or a DB result; [`login`] (login, logout, the save tick), [`movement`] (move,
//! teleport), [`view`] (who sees whom, the ADD/REMOVE/MOVE packets), [`npc`] (wake, sleep,
//! moves, chases and attacks, death, respawn), [`combat`] (attack, experience, death, regeneration) and [`chat`]
//! hold the rest. The children call each other's methods (each `pub(super)`) but import
//! nothing from one another, except [`path`] (A*, a leaf that knows nothing of the game),
//! which `npc` uses; and this file imports nothing from them.

mod chat;
mod combat;
pub(crate) mod login;
mod movement;
pub(crate) mod npc;
mod path;
pub(crate) mod script_api;
mod view;
pub(crate) mod zone;

use std::collections::HashSet;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_server::SizeField;
use parking_lot::Mutex;

use crate::db::{Done, Persist};
use crate::net::{Conn, DbResult, Host};
use crate::rules;
use crate::world::World;
use cport_mmo_proto::splitmix64;
use cport_mmo_proto::{ClientPacket, ServerPacket};

/// `Game::player_of` of a session that has not logged in.
pub(crate) const NO_PLAYER: u32 = u32::MAX;

/// Timer keys beyond NPC ids (NPC move timers use the NPC's id).
const RESPAWN: u64 = 1 << 40;
const REGEN: u64 = 1 << 41;
const SAVE_TICK: u64 = 1 << 42;
/// Cluster: a hand-off's answer is overdue (value: the epoch it would have given).
const HANDOFF_TIMEOUT: u64 = 1 << 43;
/// Cluster, test hook: a transfer held back on purpose is due.
const DELAYED_TRANSFER: u64 = 1 << 44;
/// Cluster: a starting zone stops waiting for the gateways' `Relock`s.
const ZONE_GATE: u64 = 1 << 45;
/// Cluster: say an unanswered claim again (value: its epoch).
const CLAIM_RETRY: u64 = 1 << 46;
/// NPC scripts: a player's move an NPC saw (value: the player), for `event_player_move`.
const SCRIPT_MOVE: u64 = 1 << 52;
/// NPC scripts: an `API_set_timer` timer (value: the timer name's number).
const SCRIPT_TIMER: u64 = 1 << 53;
/// Script events wait for a worker's turn (`script_api`, `Gate`): run what waits.
const SCRIPT_DRAIN: u64 = 1 << 54;

/// Packets a session may send between `CS_LOGIN` and its `SC_LOGIN_INFO` (the load from the
/// database); beyond, the session is closed.
const MAX_PENDING: usize = 64;

/// A player's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PStats {
    pub hp: i32,
    pub max_hp: i32,
    pub exp: i32,
    pub level: i32,
}

impl PStats {
    fn new() -> PStats {
        let max_hp = rules::max_hp(rules::START_LEVEL);
        PStats {
            hp: max_hp,
            max_hp,
            exp: 0,
            level: rules::START_LEVEL,
        }
    }
}

/// Where a player slot's login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No login.
    Idle,
    /// `CS_LOGIN` taken, the row is being loaded; packets wait in `pending`.
    Loading,
    /// On the board.
    InGame,
    /// Logged out or refused: what the session still sends is ignored.
    Left,
    /// Cluster: being handed to another zone (its state sent, the answer awaited); the
    /// gateway holds its packets meanwhile.
    Moving,
}

/// A player slot's login, guarded by its own lock: taken first (before view, sector, stats
/// and NPC locks), by whoever handles the player's packets, its load result, its close, its
/// regeneration and the save tick. So a player's packets are never handled twice at once,
/// even when packets that waited for the load are replayed on the thread of the result.
pub(crate) struct Login<C> {
    pub phase: Phase,
    /// Bumped when the slot's login ends: a load result or timer of an older login is stale.
    pub gen: u64,
    pub name: String,
    pub session: Option<C>,
    pub pending: Vec<ClientPacket>,
    /// On the board (its row is saved when it leaves).
    pub placed: bool,
    pub asked: Instant,
    /// Cluster: the ownership epoch this zone holds the player at (0: not owned here).
    pub epoch: u32,
    /// Cluster: the gateway routes the player here at `epoch` (only then is its row written).
    pub confirmed: bool,
    /// Cluster: where a hand-off of this player to another zone is.
    pub handoff: crate::cluster::state::Handoff,
    /// Cluster: on a `Revoke`, keep a ghost of the player (the zone that does own it
    /// publishes it here) rather than take it off the board.
    pub ghost_if_revoked: bool,
    /// Cluster: the highest epoch this zone has offered the player to another zone at (a
    /// retried hand-off offers a higher one, so two attempts never share an epoch).
    pub offered: u32,
    /// Cluster: the incarnation of the player's gateway its session belongs to.
    pub gw_inc: u64,
    /// Cluster, at the name's home zone while the row loads: the gateway's `Resume` (the
    /// epoch to take the player at and the client's picture), if this load is one.
    pub resume: Option<(u32, crate::cluster::wire::Picture)>,
}

pub(crate) struct Player<C> {
    pub login: Mutex<Login<C>>,
    /// Taken after `login` (or alone, to read).
    pub stats: Mutex<PStats>,
    /// Changed since the last save tick.
    pub dirty: AtomicBool,
    /// A regeneration timer is pending.
    pub regen: AtomicBool,
}

impl<C> Player<C> {
    pub fn new() -> Player<C> {
        Player {
            login: Mutex::new(Login {
                phase: Phase::Idle,
                gen: 0,
                name: String::new(),
                session: None,
                pending: Vec::new(),
                placed: false,
                asked: Instant::now(),
                epoch: 0,
                confirmed: false,
                handoff: crate::cluster::state::Handoff::None,
                ghost_if_revoked: false,
                offered: 0,
                gw_inc: 0,
                resume: None,
            }),
            stats: Mutex::new(PStats::new()),
            dirty: AtomicBool::new(false),
            regen: AtomicBool::new(false),
        }
    }
}

/// An NPC's life, guarded by its own lock: taken before its view lock and the sectors, by
/// its move timer, by a hit, by its respawn (so a dead NPC never moves) and by a script's
/// step (`npc_step_toward`): whoever holds it is the NPC's one mover. Taken after a
/// player's login lock (an NPC's attack on a player takes the player's first).
pub(crate) struct NpcLife {
    pub hp: i32,
    pub alive: bool,
    /// The player it chases and attacks ([`NO_PLAYER`]: none, it walks at random).
    pub target: u32,
    /// Ticks left before an aggressive NPC looks for a target again, after a chase found no
    /// way: a target walled off would otherwise cost a whole search every tick.
    pub calm: u8,
}

impl NpcLife {
    /// Full health, no target.
    pub(crate) fn new() -> NpcLife {
        NpcLife {
            hp: rules::NPC_HP,
            alive: true,
            target: NO_PLAYER,
            calm: 0,
        }
    }
}

/// A counter-based random generator (splitmix64): any thread may draw from it; the sequence
/// depends only on the seed and the order of draws.
pub struct Rng(AtomicU64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        splitmix64(self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed))
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub players: AtomicUsize,
    pub awake_npcs: AtomicUsize,
    pub npc_timers: AtomicUsize,
    pub npc_moves: AtomicU64,
    pub npc_attacks: AtomicU64,
    pub logins: AtomicU64,
    pub login_fails: AtomicU64,
    pub rejected: AtomicU64,
    pub moves: AtomicU64,
    pub attacks: AtomicU64,
    pub npc_kills: AtomicU64,
    pub npc_respawns: AtomicU64,
    pub level_ups: AtomicU64,
    pub player_deaths: AtomicU64,
    pub stat_changes: AtomicU64,
}

/// The game state and logic, shared by every worker thread.
pub(crate) struct Game<H: Host> {
    pub world: World<H::Conn>,
    /// Player ids not in use (a stack: the most recently freed is reused first).
    pub free_ids: Mutex<Vec<u32>>,
    /// The player id of each session slot ([`NO_PLAYER`] before login).
    pub player_of: Box<[AtomicU32]>,
    /// Each player's last `CS_MOVE` `move_time` (0 after login), echoed by a teleport as the
    /// course server does.
    pub last_move_time: Box<[AtomicU32]>,
    pub header: SizeField,
    pub npc_interval: Duration,
    pub rng: Rng,
    pub counters: Counters,
    /// Per player id: login, stats.
    pub players: Box<[Player<H::Conn>]>,
    /// Names logged in (or logging in) now.
    pub online: Mutex<HashSet<String>>,
    /// Per NPC (`id - max_users`): hit points, alive; and where it (re)spawns.
    pub npc_life: Box<[Mutex<NpcLife>]>,
    pub npc_spawn: Box<[u32]>,
    /// Percent of NPCs that are aggressive (`Config::aggressive_npcs`), chosen by id from
    /// `seed`; and how far a chase goes (`Config::npc_give_up`).
    pub aggressive_pct: u8,
    pub seed: u64,
    pub give_up: u16,
    pub npc_respawn: Duration,
    pub regen_interval: Duration,
    /// `None` with `--db none`.
    pub persist: Option<Persist<H::ConnId>>,
    /// Login latency (µs, from `CS_LOGIN` to `SC_LOGIN_INFO` queued).
    pub login_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// `Some` when this game is one zone of a cluster.
    pub zone: Option<crate::cluster::state::ZoneState>,
    /// The NPCs' script (`None`: no scripts, `--npc-script` not given).
    pub scripts: Option<crate::script::Scripts>,
}

/// What every concern uses (encoding a packet, closing a session for what it sent), and the
/// dispatch of a player's packet to the concern that handles it.
impl<H: Host> Game<H> {
    fn encode(&self, p: ServerPacket) -> Bytes {
        p.encode(self.header).into()
    }

    fn reject(&self, session: &H::Conn, why: String) {
        self.counters.rejected.fetch_add(1, Relaxed);
        tracing::info!(session = %session.id(), peer = ?session.peer_addr(), "rejected: {why}");
        session.reject(why);
    }

    /// One packet of a player in the game (its login lock held).
    fn handle(&self, session: &H::Conn, id: u32, p: ClientPacket, l: &mut Login<H::Conn>) {
        match p {
            ClientPacket::Login { .. } => {
                self.reject(session, "CS_LOGIN when already logged in".into())
            }
            ClientPacket::Move {
                direction,
                move_time,
            } => {
                self.last_move_time[id as usize].store(move_time, Relaxed);
                let to = self.world.step(self.world.pos(id), direction.delta());
                self.relocate(session, id, to, move_time);
                self.zone_moved(session, id, to, move_time, false, l);
            }
            ClientPacket::Teleport => {
                let to = self.random_cell();
                let t = self.last_move_time[id as usize].load(Relaxed);
                self.relocate(session, id, to, t);
                self.zone_moved(session, id, to, t, true, l);
            }
            ClientPacket::Chat { mess } => self.chat(session, id, mess),
            ClientPacket::Attack => self.attack(session, id, l),
            ClientPacket::Logout => {
                // The id is freed when the session has closed (packets until then are ignored).
                l.phase = Phase::Left;
                self.depart(&session.server(), id, l);
                session.close_after_flush();
            }
        }
    }
}

/// The game's entry points, for whatever network it runs on (the server layer's handler
/// below; `Engine` for the others).
impl<H: Host> Game<H> {
    pub(crate) fn on_start(&self, server: &H) {
        if let Some(p) = &self.persist {
            let _ = server.post_after(p.interval, SAVE_TICK, 0);
        }
    }

    pub(crate) fn on_connect(&self, session: &H::Conn) {
        self.player_of[session.slot()].store(NO_PLAYER, Relaxed);
    }

    pub(crate) fn on_packet(&self, session: &H::Conn, packet: &[u8]) {
        let g = self;
        let p = match ClientPacket::decode(packet, g.header) {
            Ok(p) => p,
            Err(e) => return g.reject(session, e.to_string()),
        };
        let id = g.player_of[session.slot()].load(Relaxed);
        if id == NO_PLAYER {
            let ClientPacket::Login { name } = p else {
                return g.reject(session, format!("packet type {} before login", p.kind()));
            };
            return g.begin_login(session, &name);
        }
        let mut l = g.players[id as usize].login.lock();
        match l.phase {
            Phase::InGame => g.handle(session, id, p, &mut l),
            Phase::Loading if l.pending.len() < MAX_PENDING => l.pending.push(p),
            Phase::Loading => {
                drop(l);
                g.reject(
                    session,
                    format!("more than {MAX_PENDING} packets while logging in"),
                );
            }
            Phase::Idle | Phase::Left | Phase::Moving => {
                tracing::debug!(session = %session.id(), "packet after logout ignored");
            }
        }
    }

    pub(crate) fn on_close(&self, session: &H::Conn) {
        let g = self;
        let id = g.player_of[session.slot()].swap(NO_PLAYER, Relaxed);
        if id == NO_PLAYER {
            return;
        }
        let pl = &g.players[id as usize];
        let name = {
            let mut l = pl.login.lock();
            g.depart(&session.server(), id, &mut l);
            l.phase = Phase::Idle;
            l.gen += 1;
            l.pending.clear();
            l.session = None;
            pl.regen.store(false, SeqCst);
            std::mem::take(&mut l.name)
        };
        // Its row is in the write-behind table already: a new login of the name finds it.
        g.online.lock().remove(&name);
        g.free_ids.lock().push(id);
    }

    pub(crate) fn on_timer(&self, server: &H, key: u64, value: u64) {
        let g = self;
        let w = &g.world;
        let id = (key & 0xFFFF_FFFF) as u32;
        match key & !0xFFFF_FFFF {
            0 if w.is_npc(id) && (id as usize) < w.objs.len() => g.npc_tick(server, id),
            RESPAWN if w.is_npc(id) && (id as usize) < w.objs.len() => g.respawn(server, id),
            REGEN if !w.is_npc(id) => g.regen_tick(server, id, value),
            SAVE_TICK => g.save_tick(server),
            HANDOFF_TIMEOUT if !w.is_npc(id) => g.handoff_timeout(server, id, value as u32),
            DELAYED_TRANSFER => g.delayed_transfers(server),
            ZONE_GATE => g.open_gate(server),
            CLAIM_RETRY if !w.is_npc(id) => g.claim_retry(server, id, value as u32),
            tag @ (SCRIPT_MOVE | SCRIPT_TIMER) if w.is_npc(id) && (id as usize) < w.objs.len() => {
                g.script_event(server, tag, id, value)
            }
            SCRIPT_DRAIN => g.script_event(server, SCRIPT_DRAIN, 0, 0),
            _ => {}
        }
    }

    pub(crate) fn on_db(&self, server: &H, result: DbResult<H::ConnId>) {
        match result.0 {
            Done::Load { job, result } => self.load_done(server, job, result),
            Done::Save { rows, result } => {
                if let Some(p) = &self.persist {
                    p.saved(rows, result.is_ok());
                }
            }
        }
    }
}
