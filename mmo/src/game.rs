//! The game on the server layer's worker threads: login (loaded from the database off the
//! workers), move, teleport, chat, combat, logout, and NPCs that move, die and respawn on
//! timers posted to the port. See [`crate::world`] for the locks.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_server::cport::Message;
use cport_server::{CloseReason, Handler, ServerHandle, Session, SessionId, SizeField};
use parking_lot::Mutex;

use crate::db::{Done, LoadJob, PlayerRow, DB_KEY};
use crate::net::{Conn, DbResult, Host};
use crate::persist::Persist;
use crate::world::{pack, unpack, State, World};
use cport_mmo_proto::splitmix64;
use cport_mmo_proto::{ClientPacket, Direction, Name, ServerPacket, NAME_SIZE};

/// `Game::player_of` of a session that has not logged in.
pub(crate) const NO_PLAYER: u32 = u32::MAX;

/// The numbers of combat (see `mmo/README.md`).
pub mod rules {
    /// A new player's level.
    pub const START_LEVEL: i32 = 1;
    /// Most hit points at `level`: 100, then 20 more per level.
    pub fn max_hp(level: i32) -> i32 {
        100 + 20 * (level.max(1) - 1)
    }
    /// Damage of one of a player's hits at `level` to each NPC it reaches: 10, then 5 more
    /// per level.
    pub fn damage(level: i32) -> i32 {
        10 + 5 * (level.max(1) - 1)
    }
    /// Experience needed to go from `level` to the next (it is spent: `exp` starts again
    /// from what is left over).
    pub fn exp_to_next(level: i32) -> i32 {
        100 * level.max(1)
    }
    /// An NPC's hit points (when it spawns and respawns).
    pub const NPC_HP: i32 = 30;
    /// Experience for killing an NPC.
    pub const NPC_EXP: i32 = 20;
    /// An NPC that survives a hit strikes back the attacker for this much.
    pub const NPC_HIT: i32 = 5;
    /// Hit points a hurt player regains at each regeneration tick: a tenth of `max_hp`
    /// (at least 1).
    pub fn regen(max_hp: i32) -> i32 {
        (max_hp / 10).max(1)
    }
}

/// Timer keys beyond NPC ids (NPC move timers use the NPC's id).
const RESPAWN: u64 = 1 << 40;
const REGEN: u64 = 1 << 41;
const SAVE_TICK: u64 = 1 << 42;

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
            }),
            stats: Mutex::new(PStats::new()),
            dirty: AtomicBool::new(false),
            regen: AtomicBool::new(false),
        }
    }
}

/// An NPC's life, guarded by its own lock: taken before its view lock and the sectors, by
/// its move timer, by a hit, and by its respawn (so a dead NPC never moves).
pub(crate) struct NpcLife {
    pub hp: i32,
    pub alive: bool,
}

/// A login name: the bytes before the first NUL (as a C client's `char name[20]` reads),
/// which must be 1..=20 bytes of UTF-8 without control characters.
pub fn login_name(raw: &Name) -> Result<String, &'static str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(NAME_SIZE);
    if end == 0 {
        return Err("empty name");
    }
    let s = std::str::from_utf8(&raw[..end]).map_err(|_| "name is not valid UTF-8")?;
    if s.chars().any(char::is_control) {
        return Err("control characters in the name");
    }
    Ok(s.to_string())
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

/// Where NPC `i` starts on a `size`-wide board for this seed (deterministic).
pub fn npc_position(seed: u64, i: usize, size: u16) -> (u16, u16) {
    let r =
        splitmix64(seed ^ 0xA5A5_5A5A_0F0F_F0F0 ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    (
        (r % u64::from(size)) as u16,
        ((r >> 32) % u64::from(size)) as u16,
    )
}

#[derive(Default)]
pub(crate) struct Counters {
    pub players: AtomicUsize,
    pub awake_npcs: AtomicUsize,
    pub npc_timers: AtomicUsize,
    pub npc_moves: AtomicU64,
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
    pub npc_respawn: Duration,
    pub regen_interval: Duration,
    /// `None` with `--db none`.
    pub persist: Option<Persist<H::ConnId>>,
    /// Login latency (µs, from `CS_LOGIN` to `SC_LOGIN_INFO` queued).
    pub login_us: Mutex<hdrhistogram::Histogram<u64>>,
}

/// The packets about the object being handled that go to others, each encoded at most once
/// (most moves need only the MOVE).
struct Mine {
    id: u32,
    pos: u32,
    name: Name,
    /// `SC_MOVE_OBJECT` for those who saw it and still do (`None` for login and leave).
    mv: Option<Bytes>,
    add: OnceCell<Bytes>,
    remove: OnceCell<Bytes>,
}

impl<H: Host> Game<H> {
    fn encode(&self, p: ServerPacket) -> Bytes {
        p.encode(self.header).into()
    }

    fn add_packet(&self, id: u32, pos: u32, name: &Name) -> Bytes {
        let (x, y) = unpack(pos);
        self.encode(ServerPacket::AddObject {
            id: id as i32,
            x: x as i16,
            y: y as i16,
            name: *name,
        })
    }

    fn move_packet(&self, id: u32, pos: u32, move_time: u32) -> Bytes {
        let (x, y) = unpack(pos);
        self.encode(ServerPacket::MoveObject {
            id: id as i32,
            x: x as i16,
            y: y as i16,
            move_time,
        })
    }

    fn mine(&self, id: u32, pos: u32, name: Name, mv: Option<Bytes>) -> Mine {
        Mine {
            id,
            pos,
            name,
            mv,
            add: OnceCell::new(),
            remove: OnceCell::new(),
        }
    }

    fn mine_add(&self, m: &Mine) -> Bytes {
        m.add
            .get_or_init(|| self.add_packet(m.id, m.pos, &m.name))
            .clone()
    }

    fn mine_remove(&self, m: &Mine) -> Bytes {
        m.remove
            .get_or_init(|| self.encode(ServerPacket::RemoveObject { id: m.id as i32 }))
            .clone()
    }

    fn random_cell(&self) -> u32 {
        let r = self.rng.next_u64();
        let s = u64::from(self.world.size);
        pack((r % s) as u16, ((r >> 32) % s) as u16)
    }

    fn reject(&self, session: &H::Conn, why: String) {
        self.counters.rejected.fetch_add(1, Relaxed);
        tracing::info!(session = %session.id(), peer = ?session.peer_addr(), "rejected: {why}");
        session.reject(why);
    }

    /// Brings "`me` sees `other`" (and the converse) in line with where both are now, under
    /// both view locks (lower id first), sending the packets before unlocking.
    fn reconcile(&self, srv: &H, me: u32, other: u32, mine: &Mine) {
        let w = &self.world;
        if me == other || (w.is_npc(me) && w.is_npc(other)) {
            return;
        }
        let (lo, hi) = (me.min(other), me.max(other));
        let mut g_lo = w.objs[lo as usize].view.lock();
        let mut g_hi = w.objs[hi as usize].view.lock();
        let (m, o) = if me == lo {
            (&mut *g_lo, &mut *g_hi)
        } else {
            (&mut *g_hi, &mut *g_lo)
        };
        let other_pos = w.pos(other);
        let now = m.state == State::InGame
            && o.state == State::InGame
            && w.in_range(w.pos(me), other_pos);
        let was = m.set.contains(&other);
        match (was, now) {
            (true, true) => {
                if let (Some(mv), Some(s)) = (&mine.mv, &o.session) {
                    s.send(mv.clone());
                }
            }
            (false, true) => {
                m.set.insert(other);
                o.set.insert(me);
                if let Some(s) = &m.session {
                    s.send(self.add_packet(other, other_pos, &o.name));
                }
                if let Some(s) = &o.session {
                    s.send(self.mine_add(mine));
                }
                if w.is_npc(other) {
                    self.wake(srv, other);
                } else if w.is_npc(me) {
                    self.wake(srv, me);
                }
            }
            (true, false) => {
                m.set.remove(&other);
                o.set.remove(&me);
                if let Some(s) = &m.session {
                    s.send(self.encode(ServerPacket::RemoveObject { id: other as i32 }));
                }
                if let Some(s) = &o.session {
                    s.send(self.mine_remove(mine));
                }
            }
            (false, false) => {}
        }
    }

    /// Reconciles `me` with everything near `pos` and everything in its view set.
    fn reconcile_all(&self, srv: &H, me: u32, pos: u32, mine: &Mine) {
        let w = &self.world;
        let mut cands: Vec<u32> = w.objs[me as usize]
            .view
            .lock()
            .set
            .iter()
            .copied()
            .collect();
        w.near(pos, !w.is_npc(me), &mut cands);
        cands.sort_unstable();
        cands.dedup();
        for c in cands {
            self.reconcile(srv, me, c, mine);
        }
    }

    /// An NPC came into some player's view: if it slept, schedule its first move.
    fn wake(&self, srv: &H, npc: u32) {
        let i = (npc - self.world.max_users) as usize;
        if self.world.awake[i]
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            self.counters.awake_npcs.fetch_add(1, Relaxed);
            self.schedule(srv, npc);
        }
    }

    fn schedule(&self, srv: &H, npc: u32) {
        self.counters.npc_timers.fetch_add(1, Relaxed);
        if !srv.post_after(self.npc_interval, u64::from(npc), 0) {
            // The port is shutting down: the NPC sleeps.
            self.counters.npc_timers.fetch_sub(1, Relaxed);
            self.world.awake[(npc - self.world.max_users) as usize].store(false, SeqCst);
            self.counters.awake_npcs.fetch_sub(1, Relaxed);
        }
    }

    /// An NPC's move timer fired: move one random cell if a player sees it, else sleep.
    fn npc_tick(&self, srv: &H, npc: u32) {
        let w = &self.world;
        self.counters.npc_timers.fetch_sub(1, Relaxed);
        let i = (npc - w.max_users) as usize;
        // Held for the whole move: a hit cannot kill it halfway (a dead NPC never moves).
        let life = self.npc_life[i].lock();
        {
            let mut v = w.objs[npc as usize].view.lock();
            if v.set.is_empty() || !life.alive {
                // Decided under the NPC's view lock: a player adding it to its view after
                // this finds `awake` false and wakes it again.
                w.awake[i].store(false, SeqCst);
                // A sleeping NPC gives its view set's memory back (once per sleep): kept,
                // every NPC ever seen would hold an allocation for the server's whole life
                // (the soak's heap grew with the NPCs its logins had woken).
                if v.set.is_empty() {
                    v.set.shrink_to_fit();
                }
                self.counters.awake_npcs.fetch_sub(1, Relaxed);
                return;
            }
        }
        let dir = Direction::ALL[(self.rng.next_u64() % 4) as usize];
        let from = w.pos(npc);
        let to = w.step(from, dir.delta());
        w.set_pos(npc, to);
        w.sector_move(npc, from, to);
        let name = w.objs[npc as usize].view.lock().name;
        let mine = self.mine(npc, to, name, Some(self.move_packet(npc, to, 0)));
        self.reconcile_all(srv, npc, to, &mine);
        self.counters.npc_moves.fetch_add(1, Relaxed);
        self.schedule(srv, npc);
        drop(life);
    }

    /// Puts player `id` on the board where `row` says, with its stats; sends
    /// `SC_LOGIN_INFO`, then the ADDs both ways.
    fn place(&self, session: &H::Conn, id: u32, row: &PlayerRow) {
        let w = &self.world;
        let pos = pack(row.x, row.y);
        let name = cport_mmo_proto::name(&row.name);
        *self.players[id as usize].stats.lock() = PStats {
            hp: row.hp,
            max_hp: row.max_hp,
            exp: row.exp,
            level: row.level,
        };
        {
            let mut v = w.objs[id as usize].view.lock();
            debug_assert!(v.set.is_empty() && v.state != State::InGame);
            v.set.clear();
            w.set_pos(id, pos);
            v.name = name;
            v.session = Some(session.clone());
            v.state = State::InGame;
            self.last_move_time[id as usize].store(0, Relaxed);
            // Under the lock: before any SC_ADD_OBJECT another thread may send it.
            session.send(self.encode(ServerPacket::LoginInfo {
                id: id as i32,
                hp: row.hp,
                max_hp: row.max_hp,
                exp: row.exp,
                level: row.level,
                x: row.x as i16,
                y: row.y as i16,
            }));
        }
        self.counters.players.fetch_add(1, Relaxed);
        self.counters.logins.fetch_add(1, Relaxed);
        w.sector_insert(id, pos);
        let mine = self.mine(id, pos, name, None);
        self.reconcile_all(&session.server(), id, pos, &mine);
    }

    /// A new player's row: default stats at a random free cell (a few tries, then any).
    fn new_row(&self, name: &str) -> PlayerRow {
        let mut cell = self.random_cell();
        for _ in 0..16 {
            if !self.world.occupied(cell) {
                break;
            }
            cell = self.random_cell();
        }
        let (x, y) = unpack(cell);
        let s = PStats::new();
        PlayerRow {
            name: name.to_string(),
            x,
            y,
            hp: s.hp,
            max_hp: s.max_hp,
            exp: s.exp,
            level: s.level,
        }
    }

    /// A stored row made safe for this board and these rules (the database is not trusted
    /// to hold a position on the board or a sane level).
    fn sanitize(&self, mut row: PlayerRow) -> PlayerRow {
        let max = self.world.size - 1;
        row.x = row.x.min(max);
        row.y = row.y.min(max);
        row.level = row.level.clamp(1, 10_000);
        row.max_hp = rules::max_hp(row.level);
        row.hp = if row.hp <= 0 {
            row.max_hp
        } else {
            row.hp.min(row.max_hp)
        };
        row.exp = row.exp.clamp(0, rules::exp_to_next(row.level) - 1);
        row
    }

    /// Refuses a login: `SC_LOGIN_FAIL`, a logged reason, and the session closes once it is
    /// sent (what it sends meanwhile is ignored).
    fn login_fail(&self, session: &H::Conn, why: &str) {
        self.counters.login_fails.fetch_add(1, Relaxed);
        tracing::info!(session = %session.id(), peer = ?session.peer_addr(), "SC_LOGIN_FAIL: {why}");
        session.send(self.encode(ServerPacket::LoginFail));
        session.close_after_flush();
    }

    /// `CS_LOGIN` of a session that has no player yet.
    fn begin_login(&self, session: &H::Conn, raw: &Name) {
        let name = match login_name(raw) {
            Ok(n) => n,
            Err(why) => return self.login_fail(session, why),
        };
        if !self.online.lock().insert(name.clone()) {
            return self.login_fail(session, &format!("{name:?} is already logged in"));
        }
        let Some(id) = self.free_ids.lock().pop() else {
            self.online.lock().remove(&name);
            return self.login_fail(session, "server full");
        };
        self.player_of[session.slot()].store(id, Relaxed);
        let mut l = self.players[id as usize].login.lock();
        l.phase = Phase::Loading;
        l.name = name.clone();
        l.session = Some(session.clone());
        l.pending.clear();
        l.asked = Instant::now();
        let Some(p) = &self.persist else {
            let row = self.new_row(&name);
            return self.finish_login(session, id, &mut l, Ok(Some(row)));
        };
        if let Some(row) = p.get(&name) {
            // Written behind, not committed yet: newer than the database's row.
            return self.finish_login(session, id, &mut l, Ok(Some(row)));
        }
        let job = LoadJob {
            session: session.id(),
            id,
            gen: l.gen,
            name,
        };
        if p.pool.loads.try_send(job).is_err() {
            self.finish_login(
                session,
                id,
                &mut l,
                Err("the database's queue is full".into()),
            );
        }
    }

    /// The player's row is here (or could not be had): on the board, then the packets that
    /// waited are handled in order; or `SC_LOGIN_FAIL`.
    fn finish_login(
        &self,
        session: &H::Conn,
        id: u32,
        l: &mut Login<H::Conn>,
        row: Result<Option<PlayerRow>, String>,
    ) {
        let row = match row {
            Ok(Some(row)) => self.sanitize(row),
            Ok(None) => {
                let row = self.new_row(&l.name);
                // Created in the database at the next save tick.
                self.players[id as usize].dirty.store(true, Relaxed);
                row
            }
            Err(e) => {
                l.phase = Phase::Left;
                l.pending.clear();
                return self.login_fail(session, &format!("database error: {e}"));
            }
        };
        self.place(session, id, &row);
        l.placed = true;
        if row.hp < row.max_hp {
            self.start_regen(&session.server(), id, l.gen);
        }
        let us = l.asked.elapsed().as_micros() as u64;
        let _ = self.login_us.lock().record(us.max(1));
        for p in std::mem::take(&mut l.pending) {
            if l.phase != Phase::Loading {
                break; // a CS_LOGOUT among them
            }
            self.handle(session, id, p, l);
        }
        if l.phase == Phase::Loading {
            l.phase = Phase::InGame;
        }
    }

    /// A load came back from a DB thread.
    fn load_done(&self, srv: &H, job: LoadJob<H::ConnId>, row: Result<Option<PlayerRow>, String>) {
        let Some(session) = srv.conn(job.session) else {
            return; // it closed: its `on_close` ends the login
        };
        let id = job.id;
        let mut l = self.players[id as usize].login.lock();
        if l.gen != job.gen || l.phase != Phase::Loading || l.placed {
            return; // stale: that login ended
        }
        self.finish_login(&session, id, &mut l, row);
    }

    /// The player's row now.
    fn row(&self, id: u32, l: &Login<H::Conn>) -> PlayerRow {
        let (x, y) = unpack(self.world.pos(id));
        let s = *self.players[id as usize].stats.lock();
        PlayerRow {
            name: l.name.clone(),
            x,
            y,
            hp: s.hp,
            max_hp: s.max_hp,
            exp: s.exp,
            level: s.level,
        }
    }

    /// Logout or disconnect: the player's row goes to the database at once, and it leaves
    /// the board.
    fn depart(&self, srv: &H, id: u32, l: &mut Login<H::Conn>) {
        if l.placed {
            if let Some(p) = &self.persist {
                p.put(self.row(id, l));
                p.flush(Some(&l.name));
            }
            self.players[id as usize].dirty.store(false, Relaxed);
            l.placed = false;
        }
        self.leave(srv, id);
    }

    /// The save tick: rows of the players changed since the last tick are written behind,
    /// with those whose save failed; then the next tick.
    fn save_tick(&self, srv: &H) {
        let Some(p) = &self.persist else { return };
        for (id, pl) in self.players.iter().enumerate() {
            if pl.dirty.swap(false, Relaxed) {
                let l = pl.login.lock();
                if l.placed {
                    p.put(self.row(id as u32, &l));
                }
            }
        }
        p.flush(None);
        let _ = srv.post_after(p.interval, SAVE_TICK, 0);
    }

    /// A regeneration timer for a hurt player (login `gen`), unless one is pending.
    fn start_regen(&self, srv: &H, id: u32, gen: u64) {
        let pl = &self.players[id as usize];
        if !pl.regen.swap(true, SeqCst)
            && !srv.post_after(self.regen_interval, REGEN | u64::from(id), gen)
        {
            pl.regen.store(false, SeqCst);
        }
    }

    /// A regeneration tick: heal, tell the player, and again while still hurt.
    fn regen_tick(&self, srv: &H, id: u32, gen: u64) {
        let pl = &self.players[id as usize];
        let l = pl.login.lock();
        if l.gen != gen || !l.placed {
            return; // that login ended (its end cleared `regen`)
        }
        let mut s = pl.stats.lock();
        let before = *s;
        s.hp = (s.hp + rules::regen(s.max_hp)).min(s.max_hp);
        let now = *s;
        drop(s);
        if now != before {
            pl.dirty.store(true, Relaxed);
            if let Some(session) = &l.session {
                self.stat_change(session, now);
            }
        }
        if now.hp < now.max_hp {
            if !srv.post_after(self.regen_interval, REGEN | u64::from(id), gen) {
                pl.regen.store(false, SeqCst);
            }
        } else {
            pl.regen.store(false, SeqCst);
        }
    }

    fn stat_change(&self, session: &H::Conn, s: PStats) {
        self.counters.stat_changes.fetch_add(1, Relaxed);
        session.send(self.encode(ServerPacket::StatChange {
            hp: s.hp,
            max_hp: s.max_hp,
            exp: s.exp,
            level: s.level,
        }));
    }

    /// A system message to one player (`SC_CHAT` with the player's own id).
    fn system_chat(&self, session: &H::Conn, id: u32, text: String) {
        let mut mess = text.into_bytes();
        mess.truncate(cport_mmo_proto::CHAT_SIZE);
        session.send(self.encode(ServerPacket::Chat {
            id: id as i32,
            mess,
        }));
    }

    /// `CS_ATTACK`: one hit on every live NPC on the four cells next to the player.
    fn attack(&self, session: &H::Conn, id: u32, gen: u64) {
        let w = &self.world;
        let srv = session.server();
        self.counters.attacks.fetch_add(1, Relaxed);
        let pos = w.pos(id);
        let mut cells: Vec<u32> = Direction::ALL
            .iter()
            .map(|d| w.step(pos, d.delta()))
            .filter(|&c| c != pos)
            .collect();
        cells.sort_unstable();
        cells.dedup();
        let mut targets = Vec::new();
        w.npcs_on(&cells, &mut targets);
        let pl = &self.players[id as usize];
        let before = *pl.stats.lock();
        for npc in targets {
            let i = (npc - w.max_users) as usize;
            let mut life = self.npc_life[i].lock();
            if !life.alive {
                continue;
            }
            let level = pl.stats.lock().level;
            let dmg = rules::damage(level);
            life.hp -= dmg;
            if life.hp <= 0 {
                life.alive = false;
                self.kill_npc(&srv, npc);
                drop(life);
                let mut s = pl.stats.lock();
                s.exp += rules::NPC_EXP;
                while s.exp >= rules::exp_to_next(s.level) {
                    s.exp -= rules::exp_to_next(s.level);
                    s.level += 1;
                    s.max_hp = rules::max_hp(s.level);
                    s.hp = s.max_hp;
                    self.counters.level_ups.fetch_add(1, Relaxed);
                }
                let s = *s;
                self.system_chat(
                    session,
                    id,
                    format!(
                        "You killed NPC {npc} (+{} exp, level {}, exp {})",
                        rules::NPC_EXP,
                        s.level,
                        s.exp
                    ),
                );
            } else {
                let left = life.hp;
                drop(life);
                pl.stats.lock().hp -= rules::NPC_HIT;
                self.system_chat(
                    session,
                    id,
                    format!(
                        "You hit NPC {npc} for {dmg} ({left} hp left); it hits back for {}",
                        rules::NPC_HIT
                    ),
                );
            }
        }
        let mut s = pl.stats.lock();
        let died = s.hp <= 0;
        if died {
            // Back to full health somewhere else, with half the experience.
            self.counters.player_deaths.fetch_add(1, Relaxed);
            s.hp = s.max_hp;
            s.exp /= 2;
        }
        let now = *s;
        drop(s);
        if now != before {
            pl.dirty.store(true, Relaxed);
            self.stat_change(session, now);
        }
        if died {
            self.system_chat(session, id, "You died: respawned with half your exp".into());
            let to = self.random_cell();
            let t = self.last_move_time[id as usize].load(Relaxed);
            self.relocate(session, id, to, t);
        }
        if now.hp < now.max_hp {
            self.start_regen(&srv, id, gen);
        }
    }

    /// An NPC's hit points reached 0 (its life lock held, `alive` already false): off the
    /// board (`SC_REMOVE_OBJECT` to who saw it), back after the respawn delay.
    fn kill_npc(&self, srv: &H, npc: u32) {
        let w = &self.world;
        self.counters.npc_kills.fetch_add(1, Relaxed);
        let (cands, name): (Vec<u32>, Name) = {
            let mut v = w.objs[npc as usize].view.lock();
            v.state = State::Left;
            (v.set.iter().copied().collect(), v.name)
        };
        let pos = w.pos(npc);
        w.sector_remove(npc, pos);
        let mine = self.mine(npc, pos, name, None);
        for c in cands {
            self.reconcile(srv, npc, c, &mine);
        }
        let _ = srv.post_after(self.npc_respawn, RESPAWN | u64::from(npc), 0);
    }

    /// An NPC's respawn timer: full health at its spawn cell, ADD to the players near.
    fn respawn(&self, srv: &H, npc: u32) {
        let w = &self.world;
        let i = (npc - w.max_users) as usize;
        let mut life = self.npc_life[i].lock();
        if life.alive {
            return;
        }
        life.alive = true;
        life.hp = rules::NPC_HP;
        let to = self.npc_spawn[i];
        w.set_pos(npc, to);
        let name = {
            let mut v = w.objs[npc as usize].view.lock();
            v.state = State::InGame;
            v.name
        };
        w.sector_insert(npc, to);
        let mine = self.mine(npc, to, name, None);
        self.reconcile_all(srv, npc, to, &mine);
        self.counters.npc_respawns.fetch_add(1, Relaxed);
        drop(life);
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
            }
            ClientPacket::Teleport => {
                let to = self.random_cell();
                let t = self.last_move_time[id as usize].load(Relaxed);
                self.relocate(session, id, to, t);
            }
            ClientPacket::Chat { mess } => self.chat(session, id, mess),
            ClientPacket::Attack => self.attack(session, id, l.gen),
            ClientPacket::Logout => {
                // The id is freed when the session has closed (packets until then are ignored).
                l.phase = Phase::Left;
                self.depart(&session.server(), id, l);
                session.close_after_flush();
            }
        }
    }

    /// Moves player `id` to `to` (a step or a teleport) and tells everyone concerned.
    fn relocate(&self, session: &H::Conn, id: u32, to: u32, move_time: u32) {
        let w = &self.world;
        let from = w.pos(id);
        w.set_pos(id, to);
        w.sector_move(id, from, to);
        self.counters.moves.fetch_add(1, Relaxed);
        self.players[id as usize].dirty.store(true, Relaxed);
        let own = self.move_packet(id, to, move_time);
        session.send(own.clone());
        let name = w.objs[id as usize].view.lock().name;
        let mine = self.mine(id, to, name, Some(own));
        self.reconcile_all(&session.server(), id, to, &mine);
    }

    /// Takes player `id` off the board (logout or disconnect): REMOVE to everyone who saw it.
    fn leave(&self, srv: &H, id: u32) {
        let w = &self.world;
        let cands: Vec<u32> = {
            let mut v = w.objs[id as usize].view.lock();
            let was_in = v.state == State::InGame;
            v.state = State::Left;
            v.session = None;
            if !was_in {
                return;
            }
            v.set.iter().copied().collect()
        };
        let pos = w.pos(id);
        w.sector_remove(id, pos);
        // Never added to anyone now: only its REMOVE is sent.
        let mine = self.mine(id, pos, [0; cport_mmo_proto::NAME_SIZE], None);
        for c in cands {
            self.reconcile(srv, id, c, &mine);
        }
        self.counters.players.fetch_sub(1, Relaxed);
    }

    fn chat(&self, session: &H::Conn, id: u32, mess: Vec<u8>) {
        let w = &self.world;
        let pkt = self.encode(ServerPacket::Chat {
            id: id as i32,
            mess,
        });
        session.send(pkt.clone());
        let viewers: Vec<u32> = w.objs[id as usize]
            .view
            .lock()
            .set
            .iter()
            .copied()
            .filter(|&o| !w.is_npc(o))
            .collect();
        for o in viewers {
            let v = w.objs[o as usize].view.lock();
            if v.set.contains(&id) {
                if let Some(s) = &v.session {
                    s.send(pkt.clone());
                }
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
            Phase::Idle | Phase::Left => {
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

/// The server layer's handler: the game on cport.
pub(crate) struct GameHandler(pub std::sync::Arc<Game<ServerHandle>>);

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
