//! The supervisor against a real nats-server and a stand-in for the `cport` binary (a shell
//! script that prints the readiness lines).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;

use super::proc::nats_program;
use super::*;

#[test]
fn gateways_take_the_next_ports() {
    let a: SocketAddr = "0.0.0.0:4000".parse().unwrap();
    let got = gateway_addrs(a, 3).unwrap();
    let ports: Vec<u16> = got.iter().map(|a| a.port()).collect();
    assert_eq!(ports, [4000, 4001, 4002]);
    let zero = gateway_addrs("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    assert!(zero.iter().all(|a| a.port() == 0));
    assert!(gateway_addrs("127.0.0.1:65535".parse().unwrap(), 2).is_err());
}

#[test]
fn reads_the_startup_line() {
    assert_eq!(
        parse_listening("listening on 127.0.0.1:4001 (gateway 1 of 2)"),
        Some("127.0.0.1:4001".parse().unwrap())
    );
    assert_eq!(parse_listening("zone 0 of 4 ready"), None);
}

/// A stand-in for the `cport` binary: a shell script that answers `zone` and `gateway`
/// with their readiness lines (`zone 1 broken` exits instead), records SIGTERM in a file,
/// and otherwise sleeps.
#[cfg(unix)]
fn fake_cport(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-cport");
    let log = dir.join("terms");
    let script = format!(
        r#"#!/bin/sh
role=$1; n=$3
trap 'echo "$role $n" >> {log}; echo "bye from $role $n"; exit 0' TERM
case "$role" in
  zone)
if [ "$n" = "$BROKEN_ZONE" ]; then echo "zone $n: no database" >&2; exit 3; fi
echo "zone $n of $5 ready" ;;
  gateway)
for a in "$@"; do [ "$prev" = "--addr" ] && addr=$a; prev=$a; done
echo "listening on $addr (gateway $n)" ;;
esac
while :; do sleep 0.05; done
"#,
        log = log.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[cfg(unix)]
fn plan(dir: &std::path::Path) -> Option<Plan> {
    if Command::new(nats_program())
        .arg("--version")
        .output()
        .is_err()
    {
        cport_testkit::missing_service("nats-server", cport_testkit::nats::NATS_VAR);
        return None;
    }
    let gws = vec![
        "127.0.0.1:5101".parse().unwrap(),
        "127.0.0.1:5102".parse().unwrap(),
    ];
    let mut p = Plan::new(fake_cport(dir), "t", 3, gws);
    p.echo_stderr = false;
    p.ready_within = Duration::from_secs(10);
    Some(p)
}

#[cfg(unix)]
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cport-supervisor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// NATS is started and reachable, every process gets its readiness line read, one can
/// be killed alone, and stop ends the gateways before the zones.
#[cfg(unix)]
#[test]
fn starts_kills_one_and_stops_in_order() {
    let dir = tempdir("order");
    let Some(plan) = plan(&dir) else { return };
    let mut sup = Supervisor::start(plan).unwrap();
    let url = sup.nats_url().to_string();
    let port: u16 = url.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = String::new();
    BufReader::new(&mut s).read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    assert_eq!(
        sup.gateways(),
        vec![
            "127.0.0.1:5101".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:5102".parse().unwrap()
        ]
    );
    assert!(sup.exited().is_empty());
    let zone1 = sup.pid(Role::Zone, 1).unwrap();
    let st = sup.kill(Role::Zone, 1).unwrap();
    assert!(!st.success());
    assert_eq!(sup.exited().len(), 1);
    assert!(sup.kill(Role::Zone, 7).is_err());
    assert!(sup.pid(Role::Zone, 0).is_some_and(|p| p != zone1));
    let report = sup.stop(Duration::from_secs(5)).unwrap();
    // What each said last on stdout is kept (a zone's figures at shutdown).
    assert_eq!(
        report.said(Role::Gateway, 1),
        [
            "listening on 127.0.0.1:5102 (gateway 1)",
            "bye from gateway 1"
        ]
    );
    assert!(report
        .said(Role::Zone, 1)
        .iter()
        .all(|l| !l.starts_with("bye")));
    // Zone 1 was killed: not a clean stop, though the rest honoured SIGTERM.
    assert!(!report.clean(), "{report}");
    assert!(report.ended.iter().all(|e| !e.3), "{report}");
    let order: Vec<(Role, usize)> = report.ended.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        order,
        [
            (Role::Gateway, 0),
            (Role::Gateway, 1),
            (Role::Zone, 0),
            (Role::Zone, 1),
            (Role::Zone, 2),
            (Role::Nats, 0)
        ]
    );
    // SIGTERM reached the gateways and zones still running, gateways first.
    let terms = std::fs::read_to_string(dir.join("terms")).unwrap();
    let terms: Vec<&str> = terms.lines().collect();
    assert_eq!(terms.len(), 4, "{terms:?}");
    assert!(
        terms[..2].iter().all(|l| l.starts_with("gateway")),
        "{terms:?}"
    );
    assert!(
        terms[2..].iter().all(|l| l.starts_with("zone")),
        "{terms:?}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A zone that exits before it is ready fails the start, with what it said, and takes
/// nothing with it (NATS and the other zones are killed).
#[cfg(unix)]
#[test]
fn a_zone_that_dies_at_start_is_reported_with_its_stderr() {
    let dir = tempdir("broken");
    let Some(mut plan) = plan(&dir) else { return };
    plan.program = dir.join("wrapper");
    std::fs::write(
        &plan.program,
        format!(
            "#!/bin/sh\nBROKEN_ZONE=1 exec {} \"$@\"\n",
            dir.join("fake-cport").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plan.program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = Supervisor::start(plan).unwrap_err().to_string();
    assert!(e.contains("zone 1 exited"), "{e}");
    assert!(e.contains("zone 1: no database"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_program_is_an_error_not_a_hang() {
    let mut p = Plan::new(
        "/nonexistent/cport".into(),
        "t",
        1,
        vec!["127.0.0.1:0".parse().unwrap()],
    );
    p.nats = Some("nats://127.0.0.1:1".into());
    let e = Supervisor::start(p).unwrap_err().to_string();
    assert!(
        e.contains("zone 0") && e.contains("/nonexistent/cport"),
        "{e}"
    );
}

/// Waits (at most `within`) for `ok`.
#[cfg(unix)]
fn wait_for(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let give_up = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < give_up, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With restarts on, a killed zone is started again at once with a new pid, counted, and
/// ready again; the supervisor's own /metrics count it by role.
#[cfg(unix)]
#[test]
fn a_killed_zone_is_started_again_and_counted() {
    let dir = tempdir("restart");
    let Some(mut plan) = plan(&dir) else { return };
    plan.restart = true;
    plan.http = Some("127.0.0.1:0".parse().unwrap());
    let mut sup = Supervisor::start(plan).unwrap();
    assert!(sup.restarting());
    let old = sup.pid(Role::Zone, 1).unwrap();
    assert_eq!(sup.restarts(Role::Zone), 0);
    sup.kill(Role::Zone, 1).unwrap();
    let t = Instant::now();
    wait_for(Duration::from_secs(3), "zone 1 back", || {
        sup.pid(Role::Zone, 1).is_some_and(|p| p != old) && sup.is_up(Role::Zone, 1)
    });
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(sup.restarts(Role::Zone), 1);
    assert_eq!(sup.restarts_of(Role::Zone, 1), 1);
    assert_eq!(sup.restarts_of(Role::Zone, 0), 0);
    assert!(sup.exited().is_empty());
    let http = sup.http_addr().unwrap();
    let m = crate::ops::http_get(http, "/metrics", Duration::from_secs(5)).unwrap();
    assert!(
        m.body
            .contains("cport_supervisor_restarts_total{cluster=\"t\",role=\"zone\"} 1"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("cport_supervisor_children_up{cluster=\"t\",role=\"zone\"} 3"),
        "{}",
        m.body
    );
    let h = crate::ops::http_get(http, "/healthz", Duration::from_secs(5)).unwrap();
    assert_eq!(h.status, 200, "{h:?}");
    let r = crate::ops::http_get(http, "/readyz", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // The restarted zone hears SIGTERM at stop like the others.
    let report = sup.stop(Duration::from_secs(5)).unwrap();
    assert!(report.clean(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A zone that dies as soon as it is up is restarted after a growing pause, not in a loop.
#[cfg(unix)]
#[test]
fn a_zone_that_keeps_dying_is_restarted_with_a_growing_pause() {
    let dir = tempdir("backoff");
    let Some(mut plan) = plan(&dir) else { return };
    plan.program = dir.join("wrapper");
    std::fs::write(
        &plan.program,
        format!(
            "#!/bin/sh\nif [ \"$1 $3\" = \"zone 2\" ]; then echo \"zone 2 of $5 ready\"; exit 4; fi\nexec {} \"$@\"\n",
            dir.join("fake-cport").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plan.program, std::fs::Permissions::from_mode(0o755)).unwrap();
    plan.restart = true;
    let sup = Supervisor::start(plan).unwrap();
    // Pauses 0, 0.5, 1, 2 s: by 2.2 s three restarts at most (without a pause there would
    // be dozens), and at least two.
    std::thread::sleep(Duration::from_millis(2200));
    let n = sup.restarts(Role::Zone);
    assert!((2..=3).contains(&n), "{n} restarts in 2.2 s");
    assert_eq!(sup.restarts(Role::Gateway), 0);
    assert_eq!(monitor::backoff(0), Duration::ZERO);
    assert_eq!(monitor::backoff(1), Duration::from_millis(500));
    assert_eq!(monitor::backoff(3), Duration::from_secs(2));
    assert_eq!(monitor::backoff(50), Duration::from_secs(8));
    drop(sup);
    let _ = std::fs::remove_dir_all(&dir);
}

/// NATS restarted on request comes back on the same port; NATS that dies is restarted by
/// the monitor on the same port.
#[cfg(unix)]
#[test]
fn nats_comes_back_on_the_same_port() {
    let dir = tempdir("nats");
    let Some(mut plan) = plan(&dir) else { return };
    plan.restart = true;
    let mut sup = Supervisor::start(plan).unwrap();
    let port: u16 = sup.nats_url().rsplit_once(':').unwrap().1.parse().unwrap();
    let first = sup.pid(Role::Nats, 0).unwrap();
    sup.restart_nats().unwrap();
    let second = sup.pid(Role::Nats, 0).unwrap();
    assert_ne!(first, second);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(sup.restarts(Role::Nats), 1);
    sup.kill(Role::Nats, 0).unwrap();
    wait_for(Duration::from_secs(5), "nats back", || {
        sup.pid(Role::Nats, 0).is_some_and(|p| p != second) && sup.is_up(Role::Nats, 0)
    });
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(sup.restarts(Role::Nats), 2);
    drop(sup);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
