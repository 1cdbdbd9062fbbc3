//! The home zone's part of a login: the name marked on for the whole cluster, the row
//! loaded, the player sent to the zone that owns its cell; the name freed at logout; and,
//! after a zone was replaced, a player resumed from its last save and the names restated by
//! the gateways.

use std::time::Instant;

use crate::cluster::state::{bump, HomeAsk, RECENT_ROWS_FOR, RELOCK_WAIT};
use crate::cluster::wire::{Msg, Row, Transfer};
use crate::db::PlayerRow;
use crate::game::{Game, Phase, ZONE_GATE};
use crate::net::{Conn, Host};

impl<H: Host> Game<H> {
    /// `Login` at the name's home zone: the name is marked on for the whole cluster, the row
    /// loaded (the last one an owner sent here, else the database, else a new one), and the
    /// player goes to the zone that owns its cell. While this zone starts, a login waits for
    /// the gateways' `Relock`s (or [`RELOCK_WAIT`]).
    pub(crate) fn home_login(
        &self,
        srv: &H,
        gateway: u16,
        gw_inc: u64,
        session: u64,
        player: u32,
        name: String,
    ) {
        let z = self.zone.as_ref().expect("a zone");
        {
            let mut gate = z.gate.lock();
            if !gate.open {
                gate.waiting.push((gateway, gw_inc, session, player, name));
                return;
            }
        }
        let Some(conn) = srv.remote(gateway, session, player) else {
            return;
        };
        bump(&z.counters.home_logins);
        if z.layout.home_of(&name) != usize::from(z.me) {
            bump(&z.counters.invalid);
            return self.login_fail(&conn, &format!("{name:?} is not this zone's to log in"));
        }
        {
            let mut names = z.names.lock();
            if names.contains_key(&name) {
                drop(names);
                bump(&z.counters.duplicate_logins);
                return self.login_fail(&conn, &format!("{name:?} is already logged in"));
            }
            names.insert(name.clone(), player);
        }
        let ask = HomeAsk {
            gw_inc,
            resume: None,
        };
        self.home_load(srv, &conn, player, name, ask);
    }

    /// `Resume` at the name's home zone: the zone that owned the player was replaced; its
    /// last saved row goes to the zone owning its cell, which takes the player over with the
    /// client's picture (the client stays connected).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn home_resume(
        &self,
        srv: &H,
        gateway: u16,
        gw_inc: u64,
        session: u64,
        player: u32,
        name: String,
        epoch: u32,
        view: Vec<(u32, u16, u16)>,
    ) {
        let z = self.zone.as_ref().expect("a zone");
        let Some(conn) = srv.remote(gateway, session, player) else {
            return;
        };
        if z.layout.home_of(&name) != usize::from(z.me) || epoch == 0 {
            bump(&z.counters.invalid);
            return conn.reject(format!("resume of {name:?} sent to the wrong zone"));
        }
        {
            let mut names = z.names.lock();
            match names.get(&name) {
                Some(&p) if p != player => {
                    drop(names);
                    bump(&z.counters.duplicate_logins);
                    return conn.reject(format!(
                        "{name:?} is held by player {p}; player {player} cannot resume it"
                    ));
                }
                Some(_) => {}
                None => {
                    names.insert(name.clone(), player);
                }
            }
        }
        tracing::info!(player, name, epoch, "resuming from the last save");
        let ask = HomeAsk {
            gw_inc,
            resume: Some((epoch, view)),
        };
        self.home_load(srv, &conn, player, name, ask);
    }

    /// The row of a name this zone marked: the last one an owner sent here, else the one
    /// written behind here, else the database's (loaded off the workers).
    fn home_load(&self, srv: &H, conn: &H::Conn, player: u32, name: String, ask: HomeAsk) {
        let z = self.zone.as_ref().expect("a zone");
        let Some(p) = &self.persist else {
            return self.home_loaded(srv, conn, player, name, ask, Ok(None));
        };
        let recent = z.recent.lock().remove(&name);
        if let Some((r, _)) = recent {
            let row = PlayerRow {
                name: name.clone(),
                x: r.x,
                y: r.y,
                hp: r.hp,
                max_hp: r.max_hp,
                exp: r.exp,
                level: r.level,
            };
            return self.home_loaded(srv, conn, player, name, ask, Ok(Some(row)));
        }
        if let Some(row) = p.get(&name) {
            return self.home_loaded(srv, conn, player, name, ask, Ok(Some(row)));
        }
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != 0 || l.phase != Phase::Idle {
            drop(l);
            if ask.resume.is_some() {
                // This zone holds a claim on the player (an orphaned hand-off's new zone):
                // the gateway settles that claim; a resume it still needs is asked again.
                bump(&z.counters.stale);
                return;
            }
            z.names.lock().remove(&name);
            return self.login_fail(conn, "player id in use here");
        }
        l.phase = Phase::Loading;
        l.name = name.clone();
        l.session = Some(conn.clone());
        l.asked = Instant::now();
        l.gw_inc = ask.gw_inc;
        l.resume = ask.resume;
        let job = crate::db::LoadJob {
            session: conn.id(),
            id: player,
            gen: l.gen,
            name: name.clone(),
        };
        if p.pool.loads.try_send(job).is_err() {
            l.phase = Phase::Idle;
            l.session = None;
            l.name.clear();
            l.resume = None;
            drop(l);
            z.names.lock().remove(&name);
            self.login_fail(conn, "the database's queue is full");
        }
    }

    /// The home zone has the row (or the error): to the owner of its cell.
    pub(crate) fn home_loaded(
        &self,
        srv: &H,
        conn: &H::Conn,
        player: u32,
        name: String,
        ask: HomeAsk,
        row: Result<Option<PlayerRow>, String>,
    ) {
        let z = self.zone.as_ref().expect("a zone");
        let row = match row {
            Ok(Some(r)) => self.sanitize(r),
            Ok(None) => self.new_row(&name),
            Err(e) => {
                z.names.lock().remove(&name);
                return self.login_fail(conn, &format!("database error: {e}"));
            }
        };
        let Some((gateway, session)) = conn.route() else {
            return;
        };
        let (epoch, view) = match &ask.resume {
            Some((epoch, view)) => (*epoch, view.clone()),
            None => (1, Vec::new()),
        };
        let t = Transfer {
            player,
            epoch,
            gateway,
            session,
            login: ask.resume.is_none(),
            resume: ask.resume.is_some(),
            gw_inc: ask.gw_inc,
            name,
            x: row.x,
            y: row.y,
            hp: row.hp,
            max_hp: row.max_hp,
            exp: row.exp,
            level: row.level,
            last_move_time: 0,
            ghosts: 0,
            view,
        };
        let owner = z.layout.zone_of(row.x, row.y) as u16;
        if owner == z.me {
            self.arrive(srv, z.me, t);
        } else {
            srv.to_zone(owner, &Msg::Transfer(Box::new(t)));
        }
    }

    /// `Offline` (or a local departure) at the name's home zone.
    pub(crate) fn home_offline(&self, name: String, row: Option<Row>) {
        let z = self.zone.as_ref().expect("a zone");
        z.names.lock().remove(&name);
        if let Some(row) = row {
            let mut recent = z.recent.lock();
            let now = Instant::now();
            if recent.len() >= 1024 {
                recent.retain(|_, (_, at)| now.duration_since(*at) < RECENT_ROWS_FOR);
            }
            recent.insert(name, (row, now));
        }
    }

    /// `Relock` from a gateway: its player holds the name (this zone was replaced and lost
    /// its marks). A name marked for another player already stays with it (counted).
    pub(crate) fn home_relock(&self, player: u32, name: String) {
        let z = self.zone.as_ref().expect("a zone");
        if z.layout.home_of(&name) != usize::from(z.me) {
            bump(&z.counters.invalid);
            return;
        }
        let mut names = z.names.lock();
        match names.get(&name) {
            Some(&p) if p != player => {
                bump(&z.counters.duplicate_logins);
                tracing::warn!(
                    name,
                    player,
                    held_by = p,
                    "Relock of a name another player holds"
                );
            }
            _ => {
                names.insert(name, player);
            }
        }
    }

    /// `RelockDone` from gateway `g`: once every gateway has said it, logins are taken.
    pub(crate) fn relock_done(&self, srv: &H, g: u16) {
        let z = self.zone.as_ref().expect("a zone");
        let all = {
            let mut gate = z.gate.lock();
            gate.done |= 1u64 << (g % 64);
            let want = if z.gateways >= 64 {
                u64::MAX
            } else {
                (1u64 << z.gateways) - 1
            };
            !gate.open && gate.done & want == want
        };
        if all {
            self.open_gate(srv);
        }
    }

    /// This zone starts: logins wait for the gateways' `Relock`s, at most [`RELOCK_WAIT`].
    pub(crate) fn close_gate(&self, srv: &H) {
        let z = self.zone.as_ref().expect("a zone");
        z.gate.lock().open = false;
        if !srv.post_after(RELOCK_WAIT, ZONE_GATE, 0) {
            self.open_gate(srv);
        }
    }

    /// Logins are taken from now on; the ones that waited go first, in arrival order.
    pub(crate) fn open_gate(&self, srv: &H) {
        let z = self.zone.as_ref().expect("a zone");
        let waiting = {
            let mut gate = z.gate.lock();
            if gate.open {
                return;
            }
            gate.open = true;
            std::mem::take(&mut gate.waiting)
        };
        for (g, inc, session, player, name) in waiting {
            self.home_login(srv, g, inc, session, player, name);
        }
    }
}
