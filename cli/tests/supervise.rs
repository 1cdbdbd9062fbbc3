//! The supervisor keeps a real cluster (this build's `cport zone` and `cport gateway` on a
//! real nats-server) running: a zone killed with SIGKILL is back, with a new pid and ready,
//! within 3 s; a zone stopped with SIGSTOP stops answering its /healthz, and is killed and
//! started again once `hung_after` has passed; every line a zone logs says which zone.

use std::time::{Duration, Instant};

use cport_cluster::ops::http_get;
use cport_cluster::supervisor::{Role, Supervisor};

mod support;

const GAME: &[&str] = &[
    "--world-size=40",
    "--view-range=5",
    "--npcs=20",
    "--db=none",
    "--max-users=40",
    "--threads=1",
];

fn start(nats: &str, name: &str, hung_after: Duration) -> Supervisor {
    let mut plan = support::plan(nats, name, 2, 1, GAME, &[]);
    plan.restart = true;
    plan.hung_after = hung_after;
    Supervisor::start(plan).expect("the cluster starts")
}

/// Waits (at most `within`) until `ok`; returns how long it took.
fn wait_for(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn healthy(sup: &Supervisor, role: Role, n: usize) -> bool {
    sup.child_http(role, n)
        .and_then(|a| http_get(a, "/healthz", Duration::from_millis(1500)).ok())
        .is_some_and(|a| a.status == 200)
}

#[test]
fn a_killed_zone_is_back_within_3_s() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let mut sup = start(
        &nats.url,
        &format!("sup-kill-{}", std::process::id()),
        Duration::from_secs(2),
    );
    for (r, n) in [(Role::Zone, 0), (Role::Zone, 1), (Role::Gateway, 0)] {
        assert!(
            sup.child_http(r, n).is_some(),
            "{r} {n} said no `http on` line"
        );
        assert!(healthy(&sup, r, n), "{r} {n}");
    }
    let old = sup.pid(Role::Zone, 1).unwrap();
    sup.kill(Role::Zone, 1).unwrap();
    let took = wait_for(Duration::from_secs(3), "zone 1 back and ready", || {
        sup.pid(Role::Zone, 1).is_some_and(|p| p != old) && sup.is_up(Role::Zone, 1)
    });
    eprintln!("zone 1 back in {took:?}");
    assert_eq!(sup.restarts(Role::Zone), 1);
    assert!(healthy(&sup, Role::Zone, 1));
    let r = http_get(
        sup.child_http(Role::Zone, 1).unwrap(),
        "/readyz",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // The others were left alone.
    assert_eq!(sup.restarts_of(Role::Zone, 0), 0);
    assert_eq!(sup.restarts(Role::Gateway), 0);
    let report = sup.stop(Duration::from_secs(10)).unwrap();
    assert!(report.clean(), "{report}");
}

#[cfg(unix)]
#[test]
fn a_stopped_zone_is_killed_and_restarted_after_hung_after() {
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let hung_after = Duration::from_millis(1500);
    let mut sup = start(
        &nats.url,
        &format!("sup-stop-{}", std::process::id()),
        hung_after,
    );
    // A stall shorter than hung_after is tolerated: stopped and continued, zone 1 stays.
    let one = sup.pid(Role::Zone, 1).unwrap();
    sup.stop_signal(Role::Zone, 1).unwrap();
    std::thread::sleep(hung_after / 3);
    sup.cont(Role::Zone, 1).unwrap();
    std::thread::sleep(hung_after + Duration::from_millis(500));
    assert_eq!(
        sup.pid(Role::Zone, 1),
        Some(one),
        "a short stall was punished"
    );
    assert!(healthy(&sup, Role::Zone, 1));
    assert_eq!(sup.restarts(Role::Zone), 0);

    let old = sup.pid(Role::Zone, 0).unwrap();
    sup.stop_signal(Role::Zone, 0).unwrap();
    let t = Instant::now();
    // Not before hung_after: a stall shorter than that is tolerated.
    std::thread::sleep(hung_after / 2);
    assert_eq!(sup.pid(Role::Zone, 0), Some(old), "killed too early");
    // Killed once its last 200 is hung_after old, then back once ready.
    wait_for(Duration::from_secs(8), "zone 0 replaced and ready", || {
        sup.pid(Role::Zone, 0).is_some_and(|p| p != old) && sup.is_up(Role::Zone, 0)
    });
    let took = t.elapsed();
    eprintln!("stopped zone replaced and ready after {took:?}");
    // Measured from its last 200, which came up to a poll period (and a poll) before the
    // stop.
    assert!(took >= hung_after - Duration::from_millis(400), "{took:?}");
    assert_eq!(sup.restarts(Role::Zone), 1);
    assert!(healthy(&sup, Role::Zone, 0));
    let report = sup.stop(Duration::from_secs(10)).unwrap();
    assert!(report.clean(), "{report}");
}

/// `cport cluster` itself: prints where its endpoints are, restarts a zone killed with
/// SIGKILL and says so, counts it in its /metrics, and every log line of its zones and
/// gateway says which process wrote it.
#[cfg(target_os = "linux")]
#[test]
fn cport_cluster_restarts_a_killed_zone_and_its_logs_say_who() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let _one = support::serial();
    let Some(nats) = support::nats_server() else {
        return;
    };
    let name = format!("sup-cli-{}", std::process::id());
    let log = std::env::temp_dir().join(format!("{name}.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cport"))
        .args(["cluster", "--zones=2", "--gateways=1", "--addr=127.0.0.1:0"])
        .args(["--nats", &nats.url, "--cluster", &name])
        .args(GAME)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let cluster = child.id();
    let _guard = Term(cluster);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < give_up,
            "no 'cluster ready' line: {lines:?}"
        );
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "it exited: {lines:?}"
        );
        let done = line.starts_with("cluster ready: ");
        lines.push(line.trim().to_string());
        if done {
            break;
        }
    }
    let http = lines
        .iter()
        .find_map(|l| cport_cluster::ops::parse_http_line(l))
        .unwrap_or_else(|| panic!("no `http on` line: {lines:?}"));
    let zone1 = child_pid(cluster, &["zone", "--zone", "1"]).expect("zone 1 among the children");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(zone1 as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let restarted =
        format!("cport_supervisor_restarts_total{{cluster=\"{name}\",role=\"zone\"}} 1");
    let all_up = format!("cport_supervisor_children_up{{cluster=\"{name}\",role=\"zone\"}} 2");
    wait_for(Duration::from_secs(5), "the restart in /metrics", || {
        http_get(http, "/metrics", Duration::from_secs(2))
            .is_ok_and(|m| m.body.contains(&restarted) && m.body.contains(&all_up))
    });
    let again = child_pid(cluster, &["zone", "--zone", "1"]).expect("zone 1 again");
    assert_ne!(again, zone1);
    let r = http_get(http, "/readyz", Duration::from_secs(2)).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(cluster as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let err = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        err.contains("zone 1 exited (signal 9): restarting (restart 1)"),
        "{err}"
    );
    assert!(err.contains("zone 1 is back (pid "), "{err}");
    // The children's stderr comes prefixed `[zone 1] `; their log lines (not the stdout
    // lines the supervisor echoes, like `zone 1 of 2 ready`) start with the tag.
    let mut tagged = 0;
    for l in err.lines() {
        let Some((who, line)) = l.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let is_log = [" INFO ", " WARN ", " ERROR ", " DEBUG "]
            .iter()
            .any(|lvl| line.contains(lvl));
        if !is_log || who.starts_with("nats") {
            continue;
        }
        let tag = who.replace(' ', "=");
        assert!(line.starts_with(&format!("{tag} ")), "untagged: {l}");
        tagged += 1;
    }
    assert!(tagged >= 6, "{err}");
}

/// SIGTERM to the `cport cluster` of a failed test.
struct Term(u32);

impl Drop for Term {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// The child of `parent` whose arguments (after the program) start with `args`.
#[cfg(target_os = "linux")]
fn child_pid(parent: u32, args: &[&str]) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: the comm may hold spaces, so count from its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if words.len() > args.len() && words[1..=args.len()] == *args {
            return Some(pid);
        }
    }
    None
}
