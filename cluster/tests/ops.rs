//! The operations endpoints of two zones and a gateway in this process, on a real
//! `nats-server`: `/healthz` and `/readyz` answer 200, `/metrics` is Prometheus text whose
//! series carry the process's label and move when a client logs in and walks across the
//! border (hand-offs, with their latency); and when NATS goes away, `/readyz` says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cport_cluster::gateway::{self, GatewayConfig};
use cport_cluster::ops::{self, http_get, OpsServer};
use cport_cluster::zone::{self, ZoneConfig};
use cport_mmo_client::blocking::Client;
use cport_mmo_proto::Direction;
use cport_server::SizeField;

/// One scrape: every sample by its name and labels (`name{a="1",b="2"}`), after checking
/// that the text is the Prometheus format: each sample's family has a HELP and a TYPE line
/// before it, and each value is a number.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let a = http_get(addr, "/metrics", Duration::from_secs(5)).expect("GET /metrics");
    assert_eq!(a.status, 200, "{a:?}");
    let mut help = std::collections::HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    for line in a.body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap();
            help.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                help.contains(family) && types.contains_key(family),
                "no HELP/TYPE before {line}"
            );
            assert!(
                out.insert(series.to_string(), value).is_none(),
                "twice: {line}"
            );
        }
    }
    out
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in {:?}", m.keys().collect::<Vec<_>>()))
}

fn get(addr: SocketAddr, path: &str) -> ops::HttpAnswer {
    http_get(addr, path, Duration::from_secs(5)).expect(path)
}

/// Waits (at most 10 s) until `ok` holds for a scrape of `addr`.
fn until(
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr);
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < give_up, "{what}: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn zones_and_a_gateway_serve_health_readiness_and_metrics() {
    let Some(mut nats) = cport_testkit::nats::nats_server() else {
        return;
    };
    let url = nats.url.clone();
    let name = format!("ops-{}", std::process::id());
    let game = cport_mmo::Config {
        world_size: 40,
        view_range: 5,
        max_users: 20,
        npcs: 30,
        threads: 1,
        seed: 5,
        ..Default::default()
    };
    let z =
        Arc::new(zone::start(ZoneConfig::new(game.clone(), 0, 2, 1, &url, &name)).expect("zone 0"));
    let z1 = Arc::new(zone::start(ZoneConfig::new(game, 1, 2, 1, &url, &name)).expect("zone 1"));
    let g = Arc::new(
        gateway::start(GatewayConfig {
            zones: 2,
            world_size: 40,
            max_users: 20,
            threads: 1,
            nats: url.clone(),
            cluster: name.clone(),
            ..Default::default()
        })
        .expect("gateway"),
    );
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let zops: OpsServer = ops::serve(any, z.clone()).unwrap();
    let gops: OpsServer = ops::serve(any, g.clone()).unwrap();
    let z1ops: OpsServer = ops::serve(any, z1.clone()).unwrap();
    let (za, ga, z1a) = (zops.local_addr(), gops.local_addr(), z1ops.local_addr());

    for a in [za, ga, z1a] {
        let h = get(a, "/healthz");
        assert_eq!(h.status, 200, "{h:?}");
        assert!(h.body.contains("µs"), "{h:?}");
        assert_eq!(
            get(a, "/readyz"),
            ops::HttpAnswer {
                status: 200,
                body: "ready\n".into()
            }
        );
    }

    let zm = scrape(za);
    let gm = scrape(ga);
    assert_eq!(value(&zm, r#"cport_zone_players{zone="0"}"#), 0.0);
    assert_eq!(value(&gm, r#"cport_gateway_sessions{gateway="0"}"#), 0.0);
    assert_eq!(value(&zm, r#"cport_bus_connected{zone="0"}"#), 1.0);
    assert_eq!(
        value(&zm, r#"cport_incarnation{zone="0"}"#),
        z.bus().incarnation() as f64
    );
    for s in [
        r#"cport_zone_ghosts{zone="0"}"#,
        r#"cport_zone_npcs_awake{zone="0"}"#,
        r#"cport_zone_handoffs_total{zone="0",direction="out"}"#,
        r#"cport_zone_handoff_latency_seconds{zone="0",quantile="0.99"}"#,
        r#"cport_inbox_queued_batches{zone="0"}"#,
        r#"cport_outbox_pending_entries{zone="0"}"#,
        r#"cport_db_pending_rows{zone="0"}"#,
        r#"cport_probe_failures_total{zone="0"}"#,
    ] {
        value(&zm, s);
    }
    for s in [
        r#"cport_gateway_handoffs_total{gateway="0",outcome="completed"}"#,
        r#"cport_inbox_queued_batches{gateway="0"}"#,
        r#"cport_bus_bytes_total{gateway="0",direction="out"}"#,
    ] {
        value(&gm, s);
    }
    let zin = value(&zm, r#"cport_bus_messages_total{zone="0",direction="in"}"#)
        + value(
            &scrape(z1a),
            r#"cport_bus_messages_total{zone="1",direction="in"}"#,
        );
    let gout = value(
        &gm,
        r#"cport_bus_messages_total{gateway="0",direction="out"}"#,
    );

    // A client logs in and walks: the populations and the bus counters move.
    let mut c = Client::login(g.local_addr(), SizeField::U8, "watched");
    for t in 1..=5 {
        c.move_(Direction::ALL[t as usize % 4], t);
        c.pump_until_own_move(t);
    }
    let gm = until(ga, "the gateway's session", |m| {
        value(m, r#"cport_gateway_sessions{gateway="0"}"#) == 1.0
    });
    assert_eq!(
        value(&gm, r#"cport_gateway_logins_total{gateway="0"}"#),
        1.0
    );
    assert!(value(&gm, r#"cport_gateway_routed_packets_total{gateway="0"}"#) >= 5.0);
    assert!(
        value(
            &gm,
            r#"cport_bus_messages_total{gateway="0",direction="out"}"#
        ) > gout
    );
    let players = || {
        value(&scrape(za), r#"cport_zone_players{zone="0"}"#)
            + value(&scrape(z1a), r#"cport_zone_players{zone="1"}"#)
    };
    let both = |series: &str| {
        value(&scrape(za), &series.replace("Z", "0"))
            + value(&scrape(z1a), &series.replace("Z", "1"))
    };
    assert_eq!(players(), 1.0, "one zone owns the player");
    assert_eq!(both(r#"cport_zone_logins_total{zone="Z"}"#), 1.0);
    assert!(both(r#"cport_zone_player_moves_total{zone="Z"}"#) >= 5.0);
    assert!(both(r#"cport_bus_messages_total{zone="Z",direction="in"}"#) > zin);

    // Across the board, back and across again, in both axes: whichever way the board is cut
    // and wherever the player starts, it crosses the border both ways, and each zone hands
    // it over once at least.
    let mut t = 5;
    use Direction::{Down, Left, Right, Up};
    for d in [Right, Left, Right, Down, Up, Down] {
        for _ in 0..39 {
            t += 1;
            c.move_(d, t);
            c.pump_until_own_move(t);
        }
    }
    let handed = |a: SocketAddr, z: &str| {
        let m = scrape(a);
        (
            value(
                &m,
                &format!(r#"cport_zone_handoffs_total{{zone="{z}",direction="out"}}"#),
            ),
            value(
                &m,
                &format!(r#"cport_zone_handoff_latency_seconds{{zone="{z}",quantile="1"}}"#),
            ),
        )
    };
    let ((out0, max0), (out1, max1)) = (handed(za, "0"), handed(z1a, "1"));
    assert!(out0 >= 1.0 && out1 >= 1.0, "hand-offs out: {out0}, {out1}");
    assert!(
        max0 > 0.0 && max1 > 0.0,
        "hand-off latencies: {max0}, {max1}"
    );
    let gm = scrape(ga);
    assert!(
        value(
            &gm,
            r#"cport_gateway_handoffs_total{gateway="0",outcome="completed"}"#
        ) >= 2.0,
        "{gm:?}"
    );
    assert_eq!(
        players(),
        1.0,
        "one zone owns the player after the hand-offs"
    );
    // A second later the background probe has measured the tick time.
    until(za, "a tick measured", |m| {
        value(m, r#"cport_tick_seconds_count{zone="0"}"#) >= 1.0
    });

    drop(c);
    until(ga, "the session closed", |m| {
        value(m, r#"cport_gateway_sessions{gateway="0"}"#) == 0.0
    });
    until(za, "the player gone", |m| {
        value(m, r#"cport_zone_players{zone="0"}"#) == 0.0
    });
    until(z1a, "the player gone", |m| {
        value(m, r#"cport_zone_players{zone="1"}"#) == 0.0
    });

    // NATS goes away: both say they are not ready, and why, while alive.
    nats.kill();
    for a in [za, ga] {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(a, "/readyz");
            if r.status == 503 {
                assert!(r.body.contains("not connected to NATS"), "{r:?}");
                break;
            }
            assert!(Instant::now() < give_up, "still ready without NATS: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(get(a, "/healthz").status, 200);
    }
    assert_eq!(value(&scrape(za), r#"cport_bus_connected{zone="0"}"#), 0.0);
    drop(zops);
    drop(gops);
    drop(z1ops);
    assert_eq!(Arc::strong_count(&z), 1, "the endpoints let go of the zone");
    assert_eq!(Arc::strong_count(&z1), 1, "the endpoints let go of zone 1");
    assert_eq!(
        Arc::strong_count(&g),
        1,
        "the endpoints let go of the gateway"
    );
}
