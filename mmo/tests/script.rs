//! NPC scripts over real connections: the course's `npc.lua` says "HELLO" to a player who
//! steps onto its NPC's cell (and not to one next to it); a runaway script and a failing one
//! leave the server serving; a script that does not compile stops the start.

mod common;

use cport_testkit::per_backend;

use std::time::{Duration, Instant};

use common::{config, start, toward, Client, TIMEOUT};
use cport_mmo::{MmoServer, ScriptSource};
use cport_mmo_proto::{Direction, ServerPacket, SizeField};
use cport_server::cport::Backend;

const U8: SizeField = SizeField::U8;
const MAX_USERS: u32 = 4;

/// A 20×20 board with `npcs` NPCs that never move by themselves, running `script`.
fn game(backend: Backend, npcs: usize, script: ScriptSource) -> MmoServer {
    start(cport_mmo::Config {
        world_size: 20,
        view_range: 3,
        max_users: MAX_USERS as usize,
        npcs,
        npc_interval: Duration::from_secs(3600),
        seed: 3,
        npc_script: Some(script),
        ..config(backend)
    })
}

fn text(name: &str, src: &str) -> ScriptSource {
    ScriptSource::Text(name.into(), src.into())
}

/// One step of `c` toward `(x, y)` along x first; the chats it received meanwhile. `None`
/// when it is there already.
fn step(c: &mut Client, to: (u16, u16), t: u32) -> Option<Vec<(i32, Vec<u8>)>> {
    let d = toward(c.pos, to)?;
    c.move_(d, t);
    let mut chats = Vec::new();
    let until = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < until, "no own MOVE");
        let p = c.recv_apply();
        match p {
            ServerPacket::Chat { id, mess } => chats.push((id, mess)),
            ServerPacket::MoveObject { id, move_time, .. }
                if id as u32 == c.id && move_time == t =>
            {
                return Some(chats)
            }
            _ => {}
        }
    }
}

/// The chats that arrive within `wait`.
fn chats_within(c: &mut Client, wait: Duration) -> Vec<(i32, Vec<u8>)> {
    let until = Instant::now() + wait;
    let mut chats = Vec::new();
    while let Some(p) = c.try_recv(until.saturating_duration_since(Instant::now())) {
        c.apply(&p);
        if let ServerPacket::Chat { id, mess } = p {
            chats.push((id, mess));
        }
    }
    chats
}

/// The course's script: HELLO only to the player on the NPC's own cell.
fn course_script_says_hello_on_the_npcs_cell(backend: Backend) {
    let srv = game(backend, 1, ScriptSource::Course);
    let npc = MAX_USERS;
    let (nx, ny) = srv.position(npc).unwrap();
    let mut c = Client::login(srv.local_addr(), U8, "visitor");
    // Next to the NPC on its row, on the player's side of it: the walk (x first, then y)
    // never crosses the NPC's cell.
    let ax = if c.pos.0 > nx || nx == 0 {
        nx + 1
    } else {
        nx - 1
    };
    let mut t = 1;
    let mut heard = Vec::new();
    while let Some(chats) = step(&mut c, (ax, ny), t) {
        heard.extend(chats);
        t += 1;
    }
    assert_eq!(c.pos, (ax, ny));
    // The events of the last steps (posted, run on a worker) have had time to run.
    heard.extend(chats_within(&mut c, Duration::from_millis(300)));
    let calls = srv.stats().script_calls;
    assert!(calls >= 1, "the NPC saw the player come");
    assert!(heard.is_empty(), "next to the NPC: {heard:?}");
    // Onto the NPC's cell: HELLO, from the NPC.
    heard.extend(step(&mut c, (nx, ny), t).expect("a step onto the cell"));
    assert_eq!(c.pos, (nx, ny));
    t += 1;
    let until = Instant::now() + TIMEOUT;
    while heard.is_empty() {
        assert!(Instant::now() < until, "no HELLO");
        heard.extend(chats_within(&mut c, Duration::from_millis(50)));
    }
    heard.extend(chats_within(&mut c, Duration::from_millis(200)));
    assert_eq!(heard, vec![(npc as i32, b"HELLO".to_vec())]);
    // Off the cell, next to it again: nothing more.
    let mut more = step(&mut c, (ax, ny), t).expect("a step off the cell");
    more.extend(chats_within(&mut c, Duration::from_millis(300)));
    assert!(more.is_empty(), "{more:?}");
    let s = srv.stats();
    assert!(s.script_calls >= calls + 2, "{s:?}");
    assert_eq!((s.script_errors, s.script_kills), (0, 0), "{s:?}");
}

/// Walks `c` back and forth for `moves` moves; the longest wait for its own MOVE.
fn pace(c: &mut Client, moves: u32, t0: u32) -> Duration {
    let mut worst = Duration::ZERO;
    for t in t0..t0 + moves {
        let d = if t % 2 == 0 {
            Direction::Left
        } else {
            Direction::Right
        };
        let sent = Instant::now();
        c.move_(d, t);
        let _ = c.pump_until_own_move(t);
        worst = worst.max(sent.elapsed());
    }
    worst
}

/// Every NPC loops forever in its first event: each is stopped by the budget and disabled;
/// players' moves are answered all along.
fn a_runaway_script_leaves_the_server_serving(backend: Backend) {
    let npcs = 6;
    let srv = game(
        backend,
        npcs,
        text(
            "spin.lua",
            "function event_player_move(p)\n  while true do end\nend\n",
        ),
    );
    let mut a = Client::login(srv.local_addr(), U8, "a");
    let mut b = Client::login(srv.local_addr(), U8, "b");
    let mut t = 1;
    let until = Instant::now() + TIMEOUT;
    while srv.stats().script_kills == 0 {
        assert!(Instant::now() < until, "no NPC ran its script");
        // `a` walks around the board, meeting NPCs; `b` is answered meanwhile.
        let goal = srv.position(MAX_USERS + t % npcs as u32).unwrap();
        if step(&mut a, goal, t).is_none() {
            let _ = pace(&mut a, 1, t);
        }
        let worst = pace(&mut b, 2, 1000 + 2 * t);
        assert!(worst < Duration::from_secs(1), "b waited {worst:?}");
        t += 1;
    }
    // Every call so far was a runaway, stopped; a stopped NPC runs nothing more.
    for _ in 0..20 {
        let _ = pace(&mut a, 1, t);
        t += 1;
    }
    let s = srv.stats();
    assert_eq!(s.script_calls, s.script_kills, "{s:?}");
    assert!(s.script_kills <= npcs as u64, "{s:?}");
    assert_eq!(s.script_errors, 0, "{s:?}");
}

/// A script that fails in every event: each failure counted, the NPC goes on hearing events,
/// the players are served.
fn a_failing_script_leaves_the_server_serving(backend: Backend) {
    let srv = game(
        backend,
        6,
        text(
            "fail.lua",
            "function event_player_move(p)\n  error('no ' .. p)\nend\n",
        ),
    );
    let mut a = Client::login(srv.local_addr(), U8, "a");
    let mut t = 1;
    let until = Instant::now() + TIMEOUT;
    while srv.stats().script_errors < 3 {
        assert!(Instant::now() < until, "no script failed");
        let goal = srv.position(MAX_USERS + t % 6).unwrap();
        if step(&mut a, goal, t).is_none() {
            let _ = pace(&mut a, 1, t);
        }
        t += 1;
    }
    let s = srv.stats();
    assert_eq!(s.script_kills, 0, "{s:?}");
    assert_eq!(s.script_calls, s.script_errors, "{s:?}");
    let worst = pace(&mut a, 4, t);
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}

per_backend!(
    course_script_says_hello_on_the_npcs_cell,
    a_runaway_script_leaves_the_server_serving,
    a_failing_script_leaves_the_server_serving,
    timer_move_toward_attack_and_message,
    reload_swaps_in_a_script_that_loads,
);

#[test]
fn a_script_that_does_not_compile_stops_the_start() {
    let path = std::env::temp_dir().join(format!("cport-h-lua-bad-{}.lua", std::process::id()));
    std::fs::write(&path, "myid = 1\nfunction set_uid(x)\n  myid = = x\nend\n").unwrap();
    let r = cport_mmo::start(cport_mmo::Config {
        npcs: 10,
        npc_script: Some(ScriptSource::File(path.clone())),
        ..cport_mmo::Config::default()
    });
    let _ = std::fs::remove_file(&path);
    let e = r.expect_err("the start fails");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(msg.contains(&format!("{}:3:", path.display())), "{msg}");
    // A missing file is an error too, naming it.
    let e = cport_mmo::start(cport_mmo::Config {
        npcs: 10,
        npc_script: Some(ScriptSource::File("/nonexistent/npc.lua".into())),
        ..cport_mmo::Config::default()
    })
    .expect_err("the start fails");
    assert!(e.to_string().contains("/nonexistent/npc.lua"), "{e}");
}

/// Lua memory of the course script on every NPC of a full-size game (200,000 NPCs by
/// default; `CPORT_SCRIPT_NPCS` for another count), each NPC's environment made.
#[test]
fn course_script_on_every_npc_fits() {
    let npcs: usize = std::env::var("CPORT_SCRIPT_NPCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let srv = start(cport_mmo::Config {
        npcs,
        npc_script: Some(ScriptSource::Course),
        ..config(Backend::Epoll)
    });
    let before = srv.script_memory();
    let rss_before = rss();
    srv.prepare_scripts().unwrap();
    let after = srv.script_memory();
    let per = (after - before) / npcs;
    println!(
        "course npc.lua on {npcs} NPCs: {} MB of Lua memory in all, {per} bytes per NPC's environment; \
         this test process's RSS {rss_before:?} kB before, {:?} kB after",
        after / 1_000_000,
        rss()
    );
    assert!(per < 1000, "{per} bytes per NPC");
    assert!(after < 300_000_000, "{after} bytes");
}

/// The students' API: a timer that calls back, a step toward the player, an attack by the
/// combat rules, and a chat from the NPC. The NPC chases the player who moved in its view
/// until it stands next to it, then hits it and says BYE.
fn timer_move_toward_attack_and_message(backend: Backend) {
    let srv = game(
        backend,
        1,
        text(
            "chase.lua",
            r#"
            function set_uid(x) myid = x end
            function event_player_move(p)
                if target == nil then
                    target = p
                    API_set_timer(myid, 1, "chase")
                end
            end
            function event_timer(name)
                local tx, ty = API_get_x(target), API_get_y(target)
                local d = math.abs(API_get_x(myid) - tx) + math.abs(API_get_y(myid) - ty)
                if d > 1 then
                    API_move_toward(myid, tx, ty)
                    API_set_timer(myid, 20, name)
                elseif API_attack(myid, target) then
                    API_SendMessage(myid, target, "BYE")
                end
            end
            "#,
        ),
    );
    let npc = MAX_USERS;
    let mut c = Client::login(srv.local_addr(), U8, "prey");
    // Into the NPC's view (3 cells), not next to it.
    let (nx, ny) = srv.position(npc).unwrap();
    let goal = (
        if nx >= 3 { nx - 3 } else { nx + 3 },
        if ny >= 3 { ny - 3 } else { ny + 3 },
    );
    let mut t = 1;
    while step(&mut c, goal, t).is_some() {
        t += 1;
    }
    // Then it stands still: the NPC comes, hits (a stat change) and says BYE.
    let (mut hit, mut bye, mut npc_moves) = (false, false, 0);
    let until = Instant::now() + TIMEOUT;
    while !(hit && bye) {
        assert!(Instant::now() < until, "hit {hit}, bye {bye}");
        let Some(p) = c.try_recv(Duration::from_millis(50)) else {
            continue;
        };
        c.apply(&p);
        match p {
            ServerPacket::StatChange { hp, max_hp, .. } => hit |= hp < max_hp,
            ServerPacket::Chat { id, mess } if id == npc as i32 => {
                assert_eq!(mess, b"BYE");
                bye = true;
            }
            ServerPacket::MoveObject { id, .. } if id == npc as i32 => npc_moves += 1,
            _ => {}
        }
    }
    let (px, py) = c.pos;
    let (nx, ny) = srv.position(npc).unwrap();
    assert_eq!(
        px.abs_diff(nx) + py.abs_diff(ny),
        1,
        "the NPC is next to the player"
    );
    assert!(npc_moves >= 3, "{npc_moves} NPC moves seen");
    let s = srv.stats();
    assert_eq!((s.script_errors, s.script_kills), (0, 0), "{s:?}");
}

/// This process's resident set (kB), where `/proc` tells it.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A reload swaps a script that loads in (the NPC's next event runs the new one, after its
/// `set_uid` again) and keeps the old one when the new one does not compile.
fn reload_swaps_in_a_script_that_loads(backend: Backend) {
    let path = std::env::temp_dir().join(format!(
        "cport-h-lua-reload-{}-{backend:?}.lua",
        std::process::id()
    ));
    let says = |word: &str| {
        format!("function set_uid(x) myid = x end\nfunction event_player_move(p) API_SendMessage(myid, p, \"{word}\") end\n")
    };
    std::fs::write(&path, says("ONE")).unwrap();
    let srv = game(backend, 1, ScriptSource::File(path.clone()));
    let npc = MAX_USERS;
    let mut c = Client::login(srv.local_addr(), U8, "reader");
    let (nx, ny) = srv.position(npc).unwrap();
    let mut t = 1;
    // Into the NPC's view, then one step back and forth per word heard.
    while step(&mut c, (nx, ny), t).is_some() {
        t += 1;
    }
    let hear = |c: &mut Client, t: &mut u32| -> Vec<u8> {
        let _ = pace(c, 1, *t);
        *t += 1;
        let until = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < until, "no chat from the NPC");
            if let Some((_, m)) = chats_within(c, Duration::from_millis(50))
                .into_iter()
                .find(|(id, _)| *id == npc as i32)
            {
                // What the moves meanwhile triggered.
                let _ = chats_within(c, Duration::from_millis(100));
                return m;
            }
        }
    };
    assert_eq!(hear(&mut c, &mut t), b"ONE");
    std::fs::write(&path, says("TWO")).unwrap();
    srv.reload_scripts().unwrap();
    assert_eq!(hear(&mut c, &mut t), b"TWO");
    std::fs::write(&path, "function event_player_move(p)\n  x = = 1\nend\n").unwrap();
    let e = srv
        .reload_scripts()
        .expect_err("a script that does not compile");
    assert!(e.to_string().contains(":2:"), "{e}");
    assert_eq!(hear(&mut c, &mut t), b"TWO");
    let _ = std::fs::remove_file(&path);
}
