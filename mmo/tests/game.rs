//! The game's behaviour over real connections: NPCs that sleep and wake, the mover's
//! `move_time`, chat, a full server, and hostile input closing only the offender.

mod common;

use cport_testkit::per_backend;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{config, start, toward, wait_until, Client, TIMEOUT};
use cport_mmo::{MmoServer, Stats};
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField};
use cport_server::cport::Backend;

const U8: SizeField = SizeField::U8;

/// One step of `c` toward `(x, y)`; returns false if it is already there.
fn step_toward(c: &mut Client, to: (u16, u16), t: u32) -> bool {
    let Some(d) = toward(c.pos, to) else {
        return false;
    };
    c.move_(d, t);
    c.pump_until_own_move(t);
    true
}

/// The NPCs within `range` of `c` now, where the server has them.
fn npcs_in_range(
    srv: &MmoServer,
    c: &Client,
    max_users: u32,
    npcs: u32,
    range: u16,
) -> BTreeMap<u32, (u16, u16)> {
    (max_users..max_users + npcs)
        .map(|id| (id, srv.position(id).unwrap()))
        .filter(|&(_, p)| c.pos.0.abs_diff(p.0) <= range && c.pos.1.abs_diff(p.1) <= range)
        .collect()
}

/// NPCs sleep (no timer) with no player near; one wakes and moves (MOVE with move_time 0)
/// once a player sees it; all sleep again after the player leaves.
fn npcs_sleep_wake_and_sleep_again(backend: Backend) {
    let (max_users, npcs, range) = (4u32, 20u32, 3u16);
    let srv = start(cport_mmo::Config {
        world_size: 40,
        view_range: range,
        max_users: max_users as usize,
        npcs: npcs as usize,
        npc_interval: Duration::from_millis(50),
        seed: 7,
        ..config(backend)
    });
    std::thread::sleep(Duration::from_millis(200));
    let s = srv.stats();
    assert_eq!(
        (s.awake_npcs, s.npc_timers, s.npc_moves),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(srv.snapshot().awake_npcs.is_empty());

    let mut c = Client::login(srv.local_addr(), U8, "walker");
    let target = max_users; // the first NPC
    let mut t = 1;
    while !c.picture.contains_key(&target) {
        let goal = srv.position(target).unwrap();
        // Read whatever came (the ADDs after login, other NPCs' moves) before stepping.
        while let Some(p) = c.try_recv(Duration::from_millis(1)) {
            c.apply(&p);
        }
        if c.picture.contains_key(&target) {
            break;
        }
        assert!(
            step_toward(&mut c, goal, t),
            "on the NPC's cell but not told about it"
        );
        t += 1;
        assert!(t < 200, "never came into the NPC's view");
    }
    wait_until("the NPC is awake", || {
        srv.snapshot().awake_npcs.iter().any(|p| p.id == target)
    });
    assert!(srv.stats().npc_timers >= 1);
    // Every awake NPC is one a player sees (the only player is `c`).
    for p in srv.snapshot().awake_npcs {
        assert!(p.id >= max_users);
    }
    // It moves: a MOVE (move_time 0), or a REMOVE if its step took it out of view.
    let until = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < until, "the NPC never moved");
        let p = c.recv_apply();
        match p {
            ServerPacket::MoveObject { id, move_time, .. } if id as u32 >= max_users => {
                assert_eq!(move_time, 0, "NPC moves carry move_time 0");
                if id as u32 == target {
                    break;
                }
            }
            ServerPacket::RemoveObject { id } if id as u32 == target => break,
            _ => {}
        }
    }
    assert!(srv.stats().npc_moves >= 1);

    c.send(&ClientPacket::Logout);
    c.expect_closed();
    wait_until("every NPC is asleep with no timer scheduled", || {
        let s = srv.stats();
        s.awake_npcs == 0 && s.npc_timers == 0
    });
    let moves = srv.stats().npc_moves;
    std::thread::sleep(Duration::from_millis(300));
    let s: Stats = srv.stats();
    assert_eq!(s.npc_moves, moves, "an NPC moved with nobody near");
    assert_eq!((s.awake_npcs, s.npc_timers, s.players), (0, 0, 0));
}

/// With NPCs that wake but never get to move (a one-hour interval), a walking player's
/// picture of them is exactly the NPCs in range, after every step.
fn npc_pictures_match_while_walking(backend: Backend) {
    let (max_users, npcs, range) = (2u32, 150u32, 4u16);
    let srv = start(cport_mmo::Config {
        world_size: 60,
        view_range: range,
        max_users: max_users as usize,
        npcs: npcs as usize,
        npc_interval: Duration::from_secs(3600),
        seed: 11,
        ..config(backend)
    });
    let mut c = Client::login(srv.local_addr(), U8, "walker");
    let first = npcs_in_range(&srv, &c, max_users, npcs, range);
    for _ in 0..first.len() {
        c.recv_apply();
    }
    assert_eq!(c.picture, first);
    let mut t = 100;
    for corner in [(0, 0), (59, 0), (59, 59), (0, 59), (30, 30)] {
        while step_toward(&mut c, corner, t) {
            t += 1;
            // The own MOVE comes first, then one ADD or REMOVE per NPC entering or leaving.
            let want = npcs_in_range(&srv, &c, max_users, npcs, range);
            let changes = want.keys().filter(|k| !c.picture.contains_key(k)).count()
                + c.picture.keys().filter(|k| !want.contains_key(k)).count();
            for _ in 0..changes {
                c.recv_apply();
            }
            assert_eq!(c.picture, want, "after step {t}");
        }
    }
    c.assert_quiet(Duration::from_millis(20));
    let seen = srv.stats().awake_npcs;
    assert!(seen > 5, "the walk met only {seen} NPCs");
    assert_eq!(srv.stats().npc_moves, 0);
}

/// The mover's own MOVE carries its move_time unchanged, also when the move is clamped at
/// the edge of the board.
fn own_move_time_comes_back_unchanged(backend: Backend) {
    let srv = start(cport_mmo::Config {
        world_size: 4,
        ..config(backend)
    });
    for h in [U8] {
        let mut c = Client::login(srv.local_addr(), h, "timer");
        let times = [0, 1, u32::MAX, 0x8000_0000, 12345];
        let mut k = 0;
        for d in [
            Direction::Left,
            Direction::Up,
            Direction::Right,
            Direction::Down,
        ] {
            for _ in 0..6 {
                let t = times[k % times.len()];
                k += 1;
                let before = c.pos;
                c.move_(d, t);
                match c.recv_apply() {
                    ServerPacket::MoveObject {
                        id,
                        x,
                        y,
                        move_time,
                    } => {
                        assert_eq!(id as u32, c.id);
                        assert_eq!(move_time, t);
                        let (dx, dy) = d.delta();
                        let want = (
                            (i32::from(before.0) + dx).clamp(0, 3) as u16,
                            (i32::from(before.1) + dy).clamp(0, 3) as u16,
                        );
                        assert_eq!((x as u16, y as u16), want);
                    }
                    other => panic!("expected own MOVE, got {other:?}"),
                }
            }
        }
        // Pinned in the corner (3, 3) after six downs and six rights.
        assert_eq!(c.pos, (3, 3));
        // A teleport echoes the last move_time, as the course server does.
        let last = times[(k - 1) % times.len()];
        c.send(&ClientPacket::Teleport);
        c.pump_until_own_move(last);
        // ... which is 0 before the first move.
        let mut fresh = Client::login(srv.local_addr(), h, "fresh");
        fresh.send(&ClientPacket::Teleport);
        fresh.pump_until_own_move(0);
    }
}

/// A server on an 8×8 board with view range 7: every player sees every other.
fn one_screen(backend: Backend) -> MmoServer {
    start(cport_mmo::Config {
        world_size: 8,
        view_range: 7,
        ..config(backend)
    })
}

/// Chat reaches the sender and every player who sees it, not the others.
fn chat_reaches_viewers_and_sender(backend: Backend) {
    let srv = one_screen(backend);
    let addr = srv.local_addr();
    let mut a = Client::login(addr, U8, "a");
    let mut b = Client::login(addr, U8, "b");
    assert!(matches!(a.recv_apply(), ServerPacket::AddObject { .. }));
    assert!(matches!(b.recv_apply(), ServerPacket::AddObject { .. }));
    a.send(&ClientPacket::Chat {
        mess: b"hello".to_vec(),
    });
    let want = ServerPacket::Chat {
        id: a.id as i32,
        mess: b"hello".to_vec(),
    };
    assert_eq!(a.recv(), want);
    assert_eq!(b.recv(), want);
    let longest = vec![b'z'; 100];
    b.send(&ClientPacket::Chat {
        mess: longest.clone(),
    });
    let want = ServerPacket::Chat {
        id: b.id as i32,
        mess: longest,
    };
    assert_eq!(b.recv(), want);
    assert_eq!(a.recv(), want);
    a.assert_quiet(Duration::from_millis(20));
}

/// A full server answers SC_LOGIN_FAIL and closes; a freed slot is reused.
fn full_server_refuses_login(backend: Backend) {
    let srv = start(cport_mmo::Config {
        max_users: 2,
        ..config(backend)
    });
    let addr = srv.local_addr();
    let a = Client::login(addr, U8, "a");
    let _b = Client::login(addr, U8, "b");
    let mut c = Client::connect(addr, U8);
    c.send(&ClientPacket::Login {
        name: cport_mmo_proto::name("c"),
    });
    assert_eq!(c.recv(), ServerPacket::LoginFail);
    c.expect_closed();
    assert_eq!(srv.stats().login_fails, 1);
    let freed = a.id;
    drop(a);
    // Its slot is free once its session is closed completely (after `on_close`).
    wait_until("a left", || srv.handle().metrics().open == 1);
    let d = Client::login(addr, U8, "d");
    assert_eq!(d.id, freed, "the freed player slot is reused");
}

/// Each hostile input closes only that session, with a logged reason; another player is
/// still served.
fn hostile_input_closes_only_that_session(backend: Backend) {
    let srv = one_screen(backend);
    let addr = srv.local_addr();
    let mut good = Client::login(addr, U8, "good");
    let mut t = 0;
    let login = ClientPacket::Login {
        name: cport_mmo_proto::name("bad"),
    }
    .encode(U8);
    // (what, log in first?, bytes, closed by the game (rejected) rather than the codec)
    let cases: Vec<(&str, bool, Vec<u8>, bool)> = vec![
        (
            "CS_MOVE before login",
            false,
            vec![7, 1, 0, 0, 0, 0, 0],
            true,
        ),
        ("CS_CHAT before login", false, vec![3, 2, b'x'], true),
        ("CS_TELEPORT before login", false, vec![2, 4], true),
        ("unknown type before login", false, vec![2, 200], true),
        ("unknown type", true, vec![2, 9], true),
        ("bad direction", true, vec![7, 1, 4, 0, 0, 0, 0], true),
        (
            "CS_MOVE one byte long",
            true,
            vec![8, 1, 0, 0, 0, 0, 0, 0],
            true,
        ),
        ("CS_LOGIN short", false, vec![5, 0, b'a', b'b', b'c'], true),
        ("login twice", true, login.clone(), true),
        ("chat with size 2", true, vec![2, 2], true),
        ("size below the header", true, vec![1, 1], false),
        ("size zero", false, vec![0], false),
        (
            "size above any client packet",
            true,
            vec![200, 2, b'x'],
            false,
        ),
    ];
    for (what, log_in, bytes, rejected) in cases {
        let before = srv.stats().rejected;
        let protocol_before = srv.handle().metrics().closed_for("protocol");
        let mut bad = Client::connect(addr, U8);
        if log_in {
            bad.raw(&login);
            assert!(
                matches!(bad.recv(), ServerPacket::LoginInfo { .. }),
                "{what}"
            );
        }
        bad.raw(&bytes);
        bad.expect_closed();
        wait_until("the bad player is gone", || srv.stats().players == 1);
        if rejected {
            wait_until(&format!("{what}: counted as rejected"), || {
                srv.stats().rejected == before + 1
            });
        } else {
            wait_until(&format!("{what}: closed by the codec"), || {
                srv.handle().metrics().closed_for("protocol") == protocol_before + 1
            });
        }
        // The good player is still served, and saw the bad one come and go (if it logged in).
        t += 1;
        good.move_(Direction::ALL[t as usize % 4], t);
        good.pump_until_own_move(t);
        assert!(good.picture.is_empty(), "{what}: {:?}", good.picture);
    }
    good.assert_quiet(Duration::from_millis(20));
    // CS_ATTACK is ignored, not punished.
    good.send(&ClientPacket::Attack);
    good.move_(Direction::Up, 999);
    good.pump_until_own_move(999);
    assert_eq!(srv.stats().players, 1);
}

per_backend!(
    npcs_sleep_wake_and_sleep_again,
    npc_pictures_match_while_walking,
    own_move_time_comes_back_unchanged,
    chat_reaches_viewers_and_sender,
    full_server_refuses_login,
    hostile_input_closes_only_that_session,
);
