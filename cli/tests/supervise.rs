//! The supervisor keeps a real cluster (this build's `cport zone` and `cport gateway` on a
//! real nats-server) running: a zone killed with SIGKILL is back, with a new pid and ready,
//! within 3 s; a zone stopped with SIGSTOP stops answering its /healthz, and is killed and
//! started again once `hung_after` has passed; every line a zone logs says which zone.

use std::time::{Duration, Instant};

use cport_cluster::ops::http_get;
use cport_cluster::supervisor::{Plan, Role, Supervisor};

/// One cluster at a time: each starts four processes on a machine of two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

const GAME: &[&str] = &[
    "--world-size=40",
    "--view-range=5",
    "--npcs=20",
    "--db=none",
    "--max-users=40",
    "--threads=1",
];

fn start(nats: &str, name: &str, hung_after: Duration) -> Supervisor {
    let addrs = vec!["127.0.0.1:0".parse().unwrap()];
    let mut plan = Plan::new(env!("CARGO_BIN_EXE_cport").into(), name, 2, addrs);
    plan.nats = Some(nats.to_string());
    plan.echo_stderr = std::env::var_os("CPORT_TEST_CLUSTER_LOG").is_some();
    plan.zone_args = GAME.iter().map(Into::into).collect();
    plan.gateway_args = GAME
        .iter()
        .filter(|a| a.starts_with("--world-size") || a.starts_with("--max-users"))
        .map(Into::into)
        .collect();
    plan.ready_within = Duration::from_secs(30);
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
    let _one = serial();
    let Some(nats) = cport_testkit::nats::nats_server() else {
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
    let _one = serial();
    let Some(nats) = cport_testkit::nats::nats_server() else {
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
