//! `max_users` above the course's 10,000: player ids stay dense from 0, NPC ids start at
//! `max_users`, the id space the protocol's `int` cannot carry is refused before anything is
//! allocated, and `max_sessions` (what `cport mmo` sets from the open-files limit) caps the
//! sessions.

mod common;

use std::time::Duration;

use common::{config, start, wait_until, Client};
use cport_mmo_proto::{ClientPacket, ServerPacket, SizeField::U8};
use cport_server::cport::Backend;
use cport_testkit::per_backend;

/// 20,000 player slots on a small board crowded with NPCs: logins get 0, 1, 2, … in order,
/// every NPC they are shown has an id in `max_users..max_users + npcs`, every player one
/// below the logins so far.
fn ids_past_the_course_cap(backend: Backend) {
    let (max_users, npcs) = (20_000u32, 400u32);
    let srv = start(cport_mmo::Config {
        max_users: max_users as usize,
        npcs: npcs as usize,
        world_size: 40,
        ..config(backend)
    });
    let addr = srv.local_addr();
    let mut clients: Vec<Client> = (0..30)
        .map(|i| Client::login(addr, U8, &format!("p{i}")))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.id, i as u32, "player ids are dense from 0");
    }
    let mut npcs_seen = 0;
    for c in &mut clients {
        while let Some(p) = c.try_recv(Duration::from_millis(20)) {
            if let ServerPacket::AddObject { id, .. } = p {
                let id = id as u32;
                if id >= max_users {
                    assert!(id < max_users + npcs, "NPC id {id}");
                    npcs_seen += 1;
                } else {
                    assert!(id < 30, "player id {id}");
                }
            }
        }
    }
    assert!(npcs_seen > 0, "400 NPCs on a 40×40 board are in view");
    assert_eq!(srv.npc_alive(max_users), Some(true), "the first NPC");
    assert_eq!(
        srv.npc_alive(max_users + npcs - 1),
        Some(true),
        "the last NPC"
    );
    assert_eq!(srv.npc_alive(max_users - 1), None, "the last player slot");
    assert_eq!(srv.npc_alive(max_users + npcs), None);
    let snap = srv.snapshot();
    assert_eq!(snap.players.len(), 30);
    assert!(snap.players.iter().all(|p| p.id < 30));
    assert!(snap.awake_npcs.iter().all(|p| p.id >= max_users));
    // A freed id is the next one given: ids stay dense.
    let freed = clients.remove(7).id;
    drop(clients.remove(6));
    wait_until("two left", || srv.handle().metrics().open == 28);
    let a = Client::login(addr, U8, "again1");
    let b = Client::login(addr, U8, "again2");
    let mut got = [a.id, b.id];
    got.sort_unstable();
    assert_eq!(got, [freed - 1, freed], "the freed ids, not new ones");
}

/// The id space: players and NPCs together past the protocol's `int` is refused at start
/// with a clear error (and nothing allocated for them: this would take gigabytes).
#[test]
fn an_id_space_the_protocol_cannot_carry_is_refused() {
    let cfg = |max_users, npcs| cport_mmo::Config {
        max_users,
        npcs,
        ..cport_mmo::Config::default()
    };
    for (users, npcs) in [
        (i32::MAX as usize - 10, 20),
        (20_000, i32::MAX as usize),
        (usize::MAX, 1),
    ] {
        let e = cport_mmo::start(cfg(users, npcs)).expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("i32"), "{e}");
    }
    // The last id that fits: `max_users + npcs == MAX_IDS` passes the check (not started
    // here: it would allocate for 2^31 objects).
    assert_eq!(cport_mmo::MAX_IDS, i32::MAX as usize + 1);
}

/// `max_sessions` caps the sessions below `max_users` (the open-files limit, in `cport
/// mmo`): a connection beyond is closed at once, and one fits again when one leaves.
fn max_sessions_caps_the_sessions(backend: Backend) {
    let srv = start(cport_mmo::Config {
        max_users: 20_000,
        max_sessions: Some(3),
        ..config(backend)
    });
    let addr = srv.local_addr();
    let a = Client::login(addr, U8, "a");
    let _b = Client::login(addr, U8, "b");
    let _c = Client::login(addr, U8, "c");
    let mut d = Client::connect(addr, U8);
    d.send(&ClientPacket::Login {
        name: cport_mmo_proto::name("d"),
    });
    d.expect_closed();
    drop(a);
    wait_until("a left", || srv.handle().metrics().open == 2);
    let e = Client::login(addr, U8, "e");
    assert_eq!(e.id, 0, "a's id again");
}

per_backend!(ids_past_the_course_cap, max_sessions_caps_the_sessions);
