//! The home zone's part of a login: the name marked on for the whole cluster, the row
//! loaded, the player sent to the zone that owns its cell; and the name freed at logout.

use std::time::Instant;

use crate::cluster::state::{bump, RECENT_ROWS_FOR};
use crate::cluster::wire::{Msg, Row, Transfer};
use crate::db::PlayerRow;
use crate::game::{Game, Phase};
use crate::net::{Conn, Host};

impl<H: Host> Game<H> {
    /// `Login` at the name's home zone: the name is marked on for the whole cluster, the row
    /// loaded (the last one an owner sent here, else the database, else a new one), and the
    /// player goes to the zone that owns its cell.
    pub(crate) fn home_login(
        &self,
        srv: &H,
        gateway: u16,
        session: u64,
        player: u32,
        name: String,
    ) {
        let z = self.zone.as_ref().expect("a zone");
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
        let Some(p) = &self.persist else {
            return self.home_loaded(srv, &conn, player, name, Ok(None));
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
            return self.home_loaded(srv, &conn, player, name, Ok(Some(row)));
        }
        if let Some(row) = p.get(&name) {
            return self.home_loaded(srv, &conn, player, name, Ok(Some(row)));
        }
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != 0 || l.phase != Phase::Idle {
            drop(l);
            z.names.lock().remove(&name);
            return self.login_fail(&conn, "player id in use here");
        }
        l.phase = Phase::Loading;
        l.name = name.clone();
        l.session = Some(conn.clone());
        l.asked = Instant::now();
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
            drop(l);
            z.names.lock().remove(&name);
            self.login_fail(&conn, "the database's queue is full");
        }
    }

    /// The home zone has the row (or the error): to the owner of its cell.
    pub(crate) fn home_loaded(
        &self,
        srv: &H,
        conn: &H::Conn,
        player: u32,
        name: String,
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
        let t = Transfer {
            player,
            epoch: 1,
            gateway,
            session,
            login: true,
            name,
            x: row.x,
            y: row.y,
            hp: row.hp,
            max_hp: row.max_hp,
            exp: row.exp,
            level: row.level,
            last_move_time: 0,
            ghosts: 0,
            view: Vec::new(),
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
}
