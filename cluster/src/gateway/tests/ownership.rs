//! One player's ownership across zones that keep the protocol, with every race it allows:
//! zones answer, hand off, transfer, cancel (also after transferring, as a zone whose
//! `TransferAck` was late does), their messages arrive in any order across zones (in order
//! from one zone), timers fire whenever, and the client may leave at any moment. However it
//! goes, no zone is left owning the player once the client left, exactly one zone (at one
//! epoch) is told to remove it, only a zone that claimed it at that epoch is told so or
//! confirmed, and the client's packets reach only a confirmed owner, in order.

use std::collections::VecDeque;
use std::time::Instant;

use cport_mmo::cluster::wire::Msg;
use cport_mmo_proto::ClientPacket;

use super::*;

const ZONES: usize = 4;
const SID: u64 = 5;

#[derive(Debug, Clone)]
enum Step {
    Move,
    Leave,
    Answer(u16),
    Begin(u16, u16),
    Transfer(u16),
    Cancel(u16),
    Deliver(u16),
    Fire(usize),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let z = 0..ZONES as u16;
    prop_oneof![
        3 => Just(Step::Move),
        1 => Just(Step::Leave),
        2 => z.clone().prop_map(Step::Answer),
        3 => (z.clone(), z.clone()).prop_map(|(a, b)| Step::Begin(a, b)),
        2 => z.clone().prop_map(Step::Transfer),
        2 => z.clone().prop_map(Step::Cancel),
        8 => z.prop_map(Step::Deliver),
        1 => (0..8usize).prop_map(Step::Fire),
    ]
}

/// The zones, as the gateway's counterpart.
#[derive(Default)]
struct Zones {
    /// What each zone sent the gateway and it has not read yet.
    fifo: [VecDeque<Msg>; ZONES],
    /// The epoch each zone believes it owns the player at.
    belief: [Option<u32>; ZONES],
    /// The epoch each zone was last confirmed at.
    confirmed: [Option<u32>; ZONES],
    /// Every (zone, epoch) a zone ever claimed (`Owned` or `HandoffCancel` sent).
    claims: Vec<(u16, u32)>,
    /// A hand-off a zone asked for: (epoch, to), until it resolves.
    handing: [Option<(u32, u16)>; ZONES],
    /// `Held` came for that hand-off: it may transfer and/or cancel.
    held: [bool; ZONES],
    transferred: [bool; ZONES],
    cancelled: [bool; ZONES],
    /// A login waits for a zone's `Owned`.
    login: bool,
    /// Messages of the gateway read so far.
    read: usize,
    /// The login was given up (`Disconnect` at epoch 0 to the home zone).
    abandoned: bool,
    /// Each (zone, epoch) told `Disconnect`.
    disconnects: Vec<(u16, u32)>,
    last_move: Option<u32>,
    violations: Vec<String>,
}

impl Zones {
    fn claim(&mut self, z: u16, e: u32, m: Msg) {
        self.belief[z as usize] = Some(e);
        self.claims.push((z, e));
        self.fifo[z as usize].push_back(m);
    }

    /// Reads what the gateway sent since last time, as the zones would.
    fn read(&mut self, fx: &Rec) {
        for (z, m) in &fx.zone[self.read..] {
            let (zi, z) = (*z as usize, *z);
            match *m {
                Msg::Login { .. } => self.login = true,
                Msg::Confirm { epoch, .. } => {
                    if !self.claims.contains(&(z, epoch)) {
                        self.violations
                            .push(format!("Confirm {epoch} to {z}, never claimed"));
                    }
                    self.confirmed[zi] = Some(epoch);
                    if self.handing[zi].is_some_and(|(e, _)| e == epoch) {
                        self.handing[zi] = None; // the cancel was taken
                    }
                }
                Msg::Disconnect { epoch: 0, .. } => {
                    // A login given up: the name's home zone frees the name.
                    if z != home("owner") || self.abandoned {
                        self.violations.push(format!("Disconnect 0 to {z}"));
                    }
                    self.abandoned = true;
                }
                Msg::Revoke { epoch, .. } | Msg::Disconnect { epoch, .. } => {
                    if let Msg::Disconnect { .. } = m {
                        self.disconnects.push((z, epoch));
                        if !self.claims.contains(&(z, epoch)) {
                            self.violations
                                .push(format!("Disconnect {epoch} to {z}, never claimed"));
                        }
                    }
                    if self.belief[zi] == Some(epoch) {
                        self.belief[zi] = None;
                        self.confirmed[zi] = None;
                        self.handing[zi] = None;
                    }
                }
                Msg::Held { epoch, .. } if self.handing[zi].is_some_and(|(e, _)| e == epoch) => {
                    self.held[zi] = true;
                }
                Msg::Packet {
                    epoch, ref packet, ..
                } => {
                    if self.confirmed[zi] != Some(epoch) {
                        self.violations
                            .push(format!("a packet at {epoch} to {z}, not confirmed there"));
                    }
                    let Ok(ClientPacket::Move { move_time, .. }) = ClientPacket::decode(packet, H)
                    else {
                        unreachable!("the test sends moves")
                    };
                    if self.last_move.is_some_and(|l| move_time <= l) {
                        self.violations
                            .push(format!("move {move_time} out of order"));
                    }
                    self.last_move = Some(move_time);
                }
                _ => {}
            }
        }
        self.read = fx.zone.len();
    }
}

fn run(steps: Vec<Step>) -> Result<(), String> {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let mut zs = Zones::default();
    r.on_connect(SID, 1);
    r.on_packet(SID, &login("owner"), now, &mut fx);
    let player = r.player_of(SID).expect("an id");
    let (mut open, mut moves) = (true, 0u32);
    zs.read(&fx);
    for st in steps {
        match st {
            Step::Move if open => {
                r.on_packet(SID, &mv(moves), now, &mut fx);
                moves += 1;
            }
            Step::Leave if open => {
                open = false;
                r.on_close(SID, now, &mut fx);
            }
            Step::Answer(z) if zs.login => {
                zs.login = false;
                let m = Msg::Owned {
                    session: SID,
                    player,
                    epoch: 1,
                };
                zs.claim(z, 1, m);
            }
            Step::Begin(z, to) => {
                let zi = z as usize;
                if let (Some(e), None) = (zs.confirmed[zi], zs.handing[zi]) {
                    if to != z && zs.belief[zi] == Some(e) {
                        zs.handing[zi] = Some((e, to));
                        zs.held[zi] = false;
                        zs.transferred[zi] = false;
                        zs.cancelled[zi] = false;
                        zs.fifo[zi].push_back(Msg::HandoffBegin {
                            session: SID,
                            player,
                            epoch: e,
                            to,
                            next: e + 1,
                        });
                    }
                }
            }
            Step::Transfer(z) => {
                let zi = z as usize;
                if let (Some((e, to)), true, false) =
                    (zs.handing[zi], zs.held[zi], zs.transferred[zi])
                {
                    zs.transferred[zi] = true;
                    zs.belief[zi] = None;
                    let m = Msg::Owned {
                        session: SID,
                        player,
                        epoch: e + 1,
                    };
                    zs.claim(to, e + 1, m);
                }
            }
            Step::Cancel(z) => {
                let zi = z as usize;
                if let (Some((e, _)), true, false) = (zs.handing[zi], zs.held[zi], zs.cancelled[zi])
                {
                    zs.cancelled[zi] = true;
                    let m = Msg::HandoffCancel {
                        session: SID,
                        player,
                        epoch: e,
                    };
                    zs.claim(z, e, m);
                }
            }
            Step::Deliver(z) => {
                if let Some(m) = zs.fifo[z as usize].pop_front() {
                    r.on_bus(z, m, now, &mut fx);
                }
            }
            Step::Fire(i) if !fx.timers.is_empty() => {
                let t = fx.timers[i % fx.timers.len()].1;
                r.on_timer(t, now, &mut fx);
            }
            _ => {}
        }
        zs.read(&fx);
        r.check()?;
    }
    // The end: the client leaves, zones with a hand-off under way give up on it (cancel),
    // everything is delivered and every timer fires, until nothing moves.
    if open {
        r.on_close(SID, now, &mut fx);
    }
    for _ in 0..10 {
        zs.read(&fx);
        for z in 0..ZONES {
            if let (Some((e, _)), true, false) = (zs.handing[z], zs.held[z], zs.cancelled[z]) {
                zs.cancelled[z] = true;
                let m = Msg::HandoffCancel {
                    session: SID,
                    player,
                    epoch: e,
                };
                zs.claim(z as u16, e, m);
            }
            while let Some(m) = zs.fifo[z].pop_front() {
                r.on_bus(z as u16, m, now, &mut fx);
                zs.read(&fx);
            }
        }
        for (_, t) in std::mem::take(&mut fx.timers) {
            r.on_timer(t, now, &mut fx);
        }
    }
    zs.read(&fx);
    r.check()?;
    if !zs.violations.is_empty() {
        return Err(zs.violations.join("; "));
    }
    let owners: Vec<usize> = (0..ZONES).filter(|&z| zs.belief[z].is_some()).collect();
    if !owners.is_empty() {
        return Err(format!("zones {owners:?} still own the player"));
    }
    // Told more than once is allowed only to the same zone at the same epoch (a zone that
    // was handing off may have ignored the first).
    let mut told = zs.disconnects.clone();
    told.dedup();
    if told.len() != usize::from(!zs.claims.is_empty()) {
        return Err(format!(
            "Disconnects {:?} for claims {:?}",
            zs.disconnects, zs.claims
        ));
    }
    Ok(())
}

proptest::proptest! {
    #[test]
    fn exactly_one_zone_owns_the_player_and_exactly_one_is_told_it_left(
        steps in proptest::collection::vec(step(), 1..80)
    ) {
        if let Err(e) = run(steps) {
            proptest::prop_assert!(false, "{}", e);
        }
    }
}
