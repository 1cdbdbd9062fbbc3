//! Login (the row loaded by the DB threads, never on a worker), logout and disconnect (the
//! row written at once), and the save tick that writes changed players behind.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use cport_mmo_proto::{Name, ServerPacket, NAME_SIZE};

use super::{Game, Login, PStats, Phase, SAVE_TICK};
use crate::db::{LoadJob, PlayerRow};
use crate::net::{Conn, Host};
use crate::rules;
use crate::world::{pack, unpack, State};

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

impl<H: Host> Game<H> {
    /// Puts player `id` on the board where `row` says, with its stats; sends
    /// `SC_LOGIN_INFO`, then the ADDs both ways.
    pub(super) fn place(&self, session: &H::Conn, id: u32, row: &PlayerRow) {
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
    pub(super) fn new_row(&self, name: &str) -> PlayerRow {
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
    pub(super) fn sanitize(&self, mut row: PlayerRow) -> PlayerRow {
        let max = self.world.size - 1;
        row.x = row.x.min(max);
        row.y = row.y.min(max);
        if let Some(m) = &self.world.map {
            // Saved before the map had an obstacle there: the next open cell.
            if m.blocked(row.x, row.y) {
                (row.x, row.y) = m.next_open(row.x, row.y).unwrap_or((row.x, row.y));
            }
        }
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
    pub(super) fn login_fail(&self, session: &H::Conn, why: &str) {
        self.counters.login_fails.fetch_add(1, Relaxed);
        tracing::info!(session = %session.id(), peer = ?session.peer_addr(), "SC_LOGIN_FAIL: {why}");
        session.send(self.encode(ServerPacket::LoginFail));
        session.close_after_flush();
    }

    /// `CS_LOGIN` of a session that has no player yet.
    pub(super) fn begin_login(&self, session: &H::Conn, raw: &Name) {
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
    pub(super) fn finish_login(
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
    pub(super) fn load_done(
        &self,
        srv: &H,
        job: LoadJob<H::ConnId>,
        row: Result<Option<PlayerRow>, String>,
    ) {
        let Some(session) = srv.conn(job.session) else {
            return; // it closed: its `on_close` ends the login
        };
        let id = job.id;
        let mut l = self.players[id as usize].login.lock();
        if l.gen != job.gen || l.phase != Phase::Loading || l.placed {
            return; // stale: that login ended
        }
        if self.zone.is_some() {
            // A cluster's home zone loaded it: the zone that owns its cell places it.
            l.phase = Phase::Idle;
            l.session = None;
            let name = std::mem::take(&mut l.name);
            let ask = crate::cluster::state::HomeAsk {
                gw_inc: l.gw_inc,
                resume: l.resume.take(),
            };
            drop(l);
            return self.home_loaded(srv, &session, id, name, ask, row);
        }
        self.finish_login(&session, id, &mut l, row);
    }

    /// The player's row now.
    pub(super) fn row(&self, id: u32, l: &Login<H::Conn>) -> PlayerRow {
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
    pub(super) fn depart(&self, srv: &H, id: u32, l: &mut Login<H::Conn>) {
        if l.placed {
            let row = self.row(id, l);
            if let Some(p) = &self.persist {
                p.put(row.clone());
                p.flush(Some(&l.name));
            }
            self.players[id as usize].dirty.store(false, Relaxed);
            l.placed = false;
            self.leave(srv, id);
            // A cluster: the name's home zone frees the name and keeps this row for a
            // login that comes before the write commits.
            self.departed(srv, &l.name, row);
        } else {
            self.leave(srv, id);
        }
    }

    /// The save tick: rows of the players changed since the last tick are written behind,
    /// with those whose save failed; then the next tick.
    pub(super) fn save_tick(&self, srv: &H) {
        let Some(p) = &self.persist else { return };
        for (id, pl) in self.players.iter().enumerate() {
            if pl.dirty.swap(false, Relaxed) {
                let l = pl.login.lock();
                // In a cluster, only the owner the gateway confirmed writes the row.
                if l.placed && (self.zone.is_none() || l.confirmed) {
                    p.put(self.row(id as u32, &l));
                } else if l.placed {
                    pl.dirty.store(true, Relaxed); // written once the gateway confirms
                }
            }
        }
        p.flush(None);
        let _ = srv.post_after(p.interval, SAVE_TICK, 0);
    }
}
