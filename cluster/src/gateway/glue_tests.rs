//! The gateway as a whole: a real `nats-server` on a free loopback port
//! ([`cport_testkit::nats`]: skipped, or failed under `scripts/test`, where there is none),
//! the gateway's server with course clients on TCP, and fake zones on the bus that answer by
//! hand.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::{read_header, BatchWriter, Header, Msg, Source};
use cport_mmo::cluster::Layout;
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField};

use super::{start, GatewayConfig};
use crate::bus::{Bus, BusConfig};
use cport_testkit::nats::nats_server;

const H: SizeField = SizeField::U8;
const WAIT: Duration = Duration::from_secs(10);

/// A zone played by the test: what the gateway sends it arrives on a channel.
struct FakeZone {
    bus: Bus,
    rx: mpsc::Receiver<Msg>,
}

impl FakeZone {
    fn new(url: &str, cluster: &str, n: u16) -> FakeZone {
        let bus = Bus::connect(
            BusConfig {
                url: url.into(),
                cluster: cluster.into(),
                me: Source::Zone(n),
                incarnation: 1,
            },
            WAIT,
        )
        .expect("zone connects");
        let (tx, rx) = mpsc::channel();
        bus.subscribe(move |payload| {
            let (h, mut r) = read_header(payload).expect("the gateway sends batches");
            assert_eq!(h.source, Source::Gateway(0));
            while let Some(m) = r.next() {
                let _ = tx.send(m.expect("the gateway's entries parse"));
            }
        })
        .expect("zone subscribes");
        FakeZone { bus, rx }
    }

    fn send(&self, msgs: &[Msg]) {
        let to = Source::Gateway(0);
        let mut w = BatchWriter::new(self.bus.header(to));
        for m in msgs {
            w.push(m);
        }
        self.bus.publish(to, w.finish());
    }

    /// The next message of the gateway's, past its `Alive`s (twice a second) and the
    /// `RelockDone` it says when it first meets a zone's run (these zones never speak).
    fn recv(&self) -> Msg {
        loop {
            let m = self
                .rx
                .recv_timeout(WAIT)
                .expect("a message from the gateway");
            if !matches!(m, Msg::Alive | Msg::RelockDone) {
                return m;
            }
        }
    }
}

fn mv(t: u32) -> Vec<u8> {
    ClientPacket::Move {
        direction: Direction::Down,
        move_time: t,
    }
    .encode(H)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_client_logs_in_is_routed_handed_off_and_disconnected_through_nats() {
    let Some(nats) = nats_server() else { return };
    let cluster = format!("gwtest{}", std::process::id());
    let zones = [
        FakeZone::new(&nats.url, &cluster, 0),
        FakeZone::new(&nats.url, &cluster, 1),
    ];
    let gw = start(GatewayConfig {
        threads: 2,
        zones: 2,
        max_users: 100,
        nats: nats.url.clone(),
        cluster: cluster.clone(),
        ..Default::default()
    })
    .expect("gateway starts");

    let mut client = TcpStream::connect(gw.local_addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let name = "alice";
    let home = &zones[Layout::new(2000, 2).unwrap().home_of(name)];
    let login = ClientPacket::Login {
        name: cport_mmo_proto::name(name),
    };
    client.write_all(&login.encode(H)).unwrap();
    client.write_all(&mv(1)).unwrap();
    client.write_all(&mv(2)).unwrap();
    let Msg::Login {
        session,
        player,
        name: got,
    } = home.recv()
    else {
        panic!("Login first")
    };
    assert_eq!(got, name);

    // Zone 0 places the player: the client gets what the zone sent, byte for byte, and zone
    // 0 gets Confirm and the held packets in order.
    let info = ServerPacket::LoginInfo {
        id: player as i32,
        hp: 100,
        max_hp: 100,
        exp: 0,
        level: 1,
        x: 3,
        y: 4,
    }
    .encode(H);
    zones[0].send(&[
        Msg::Send {
            session,
            bytes: Bytes::from(info.clone()),
        },
        Msg::Owned {
            session,
            player,
            epoch: 1,
        },
    ]);
    let mut back = vec![0; info.len()];
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, info);
    assert_eq!(zones[0].recv(), Msg::Confirm { player, epoch: 1 });
    for t in 1..=2 {
        let want = Msg::Packet {
            player,
            epoch: 1,
            packet: Bytes::from(mv(t)),
        };
        assert_eq!(zones[0].recv(), want);
    }

    // Zone 0 hands the player to zone 1.
    zones[0].send(&[Msg::HandoffBegin {
        session,
        player,
        epoch: 1,
        to: 1,
        next: 2,
    }]);
    assert_eq!(zones[0].recv(), Msg::Held { player, epoch: 1 });
    client.write_all(&mv(3)).unwrap();
    wait_for("the packet held", || gw.stats().routes.held == 1);
    zones[1].send(&[Msg::Owned {
        session,
        player,
        epoch: 2,
    }]);
    assert_eq!(zones[1].recv(), Msg::Confirm { player, epoch: 2 });
    let want = Msg::Packet {
        player,
        epoch: 2,
        packet: Bytes::from(mv(3)),
    };
    assert_eq!(zones[1].recv(), want);

    // Junk on the gateway's subject is counted, not fatal.
    zones[0]
        .bus
        .publish(Source::Gateway(0), Bytes::from_static(b"junk"));
    let mut foreign = BatchWriter::new(zones[0].bus.header(Source::Gateway(0)));
    foreign.push(&Msg::SnapshotRequest);
    let mut v = foreign.finish().to_vec();
    v[4] = 1; // the sender claims to be a gateway
    zones[0].bus.publish(Source::Gateway(0), Bytes::from(v));
    wait_for("junk counted", || {
        let s = gw.stats();
        s.malformed_batches == 1 && s.foreign_batches == 1
    });

    // A gap in zone 1's sequence (it sent one batch, seq 0, so far) counts as lost batches.
    let mut w = BatchWriter::new(Header {
        source: Source::Zone(1),
        incarnation: 1,
        seq: 5,
    });
    w.push(&Msg::SnapshotRequest);
    zones[1].bus.publish(Source::Gateway(0), w.finish());
    wait_for("the gap counted", || gw.stats().lost_batches == 4);

    // The client leaves: its owner now, zone 1, is told.
    drop(client);
    assert_eq!(zones[1].recv(), Msg::Disconnect { player, epoch: 2 });
    let s = gw.stats();
    assert_eq!(
        (
            s.routes.logins,
            s.routes.handoffs_completed,
            s.routes.routed
        ),
        (1, 1, 3)
    );
    assert_eq!(s.routes.sessions, 0);
    assert!(s.bus.msgs_in >= 4 && s.bus.msgs_out >= 4, "{:?}", s.bus);
    assert!(zones[0].rx.try_recv().is_err(), "nothing else for zone 0");

    // A second client is in the game when the gateway shuts down: its zone is told before
    // shutdown returns.
    let mut bob = TcpStream::connect(gw.local_addr()).unwrap();
    bob.set_read_timeout(Some(WAIT)).unwrap();
    let login = ClientPacket::Login {
        name: cport_mmo_proto::name("bob"),
    };
    bob.write_all(&login.encode(H)).unwrap();
    let home = &zones[Layout::new(2000, 2).unwrap().home_of("bob")];
    let Msg::Login {
        session, player, ..
    } = home.recv()
    else {
        panic!("Login first")
    };
    zones[0].send(&[Msg::Owned {
        session,
        player,
        epoch: 1,
    }]);
    assert_eq!(zones[0].recv(), Msg::Confirm { player, epoch: 1 });
    // The client reads until the server half-closes, then closes its side.
    let reader = std::thread::spawn(move || bob.read_to_end(&mut Vec::new()));
    let report = gw.shutdown(Duration::from_secs(5));
    assert_eq!((report.sessions, report.forced), (1, 0));
    reader.join().unwrap().unwrap();
    assert_eq!(zones[0].recv(), Msg::Disconnect { player, epoch: 1 });
}

#[test]
fn a_login_no_zone_answers_is_refused_when_its_timer_fires() {
    let Some(nats) = nats_server() else { return };
    let cluster = format!("gwtimer{}", std::process::id());
    let zone = FakeZone::new(&nats.url, &cluster, 0);
    let gw = start(GatewayConfig {
        threads: 2,
        nats: nats.url.clone(),
        cluster,
        login_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .expect("gateway starts");
    let mut client = TcpStream::connect(gw.local_addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let t0 = Instant::now();
    let login = ClientPacket::Login {
        name: cport_mmo_proto::name("nobody"),
    };
    client.write_all(&login.encode(H)).unwrap();
    let Msg::Login { player, .. } = zone.recv() else {
        panic!("Login first")
    };
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    assert_eq!(
        back,
        ServerPacket::LoginFail.encode(H),
        "SC_LOGIN_FAIL, then the end"
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let s = gw.stats();
    assert_eq!((s.routes.login_timeouts, s.routes.login_fails), (1, 1));
    drop(client);
    // The home zone is told the login was given up (it frees the name).
    assert_eq!(zone.recv(), Msg::Disconnect { player, epoch: 0 });
    wait_for("the session closed", || gw.stats().routes.sessions == 0);
    assert_eq!(gw.shutdown(Duration::from_secs(1)).sessions, 0);
}

#[test]
fn many_clients_packets_reach_the_zone_and_come_back_in_order() {
    // (How many entries share a NATS message depends on timing: the bus's own tests hold
    // the outbox's batching to account; this one holds the gateway to order and completeness.)
    const CLIENTS: usize = 40;
    const MOVES: u32 = 25;
    let Some(nats) = nats_server() else { return };
    let cluster = format!("gwload{}", std::process::id());
    let zone = FakeZone::new(&nats.url, &cluster, 0);
    let gw = start(GatewayConfig {
        threads: 2,
        max_users: 1000,
        nats: nats.url.clone(),
        cluster,
        ..Default::default()
    })
    .expect("gateway starts");
    // Every client logs in and sends all its moves at once: most are held until the zone's
    // `Owned`, the rest routed after it; either way they must arrive in order.
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut c = TcpStream::connect(gw.local_addr()).unwrap();
            c.set_read_timeout(Some(WAIT)).unwrap();
            let mut out = ClientPacket::Login {
                name: cport_mmo_proto::name(&format!("load{i}")),
            }
            .encode(H);
            for t in 0..MOVES {
                out.extend_from_slice(&mv(t));
            }
            c.write_all(&out).unwrap();
            c
        })
        .collect();
    // The zone: takes each login, then echoes each move back to its client as the mover's
    // own SC_MOVE_OBJECT, checking that each player's moves come in order after `Confirm`.
    let mut session_of = std::collections::HashMap::new();
    let mut next = std::collections::HashMap::new();
    let mut done = 0;
    let until = Instant::now() + WAIT;
    while done < CLIENTS {
        assert!(
            Instant::now() < until,
            "{done} of {CLIENTS} clients finished"
        );
        match zone.recv() {
            Msg::Login {
                session, player, ..
            } => {
                session_of.insert(player, session);
                zone.send(&[Msg::Owned {
                    session,
                    player,
                    epoch: 1,
                }]);
            }
            Msg::Confirm { player, epoch: 1 } => {
                assert!(next.insert(player, 0u32).is_none(), "one Confirm");
            }
            Msg::Packet {
                player,
                epoch: 1,
                packet,
            } => {
                let want = next.get_mut(&player).expect("Confirm before packets");
                let Ok(ClientPacket::Move { move_time, .. }) = ClientPacket::decode(&packet, H)
                else {
                    panic!("a move")
                };
                assert_eq!(move_time, *want, "player {player}'s moves in order");
                *want += 1;
                let echo = ServerPacket::MoveObject {
                    id: player as i32,
                    x: 0,
                    y: 0,
                    move_time,
                }
                .encode(H);
                zone.send(&[Msg::Send {
                    session: session_of[&player],
                    bytes: Bytes::from(echo),
                }]);
                if *want == MOVES {
                    done += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for c in &mut clients {
        for t in 0..MOVES {
            let mut p = [0u8; 14];
            c.read_exact(&mut p).unwrap();
            let Ok(ServerPacket::MoveObject { move_time, .. }) = ServerPacket::decode(&p, H) else {
                panic!("SC_MOVE_OBJECT")
            };
            assert_eq!(move_time, t, "the echoes come back in order");
        }
    }
    let s = gw.stats();
    assert_eq!(s.routes.routed, CLIENTS as u64 * u64::from(MOVES));
    assert_eq!((s.routes.logins, s.routes.held), (CLIENTS as u64, 0));
    drop(clients);
    wait_for("every session closed", || gw.stats().routes.sessions == 0);
    gw.shutdown(Duration::from_secs(1));
}

#[test]
fn a_gateway_dropped_without_shutdown_still_tells_the_zones() {
    let Some(nats) = nats_server() else { return };
    let cluster = format!("gwdrop{}", std::process::id());
    let zone = FakeZone::new(&nats.url, &cluster, 0);
    let gw = start(GatewayConfig {
        threads: 2,
        nats: nats.url.clone(),
        cluster,
        ..Default::default()
    })
    .expect("gateway starts");
    let mut client = TcpStream::connect(gw.local_addr()).unwrap();
    let login = ClientPacket::Login {
        name: cport_mmo_proto::name("dropped"),
    };
    client.write_all(&login.encode(H)).unwrap();
    let Msg::Login {
        session, player, ..
    } = zone.recv()
    else {
        panic!("Login first")
    };
    zone.send(&[Msg::Owned {
        session,
        player,
        epoch: 1,
    }]);
    assert_eq!(zone.recv(), Msg::Confirm { player, epoch: 1 });
    drop(gw);
    assert_eq!(zone.recv(), Msg::Disconnect { player, epoch: 1 });
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        client.read(&mut [0u8; 1]).unwrap_or(0),
        0,
        "the client was closed"
    );
}
