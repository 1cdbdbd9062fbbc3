//! Any sequence of client, zone and timer events.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;

use super::*;

/// One step of a random run: what a client, a zone or a timer does.
#[derive(Debug, Clone)]
enum Step {
    Connect,
    Login(usize, u8),
    Move(usize),
    Junk(usize, Vec<u8>),
    Close(usize),
    Owned(u16, usize, u32, u32),
    Begin(u16, usize, u32, u32, u16),
    Cancel(u16, usize, u32, u32),
    Send(usize),
    CloseBy(u16, usize, bool),
    Timer(usize),
    Later(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let s = 0..6usize;
    prop_oneof![
        Just(Step::Connect),
        (s.clone(), any::<u8>()).prop_map(|(s, n)| Step::Login(s, n)),
        s.clone().prop_map(Step::Move),
        s.clone().prop_map(Step::Move),
        (s.clone(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(s, v)| Step::Junk(s, v)),
        s.clone().prop_map(Step::Close),
        (0..4u16, s.clone(), 0..4u32, 0..5u32).prop_map(|(z, s, p, e)| Step::Owned(z, s, p, e)),
        (0..4u16, s.clone(), 0..4u32, 0..5u32, 0..5u16)
            .prop_map(|(z, s, p, e, t)| Step::Begin(z, s, p, e, t)),
        (0..4u16, s.clone(), 0..4u32, 0..5u32).prop_map(|(z, s, p, e)| Step::Cancel(z, s, p, e)),
        s.clone().prop_map(Step::Send),
        (0..4u16, s.clone(), any::<bool>()).prop_map(|(z, s, w)| Step::CloseBy(z, s, w)),
        (0..20usize).prop_map(Step::Timer),
        (0..12_000u64).prop_map(Step::Later),
    ]
}

proptest::proptest! {
    /// Whatever clients, zones and timers do, in any order: no panic, and the state stays
    /// consistent (counters, held packets, phases).
    #[test]
    fn any_sequence_of_events_keeps_the_state_consistent(
        steps in proptest::collection::vec(step(), 1..120)
    ) {
        let (mut r, mut fx) = (routes_with(4), Rec::default());
        let mut now = Instant::now();
        // Open sessions, and every session ever (zones may name closed ones); a step names
        // one by index, modulo their count.
        let mut ids: Vec<u64> = Vec::new();
        let mut all: Vec<u64> = Vec::new();
        let pick = |ids: &Vec<u64>, i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
        for st in steps {
            match st {
                Step::Connect => {
                    let id = 1000 + all.len() as u64;
                    ids.push(id);
                    all.push(id);
                    r.on_connect(id, id as u32);
                }
                Step::Login(i, n) => if let Some(id) = pick(&ids, i) {
                    r.on_packet(id, &login(&format!("p{n}")), now, &mut fx);
                },
                Step::Move(i) => if let Some(id) = pick(&ids, i) {
                    r.on_packet(id, &mv(1), now, &mut fx);
                },
                Step::Junk(i, v) => if let Some(id) = pick(&ids, i) {
                    r.on_packet(id, &v, now, &mut fx);
                },
                Step::Close(i) => if let Some(id) = pick(&ids, i) {
                    // The server layer closes a session once: it leaves `ids`, not `all`.
                    r.on_close(id, now, &mut fx);
                    ids.retain(|&x| x != id);
                },
                Step::Owned(z, i, p, e) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let player = r.player_of(session).unwrap_or(p);
                    r.on_bus(z, Msg::Owned { session, player, epoch: e }, now, &mut fx);
                }
                Step::Begin(z, i, p, e, to) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let player = r.player_of(session).unwrap_or(p);
                    let m = Msg::HandoffBegin { session, player, epoch: e, to, next: e + 1 };
                    r.on_bus(z, m, now, &mut fx);
                }
                Step::Cancel(z, i, p, e) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let player = r.player_of(session).unwrap_or(p);
                    r.on_bus(z, Msg::HandoffCancel { session, player, epoch: e }, now, &mut fx);
                }
                Step::Send(i) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let bytes = Bytes::from_static(&[2, 7]);
                    r.on_bus(0, Msg::Send { session, bytes }, now, &mut fx);
                }
                Step::CloseBy(z, i, why) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let reason = why.then(|| "bye".to_string());
                    r.on_bus(z, Msg::Close { session, reason }, now, &mut fx);
                }
                Step::Timer(i) => if !fx.timers.is_empty() {
                    let t = fx.timers[i % fx.timers.len()].1;
                    r.on_timer(t, now, &mut fx);
                },
                Step::Later(ms) => now += Duration::from_millis(ms),
            }
            if let Err(e) = r.check() {
                proptest::prop_assert!(false, "{}", e);
            }
            // Only zones of the layout are ever addressed.
            proptest::prop_assert!(fx.zone.iter().all(|(z, _)| *z < 4));
        }
        // Every client closes: nothing is held, nobody is open.
        for id in ids {
            r.on_close(id, now, &mut fx);
        }
        proptest::prop_assert_eq!((r.counters().sessions, r.counters().held), (0, 0));
    }
}
