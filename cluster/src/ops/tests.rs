//! The endpoints against stand-in targets: one whose "workers" answer, one that is stalled,
//! one that drops the probe.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;

/// A target whose probe is answered by a thread of its own (its "worker"), unless stalled.
struct Fake {
    stalled: AtomicBool,
    ready: AtomicBool,
    /// Stalled probes are kept here, unanswered (a worker that never gets to them).
    held: Mutex<Vec<Probe>>,
    drop_probes: AtomicBool,
    value: AtomicU64,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            stalled: AtomicBool::new(false),
            ready: AtomicBool::new(true),
            held: Mutex::new(Vec::new()),
            drop_probes: AtomicBool::new(false),
            value: AtomicU64::new(0),
        })
    }
}

impl Target for Fake {
    fn labels(&self) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        vec![("zone".into(), "7".into())]
    }

    fn post_probe(&self, probe: Probe) -> Result<(), String> {
        if self.drop_probes.load(Ordering::Relaxed) {
            drop(probe);
        } else if self.stalled.load(Ordering::Relaxed) {
            self.held.lock().unwrap().push(probe);
        } else {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                probe.answer();
            });
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not connected to NATS".into())
        }
    }

    fn collect(&self, out: &mut Series<'_, '_>) -> fmt::Result {
        out.gauge(
            "fake_value",
            "A value the test sets",
            self.value.load(Ordering::Relaxed) as f64,
        )?;
        out.counters(
            "fake_things",
            "Things by kind",
            "kind",
            &[("a", 1), ("b", self.value.load(Ordering::Relaxed))],
        )
    }
}

fn get(addr: SocketAddr, path: &str) -> HttpAnswer {
    http_get(addr, path, Duration::from_secs(5)).unwrap()
}

#[test]
fn healthz_says_whether_a_worker_took_the_probe() {
    let fake = Fake::new();
    let ops = serve("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
    let a = get(ops.local_addr(), "/healthz");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.body.starts_with("ok: a worker took the probe in "),
        "{a:?}"
    );
    // Stalled workers: no answer within the probe's second, a 503 that says so.
    fake.stalled.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let a = get(ops.local_addr(), "/healthz");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("no worker took the probe"), "{a:?}");
    assert!(t.elapsed() >= PROBE_TIMEOUT && t.elapsed() < PROBE_TIMEOUT * 3);
    // A probe dropped unanswered (a port shutting down) fails at once.
    fake.stalled.store(false, Ordering::Relaxed);
    fake.drop_probes.store(true, Ordering::Relaxed);
    let a = get(ops.local_addr(), "/healthz");
    assert_eq!(a.status, 503, "{a:?}");
    fake.drop_probes.store(false, Ordering::Relaxed);
    assert_eq!(get(ops.local_addr(), "/healthz").status, 200);
    assert_eq!(get(ops.local_addr(), "/nothing").status, 404);
}

#[test]
fn readyz_follows_the_target() {
    let fake = Fake::new();
    let ops = serve("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
    assert_eq!(get(ops.local_addr(), "/readyz").status, 200);
    fake.ready.store(false, Ordering::Relaxed);
    let a = get(ops.local_addr(), "/readyz");
    assert_eq!(a.status, 503);
    assert_eq!(a.body, "not ready: not connected to NATS\n");
}

#[test]
fn metrics_are_read_at_scrape_time_in_the_text_format() {
    let fake = Fake::new();
    let ops = serve("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
    fake.value.store(5, Ordering::Relaxed);
    let body = get(ops.local_addr(), "/metrics").body;
    assert!(
        body.contains("# HELP cport_fake_value A value the test sets"),
        "{body}"
    );
    assert!(body.contains("# TYPE cport_fake_value gauge"), "{body}");
    assert!(body.contains("cport_fake_value{zone=\"7\"} 5"), "{body}");
    assert!(
        body.contains("# TYPE cport_fake_things_total counter"),
        "{body}"
    );
    assert!(
        body.contains("cport_fake_things_total{zone=\"7\",kind=\"b\"} 5"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE cport_tick_seconds histogram"),
        "{body}"
    );
    fake.value.store(9, Ordering::Relaxed);
    let body = get(ops.local_addr(), "/metrics").body;
    assert!(body.contains("cport_fake_value{zone=\"7\"} 9"), "{body}");
}

/// The background probe runs once a second: after a little over a second the tick
/// histogram has counted one, and a stalled target's probes are counted as failures.
#[test]
fn the_tick_time_is_measured_in_the_background() {
    let fake = Fake::new();
    let ops = serve("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap();
    let count = |body: &str, name: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let body = get(ops.local_addr(), "/metrics").body;
        if count(&body, "cport_tick_seconds_count") >= 1 {
            break;
        }
        assert!(Instant::now() < until, "no tick measured: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    fake.stalled.store(true, Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(6);
    loop {
        let body = get(ops.local_addr(), "/metrics").body;
        if count(&body, "cport_probe_failures_total") >= 1 {
            break;
        }
        assert!(Instant::now() < until, "no failure counted: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dropping the server ends its thread, and with it its hold on the target.
    drop(ops);
    fake.held.lock().unwrap().clear();
    assert_eq!(Arc::strong_count(&fake), 1);
}

#[test]
fn options_and_lines_parse() {
    assert_eq!("none".parse::<HttpAddr>().unwrap(), HttpAddr(None));
    assert_eq!(
        "127.0.0.1:9100".parse::<HttpAddr>().unwrap(),
        HttpAddr(Some("127.0.0.1:9100".parse().unwrap()))
    );
    assert!("nowhere".parse::<HttpAddr>().is_err());
    assert_eq!(HttpAddr(None).to_string(), "none");
    assert_eq!(
        parse_http_line("http on 127.0.0.1:5\n"),
        Some("127.0.0.1:5".parse().unwrap())
    );
    assert_eq!(parse_http_line("listening on 127.0.0.1:5"), None);
    assert_eq!(
        http::dechunk("5\r\nhello\r\n3\r\n, w\r\n0\r\n\r\n"),
        "hello, w"
    );
}
