//! The cluster with the real thing: a real `nats-server`, zone and gateway processes of this
//! build's `cport`, course clients, and the auditor reading the bus (`support/audit.rs`).
//! Without `nats-server` on PATH each test says it is skipped (under scripts/test it fails).
//! `CPORT_TEST_CLUSTER_LOG=1` shows the processes' stderr.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cport_cluster::supervisor::Role;
use cport_mmo::cluster::Layout;
use cport_mmo_client::blocking::Client;
use cport_mmo_proto::{name, ClientPacket, Direction, ServerPacket};

use support::audit::{Auditor, Checker, Nats};
use support::{Rng, Walker, H};

/// A small board cut in four, so that borders are everywhere.
const SMALL: &[&str] = &[
    "--world-size=60",
    "--view-range=5",
    "--npcs=0",
    "--db=none",
    "--max-users=200",
    "--threads=1",
];

fn assert_clean(c: &Checker) {
    assert!(
        c.violations.is_empty(),
        "{} ownership violations ({}):\n{}",
        c.violations.len(),
        c.summary(),
        c.violations[..c.violations.len().min(5)].join("\n")
    );
}

/// 40 clients on two gateways walk and teleport on a 60×60 board cut into four zones for
/// ~15 s: each client's own moves come back complete, once and in order, every picture stays
/// consistent, and the auditor sees many hand-offs and no ownership violation.
#[test]
fn walkers_across_borders_keep_one_owner_and_all_their_moves() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let auditor = Auditor::start(&nats.url, "walk").unwrap();
    let sup = support::cluster(&nats.url, "walk", 4, 2, SMALL, &[]);
    let gws = sup.gateways();
    const CLIENTS: usize = 40;
    let run = Duration::from_secs(15);
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = gws[i % gws.len()];
            let start = start.clone();
            std::thread::spawn(move || {
                let mut w = Walker::login(addr, &format!("walker{i}"));
                start.wait();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
                let began = Instant::now();
                while began.elapsed() < run {
                    if rng.next() % 10 == 0 {
                        w.teleport();
                    } else {
                        let d = rng.direction();
                        w.step(d);
                    }
                    w.pump(Duration::from_millis(40 + rng.next() % 40));
                }
                w.settle(Duration::from_secs(10));
                let echoes = w.check_echoes();
                w.c.send(&ClientPacket::Logout);
                (w.name.clone(), w.expected.len(), echoes)
            })
        })
        .collect();
    let mut actions = 0;
    let mut bad = Vec::new();
    for t in threads {
        let (_, n, echoes) = t.join().expect("a walker failed");
        actions += n;
        if let Err(e) = echoes {
            bad.push(e);
        }
    }
    support::quiesce(
        &auditor,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let report = sup.stop(Duration::from_secs(10)).unwrap();
    let c = auditor.finish().unwrap();
    eprintln!("{actions} actions; auditor: {}", c.summary());
    assert!(
        bad.is_empty(),
        "lost, doubled or reordered echoes:\n{}",
        bad.join("\n")
    );
    assert_clean(&c);
    assert!(
        c.handoffs > 20,
        "only {} hand-offs: {}",
        c.handoffs,
        c.summary()
    );
    assert!(
        c.junk.is_empty(),
        "junk on the bus: {:?}",
        &c.junk[..c.junk.len().min(5)]
    );
    assert!(
        report.clean(),
        "the processes did not stop cleanly: {report}"
    );
}

/// The first cell of the zone right of zone 0's border on row `y`, and the layout.
fn border(size: u16) -> (Layout, u16) {
    let l = Layout::new(size, 4).unwrap();
    let x = l.rect(0).x1;
    (l, x)
}

/// Two players on both sides of a border, each on its own gateway, see each other (ADD),
/// each other's moves (MOVE) and chat (CHAT); walking apart removes them (REMOVE).
#[test]
fn players_across_a_border_and_gateways_see_move_and_chat() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let auditor = Auditor::start(&nats.url, "pair").unwrap();
    let sup = support::cluster(&nats.url, "pair", 4, 2, SMALL, &[]);
    let gws = sup.gateways();
    let (l, bx) = border(60);
    let y = 10;
    let mut a = Walker::login(gws[0], "left");
    let mut b = Walker::login(gws[1], "right");
    a.walk_to(bx - 3, y);
    b.walk_to(bx + 1, y);
    assert_ne!(l.zone_of(a.c.pos.0, y), l.zone_of(b.c.pos.0, y));
    let (ida, idb) = (a.c.id, b.c.id);
    a.until(Duration::from_secs(5), "ADD of right", |w| {
        w.c.where_is(idb) == Some((bx + 1, y))
    });
    b.until(Duration::from_secs(5), "ADD of left", |w| {
        w.c.where_is(ida) == Some((bx - 3, y))
    });
    // A move across the view: the other side sees it where it went.
    a.step(Direction::Down);
    a.settle(Duration::from_secs(5));
    b.until(Duration::from_secs(5), "MOVE of left", |w| {
        w.c.where_is(ida) == Some((bx - 3, y + 1))
    });
    b.step(Direction::Up);
    b.settle(Duration::from_secs(5));
    a.until(Duration::from_secs(5), "MOVE of right", |w| {
        w.c.where_is(idb) == Some((bx + 1, y - 1))
    });
    // Chat across the border and across gateways.
    a.c.send(&ClientPacket::Chat {
        mess: b"hello over there".to_vec(),
    });
    b.until(Duration::from_secs(5), "CHAT of left", |w| {
        w.chats
            .iter()
            .any(|(id, m)| *id == ida && m == b"hello over there")
    });
    a.until(Duration::from_secs(5), "its own CHAT", |w| {
        w.chats.iter().any(|(id, _)| *id == ida)
    });
    b.c.send(&ClientPacket::Chat {
        mess: b"and back".to_vec(),
    });
    a.until(Duration::from_secs(5), "CHAT of right", |w| {
        w.chats.iter().any(|(id, m)| *id == idb && m == b"and back")
    });
    // Walking apart: out of view range (5) on both sides.
    a.walk_to(bx - 9, y + 1);
    a.until(Duration::from_secs(5), "REMOVE of right", |w| {
        w.c.where_is(idb).is_none()
    });
    b.until(Duration::from_secs(5), "REMOVE of left", |w| {
        w.c.where_is(ida).is_none()
    });
    a.check_echoes().unwrap();
    b.check_echoes().unwrap();
    drop((a, b));
    support::quiesce(
        &auditor,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    sup.stop(Duration::from_secs(10)).unwrap();
    assert_clean(&auditor.finish().unwrap());
}

/// Junk on a zone's and a gateway's subject is counted and dropped; the cluster keeps
/// serving (a login and a walk across a border after it).
#[test]
fn junk_on_the_bus_is_dropped_and_the_cluster_keeps_working() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let auditor = Auditor::start(&nats.url, "junk").unwrap();
    let sup = support::cluster(&nats.url, "junk", 4, 1, SMALL, &[]);
    let mut p = Nats::connect(&nats.url).unwrap();
    // Version 2, from gateway 0, run 0 (older than any real run: dropped as a replaced
    // run's, its entries still checked).
    let mut header_only = b"CPC\x02\x01\x00\x00".to_vec();
    header_only.extend_from_slice(&[0; 16]);
    header_only.extend_from_slice(&[5, 200, 0, 0, 0, 1]); // a Confirm whose length runs off
    for subject in ["junk.zone.0", "junk.zone.3", "junk.gw.0"] {
        p.publish(subject, b"not a batch at all").unwrap();
        p.publish(subject, &[]).unwrap();
        p.publish(subject, b"CPC\x09 a newer version").unwrap();
        p.publish(subject, &header_only).unwrap();
    }
    p.flush(|_| {}).unwrap();
    let (_, bx) = border(60);
    let gw = sup.gateways()[0];
    let mut w = Walker::login(gw, "afterjunk");
    w.walk_to(bx - 2, 5);
    w.walk_to(bx + 3, 5);
    w.walk_to(bx + 3, 35);
    w.check_echoes().unwrap();
    drop(w);
    support::quiesce(
        &auditor,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let mut sup = sup;
    assert!(sup.exited().is_empty(), "a process died of junk");
    let report = sup.stop(Duration::from_secs(10)).unwrap();
    // Each process counted what it was sent, and only that: per subject two payloads that
    // are not batches, one of a version this build does not read, and one batch cut short.
    for z in 0..4 {
        let said = report.said(Role::Zone, z).join("\n");
        let sent = z == 0 || z == 3;
        assert_eq!(
            (counter(&said, "junk"), counter(&said, "malformed")),
            if sent { (3, 1) } else { (0, 0) },
            "zone {z}: {said}"
        );
    }
    let said = report.said(Role::Gateway, 0).join("\n");
    let counted = counter(&said, "malformed_batches")
        + counter(&said, "malformed_entries")
        + counter(&said, "foreign_batches");
    assert_eq!(counted, 4, "{said}");
    assert!(report.clean(), "{report}");
    let c = auditor.finish().unwrap();
    assert_eq!(c.junk.len(), 12, "{:?}", c.junk);
    assert!(c.handoffs >= 2, "{}", c.summary());
    assert_clean(&c);
}

/// The number after `name: ` in a process's figures (`ZoneBusStats { …, junk: 3, … }`).
fn counter(said: &str, name: &str) -> u64 {
    let key = format!(" {name}: ");
    let at = said
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {said}"));
    said[at + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A second login of a name through the other gateway gets SC_LOGIN_FAIL while the first is
/// on; a client that disconnects right after the step that starts a hand-off is saved and
/// removed, so that its name logs in again (through either gateway) where it was.
#[test]
fn a_name_is_on_once_and_a_disconnect_mid_hand_off_frees_it() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("cport-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("--db=sqlite:{}", dir.join("players.db").display());
    let mut game: Vec<&str> = SMALL
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--db"))
        .collect();
    game.extend([db.as_str(), "--save-interval-ms=100"]);
    let auditor = Auditor::start(&nats.url, "names").unwrap();
    let sup = support::cluster(&nats.url, "names", 4, 2, &game, &[]);
    let gws = sup.gateways();
    let (_, bx) = border(60);

    let mut first = Walker::login(gws[0], "twice");
    let mut second = Client::connect(gws[1], H);
    second.send(&ClientPacket::Login {
        name: name("twice"),
    });
    match second.recv() {
        ServerPacket::LoginFail => {}
        other => panic!("a second login of a name that is on got {other:?}"),
    }
    // The first is not disturbed.
    first.step(Direction::Down);
    first.settle(Duration::from_secs(5));
    first.check_echoes().unwrap();

    // Ten times: walk to two cells short of the hand-off point, take the step that starts
    // it, and drop the connection at once.
    for round in 0..10 {
        let who = format!("leaver{round}");
        let gw = gws[round % 2];
        let mut w = Walker::login(gw, &who);
        let y = 5 + (round as u16 * 3) % 20;
        w.walk_to(bx - 2, y);
        w.walk_to(bx, y);
        // On the border's first cell: the next steps start the hand-off (two cells past
        // the edge), and the client is gone before it can end.
        w.step(Direction::Right);
        w.step(Direction::Right);
        drop(w);
        // The name is free again within a few seconds, through the other gateway; it comes
        // back where it was saved (at the last echo, or one of the steps in flight).
        let until = Instant::now() + Duration::from_secs(10);
        let back = loop {
            let mut c = Client::connect(gws[(round + 1) % 2], H);
            c.send(&ClientPacket::Login { name: name(&who) });
            match c.recv() {
                p @ ServerPacket::LoginInfo { .. } => {
                    c.apply(&p);
                    break c;
                }
                ServerPacket::LoginFail => {
                    assert!(Instant::now() < until, "{who} never logged in again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => panic!("{who}: {other:?}"),
            }
        };
        assert!(
            back.pos.1 == y && (bx..=bx + 2).contains(&back.pos.0),
            "{who} came back at {:?}, left at ({bx}, {y}) with two steps right in flight",
            back.pos
        );
    }
    drop(first);
    support::quiesce(
        &auditor,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    sup.stop(Duration::from_secs(10)).unwrap();
    let c = auditor.finish().unwrap();
    eprintln!("auditor: {}", c.summary());
    assert_clean(&c);
    assert!(c.handoffs >= 5, "{}", c.summary());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Zones that take a handed-over player only after 1.5 s (the old owner gives up after
/// 500 ms): every hand-off falls back to the old owner, no player is owned twice, and the
/// client's moves stay complete and in order.
#[test]
fn a_late_zone_makes_the_hand_off_fall_back() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let auditor = Auditor::start(&nats.url, "late").unwrap();
    let sup = support::cluster(
        &nats.url,
        "late",
        4,
        1,
        SMALL,
        &["--test-transfer-delay-ms=1500"],
    );
    let gw = sup.gateways()[0];
    let (l, bx) = border(60);
    let mut w = Walker::login(gw, "patient");
    w.walk_to(bx - 3, 8);
    let home = l.zone_of(bx - 3, 8);
    // Walk across and keep moving while the hand-off hangs.
    for _ in 0..6 {
        w.step(Direction::Right);
        w.pump(Duration::from_millis(100));
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        w.step(if w.expected.len() % 2 == 0 {
            Direction::Up
        } else {
            Direction::Down
        });
        w.pump(Duration::from_millis(100));
    }
    w.settle(Duration::from_secs(10));
    w.check_echoes().unwrap();
    assert_ne!(l.zone_of(w.c.pos.0, w.c.pos.1), home, "{:?}", w.c.pos);
    drop(w);
    support::quiesce(&auditor, Duration::from_secs(2), Duration::from_secs(10));
    sup.stop(Duration::from_secs(10)).unwrap();
    let c = auditor.finish().unwrap();
    eprintln!("auditor: {}", c.summary());
    assert_clean(&c);
    assert!(
        c.cancels + c.revokes >= 1,
        "no hand-off fell back: {}",
        c.summary()
    );
}

/// `cport cluster` itself: starts nats-server, the zones and the gateways as processes whose
/// command lines say what they are, prints where to connect, serves a client, and on SIGTERM
/// stops them all (gateways first) and exits 0.
#[cfg(target_os = "linux")]
#[test]
fn cport_cluster_starts_serves_and_stops() {
    let _one = support::serial();
    // `cport cluster` starts its own nats-server (from PATH or /usr/sbin): skipped without.
    if support::nats_server().is_none() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_cport"))
        .args(["cluster", "--zones=2", "--gateways=2", "--addr=127.0.0.1:0"])
        .env("PATH", support::path_with_nats())
        .args(SMALL)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Kill(child.id());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < until, "no 'cluster ready' line: {lines:?}");
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "it exited: {lines:?}"
        );
        let done = line.starts_with("cluster ready: connect to ");
        lines.push(line.trim().to_string());
        if done {
            break;
        }
    }
    let addrs: Vec<SocketAddr> = lines
        .iter()
        .filter_map(|l| cport_bench::proc::parse_listening(l))
        .collect();
    assert_eq!(addrs.len(), 2, "{lines:?}");
    // Its children: nats-server, two zones and two gateways, each named on its command line.
    let kids = children(child.id());
    let count = |word: &str| kids.iter().filter(|c| c.contains(word)).count();
    assert_eq!(
        (count("nats-server"), count(" zone "), count(" gateway ")),
        (1, 2, 2),
        "{kids:#?}"
    );
    let mut w = Walker::login(addrs[1], "visitor");
    w.step(Direction::Left);
    w.settle(Duration::from_secs(5));
    w.check_echoes().unwrap();
    drop(w);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    std::mem::forget(guard);
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("cluster stopped: gateway 0"), "{rest}");
    let order: Vec<&str> = rest
        .split("cluster stopped: ")
        .nth(1)
        .unwrap()
        .split(", ")
        .collect();
    assert!(
        order[0].starts_with("gateway") && order[4].starts_with("nats"),
        "{order:?}"
    );
    assert!(!rest.contains("killed"), "{rest}");
    assert!(children(child.id()).is_empty());
}

/// Kills the `cport cluster` of a failed test (its own children die with their pipes or
/// are left to the test machine: the supervisor's Drop is not run on SIGKILL).
struct Kill(u32);

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// The command lines of `pid`'s children (from /proc).
#[cfg(target_os = "linux")]
fn children(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{n}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmd = std::fs::read(format!("/proc/{n}/cmdline")).unwrap_or_default();
            let cmd: Vec<String> = cmd
                .split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            out.push(format!(" {} ", cmd.join(" ")));
        }
    }
    out
}

/// The supervisor kills one process alone: the others keep running.
#[test]
fn one_process_can_be_killed_alone() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let mut sup = support::cluster(&nats.url, "kill", 2, 2, SMALL, &[]);
    let gw1 = sup.gateways()[1];
    sup.kill(Role::Gateway, 0).unwrap();
    let exited = sup.exited();
    assert_eq!(exited.len(), 1);
    assert_eq!((exited[0].0, exited[0].1), (Role::Gateway, 0));
    // Gateway 1 and both zones still serve.
    let mut w = Walker::login(gw1, "survivor");
    w.walk_to(35, 35);
    w.check_echoes().unwrap();
    drop(w);
    sup.stop(Duration::from_secs(10)).unwrap();
}

/// `cport demo --cluster`: the stress tester against a local cluster, for a few seconds,
/// with a report whose clients got in, moved and met no error; the live view is told the
/// zones' rectangles (it draws their borders); the cluster is stopped at the end.
#[test]
fn demo_runs_on_a_cluster() {
    let _one = support::serial();
    if support::nats_server().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cport-demo-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cport"))
        .args(["demo", "--cluster", "--duration-s=4", "--npcs=200"])
        .args([
            "--max-users=60",
            "--zones=4",
            "--threads=1",
            "--web=127.0.0.1:0",
        ])
        .env("PATH", support::path_with_nats())
        .arg("--out-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Kill(child.id());
    let lines = cport_bench::proc::stderr_lines(&mut child);
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    let web: SocketAddr = loop {
        let l = lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no live view line: {seen:#?}"));
        if let Some(rest) = l.strip_prefix("stress: live view at http://") {
            break rest
                .trim_end_matches('/')
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
        seen.push(l);
    };
    let hello = hello_of(web);
    let zones = hello["zones"].as_array().expect("zones in the hello");
    assert_eq!(zones.len(), 4, "{hello}");
    assert_eq!(
        zones[3],
        serde_json::json!([1000, 1000, 2000, 2000]),
        "{hello}"
    );
    let rest: Vec<String> = lines.iter().collect();
    let status = child.wait().unwrap();
    std::mem::forget(guard);
    let stderr = rest.join("\n");
    assert!(status.success(), "{status}: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("demo-report.json")).unwrap()).unwrap();
    assert_eq!(report["clients_started"], 60, "{report}");
    assert!(report["delay_samples"].as_u64().unwrap() > 0, "{report}");
    let errors = report["errors"].as_object().unwrap();
    assert!(errors.values().all(|v| v == 0), "{errors:?}");
    let stopped = rest
        .iter()
        .find(|l| l.starts_with("demo: cluster stopped: "))
        .unwrap_or_else(|| panic!("no stop line: {stderr}"));
    assert!(!stopped.contains("killed"), "{stopped}");
    assert_eq!(stopped.matches("zone").count(), 4, "{stopped}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first event of the live view's stream: `hello`, the run's settings (JSON).
fn hello_of(web: SocketAddr) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /events HTTP/1.1\r\nHost: {web}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut event = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            if event == "hello" {
                return serde_json::from_str(d.trim()).unwrap();
            }
        }
    }
}
