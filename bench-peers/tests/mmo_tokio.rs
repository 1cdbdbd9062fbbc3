//! `mmo-tokio` (the game on tokio) speaks the course protocol as `cport mmo` does: login with
//! the NPCs in view as placed, players who see each other move, NPCs that wake and move,
//! chat, logout, a full server refusing logins, hostile input closing only the offender, and
//! its startup line; it exits 0 on SIGTERM. Run against the real binary with the blocking
//! course client of `mmo/tests`.

use cport_mmo_client::blocking as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Client, TIMEOUT};
use cport_bench::proc::ServerProc;
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField};

const MAX_USERS: u32 = 3;
const NPCS: u32 = 60;
const SIZE: u16 = 24;
const RANGE: u16 = 4;
const SEED: u64 = 5;

fn spawn(header: &str) -> ServerProc {
    let args: Vec<String> = [
        "--addr",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--npcs",
        &NPCS.to_string(),
        "--max-users",
        &MAX_USERS.to_string(),
        "--view-range",
        &RANGE.to_string(),
        "--world-size",
        &SIZE.to_string(),
        "--seed",
        &SEED.to_string(),
        "--header",
        header,
        "--db",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [("RUST_LOG".to_string(), "warn".to_string())];
    ServerProc::spawn(Path::new(env!("CARGO_BIN_EXE_mmo-tokio")), &args, &env)
        .expect("mmo-tokio starts")
}

/// The NPCs within view of `pos` where they were placed (all asleep: no player was near).
fn placed_npcs_near(pos: (u16, u16)) -> BTreeMap<u32, (u16, u16)> {
    (0..NPCS)
        .map(|i| {
            (
                MAX_USERS + i,
                cport_mmo::npc_position(SEED, i as usize, SIZE),
            )
        })
        .filter(|&(_, p)| pos.0.abs_diff(p.0) <= RANGE && pos.1.abs_diff(p.1) <= RANGE)
        .collect()
}

/// Reads and applies what arrives within `wait`.
fn drain(c: &mut Client, wait: Duration) {
    while let Some(p) = c.try_recv(wait) {
        c.apply(&p);
    }
}

fn speaks_the_protocol(header: &str, h: SizeField) {
    let server = spawn(header);
    assert!(
        server.startup.contains("backend: tokio")
            && server.startup.contains("threads: 2")
            && server.startup.contains(&format!("npcs: {NPCS}"))
            && server.startup.contains(&format!("max users: {MAX_USERS}"))
            && server.startup.contains(&format!("header: {header}"))
            && server.startup.contains("db: none"),
        "{}",
        server.startup
    );
    let addr = server.addr;

    // Login: SC_LOGIN_INFO, then an ADD for every NPC in view, where it was placed.
    let mut a = Client::login(addr, h, "alice");
    assert!(a.id < MAX_USERS, "player ids are dense from 0: {}", a.id);
    let want = placed_npcs_near(a.pos);
    let until = Instant::now() + TIMEOUT;
    while a.picture.len() < want.len() {
        assert!(
            Instant::now() < until,
            "missing NPC ADDs: {want:?} vs {:?}",
            a.picture
        );
        a.recv_apply();
    }
    assert_eq!(a.picture, want, "the NPCs in view at login, as placed");

    // A second player: when in range, both get an ADD of the other.
    let mut b = Client::login(addr, h, "bob");
    assert_ne!(a.id, b.id);
    drain(&mut a, Duration::from_millis(200));
    drain(&mut b, Duration::from_millis(200));
    let near = a.pos.0.abs_diff(b.pos.0) <= RANGE && a.pos.1.abs_diff(b.pos.1) <= RANGE;
    assert_eq!(
        a.picture.contains_key(&b.id),
        near,
        "alice sees bob iff in range"
    );
    assert_eq!(
        b.picture.contains_key(&a.id),
        near,
        "bob sees alice iff in range"
    );

    // Moves: each step is confirmed by the mover's own MOVE with its move_time, one cell
    // away (or clamped at the edge).
    for t in 1..=6u32 {
        let before = a.pos;
        let d = if before.0 + 1 < SIZE {
            Direction::Right
        } else {
            Direction::Left
        };
        a.move_(d, t);
        let after = a.pump_until_own_move(t);
        assert_eq!(
            before.0.abs_diff(after.0) + before.1.abs_diff(after.1),
            1,
            "one cell: {before:?} -> {after:?}"
        );
    }

    // Walk bob onto alice's cell: then they see each other, and bob sees alice's moves.
    let mut t = 100u32;
    while b.pos != a.pos {
        let d = if b.pos.0 < a.pos.0 {
            Direction::Right
        } else if b.pos.0 > a.pos.0 {
            Direction::Left
        } else if b.pos.1 < a.pos.1 {
            Direction::Down
        } else {
            Direction::Up
        };
        t += 1;
        b.move_(d, t);
        b.pump_until_own_move(t);
        assert!(t < 200, "bob never reached alice");
    }
    drain(&mut a, Duration::from_millis(200));
    assert_eq!(
        b.picture.get(&a.id),
        Some(&a.pos),
        "bob sees alice where she is"
    );
    assert_eq!(
        a.picture.get(&b.id),
        Some(&b.pos),
        "alice sees bob where he is"
    );
    a.move_(Direction::Up, 500);
    let to = a.pump_until_own_move(500);
    let until = Instant::now() + TIMEOUT;
    while b.picture.get(&a.id) != Some(&to) {
        assert!(Instant::now() < until, "bob never saw alice's move");
        b.recv_apply();
    }

    // NPCs seen by a player wake and move (SC_MOVE_OBJECT of an NPC, move_time 0) when
    // any are in view.
    drain(&mut a, Duration::from_millis(100));
    if a.picture.keys().any(|&id| id >= MAX_USERS) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < until, "no NPC moved within 5 s");
            let Some(p) = a.try_recv(Duration::from_millis(200)) else {
                continue;
            };
            a.apply(&p);
            if let ServerPacket::MoveObject { id, move_time, .. } = p {
                if id as u32 >= MAX_USERS {
                    assert_eq!(move_time, 0);
                    break;
                }
            }
        }
    }

    // Chat reaches the sender and the player who sees it.
    a.send(&ClientPacket::Chat {
        mess: b"hello".to_vec(),
    });
    let got = |c: &mut Client| {
        let until = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < until, "no chat");
            let p = c.recv_apply();
            if let ServerPacket::Chat { id, mess } = p {
                return (id as u32, mess);
            }
        }
    };
    let alice = a.id;
    assert_eq!(got(&mut a), (alice, b"hello".to_vec()));
    assert_eq!(got(&mut b), (alice, b"hello".to_vec()));

    // A full server: the third slot is taken, the fourth login gets SC_LOGIN_FAIL.
    let c = Client::login(addr, h, "carol");
    let mut d = Client::connect(addr, h);
    d.send(&ClientPacket::Login {
        name: cport_mmo_proto::name("dave"),
    });
    match d.recv() {
        ServerPacket::LoginFail => {}
        other => panic!("expected SC_LOGIN_FAIL, got {other:?}"),
    }
    d.expect_closed();

    // Hostile input (a packet before login; a size field below the header) closes only the
    // offender.
    let mut e = Client::connect(addr, h);
    e.send(&ClientPacket::Move {
        direction: Direction::Up,
        move_time: 1,
    });
    e.expect_closed();
    let mut f = Client::connect(addr, h);
    f.raw(&[0u8; 8]);
    f.expect_closed();

    // Logout: bob's REMOVE reaches alice; carol's close frees a slot for a new login.
    b.send(&ClientPacket::Logout);
    let bob = b.id;
    let until = Instant::now() + TIMEOUT;
    while a.picture.contains_key(&bob) {
        assert!(Instant::now() < until, "alice never got bob's REMOVE");
        a.recv_apply();
    }
    b.expect_closed();
    drop(c);
    let until = Instant::now() + TIMEOUT;
    let g = loop {
        let mut g = Client::connect(addr, h);
        g.send(&ClientPacket::Login {
            name: cport_mmo_proto::name("gina"),
        });
        match g.recv() {
            ServerPacket::LoginInfo { id, .. } => {
                g.id = id as u32;
                break g;
            }
            ServerPacket::LoginFail => {
                assert!(Instant::now() < until, "the freed slots were never reused");
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("expected SC_LOGIN_INFO or SC_LOGIN_FAIL, got {other:?}"),
        }
    };
    assert!(g.id < MAX_USERS);
    drop(a);
    let status = server.stop().expect("stops");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn mmo_tokio_speaks_the_protocol_with_u8_sizes() {
    speaks_the_protocol("u8", SizeField::U8);
}

#[test]
fn mmo_tokio_speaks_the_protocol_with_u16_sizes() {
    speaks_the_protocol("u16", SizeField::U16);
}
