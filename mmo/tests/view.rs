//! View lists against a brute-force model: seeded random sessions of logins, moves,
//! teleports, chats, logouts and disconnects by real TCP clients. After every step each
//! client's picture, built only from the ADD/MOVE/REMOVE packets it received, must equal the
//! model's set of objects in range (with their positions), and each client must have
//! received exactly the packets the protocol says.

mod common;

use cport_testkit::per_backend;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{config, start, wait_until, Client};
use cport_mmo::{MmoServer, Rng};
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField};
use cport_server::cport::Backend;

const WORLD: u16 = 20;
const RANGE: u16 = 3;
const MAX_CLIENTS: usize = 6;

fn in_range(a: (u16, u16), b: (u16, u16)) -> bool {
    a.0.abs_diff(b.0) <= RANGE && a.1.abs_diff(b.1) <= RANGE
}

struct Sim {
    srv: MmoServer,
    h: SizeField,
    rng: Rng,
    clients: Vec<Client>,
    /// id → position: the truth.
    model: BTreeMap<u32, (u16, u16)>,
    step: usize,
    seed: u64,
    /// Each player's last `move_time` (a teleport echoes it).
    last_t: BTreeMap<u32, u32>,
    /// Pictures checked that were not empty (the test sees real interactions).
    seen_something: usize,
}

impl Sim {
    fn pick(&self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn others_in_range(&self, id: u32) -> BTreeMap<u32, (u16, u16)> {
        let me = self.model[&id];
        self.model
            .iter()
            .filter(|&(&o, &p)| o != id && in_range(me, p))
            .map(|(&o, &p)| (o, p))
            .collect()
    }

    fn check(&mut self, what: &str) {
        self.seen_something += self
            .clients
            .iter()
            .filter(|c| !c.picture.is_empty())
            .count();
        for c in &self.clients {
            assert_eq!(
                c.pos, self.model[&c.id],
                "seed {} step {} ({what}): client {} position",
                self.seed, self.step, c.id
            );
            assert_eq!(
                c.picture,
                self.others_in_range(c.id),
                "seed {} step {} ({what}): picture of client {}",
                self.seed,
                self.step,
                c.id
            );
        }
    }

    /// Every client other than `skip` reads one packet if `expect(its id)` says so.
    fn others_read(&mut self, skip: u32, expect: impl Fn(u32) -> bool) -> Vec<ServerPacket> {
        let mut got = Vec::new();
        for c in self.clients.iter_mut().filter(|c| c.id != skip) {
            if expect(c.id) {
                got.push(c.recv_apply());
            }
        }
        got
    }

    fn login(&mut self) {
        let who = format!("p{}", self.step);
        let mut c = Client::login(self.srv.local_addr(), self.h, &who);
        let id = c.id;
        assert!(!self.model.contains_key(&id), "id {id} given twice");
        self.model.insert(id, c.pos);
        self.last_t.insert(id, 0);
        let seen = self.others_in_range(id);
        for _ in 0..seen.len() {
            match c.recv_apply() {
                ServerPacket::AddObject { .. } => {}
                other => panic!("login: expected SC_ADD_OBJECT, got {other:?}"),
            }
        }
        let model = self.model.clone();
        let pos = c.pos;
        for p in self.others_read(id, |o| in_range(model[&o], pos)) {
            match p {
                ServerPacket::AddObject { id: a, name, .. } => {
                    assert_eq!(a as u32, id);
                    assert_eq!(cport_mmo_proto::name_str(&name), who);
                }
                other => panic!("login of {id}: expected its ADD, got {other:?}"),
            }
        }
        self.clients.push(c);
        self.check("login");
    }

    /// A move (`Some(direction)`) or a teleport (`None`) of client `i`.
    fn relocate(&mut self, i: usize, dir: Option<Direction>) {
        let id = self.clients[i].id;
        let old = self.model[&id];
        let before = self.others_in_range(id);
        let t = match dir {
            Some(d) => {
                let t = self.rng.next_u64() as u32;
                self.clients[i].move_(d, t);
                self.last_t.insert(id, t);
                t
            }
            None => {
                self.clients[i].send(&ClientPacket::Teleport);
                self.last_t[&id]
            }
        };
        let new = match self.clients[i].recv_apply() {
            ServerPacket::MoveObject {
                id: m,
                x,
                y,
                move_time,
            } => {
                assert_eq!(m as u32, id, "the mover's first packet is its own MOVE");
                assert_eq!(move_time, t, "move_time comes back unchanged");
                (x as u16, y as u16)
            }
            other => panic!("expected the mover's own MOVE, got {other:?}"),
        };
        if let Some(d) = dir {
            let (dx, dy) = d.delta();
            let want = (
                (i32::from(old.0) + dx).clamp(0, i32::from(WORLD) - 1) as u16,
                (i32::from(old.1) + dy).clamp(0, i32::from(WORLD) - 1) as u16,
            );
            assert_eq!(new, want, "a move goes one cell, clamped");
        }
        self.model.insert(id, new);
        let after = self.others_in_range(id);
        let changed = before.keys().filter(|o| !after.contains_key(o)).count()
            + after.keys().filter(|o| !before.contains_key(o)).count();
        for _ in 0..changed {
            match self.clients[i].recv_apply() {
                ServerPacket::AddObject { .. } | ServerPacket::RemoveObject { .. } => {}
                other => panic!("mover: expected ADD or REMOVE, got {other:?}"),
            }
        }
        for p in self.others_read(id, |o| before.contains_key(&o) || after.contains_key(&o)) {
            match p {
                ServerPacket::AddObject { id: m, .. }
                | ServerPacket::RemoveObject { id: m }
                | ServerPacket::MoveObject { id: m, .. } => assert_eq!(m as u32, id),
                other => panic!("observer: unexpected {other:?}"),
            }
        }
        self.check(if dir.is_some() { "move" } else { "teleport" });
    }

    fn chat(&mut self, i: usize) {
        let id = self.clients[i].id;
        let text = format!("hello {}", self.step).into_bytes();
        self.clients[i].send(&ClientPacket::Chat { mess: text.clone() });
        let want = ServerPacket::Chat {
            id: id as i32,
            mess: text,
        };
        assert_eq!(self.clients[i].recv(), want);
        let seen = self.others_in_range(id);
        for p in self.others_read(id, |o| seen.contains_key(&o)) {
            assert_eq!(p, want);
        }
        self.check("chat");
    }

    /// Client `i` leaves: by `CS_LOGOUT` or by closing its socket.
    fn leave(&mut self, i: usize, logout: bool) {
        let mut c = self.clients.swap_remove(i);
        let id = c.id;
        let seen = self.others_in_range(id);
        if logout {
            c.send(&ClientPacket::Logout);
            c.expect_closed();
        } else {
            drop(c);
        }
        self.model.remove(&id);
        for p in self.others_read(id, |o| seen.contains_key(&o)) {
            assert_eq!(p, ServerPacket::RemoveObject { id: id as i32 });
        }
        let n = self.model.len();
        wait_until("the server took the player off the board", || {
            self.srv.stats().players == n
        });
        self.check(if logout { "logout" } else { "disconnect" });
    }
}

fn random_sessions(backend: Backend, h: SizeField, seed: u64, steps: usize) {
    let srv = start(cport_mmo::Config {
        world_size: WORLD,
        view_range: RANGE,
        max_users: 8,
        seed,
        header: h,
        ..config(backend)
    });
    let mut sim = Sim {
        srv,
        h,
        rng: Rng::new(seed),
        clients: Vec::new(),
        model: BTreeMap::new(),
        step: 0,
        seed,
        last_t: BTreeMap::new(),
        seen_something: 0,
    };
    for step in 0..steps {
        sim.step = step;
        let n = sim.clients.len();
        let r = sim.pick(100);
        if n == 0 || (n < MAX_CLIENTS && r < 12) {
            sim.login();
            continue;
        }
        let i = sim.pick(n);
        match r {
            12..=69 => {
                let d = Direction::ALL[sim.pick(4)];
                sim.relocate(i, Some(d));
            }
            70..=81 => sim.relocate(i, None),
            82..=89 => sim.chat(i),
            90..=94 => sim.leave(i, true),
            _ => sim.leave(i, false),
        }
    }
    // Nothing extra is on its way to anyone.
    for c in &mut sim.clients {
        c.assert_quiet(Duration::from_millis(50));
    }
    // The world at rest: sectors, view sets and counters agree (the fuzz target
    // `mmo_session` checks the same after every input).
    if let Err(e) = sim.srv.check_world() {
        panic!("seed {seed}: the world's invariants: {e}");
    }
    for c in &sim.clients {
        let seen: Vec<u32> = c.picture.keys().copied().collect();
        assert_eq!(sim.srv.view_set(c.id), Some(seen), "client {}", c.id);
    }
    let stats = sim.srv.stats();
    assert_eq!(stats.players, sim.clients.len());
    assert_eq!(stats.rejected, 0);
    assert!(stats.logins >= 10, "{stats:?}");
    assert!(stats.moves >= steps as u64 / 3, "{stats:?}");
    assert!(
        sim.seen_something >= steps,
        "pictures were mostly empty: {}",
        sim.seen_something
    );
}

fn view_lists_match_the_model_u8(backend: Backend) {
    for seed in [1, 2] {
        random_sessions(backend, SizeField::U8, seed, 400);
    }
}

fn view_lists_match_the_model_u16(backend: Backend) {
    random_sessions(backend, SizeField::U16, 3, 400);
}

/// Many players moving and teleporting at once, on several server threads: every client's
/// picture stays consistent (no ADD of what it sees, no MOVE or REMOVE of what it does not)
/// and, once everyone stops, equals exactly the players in range where they ended. NPCs move
/// all the while.
fn concurrent_moves_converge(backend: Backend) {
    const N: usize = 16;
    const RANGE: u16 = 4;
    let srv = start(cport_mmo::Config {
        world_size: 24,
        view_range: RANGE,
        max_users: N,
        seed: 5,
        threads: 3,
        // NPCs moving all the while (their packets must keep every picture consistent too).
        npcs: 100,
        npc_interval: Duration::from_millis(10),
        ..config(backend)
    });
    let addr = srv.local_addr();
    let clients: Vec<Client> = (0..N)
        .map(|i| Client::login(addr, SizeField::U8, &format!("c{i}")))
        .collect();
    let clients: Vec<Client> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                scope.spawn(move || {
                    let rng = Rng::new(1000 + i as u64);
                    let mut last = 0;
                    for k in 0..150u32 {
                        let r = rng.next_u64();
                        if r % 10 == 0 {
                            c.send(&ClientPacket::Teleport);
                            c.pump_until_own_move(last);
                        } else {
                            last = k + 1;
                            let t = k + 1;
                            c.move_(Direction::ALL[(r >> 8) as usize % 4], t);
                            c.pump_until_own_move(t);
                        }
                    }
                    c
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut clients = clients;
    assert!(srv.stats().npc_moves > 0, "no NPC moved");
    // Drain what is still on its way: until no packet about a player came for 50 ms (NPC
    // packets keep coming; they are applied too).
    for c in &mut clients {
        let until = Instant::now() + common::TIMEOUT;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(50) {
            assert!(Instant::now() < until, "client {} never went quiet", c.id);
            if let Some(p) = c.try_recv(Duration::from_millis(10)) {
                c.apply(&p);
                let about = match p {
                    ServerPacket::AddObject { id, .. }
                    | ServerPacket::RemoveObject { id }
                    | ServerPacket::MoveObject { id, .. } => id as usize,
                    _ => 0,
                };
                if about < N {
                    quiet_since = Instant::now();
                }
            }
        }
    }
    let model: BTreeMap<u32, (u16, u16)> = clients.iter().map(|c| (c.id, c.pos)).collect();
    for c in &clients {
        assert_eq!(srv.position(c.id), Some(c.pos));
        let want: BTreeMap<u32, (u16, u16)> = model
            .iter()
            .filter(|&(&o, &p)| {
                o != c.id && c.pos.0.abs_diff(p.0) <= RANGE && c.pos.1.abs_diff(p.1) <= RANGE
            })
            .map(|(&o, &p)| (o, p))
            .collect();
        let players: BTreeMap<u32, (u16, u16)> = c
            .picture
            .iter()
            .filter(|&(&o, _)| (o as usize) < N)
            .map(|(&o, &p)| (o, p))
            .collect();
        assert_eq!(players, want, "picture of client {}", c.id);
    }
}

per_backend!(
    view_lists_match_the_model_u8,
    view_lists_match_the_model_u16,
    concurrent_moves_converge
);
