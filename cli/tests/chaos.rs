//! The chaos test: `cport cluster`'s processes (this build's `cport zone` ×4 and `cport
//! gateway` ×2 under the supervisor, on a real nats-server, with PostgreSQL as a cluster
//! across machines uses) while course clients walk across borders and teleport, and the
//! faults strike in turn: each zone is killed (-9) once, one zone is stopped (SIGSTOP) for
//! less than the supervisor's `hung_after` and continued, one for longer (killed and started
//! again by the supervisor), and NATS is restarted.
//!
//! What must hold, checked by an auditor on the bus (`support::audit`) and by the clients:
//! no player owned twice (the auditor, from the real messages), none owned by nobody (at the
//! end every client's player is owned: the zones' `/metrics`), no move answered twice or out
//! of order (each client), every client still connected, and after each fault every client's
//! moves answered again within the stated time (a killed zone: 5 s; a zone stopped past
//! `hung_after` (2 s): 7 s; NATS restarted: 5 s).
//!
//! `CPORT_CHAOS_SECS=600` runs the cycle of faults again and again for that long (the
//! 10-minute run of RELIABILITY.md); the default is one cycle (about a minute).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cport_cluster::ops::http_get;
use cport_cluster::supervisor::{Role, Supervisor};
use cport_mmo_client::blocking::Client;
use cport_mmo_proto::{ClientPacket, ServerPacket};
use support::audit::Auditor;

const ZONES: usize = 4;
const GATEWAYS: usize = 2;
const CLIENTS: usize = 16;
const SIZE: u16 = 60;
/// A killed zone's players answer again within this long.
const KILLED_BACK: Duration = Duration::from_secs(5);
/// A zone stopped past `hung_after` is killed and started again: its players answer again
/// within this long of the stop.
const STOPPED_BACK: Duration = Duration::from_secs(7);
/// After a NATS restart every client's moves are answered again within this long.
const NATS_BACK: Duration = Duration::from_secs(5);
const HUNG_AFTER: Duration = Duration::from_secs(2);

/// What the clients share with the conductor.
struct Shared {
    t0: Instant,
    stop: AtomicBool,
    /// Per client: when (ms since `t0`) its last own move was answered.
    answered_at: Vec<AtomicU64>,
    /// Packets that contradicted a client's picture (counted, not fatal: a NATS restart may
    /// lose a zone's packet for a client).
    contradictions: AtomicU64,
    /// ... of them before the first NATS restart (must be none).
    contradictions_before_nats: AtomicU64,
    nats_restarted: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }
}

/// One client: a move every 30 ms (towards a target that changes, so it crosses borders),
/// a teleport now and then; each of its own moves answered at most once and in order.
/// Returns the client (still connected), moves sent and moves answered, or why it failed.
fn client(
    addr: std::net::SocketAddr,
    i: usize,
    sh: Arc<Shared>,
) -> Result<(Client, u32, u32), String> {
    let mut c = Client::login(addr, support::H, &format!("chaos{i}"));
    let mut rng = support::Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    let (mut sent, mut answered, mut last) = (0u32, 0u32, 0u32);
    let mut target = (rng.next() as u16 % SIZE, rng.next() as u16 % SIZE);
    let mut next = Instant::now();
    while !sh.stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next += Duration::from_millis(30);
            if rng.next() % 60 == 0 {
                c.send(&ClientPacket::Teleport);
            } else {
                if c.pos == target || rng.next() % 40 == 0 {
                    target = (rng.next() as u16 % SIZE, rng.next() as u16 % SIZE);
                }
                let (x, y) = c.pos;
                let d = if x < target.0 {
                    cport_mmo_proto::Direction::Right
                } else if x > target.0 {
                    cport_mmo_proto::Direction::Left
                } else if y < target.1 {
                    cport_mmo_proto::Direction::Down
                } else {
                    cport_mmo_proto::Direction::Up
                };
                sent += 1;
                c.move_(d, sent);
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        let p = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.try_recv(wait.min(Duration::from_millis(10)))
        })) {
            Ok(p) => p,
            Err(_) => return Err(format!("client {i}: the connection ended (or broke)")),
        };
        let Some(p) = p else { continue };
        if let ServerPacket::MoveObject { id, move_time, .. } = &p {
            if *id as u32 == c.id && *move_time != 0 {
                // A teleport echoes the last move's time: equal is its answer, not a
                // second answer of a move.
                if *move_time < last {
                    return Err(format!(
                        "client {i}: move {move_time} answered after move {last}"
                    ));
                }
                if *move_time > last {
                    answered += 1;
                }
                last = *move_time;
                sh.answered_at[i].store(sh.now_ms(), Ordering::Relaxed);
            }
        }
        if c.view.apply(&p).is_err() {
            sh.contradictions.fetch_add(1, Ordering::Relaxed);
            if !sh.nats_restarted.load(Ordering::Relaxed) {
                sh.contradictions_before_nats
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok((c, sent, answered))
}

/// Waits until every client has had a move answered after `since` (ms since `t0`); how long
/// after `since` the last one was, or `None` past `within`.
fn all_answered_after(sh: &Shared, since: u64, within: Duration) -> Option<Duration> {
    let until = Instant::now() + within;
    loop {
        let slowest = sh
            .answered_at
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if slowest > since {
            return Some(Duration::from_millis(sh.now_ms() - since));
        }
        if Instant::now() >= until {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Which clients had no move answered after `since`, and when each was last answered.
fn laggards(sh: &Shared, since: u64) -> String {
    let late: Vec<String> = sh
        .answered_at
        .iter()
        .enumerate()
        .filter(|(_, a)| a.load(Ordering::Relaxed) <= since)
        .map(|(i, a)| {
            format!(
                "client {i} (last answered at {} ms)",
                a.load(Ordering::Relaxed)
            )
        })
        .collect();
    format!(
        "at {} ms, fault at {since} ms: {}",
        sh.now_ms(),
        late.join(", ")
    )
}

/// The players the zones own now, from their `/metrics`.
fn owned(sup: &Supervisor) -> Option<u64> {
    let mut n = 0;
    for z in 0..ZONES {
        let addr = sup.child_http(Role::Zone, z)?;
        let body = http_get(addr, "/metrics", Duration::from_secs(2))
            .ok()?
            .body;
        let line = body
            .lines()
            .find(|l| l.starts_with("cport_zone_players{"))?;
        n += line.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
    }
    Some(n)
}

fn database() -> Option<String> {
    let url = cport_testkit::service("PostgreSQL", "CPORT_TEST_POSTGRES")?;
    let mut c = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("CPORT_TEST_POSTGRES={url}: {e}"));
    let name = format!("chaos_{}", std::process::id());
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    Some(format!("{}/{name}", url.rsplit_once('/').unwrap().0))
}

#[test]
fn chaos_kills_stops_and_a_nats_restart_lose_no_player_and_no_move_order() {
    let _one = support::serial();
    let Some(mut nats) = support::nats_server() else {
        return;
    };
    let Some(db) = database() else {
        return;
    };
    let secs: u64 = std::env::var("CPORT_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let name = format!("chaos{}", std::process::id());
    let auditor = Auditor::start(&nats.url, &name).unwrap();
    let game = [
        format!("--world-size={SIZE}"),
        "--view-range=5".into(),
        "--npcs=60".into(),
        "--max-users=100".into(),
        "--threads=1".into(),
        format!("--db={db}"),
        "--save-interval-ms=200".into(),
    ];
    let game: Vec<&str> = game.iter().map(String::as_str).collect();
    let mut plan = support::plan(&nats.url, &name, ZONES, GATEWAYS, &game, &[]);
    plan.restart = true;
    plan.hung_after = HUNG_AFTER;
    let mut sup = Supervisor::start(plan).expect("the cluster starts");
    let gws = sup.gateways();

    let sh = Arc::new(Shared {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        answered_at: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        contradictions: AtomicU64::new(0),
        contradictions_before_nats: AtomicU64::new(0),
        nats_restarted: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, sh) = (gws[i % GATEWAYS], sh.clone());
            thread::spawn(move || client(addr, i, sh))
        })
        .collect();
    // Everyone plays before the first fault.
    let start = sh.now_ms();
    all_answered_after(&sh, start, Duration::from_secs(20)).expect("every client plays");
    thread::sleep(Duration::from_secs(2));

    let report = Mutex::new(Vec::<String>::new());
    let note = |what: String| {
        eprintln!("chaos: {what}");
        report.lock().unwrap().push(what);
    };
    let mut worst = [Duration::ZERO; 4];
    let run_until = Instant::now() + Duration::from_secs(secs);
    let mut cycle = 0;
    loop {
        cycle += 1;
        // Each zone killed once.
        for z in 0..ZONES {
            let at = sh.now_ms();
            sup.kill(Role::Zone, z).unwrap();
            let back = all_answered_after(&sh, at, KILLED_BACK).unwrap_or_else(|| {
                panic!(
                    "cycle {cycle}: zone {z} killed: its players not back within \
                     {KILLED_BACK:?}; zone {z} up: {}, restarts {}; {}",
                    sup.is_up(Role::Zone, z),
                    sup.restarts_of(Role::Zone, z),
                    laggards(&sh, at)
                )
            });
            worst[0] = worst[0].max(back);
            note(format!(
                "cycle {cycle}: zone {z} killed -9: every client answered again {back:?} later"
            ));
            thread::sleep(Duration::from_millis(1500));
        }
        // A short stop: continued before the supervisor gives up on it.
        let at = sh.now_ms();
        sup.stop_signal(Role::Zone, 1).unwrap();
        thread::sleep(HUNG_AFTER / 2);
        sup.cont(Role::Zone, 1).unwrap();
        let back = all_answered_after(&sh, at + HUNG_AFTER.as_millis() as u64 / 2, KILLED_BACK)
            .expect("a zone stopped briefly: its players answered again");
        worst[1] = worst[1].max(back);
        note(format!(
            "cycle {cycle}: zone 1 stopped for {:?} and continued: answered again {back:?} after",
            HUNG_AFTER / 2
        ));
        thread::sleep(Duration::from_secs(1));
        // A long stop: the supervisor kills it after hung_after and starts it again.
        let restarts = sup.restarts_of(Role::Zone, 2);
        let at = sh.now_ms();
        sup.stop_signal(Role::Zone, 2).unwrap();
        let back = all_answered_after(&sh, at + 100, STOPPED_BACK).unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: zone 2 stopped: its players not back within {STOPPED_BACK:?}; {}",
                laggards(&sh, at + 100)
            )
        });
        worst[2] = worst[2].max(back);
        assert!(
            sup.restarts_of(Role::Zone, 2) > restarts,
            "the stopped zone was restarted"
        );
        note(format!("cycle {cycle}: zone 2 stopped (SIGSTOP) until the supervisor killed and restarted it: answered again {back:?} after the stop"));
        thread::sleep(Duration::from_millis(1500));
        // NATS restarted.
        sh.nats_restarted.store(true, Ordering::Relaxed);
        let at = sh.now_ms();
        nats.kill();
        thread::sleep(Duration::from_millis(300));
        nats.restart();
        let back = all_answered_after(&sh, at, NATS_BACK + Duration::from_millis(300))
            .unwrap_or_else(|| {
                panic!(
                    "cycle {cycle}: NATS restarted: play not back within {NATS_BACK:?}; {}",
                    laggards(&sh, at)
                )
            });
        worst[3] = worst[3].max(back);
        note(format!("cycle {cycle}: NATS killed and restarted 300 ms later: every client answered again {back:?} after the kill"));
        thread::sleep(Duration::from_secs(2));
        if Instant::now() >= run_until {
            break;
        }
    }

    sh.stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut answered = 0;
    let mut connected = Vec::new();
    for (i, h) in clients.into_iter().enumerate() {
        let (c, s, a) = h
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        sent += s;
        answered += a;
        connected.push(c);
    }
    // Every client connected to the end; now every player is owned by exactly one zone.
    let t = Instant::now();
    while owned(&sup) != Some(CLIENTS as u64) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the zones own {:?} players, not {CLIENTS}",
            owned(&sup)
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(connected);
    support::quiesce(
        &auditor,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let restarts = sup.restarts(Role::Zone);
    let _ = sup.stop(Duration::from_secs(10));
    let c = auditor.finish().unwrap();
    let contradictions = sh.contradictions.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {cycle} cycle(s) in {:?}: {CLIENTS} clients sent {sent} moves, {answered} answered \
         ({} lost, {:.3}%); worst recovery: killed zone {:?}, short stop {:?}, long stop {:?}, \
         NATS restart {:?}; zone restarts by the supervisor {restarts}; picture contradictions \
         {contradictions} (after a NATS restart only); auditor: {}",
        sh.t0.elapsed(),
        sent - answered,
        100.0 * f64::from(sent - answered) / f64::from(sent.max(1)),
        worst[0],
        worst[1],
        worst[2],
        worst[3],
        c.summary()
    );
    assert!(c.violations.is_empty(), "{}", c.violations.join("\n\n"));
    assert!(c.zone_restarts > ZONES as u64, "{}", c.summary());
    assert!(c.resumes > 0, "{}", c.summary());
    assert_eq!(
        sh.contradictions_before_nats.load(Ordering::Relaxed),
        0,
        "no client's picture was contradicted by the kills and stops"
    );
}
