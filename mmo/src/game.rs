//! The game on the server layer's worker threads: login, move, teleport, chat, logout, and
//! NPCs that move on timers posted to the port. See [`crate::world`] for the locks.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use cport_server::{CloseReason, Handler, ServerHandle, Session, SizeField};
use parking_lot::Mutex;

use crate::protocol::{ClientPacket, Direction, Name, ServerPacket};
use crate::world::{pack, unpack, State, World};

/// `Game::player_of` of a session that has not logged in.
pub(crate) const NO_PLAYER: u32 = u32::MAX;

/// Hit points, level… of every player (there is no combat yet).
const HP: i32 = 100;
const LEVEL: i32 = 1;

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

/// One round of splitmix64 on `x` (already advanced by the caller).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
}

/// The game state and logic, shared by every worker thread.
pub(crate) struct Game {
    pub world: World,
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

impl Game {
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

    fn reject(&self, session: &Session, why: String) {
        self.counters.rejected.fetch_add(1, Relaxed);
        tracing::info!(session = %session.id(), peer = ?session.peer_addr(), "rejected: {why}");
        session.close(CloseReason::Rejected(why));
    }

    /// Brings "`me` sees `other`" (and the converse) in line with where both are now, under
    /// both view locks (lower id first), sending the packets before unlocking.
    fn reconcile(&self, srv: &ServerHandle, me: u32, other: u32, mine: &Mine) {
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
    fn reconcile_all(&self, srv: &ServerHandle, me: u32, pos: u32, mine: &Mine) {
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
    fn wake(&self, srv: &ServerHandle, npc: u32) {
        let i = (npc - self.world.max_users) as usize;
        if self.world.awake[i]
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            self.counters.awake_npcs.fetch_add(1, Relaxed);
            self.schedule(srv, npc);
        }
    }

    fn schedule(&self, srv: &ServerHandle, npc: u32) {
        self.counters.npc_timers.fetch_add(1, Relaxed);
        if srv
            .post_after(self.npc_interval, u64::from(npc), 0)
            .is_err()
        {
            // The port is shutting down: the NPC sleeps.
            self.counters.npc_timers.fetch_sub(1, Relaxed);
            self.world.awake[(npc - self.world.max_users) as usize].store(false, SeqCst);
            self.counters.awake_npcs.fetch_sub(1, Relaxed);
        }
    }

    /// An NPC's move timer fired: move one random cell if a player sees it, else sleep.
    fn npc_tick(&self, srv: &ServerHandle, npc: u32) {
        let w = &self.world;
        self.counters.npc_timers.fetch_sub(1, Relaxed);
        let i = (npc - w.max_users) as usize;
        {
            let v = w.objs[npc as usize].view.lock();
            if v.set.is_empty() {
                // Decided under the NPC's view lock: a player adding it to its view after
                // this finds `awake` false and wakes it again.
                w.awake[i].store(false, SeqCst);
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
    }

    /// Puts player `id` (just taken from the free ids) on the board.
    fn login(&self, session: &Session, id: u32, name: Name) {
        let w = &self.world;
        let pos = self.random_cell();
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
            let (x, y) = unpack(pos);
            session.send(self.encode(ServerPacket::LoginInfo {
                id: id as i32,
                hp: HP,
                max_hp: HP,
                exp: 0,
                level: LEVEL,
                x: x as i16,
                y: y as i16,
            }));
        }
        self.counters.players.fetch_add(1, Relaxed);
        self.counters.logins.fetch_add(1, Relaxed);
        w.sector_insert(id, pos);
        let mine = self.mine(id, pos, name, None);
        self.reconcile_all(&session.server(), id, pos, &mine);
    }

    /// Moves player `id` to `to` (a step or a teleport) and tells everyone concerned.
    fn relocate(&self, session: &Session, id: u32, to: u32, move_time: u32) {
        let w = &self.world;
        let from = w.pos(id);
        w.set_pos(id, to);
        w.sector_move(id, from, to);
        self.counters.moves.fetch_add(1, Relaxed);
        let own = self.move_packet(id, to, move_time);
        session.send(own.clone());
        let name = w.objs[id as usize].view.lock().name;
        let mine = self.mine(id, to, name, Some(own));
        self.reconcile_all(&session.server(), id, to, &mine);
    }

    /// Takes player `id` off the board (logout or disconnect): REMOVE to everyone who saw it.
    fn leave(&self, srv: &ServerHandle, id: u32) {
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
        let mine = self.mine(id, pos, [0; crate::protocol::NAME_SIZE], None);
        for c in cands {
            self.reconcile(srv, id, c, &mine);
        }
        self.counters.players.fetch_sub(1, Relaxed);
    }

    fn chat(&self, session: &Session, id: u32, mess: Vec<u8>) {
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

    fn state(&self, id: u32) -> State {
        self.world.objs[id as usize].view.lock().state
    }
}

/// The server layer's handler: the game.
pub(crate) struct GameHandler(pub std::sync::Arc<Game>);

impl Handler for GameHandler {
    fn on_connect(&self, session: &Session) {
        self.0.player_of[session.id().slot()].store(NO_PLAYER, Relaxed);
    }

    fn on_packet(&self, session: &Session, packet: &[u8]) {
        let g = &self.0;
        let p = match ClientPacket::decode(packet, g.header) {
            Ok(p) => p,
            Err(e) => return g.reject(session, e.to_string()),
        };
        let slot = &g.player_of[session.id().slot()];
        let id = slot.load(Relaxed);
        if id == NO_PLAYER {
            let ClientPacket::Login { name } = p else {
                return g.reject(session, format!("packet type {} before login", p.kind()));
            };
            let Some(id) = g.free_ids.lock().pop() else {
                g.counters.login_fails.fetch_add(1, Relaxed);
                tracing::debug!(session = %session.id(), "server full: SC_LOGIN_FAIL");
                session.send(g.encode(ServerPacket::LoginFail));
                session.close_after_flush();
                return;
            };
            slot.store(id, Relaxed);
            return g.login(session, id, name);
        }
        match g.state(id) {
            State::InGame => {}
            State::Fresh | State::Left => {
                tracing::debug!(session = %session.id(), "packet after logout ignored");
                return;
            }
        }
        match p {
            ClientPacket::Login { .. } => {
                g.reject(session, "CS_LOGIN when already logged in".into())
            }
            ClientPacket::Move {
                direction,
                move_time,
            } => {
                g.last_move_time[id as usize].store(move_time, Relaxed);
                let to = g.world.step(g.world.pos(id), direction.delta());
                g.relocate(session, id, to, move_time);
            }
            ClientPacket::Teleport => {
                let to = g.random_cell();
                let t = g.last_move_time[id as usize].load(Relaxed);
                g.relocate(session, id, to, t);
            }
            ClientPacket::Chat { mess } => g.chat(session, id, mess),
            ClientPacket::Attack => {
                tracing::debug!(session = %session.id(), "CS_ATTACK ignored (no combat)");
            }
            ClientPacket::Logout => {
                // The id is freed when the session has closed (packets until then are ignored).
                g.leave(&session.server(), id);
                session.close_after_flush();
            }
        }
    }

    fn on_close(&self, session: &Session, _reason: &CloseReason) {
        let g = &self.0;
        let id = g.player_of[session.id().slot()].swap(NO_PLAYER, Relaxed);
        if id != NO_PLAYER {
            g.leave(&session.server(), id);
            g.free_ids.lock().push(id);
        }
    }

    fn on_timer(&self, server: &ServerHandle, key: u64, _value: u64) {
        let g = &self.0;
        if let Ok(id) = u32::try_from(key) {
            if g.world.is_npc(id) && (id as usize) < g.world.objs.len() {
                g.npc_tick(server, id);
            }
        }
    }
}
