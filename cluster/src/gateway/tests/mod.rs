//! The routing state machine's promises, driven without sockets or a bus: each test feeds
//! [`Routes`] client packets, closes, zone entries and timers, and checks what it sent.
//! This file has the recorder and the helpers; the promises are in `login` (logins, ids,
//! what clients and zones may send), `handoff` (hand-offs and closes), `faults` (a zone's
//! new run: relocks, resumes) and `random` (any sequence of events).

use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;
use cport_mmo::cluster::Layout;
use cport_mmo_proto::{ClientPacket, Direction, SizeField};

mod faults;
mod handoff;
mod login;
mod ownership;
mod random;

use super::{Closing, Effects, Ids, Routes, Settings, Timer, TimerKind};

/// Everything the state machine did, in order per kind.
#[derive(Default)]
pub(super) struct Rec {
    pub(super) zone: Vec<(u16, Msg)>,
    pub(super) sent: Vec<(u32, Bytes)>,
    pub(super) closed: Vec<(u32, Closing)>,
    pub(super) timers: Vec<(Duration, Timer)>,
}

impl Effects<u32> for Rec {
    fn zone(&mut self, zone: u16, m: Msg) {
        self.zone.push((zone, m));
    }
    fn send(&mut self, conn: &u32, bytes: Bytes) {
        self.sent.push((*conn, bytes));
    }
    fn close(&mut self, conn: &u32, how: Closing) {
        self.closed.push((*conn, how));
    }
    fn timer(&mut self, after: Duration, timer: Timer) {
        self.timers.push((after, timer));
    }
}

impl Rec {
    pub(super) fn take_zone(&mut self) -> Vec<(u16, Msg)> {
        std::mem::take(&mut self.zone)
    }
}

pub(super) const H: SizeField = SizeField::U8;

pub(super) fn routes_with(max_users: usize) -> Routes<u32> {
    let set = Settings {
        layout: Layout::new(2000, 4).unwrap(),
        header: H,
        login_timeout: Duration::from_secs(5),
        handoff_timeout: Duration::from_secs(3),
    };
    Routes::new(set, Ids::new(0, 1, max_users))
}

pub(super) fn routes() -> Routes<u32> {
    routes_with(100)
}

pub(super) fn login(name: &str) -> Vec<u8> {
    ClientPacket::Login {
        name: cport_mmo_proto::name(name),
    }
    .encode(H)
}

pub(super) fn mv(t: u32) -> Vec<u8> {
    ClientPacket::Move {
        direction: Direction::Right,
        move_time: t,
    }
    .encode(H)
}

pub(super) fn packet(player: u32, epoch: u32, t: u32) -> Msg {
    Msg::Packet {
        player,
        epoch,
        packet: Bytes::from(mv(t)),
    }
}

pub(super) fn home(name: &str) -> u16 {
    Layout::new(2000, 4).unwrap().home_of(name) as u16
}

/// Session `sid` (client `conn`) logs in as `name` and zone `zone` takes it at `epoch`.
/// Returns the player id; the recorder is emptied.
pub(super) fn logged_in(
    r: &mut Routes<u32>,
    fx: &mut Rec,
    sid: u64,
    name: &str,
    zone: u16,
    epoch: u32,
) -> u32 {
    let now = Instant::now();
    r.on_connect(sid, sid as u32);
    r.on_packet(sid, &login(name), now, fx);
    let player = r.player_of(sid).expect("a player id");
    r.on_bus(
        zone,
        Msg::Owned {
            session: sid,
            player,
            epoch,
        },
        now,
        fx,
    );
    assert_eq!(r.route_of(sid), Some((zone, epoch)));
    *fx = Rec::default();
    player
}

/// Zone `zone` begins handing `sid`'s player off to `to`; the gateway answers `Held`.
pub(super) fn begin(
    r: &mut Routes<u32>,
    fx: &mut Rec,
    sid: u64,
    zone: u16,
    epoch: u32,
    to: u16,
) -> Timer {
    let player = r.player_of(sid).unwrap();
    let m = Msg::HandoffBegin {
        session: sid,
        player,
        epoch,
        to,
        next: epoch + 1,
    };
    r.on_bus(zone, m, Instant::now(), fx);
    assert_eq!(fx.take_zone(), vec![(zone, Msg::Held { player, epoch })]);
    let (after, t) = fx.timers.pop().expect("a hand-off timer");
    assert_eq!(
        (after, t.kind),
        (Duration::from_secs(3), TimerKind::Handoff)
    );
    t
}
