//! Four zones and two gateways in this process, on a real `nats-server`, with course clients
//! over TCP: logins, walks and teleports across borders on both gateways. Each client fails
//! on any packet that contradicts its picture (a duplicate ADD, a MOVE or REMOVE of what it
//! was never shown), checks that its own moves come back once each and in order, and at the
//! end sees exactly the players within its view range — whichever zones and gateways they
//! are on. (The separate processes of `cport cluster` are tested in `cli/tests/cluster*.rs`.)

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use cport_cluster::gateway::{self, Gateway, GatewayConfig};
use cport_cluster::zone::{self, Zone, ZoneConfig};
use cport_mmo_client::blocking::Client;
use cport_mmo_proto::{ClientPacket, ServerPacket};
use cport_server::SizeField;

mod support;
use support::{check_pictures, settle, walk};

const SIZE: u16 = 60;
const RANGE: u16 = 5;
const USERS: usize = 100;

struct Cluster {
    zones: Vec<Zone>,
    gateways: Vec<Gateway>,
}

fn start(url: &str, name: &str, transfer_delay: Duration) -> Cluster {
    let zones = (0..4)
        .map(|z| {
            let game = cport_mmo::Config {
                world_size: SIZE,
                view_range: RANGE,
                max_users: USERS,
                npcs: 40,
                threads: 1,
                seed: 3,
                ..Default::default()
            };
            let mut cfg = ZoneConfig::new(game, z, 4, 2, url, name);
            cfg.transfer_delay = transfer_delay;
            zone::start(cfg).expect("zone")
        })
        .collect();
    let gateways = (0..2)
        .map(|g| {
            gateway::start(GatewayConfig {
                me: g,
                gateways: 2,
                zones: 4,
                world_size: SIZE,
                max_users: USERS,
                threads: 1,
                nats: url.into(),
                cluster: name.into(),
                ..Default::default()
            })
            .expect("gateway")
        })
        .collect();
    Cluster { zones, gateways }
}

fn addrs(cl: &Cluster) -> Vec<SocketAddr> {
    cl.gateways.iter().map(|g| g.local_addr()).collect()
}

#[test]
fn clients_on_two_gateways_walk_across_four_zones() {
    let Some(nats) = cport_testkit::nats::nats_server() else {
        return;
    };
    let cl = start(&nats.url, "e2e-walk", Duration::ZERO);
    let gws = addrs(&cl);
    let clients: Vec<thread::JoinHandle<Client>> = (0..16u64)
        .map(|i| {
            let addr = gws[i as usize % 2];
            thread::spawn(move || {
                let mut c = Client::login(addr, SizeField::U8, &format!("walker{i}"));
                walk(&mut c, i + 1, 120);
                c
            })
        })
        .collect();
    let mut clients: Vec<Client> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    // At rest (NPCs still move): read what is on its way, then compare the players each sees.
    settle(&mut clients, Duration::from_millis(200));
    check_pictures(&clients, RANGE, USERS);
    let handoffs: u64 = cl.zones.iter().map(|z| z.zone_stats().handoffs_out).sum();
    let owned: usize = cl.zones.iter().map(|z| z.stats().players).sum();
    assert_eq!(owned, 16, "every player owned by exactly one zone");
    assert!(handoffs > 20, "{handoffs} hand-offs");
    for z in &cl.zones {
        let b = z.bus_stats();
        assert_eq!((b.junk, b.malformed), (0, 0), "zone {}: {b:?}", z.me());
    }
    eprintln!(
        "hand-offs {handoffs}; zone stats: {:?}",
        cl.zones.iter().map(|z| z.zone_stats()).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_login_of_a_name_through_the_other_gateway_is_refused() {
    let Some(nats) = cport_testkit::nats::nats_server() else {
        return;
    };
    let cl = start(&nats.url, "e2e-twice", Duration::ZERO);
    let gws = addrs(&cl);
    let mut first = Client::login(gws[0], SizeField::U8, "only-once");
    let mut second = Client::connect(gws[1], SizeField::U8);
    second.send(&ClientPacket::Login {
        name: cport_mmo_proto::name("only-once"),
    });
    assert_eq!(second.recv(), ServerPacket::LoginFail);
    second.expect_closed();
    // The first goes on playing; after it leaves, the name logs in again anywhere.
    walk(&mut first, 9, 5);
    first.send(&ClientPacket::Logout);
    first.expect_closed();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = Client::connect(gws[1], SizeField::U8);
        again.send(&ClientPacket::Login {
            name: cport_mmo_proto::name("only-once"),
        });
        match again.recv() {
            ServerPacket::LoginInfo { .. } => break,
            ServerPacket::LoginFail if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50))
            }
            other => panic!("login after logout: {other:?}"),
        }
    }
    drop(cl);
}

#[test]
fn a_late_zone_does_not_lose_or_double_a_move() {
    let Some(nats) = cport_testkit::nats::nats_server() else {
        return;
    };
    // Every hand-off's new zone answers after 1.5 s, past the old owner's 500 ms: each
    // falls back to the old owner, and the clients' moves stay complete and in order.
    let cl = start(&nats.url, "e2e-late", Duration::from_millis(1500));
    let gws = addrs(&cl);
    let clients: Vec<thread::JoinHandle<Client>> = (0..4u64)
        .map(|i| {
            let addr = gws[i as usize % 2];
            thread::spawn(move || {
                let mut c = Client::login(addr, SizeField::U8, &format!("late{i}"));
                walk(&mut c, 100 + i, 60);
                c
            })
        })
        .collect();
    let _clients: Vec<Client> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let timeouts: u64 = cl
        .zones
        .iter()
        .map(|z| z.zone_stats().handoff_timeouts)
        .sum();
    assert!(timeouts > 0, "no hand-off timed out");
    thread::sleep(Duration::from_secs(2));
    let owned: usize = cl.zones.iter().map(|z| z.stats().players).sum();
    assert_eq!(owned, 4, "every player owned by exactly one zone");
}
