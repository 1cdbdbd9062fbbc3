//! Combat, the course's way (the numbers are `cport_mmo::rules`, documented in
//! `mmo/README.md`): `CS_ATTACK` hits the NPCs on the four cells next to the player; they
//! strike back while alive, die (`SC_REMOVE_OBJECT`), and respawn on a port timer; the
//! attacker gains exp and levels and gets `SC_STAT_CHANGE`; hp regenerates on a timer.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{config, Client, TIMEOUT};
use cport_mmo::{rules, Config, DbConfig, MmoServer};
use cport_mmo_proto::{ClientPacket, ServerPacket, SizeField::U8};
use cport_server::cport::Backend;
use cport_testkit::per_backend;

per_backend!(
    attack_kills_the_npcs_next_to_the_player_and_they_respawn,
    a_hurt_player_regenerates_to_full_and_then_hears_nothing,
    a_player_who_never_attacks_gets_only_the_five_course_packet_types,
);

/// A 5×5 board everyone sees whole, 6 NPCs that never move, respawn after 300 ms.
fn arena_config(backend: Backend, regen: Duration) -> Config {
    Config {
        world_size: 5,
        npcs: 6,
        seed: 7,
        npc_interval: Duration::from_secs(3600),
        npc_respawn: Duration::from_millis(300),
        regen_interval: regen,
        ..config(backend)
    }
}

fn arena(backend: Backend, regen: Duration) -> MmoServer {
    common::start(arena_config(backend, regen))
}

/// The NPCs on the four cells next to `pos`, from the client's picture.
fn next_to(c: &Client, pos: (u16, u16)) -> BTreeSet<u32> {
    c.picture
        .iter()
        .filter(|(_, &(x, y))| x.abs_diff(pos.0) + y.abs_diff(pos.1) == 1)
        .map(|(&id, _)| id)
        .collect()
}

/// Logs in and teleports until some NPC stands next to the player; reads every ADD first.
fn login_next_to_npcs(srv: &MmoServer, name: &str, npcs: usize) -> (Client, BTreeSet<u32>) {
    let mut c = Client::login(srv.local_addr(), U8, name);
    while c.picture.len() < npcs {
        c.recv_apply();
    }
    for _ in 0..100 {
        let near = next_to(&c, c.pos);
        if !near.is_empty() {
            return (c, near);
        }
        c.send(&ClientPacket::Teleport);
        c.pump_until_own_move(0);
    }
    panic!("no cell next to an NPC after 100 teleports");
}

/// What one attack brought: the REMOVEd ids, the system chats, and the STAT_CHANGE that ends
/// it (the attack's last packet).
fn attack(c: &mut Client) -> (BTreeSet<u32>, usize, (i32, i32, i32, i32)) {
    c.send(&ClientPacket::Attack);
    let (mut removed, mut chats) = (BTreeSet::new(), 0);
    loop {
        match c.recv_apply() {
            ServerPacket::RemoveObject { id } => {
                removed.insert(id as u32);
            }
            ServerPacket::Chat { id, .. } => {
                assert_eq!(id as u32, c.id, "a system chat names the player");
                chats += 1;
            }
            ServerPacket::StatChange {
                hp,
                max_hp,
                exp,
                level,
            } => return (removed, chats, (hp, max_hp, exp, level)),
            other => panic!("unexpected {other:?} during an attack"),
        }
    }
}

fn attack_kills_the_npcs_next_to_the_player_and_they_respawn(backend: Backend) {
    let srv = arena(backend, Duration::from_secs(3600));
    let (mut c, near) = login_next_to_npcs(&srv, "fighter", 6);
    let k = near.len() as i32;
    let spots: Vec<(u32, (u16, u16))> = near.iter().map(|&id| (id, c.picture[&id])).collect();
    // The rules, step by step: NPC_HP 30 takes 3 hits of 10 at level 1; each survivor hits
    // back for NPC_HIT.
    let mut hp = rules::max_hp(1);
    let mut npc_hp = rules::NPC_HP;
    let mut hits = 0;
    while npc_hp - rules::damage(1) > 0 {
        npc_hp -= rules::damage(1);
        hp -= rules::NPC_HIT * k;
        hits += 1;
        let (removed, chats, stats) = attack(&mut c);
        assert!(removed.is_empty(), "an NPC died early: {removed:?}");
        assert_eq!(chats, k as usize);
        assert_eq!(stats, (hp, rules::max_hp(1), 0, 1), "after hit {hits}");
        for &id in &near {
            assert_eq!(srv.npc_alive(id), Some(true));
        }
    }
    let (removed, chats, stats) = attack(&mut c);
    assert_eq!(
        removed, near,
        "the NPCs next to the player die, and only they"
    );
    assert_eq!(chats, k as usize);
    let (mut exp, mut level, mut max_hp) = (rules::NPC_EXP * k, 1, rules::max_hp(1));
    while exp >= rules::exp_to_next(level) {
        exp -= rules::exp_to_next(level);
        level += 1;
        max_hp = rules::max_hp(level);
        hp = max_hp;
    }
    assert_eq!(stats, (hp, max_hp, exp, level));
    assert_eq!(srv.player_stats(c.id), Some(stats));
    for &id in &near {
        assert_eq!(srv.npc_alive(id), Some(false));
    }
    let s = srv.stats();
    assert_eq!(s.npc_kills, k as u64);
    // Attacking nothing changes nothing: no STAT_CHANGE (only stats that change are sent).
    c.send(&ClientPacket::Attack);
    // Then the respawns: an ADD at the spawn cell for each.
    let mut back = BTreeSet::new();
    let until = Instant::now() + TIMEOUT;
    while back.len() < near.len() {
        assert!(Instant::now() < until, "NPCs did not respawn");
        match c.recv_apply() {
            ServerPacket::AddObject { id, x, y, .. } => {
                let spot = spots
                    .iter()
                    .find(|s| s.0 == id as u32)
                    .expect("a killed NPC");
                assert_eq!(spot.1, (x as u16, y as u16), "respawned elsewhere");
                back.insert(id as u32);
            }
            other => panic!("unexpected {other:?} while waiting for respawns"),
        }
    }
    for &id in &near {
        assert_eq!(srv.npc_alive(id), Some(true));
    }
    assert_eq!(srv.stats().npc_respawns, k as u64);
    srv.shutdown(Duration::from_millis(300));
}

fn a_hurt_player_regenerates_to_full_and_then_hears_nothing(backend: Backend) {
    let srv = arena(backend, Duration::from_millis(100));
    let (mut c, near) = login_next_to_npcs(&srv, "healer", 6);
    let k = near.len() as i32;
    let (_, _, (mut hp, max_hp, _, _)) = attack(&mut c);
    assert_eq!(hp, max_hp - rules::NPC_HIT * k);
    while hp < max_hp {
        match c.recv() {
            ServerPacket::StatChange { hp: h, .. } => {
                assert_eq!(h, (hp + rules::regen(max_hp)).min(max_hp));
                hp = h;
            }
            other => panic!("unexpected {other:?} while regenerating"),
        }
    }
    c.assert_quiet(Duration::from_millis(400));
    srv.shutdown(Duration::from_millis(300));
}

/// The course's stress client stops on any packet type but LOGIN_INFO, ADD, REMOVE, MOVE and
/// CHAT. A player who walks among NPCs that move, die and respawn (killed by another player
/// next to it) gets nothing else.
fn a_player_who_never_attacks_gets_only_the_five_course_packet_types(backend: Backend) {
    let srv = common::start(Config {
        world_size: 8,
        npcs: 40,
        npc_interval: Duration::from_millis(20),
        npc_respawn: Duration::from_millis(50),
        regen_interval: Duration::from_millis(20),
        ..config(backend)
    });
    let mut walker = Client::login(srv.local_addr(), U8, "walker");
    let mut fighter = Client::login(srv.local_addr(), U8, "fighter");
    let until = Instant::now() + Duration::from_millis(1500);
    let mut kinds = BTreeSet::new();
    let mut t = 0;
    while Instant::now() < until {
        fighter.send(&ClientPacket::Attack);
        t += 1;
        walker.move_(cport_mmo_proto::Direction::ALL[t % 4], t as u32);
        while let Some(p) = walker.try_recv(Duration::from_millis(5)) {
            kinds.insert(p.kind());
        }
        while fighter.try_recv(Duration::from_millis(1)).is_some() {}
    }
    assert!(srv.stats().npc_kills > 0, "the fighter killed nothing");
    use cport_mmo_proto::sc;
    let allowed = [
        sc::LOGIN_INFO,
        sc::ADD_OBJECT,
        sc::REMOVE_OBJECT,
        sc::MOVE_OBJECT,
        sc::CHAT,
    ];
    for k in &kinds {
        assert!(allowed.contains(k), "the walker got packet type {k}");
    }
    assert!(kinds.contains(&sc::REMOVE_OBJECT) && kinds.contains(&sc::ADD_OBJECT));
    srv.shutdown(Duration::from_millis(300));
}

/// Exp and level are kept: a player who killed and leveled logs in again with them (SQLite).
#[test]
fn exp_and_level_come_back_at_the_next_login() {
    let dir = std::env::temp_dir().join(format!("cport-mmo-combat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = DbConfig::Sqlite(dir.join("mmo.db"));
    let cfg = Config {
        db: db.clone(),
        ..arena_config(Backend::Epoll, Duration::from_secs(3600))
    };
    let srv = common::start(cfg.clone());
    let (mut c, _) = login_next_to_npcs(&srv, "veteran", 6);
    let mut last = attack(&mut c).2;
    while srv.stats().npc_kills == 0 {
        last = attack(&mut c).2;
    }
    c.send(&ClientPacket::Logout);
    c.expect_closed();
    srv.shutdown(Duration::from_millis(300));
    let srv = common::start(cfg);
    let mut c = Client::connect(srv.local_addr(), U8);
    c.send(&ClientPacket::Login {
        name: cport_mmo_proto::name("veteran"),
    });
    match c.recv() {
        ServerPacket::LoginInfo {
            hp,
            max_hp,
            exp,
            level,
            ..
        } => assert_eq!((hp, max_hp, exp, level), last),
        other => panic!("expected SC_LOGIN_INFO, got {other:?}"),
    }
    assert!(last.2 > 0, "no exp gained");
    drop(c);
    srv.shutdown(Duration::from_millis(300));
    let _ = std::fs::remove_dir_all(&dir);
}
