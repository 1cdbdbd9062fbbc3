//! The script engine on its own, with a fake game behind the API: per-NPC globals, the
//! sandbox, the budget, errors, load errors, and the memory an NPC costs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Integer, Lua, Table};
use parking_lot::Mutex;

use super::{Event, Limits, Outcome, ScriptSource, Scripts};

/// The fake game: positions by id, and the messages scripts sent.
#[derive(Default)]
struct Fake {
    pos: HashMap<u32, (i64, i64)>,
    sent: Vec<(i64, i64, String)>,
}

/// The app data of a call.
#[derive(Clone, Default)]
struct Ctx(Arc<Mutex<Fake>>);

fn fake_api(lua: &Lua, shared: &Table) -> mlua::Result<()> {
    fn pos(lua: &Lua, id: Integer) -> Option<(i64, i64)> {
        let c = lua.app_data_ref::<Ctx>()?;
        let p = c.0.lock().pos.get(&(id as u32)).copied();
        p
    }
    shared.raw_set(
        "API_get_x",
        lua.create_function(|lua, id: Integer| Ok(pos(lua, id).map(|p| p.0)))?,
    )?;
    shared.raw_set(
        "API_get_y",
        lua.create_function(|lua, id: Integer| Ok(pos(lua, id).map(|p| p.1)))?,
    )?;
    shared.raw_set(
        "API_SendMessage",
        lua.create_function(|lua, (from, to, text): (Integer, Integer, String)| {
            if let Some(c) = lua.app_data_ref::<Ctx>() {
                c.0.lock().sent.push((from, to, text));
            }
            Ok(true)
        })?,
    )?;
    Ok(())
}

const FIRST: u32 = 10;

fn load(text: &str, npcs: usize, shards: usize) -> std::io::Result<Scripts> {
    Scripts::load(
        &ScriptSource::Text("t.lua".into(), text.into()),
        shards,
        FIRST,
        npcs,
        Limits::default(),
        fake_api,
    )
}

#[test]
fn every_npc_has_its_own_globals_and_the_course_script_says_hello() {
    let s = Scripts::load(
        &ScriptSource::Course,
        2,
        FIRST,
        4,
        Limits::default(),
        fake_api,
    )
    .unwrap();
    let ctx = Ctx::default();
    {
        let mut f = ctx.0.lock();
        f.pos.insert(0, (5, 5)); // a player
        f.pos.insert(FIRST, (5, 5)); // NPC 0 on the player's cell
        f.pos.insert(FIRST + 2, (6, 5)); // NPC 2 next to it (same shard as NPC 0)
    }
    assert_eq!(
        s.run(FIRST, ctx.clone(), Event::PlayerMove(0), true),
        Outcome::Ran
    );
    assert_eq!(
        s.run(FIRST + 2, ctx.clone(), Event::PlayerMove(0), true),
        Outcome::Ran
    );
    // `myid = x` in `set_uid`: each NPC's own, though both share a state.
    assert_eq!(s.global_int(FIRST, "myid"), Some(i64::from(FIRST)));
    assert_eq!(s.global_int(FIRST + 2, "myid"), Some(i64::from(FIRST + 2)));
    assert_eq!(s.global_int(FIRST + 2, "my_x"), Some(6));
    assert_eq!(s.global_int(FIRST, "my_x"), Some(5));
    // Only the NPC on the player's cell spoke.
    assert_eq!(
        ctx.0.lock().sent,
        vec![(i64::from(FIRST), 0, "HELLO".to_string())]
    );
    assert_eq!(s.calls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn the_sandbox_has_no_os_io_require_or_file_loading() {
    let s = load(
        r#"
        function event_player_move(p)
            missing = 0
            for _, v in ipairs({os == nil, io == nil, require == nil, dofile == nil,
                                loadfile == nil, load == nil, package == nil, debug == nil,
                                collectgarbage == nil, getmetatable("") == false}) do
                if not v then missing = missing + 1 end
            end
            have = (string.format and table.concat and math.floor and utf8.char) and 1 or 0
            local ok = pcall(function() string.upper = nil end)
            lib_written = ok and 1 or 0
            x = 1
        end
        "#,
        2,
        1,
    )
    .unwrap();
    s.run(FIRST, Ctx::default(), Event::PlayerMove(0), true);
    assert_eq!(s.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(s.global_int(FIRST, "x"), Some(1));
    assert_eq!(s.global_int(FIRST, "missing"), Some(0));
    assert_eq!(s.global_int(FIRST, "have"), Some(1));
    assert_eq!(s.global_int(FIRST, "lib_written"), Some(0));
    // A global set by one NPC is not seen by the other (same shard).
    s.run(FIRST + 1, Ctx::default(), Event::PlayerMove(0), true);
    assert_eq!(s.global_int(FIRST + 1, "x"), Some(1));
}

#[test]
fn a_runaway_call_is_stopped_and_its_npc_disabled() {
    for body in [
        "while true do end",
        // A protected call does not swallow the stop.
        "while true do pcall(function() while true do end end) end",
    ] {
        let s = load(&format!("function event_player_move(p) {body} end"), 2, 1).unwrap();
        let t = Instant::now();
        assert_eq!(
            s.run(FIRST, Ctx::default(), Event::PlayerMove(0), true),
            Outcome::Ran
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{body}: {:?}",
            t.elapsed()
        );
        assert_eq!(
            s.kills.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{body}"
        );
        assert!(!s.enabled(FIRST));
        assert!(s.enabled(FIRST + 1));
        assert_eq!(
            s.run(FIRST, Ctx::default(), Event::PlayerMove(0), true),
            Outcome::Off
        );
    }
}

#[test]
fn a_failing_call_is_dropped_and_the_npc_goes_on() {
    let s = load(
        "n = 0\nfunction event_player_move(p)\n n = n + 1\n error('boom') end",
        1,
        1,
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            s.run(FIRST, Ctx::default(), Event::PlayerMove(0), true),
            Outcome::Ran
        );
    }
    assert_eq!(s.errors.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(s.kills.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(s.global_int(FIRST, "n"), Some(3));
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let e = load("x = 1\n\nfunction f(\n", 1, 1)
        .err()
        .expect("a load error");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(msg.contains("t.lua:"), "{msg}");
    // The parser stops at the end of the text: line 4, past the last newline.
    assert!(msg.contains("t.lua:4:"), "{msg}");
    let e = load("x = 1\ny = = 2\n", 1, 1).err().expect("a load error");
    assert!(e.to_string().contains("t.lua:2:"), "{e}");
    // An error in the top-level code fails the load too.
    let e = load("x = 1\nerror('no')\n", 1, 1)
        .err()
        .expect("a load error");
    assert!(e.to_string().contains("t.lua:2:"), "{e}");
}

#[test]
fn timers_are_numbered_by_name() {
    let s = load("", 1, 1).unwrap();
    let a = s.timer_id("a").unwrap();
    let b = s.timer_id("b").unwrap();
    assert_ne!(a, b);
    assert_eq!(s.timer_id("a"), Some(a));
    assert_eq!(s.timer_name(b).as_deref(), Some("b"));
    assert_eq!(s.timer_name(99), None);
}

/// Bytes of Lua memory per NPC with the course script, every NPC's environment made and
/// one `event_player_move` run (so its globals `player_x` … `my_y` exist too).
#[test]
fn course_script_memory_per_npc() {
    let n: usize = std::env::var("CPORT_SCRIPT_NPCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let s = Scripts::load(
        &ScriptSource::Course,
        4,
        FIRST,
        n,
        Limits::default(),
        fake_api,
    )
    .unwrap();
    let before = s.memory();
    let ctx = Ctx::default();
    ctx.0.lock().pos.insert(0, (1, 1));
    let t = Instant::now();
    for i in 0..n as u32 {
        s.run(FIRST + i, ctx.clone(), Event::PlayerMove(0), true);
    }
    let first = t.elapsed();
    let per = (s.memory() - before) / n;
    // Every NPC's second event: the environment is there, only the call is left.
    let t = Instant::now();
    for i in 0..n as u32 {
        s.run(FIRST + i, ctx.clone(), Event::PlayerMove(0), true);
    }
    let again = t.elapsed();
    println!(
        "course npc.lua: {per} bytes of Lua memory per NPC ({n} NPCs; {} MB for 200,000); \
         first events (environment made) {:.2} µs each, later ones {:.2} µs each, on one thread",
        per * 200_000 / 1_000_000,
        first.as_secs_f64() * 1e6 / n as f64,
        again.as_secs_f64() * 1e6 / n as f64,
    );
    assert_eq!(s.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    // 200,000 NPCs in well under the 1 GB the whole server may use.
    assert!(per < 1500, "{per} bytes per NPC");
}

/// SCRIPTING.md's HELLO/BYE example (`mmo/scripts/hello_bye.lua`): HELLO on coming within a
/// cell, nothing while staying near, BYE on leaving.
#[test]
fn the_hello_bye_example_says_hello_then_bye() {
    let s = Scripts::load(
        &ScriptSource::Text(
            "hello_bye.lua".into(),
            include_str!("../../scripts/hello_bye.lua").into(),
        ),
        1,
        FIRST,
        1,
        Limits::default(),
        fake_api,
    )
    .unwrap();
    let ctx = Ctx::default();
    ctx.0.lock().pos.insert(FIRST, (5, 5));
    for (y, said) in [
        (8, None),
        (6, Some("HELLO")),
        (5, None),
        (4, None),
        (3, Some("BYE")),
    ] {
        ctx.0.lock().pos.insert(0, (5, y));
        s.run(FIRST, ctx.clone(), Event::PlayerMove(0), true);
        let sent = std::mem::take(&mut ctx.0.lock().sent);
        let want: Vec<(i64, i64, String)> = said
            .map(|m| (i64::from(FIRST), 0, m.to_string()))
            .into_iter()
            .collect();
        assert_eq!(sent, want, "player at y {y}");
    }
    assert_eq!(s.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}
