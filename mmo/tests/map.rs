//! Obstacles and NPC behaviour: a map of blocked cells (`Config::map`) that players and NPCs
//! never walk into (a refused step is answered with the mover's own unchanged position, as at
//! the board's edge), aggressive NPCs that chase a player with A* around a wall and give up
//! beyond the give-up distance, and peaceful NPCs that fight back once hit.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, wait_until, Client, TIMEOUT};
use cport_mmo::{npc_position, npc_spawn, rules, Config, Map};
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField::U8};
use cport_server::cport::Backend;
use cport_testkit::per_backend;

per_backend!(
    a_player_cannot_step_into_a_wall,
    an_aggressive_npc_chases_around_a_wall_and_gives_up,
    a_peaceful_npc_fights_back_after_being_hit,
    an_aggressive_npc_walled_in_gives_up_at_once,
    scripted_moves_step_around_a_wall_and_attack_only_next_to_the_player,
);

fn cheb(a: (u16, u16), b: (u16, u16)) -> u16 {
    a.0.abs_diff(b.0).max(a.1.abs_diff(b.1))
}

fn manhattan(a: (u16, u16), b: (u16, u16)) -> u16 {
    a.0.abs_diff(b.0) + a.1.abs_diff(b.1)
}

/// Where a step from `p` lands on `map` (off the board or into a wall: `p`).
fn step(map: &Map, p: (u16, u16), d: Direction) -> (u16, u16) {
    let (dx, dy) = d.delta();
    let (x, y) = (i32::from(p.0) + dx, i32::from(p.1) + dy);
    if x < 0 || y < 0 || map.blocked(x as u16, y as u16) {
        return p;
    }
    (x as u16, y as u16)
}

/// The moves of a shortest walk from `from` to `to` over open cells that `ok` allows.
fn route(
    map: &Map,
    from: (u16, u16),
    to: (u16, u16),
    ok: impl Fn((u16, u16)) -> bool,
) -> Vec<Direction> {
    let mut came: HashMap<(u16, u16), ((u16, u16), Direction)> = HashMap::new();
    let mut q = VecDeque::from([from]);
    while let Some(p) = q.pop_front() {
        if p == to {
            let mut dirs = Vec::new();
            let mut at = to;
            while at != from {
                let (prev, d) = came[&at];
                dirs.push(d);
                at = prev;
            }
            dirs.reverse();
            return dirs;
        }
        for d in Direction::ALL {
            let n = step(map, p, d);
            if n != p && n != from && ok(n) && !came.contains_key(&n) {
                came.insert(n, (p, d));
                q.push_back(n);
            }
        }
    }
    panic!("no route from {from:?} to {to:?}");
}

/// Sends one move and reads up to the player's own MOVE: where the server put it.
fn walk(c: &mut Client, t: &mut u32, d: Direction) -> (u16, u16) {
    *t += 1;
    c.move_(d, *t);
    c.pump_until_own_move(*t)
}

fn a_player_cannot_step_into_a_wall(backend: Backend) {
    // A 12×12 board, walls everywhere but a plus sign of open cells around (6, 6) and a few
    // pillars in it: every step is into a wall, the edge of the plus or open ground.
    let mut map = Map::open(12, 12);
    map.block_rect((0, 0), (11, 11));
    for i in 2..=10 {
        map.set(i, 6, false);
        map.set(6, i, false);
    }
    map.set(4, 6, true);
    map.set(6, 8, true);
    let map = Arc::new(map);
    let srv = common::start(Config {
        world_size: 12,
        max_users: 4,
        npcs: 8,
        seed: 3,
        npc_interval: Duration::from_millis(10),
        map: Some(map.clone()),
        ..config(backend)
    });
    for npc in 4..12u32 {
        let (x, y) = srv.position(npc).expect("an NPC");
        assert!(!map.blocked(x, y), "NPC {npc} spawned in a wall at {x},{y}");
    }
    let mut c = Client::login(srv.local_addr(), U8, "walker");
    assert!(
        !map.blocked(c.pos.0, c.pos.1),
        "logged in inside a wall at {:?}",
        c.pos
    );
    let mut t = 0;
    let (mut refused, mut taken) = (0, 0);
    let started = Instant::now();
    for k in 0..200u64 {
        let d = Direction::ALL[(cport_mmo_proto::splitmix64(k) % 4) as usize];
        let want = step(&map, c.pos, d);
        let before = c.pos;
        let got = walk(&mut c, &mut t, d);
        assert_eq!(got, want, "step {k} {d:?} from {before:?}");
        if got == before {
            refused += 1;
        } else {
            taken += 1;
        }
        // The NPCs walk meanwhile (one step each 10 ms while seen): never into a wall.
        for npc in 4..12u32 {
            let (x, y) = srv.position(npc).unwrap();
            assert!(
                !map.blocked(x, y),
                "NPC {npc} walked into a wall at {x},{y}"
            );
        }
    }
    assert!(
        refused > 20 && taken > 20,
        "{refused} refused, {taken} taken"
    );
    assert!(srv.stats().npc_moves > 0, "the NPCs walked");
    for _ in 0..20 {
        c.send(&ClientPacket::Teleport);
        let (x, y) = c.pump_until_own_move(t);
        assert!(!map.blocked(x, y), "teleported into a wall at {x},{y}");
    }
    assert!(started.elapsed() < TIMEOUT);
    srv.check_world().unwrap();
    // A map that does not fit the board is refused at start.
    let err = cport_mmo::start(Config {
        world_size: 13,
        map: Some(map),
        ..config(backend)
    })
    .expect_err("a 12x12 map on a 13x13 board");
    assert!(err.to_string().contains("12x12"), "{err}");
}

const SIZE: u16 = 40;
const RANGE: u16 = 7;
const GIVE_UP: u16 = 12;

/// The first seed from `from` on whose first NPC spawns well inside the board, its spawn
/// cell, and a map with a wall three cells east of it: x = sx + 3, y from sy - 5 to sy + 5.
fn wall_setup(from: u64) -> (u64, (u16, u16), Map) {
    let seed = (from..)
        .find(|&s| {
            let (x, y) = npc_position(s, 0, SIZE);
            (12..26).contains(&x) && (10..30).contains(&y)
        })
        .unwrap();
    let s = npc_position(seed, 0, SIZE);
    let mut map = Map::open(SIZE, SIZE);
    map.block_rect((s.0 + 3, s.1 - 5), (s.0 + 3, s.1 + 5));
    assert_eq!(
        npc_spawn(seed, 0, SIZE, Some(&map)),
        s,
        "the spawn cell is open"
    );
    (seed, s, map)
}

fn chase_config(backend: Backend, seed: u64, map: Map, aggressive: u8) -> Config {
    Config {
        world_size: SIZE,
        view_range: RANGE,
        npcs: 1,
        max_users: 4,
        seed,
        npc_interval: Duration::from_millis(40),
        regen_interval: Duration::from_secs(3600),
        map: Some(Arc::new(map)),
        aggressive_npcs: aggressive,
        npc_give_up: GIVE_UP,
        ..config(backend)
    }
}

fn an_aggressive_npc_chases_around_a_wall_and_gives_up(backend: Backend) {
    let npc = 4u32; // max_users 4: the first NPC's id
                    // A player on the board out of the NPC's sight (it sleeps at its spawn cell until
                    // seen): the login cell follows from the seed, so a login in sight tries the next seed.
    let mut from = 1;
    let (srv, mut c, s, map) = loop {
        assert!(from < 1000, "every login landed in the NPC's sight");
        let (seed, s, map) = wall_setup(from);
        let srv = common::start(chase_config(backend, seed, map.clone(), 100));
        let c = Client::login(srv.local_addr(), U8, "hero");
        if cheb(c.pos, s) > RANGE + 1 {
            break (srv, c, s, map);
        }
        drop(c);
        srv.shutdown(Duration::from_secs(1));
        from = seed + 1;
    };
    let wall_x = s.0 + 3;
    assert_eq!(srv.position(npc), Some(s), "asleep at its spawn cell");
    // Walk, unseen, to three cells east of the wall's middle; then step into sight, west of
    // it: the straight line from the NPC to the player crosses the wall.
    let out_of_sight = |p: (u16, u16)| cheb(p, s) > RANGE;
    let mut t = 0;
    let start = (s.0 + RANGE + 1, s.1);
    for d in route(&map, c.pos, start, out_of_sight) {
        walk(&mut c, &mut t, d);
    }
    assert_eq!(srv.position(npc), Some(s), "it never saw the player");
    let p = (s.0 + 6, s.1);
    walk(&mut c, &mut t, Direction::Left);
    assert_eq!(walk(&mut c, &mut t, Direction::Left), p);
    // The chase: the NPC walks round an end of the wall to a cell next to the player.
    let mut trail = vec![s];
    let until = Instant::now() + TIMEOUT;
    let mut hurt = false;
    while !hurt {
        assert!(Instant::now() < until, "not caught; trail {trail:?}");
        match c.recv_apply() {
            ServerPacket::MoveObject { id, x, y, .. } if id as u32 == npc => {
                let at = (x as u16, y as u16);
                assert!(
                    !map.blocked(at.0, at.1),
                    "the NPC walked into the wall at {at:?}"
                );
                assert_eq!(manhattan(*trail.last().unwrap(), at), 1, "one cell a move");
                assert!(cheb(at, s) <= GIVE_UP + 1, "it ran off to {at:?}");
                trail.push(at);
            }
            ServerPacket::Chat { id, mess } if id as u32 == c.id => {
                let text = String::from_utf8_lossy(&mess).to_string();
                assert_eq!(text, format!("NPC {npc} hits you for {}", rules::NPC_HIT));
            }
            ServerPacket::StatChange { hp, .. } => {
                assert_eq!(hp, rules::max_hp(1) - rules::NPC_HIT, "one hit");
                hurt = true;
            }
            _ => {}
        }
    }
    let last = *trail.last().unwrap();
    assert_eq!(
        manhattan(last, p),
        1,
        "it attacks from next to the player: {trail:?}"
    );
    assert!(
        last.0 > wall_x,
        "it came round to the player's side: {trail:?}"
    );
    assert!(
        trail
            .iter()
            .any(|&(x, y)| x == wall_x && (y < s.1 - 5 || y > s.1 + 5)),
        "it went round an end of the wall: {trail:?}"
    );
    // The shortest way round: to an end of the wall (6 cells down or up, 3 across), then
    // back up or down to a cell next to the player: at least 6 + 3 + 5 moves.
    assert!(trail.len() > 14, "{trail:?}");
    assert_eq!(srv.engine().npc_target(npc), Some(Some(c.id)));
    // The player runs east, past the give-up distance from the NPC's spawn cell: the chase
    // stops there, and the NPC does not take it up again while the player stays beyond.
    let away = s.0 + GIVE_UP + 1;
    while c.pos.0 < away {
        walk(&mut c, &mut t, Direction::Right);
    }
    wait_until("the NPC gives up", || {
        srv.engine().npc_target(npc) == Some(None)
    });
    let hp = srv.player_stats(c.id).unwrap().0;
    let quiet_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < quiet_until {
        assert_eq!(srv.engine().npc_target(npc), Some(None), "chasing again");
        assert_eq!(srv.player_stats(c.id).unwrap().0, hp, "hit again");
        let at = srv.position(npc).unwrap();
        assert!(!map.blocked(at.0, at.1));
        while c.try_recv(Duration::from_millis(5)).is_some() {}
    }
    assert!(srv.stats().npc_moves as usize >= trail.len() - 1);
    assert!(srv.stats().npc_attacks >= 1);
    srv.check_world().unwrap();
}

fn a_peaceful_npc_fights_back_after_being_hit(backend: Backend) {
    // No wall this time, an open map: the NPC walks at random until hit.
    let seed = 5;
    let npc = 4u32;
    let srv = common::start(chase_config(backend, seed, Map::open(SIZE, SIZE), 0));
    let mut c = Client::login(srv.local_addr(), U8, "poker");
    let open = Map::open(SIZE, SIZE);
    let mut t = 0;
    // Walk next to the NPC (it wanders one cell per 40 ms once seen; the player is faster)
    // and hit it; if it stepped away just before the hit (no STAT_CHANGE comes), again.
    let until = Instant::now() + TIMEOUT;
    let hp_after_attack = 'hit: loop {
        loop {
            assert!(Instant::now() < until, "never next to the NPC");
            let n = srv.position(npc).unwrap();
            if manhattan(c.pos, n) == 1 {
                break;
            }
            let d = if n == c.pos {
                Direction::Right
            } else {
                route(&open, c.pos, n, |_| true)[0]
            };
            walk(&mut c, &mut t, d);
        }
        assert_eq!(
            srv.engine().npc_target(npc),
            Some(None),
            "peaceful: no chase"
        );
        assert_eq!(
            srv.player_stats(c.id).unwrap().0,
            rules::max_hp(1),
            "never hit"
        );
        c.send(&ClientPacket::Attack);
        let answered_by = Instant::now() + Duration::from_millis(300);
        while let Some(p) = c.try_recv(answered_by.saturating_duration_since(Instant::now())) {
            c.apply(&p);
            match p {
                ServerPacket::StatChange { hp, .. } => break 'hit hp,
                ServerPacket::RemoveObject { id } => panic!("killed {id} in one hit"),
                _ => {}
            }
        }
    };
    assert_eq!(
        hp_after_attack,
        rules::max_hp(1) - rules::NPC_HIT,
        "the hit back"
    );
    assert_eq!(
        srv.engine().npc_target(npc),
        Some(Some(c.id)),
        "it fights back"
    );
    // The player steps three cells away; the NPC follows and hits it again.
    let n = srv.position(npc).unwrap();
    let away = if c.pos.0 >= n.0 && c.pos.0 + 3 < SIZE {
        Direction::Right
    } else {
        Direction::Left
    };
    for _ in 0..3 {
        walk(&mut c, &mut t, away);
    }
    let until = Instant::now() + TIMEOUT;
    let mut chat = false;
    loop {
        assert!(Instant::now() < until, "the NPC never fought back");
        match c.recv_apply() {
            ServerPacket::Chat { id, mess } if id as u32 == c.id => {
                assert_eq!(
                    String::from_utf8_lossy(&mess),
                    format!("NPC {npc} hits you for {}", rules::NPC_HIT)
                );
                chat = true;
            }
            ServerPacket::StatChange { hp, .. } => {
                assert!(chat, "the system chat comes first");
                assert!(hp <= hp_after_attack - rules::NPC_HIT, "{hp}");
                break;
            }
            _ => {}
        }
    }
    let at = srv.position(npc).unwrap();
    assert_eq!(manhattan(at, c.pos), 1, "it hits from next to the player");
    srv.check_world().unwrap();
}

fn an_aggressive_npc_walled_in_gives_up_at_once(backend: Backend) {
    // The NPC's spawn cell in a closed room (walls two cells around it): it sees the player
    // outside but finds no way, so it never chases (the search and the give-up happen in one
    // tick), never hits, and never leaves the room.
    let (seed, s, _) = wall_setup(1);
    let mut map = Map::open(SIZE, SIZE);
    for k in 0..=4 {
        map.set(s.0 - 2 + k, s.1 - 2, true);
        map.set(s.0 - 2 + k, s.1 + 2, true);
        map.set(s.0 - 2, s.1 - 2 + k, true);
        map.set(s.0 + 2, s.1 - 2 + k, true);
    }
    let npc = 4u32;
    let srv = common::start(chase_config(backend, seed, map.clone(), 100));
    let mut c = Client::login(srv.local_addr(), U8, "outside");
    let mut t = 0;
    let near = (s.0 + 4, s.1);
    for d in route(&map, c.pos, near, |_| true) {
        walk(&mut c, &mut t, d);
    }
    assert_eq!(c.pos, near);
    wait_until("the NPC is awake", || srv.stats().awake_npcs == 1);
    let moves = srv.stats().npc_moves;
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        assert_eq!(
            srv.engine().npc_target(npc),
            Some(None),
            "a chase with no way"
        );
        let at = srv.position(npc).unwrap();
        assert!(cheb(at, s) <= 1, "it left the room: {at:?}");
        while c.try_recv(Duration::from_millis(5)).is_some() {}
    }
    assert!(srv.stats().npc_moves > moves, "it walks about in its room");
    assert_eq!(srv.stats().npc_attacks, 0);
    assert_eq!(srv.player_stats(c.id).unwrap().0, rules::max_hp(1));
}

fn scripted_moves_step_around_a_wall_and_attack_only_next_to_the_player(backend: Backend) {
    // The API scripts use, called directly: the NPC sleeps (hour-long ticks), so every move
    // it makes here is one of these calls.
    let (seed, s, map) = wall_setup(1);
    let wall_x = s.0 + 3;
    let npc = 4u32;
    let srv = common::start(Config {
        npc_interval: Duration::from_secs(3600),
        ..chase_config(backend, seed, map.clone(), 0)
    });
    let c = Client::login(srv.local_addr(), U8, "target");
    let player = c.pos;
    let (h, e) = (srv.handle(), srv.engine());
    // Toward the cell east of the wall's middle: round the wall, one cell a call.
    let goal = (wall_x + 2, s.1);
    let mut trail = vec![s];
    while manhattan(*trail.last().unwrap(), goal) > 1 {
        assert!(trail.len() < 40, "too long: {trail:?}");
        assert!(
            e.npc_step_toward(&h, npc, goal.0, goal.1),
            "stuck at {trail:?}"
        );
        let at = srv.position(npc).unwrap();
        assert_eq!(manhattan(*trail.last().unwrap(), at), 1);
        assert!(!map.blocked(at.0, at.1), "{at:?} is in the wall");
        trail.push(at);
    }
    assert!(
        !e.npc_step_toward(&h, npc, goal.0, goal.1),
        "next to it already"
    );
    // Shortest: 3 across and 6 down (or up) to the wall's end, 1 across and 6 back to the
    // cell west of the goal: 16 moves.
    assert_eq!(trail.len() - 1, 16, "{trail:?}");
    // Then to the player, wherever it logged in, and a hit once next to it.
    let mut calls = 0;
    while manhattan(srv.position(npc).unwrap(), player) > 1 {
        calls += 1;
        assert!(calls < 200, "never reached the player");
        assert!(!e.npc_attack(npc, c.id), "a hit from afar");
        assert!(e.npc_step_toward(&h, npc, player.0, player.1));
    }
    assert_eq!(srv.stats().npc_attacks, 0);
    assert!(e.npc_attack(npc, c.id));
    assert_eq!(srv.stats().npc_attacks, 1);
    assert_eq!(
        srv.player_stats(c.id).unwrap().0,
        rules::max_hp(1) - rules::NPC_HIT
    );
    assert!(!e.npc_attack(npc, npc), "an NPC is no target");
    assert!(!e.npc_step_toward(&h, 0, 1, 1), "a player is not an NPC");
    srv.check_world().unwrap();
    drop(c);
}
