//! The game as one zone of a cluster: what this zone owns, the ghosts of what its
//! neighbours own, hand-offs, the home zone's part of a login, and hits across a border.
//! The messages are [`crate::cluster::wire`]'s; the design is in ARCHITECTURE.md
//! ("Cluster").
//!
//! - **Ownership.** A zone owns the players whose ownership epoch it holds (`Login::epoch`
//!   non-zero) and the NPCs that spawn in its rectangle (NPCs stay in their zone). It sends
//!   packets only to the clients of players it owns, and writes only their rows (once the
//!   gateway has confirmed the epoch).
//! - **Ghosts.** The owner of an object publishes it to every other zone whose rectangle it is
//!   within `R + 2` of (`GhostEnter`), its moves while there (`GhostMove`), and its leaving
//!   beyond `R + 4` (`GhostLeave`): the gap keeps an object walking along a border from
//!   flapping. A ghost is an ordinary object of the receiving zone's world without a session,
//!   so the view rules, the packets and NPC waking work across borders unchanged.
//! - **Hand-off.** The owner of a player that walked two cells past its border (or teleported
//!   out) asks the gateway to hold the player's packets; once the gateway says it holds them,
//!   the owner sends the player's state with the client's picture to the new zone, which
//!   takes it at epoch + 1, tells the gateway (which releases the packets to it) and answers.
//!   No answer within the timeout: the old owner keeps the player and the gateway releases
//!   the packets back to it; the gateway's `Confirm`/`Revoke` settle which claim stands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo_proto::{Name, ServerPacket};
use parking_lot::Mutex;

use super::{Game, Login, PStats, Phase, DELAYED_TRANSFER, HANDOFF_TIMEOUT};
use crate::cluster::wire::{Msg, Row, Source, Transfer};
use crate::cluster::{Layout, Rect};
use crate::db::PlayerRow;
use crate::net::{Conn, Host};
use crate::world::{pack, unpack, State};

/// A ghost is published to a zone within `R + GHOST_ADD` of its rectangle...
pub(crate) const GHOST_ADD: u16 = 2;
/// ...and dropped beyond `R + GHOST_DROP`.
pub(crate) const GHOST_DROP: u16 = 4;
/// A walking player is handed off this many cells past its zone's border.
pub(crate) const HANDOFF_DEPTH: u16 = 2;
/// How long a departed player's last row is kept by its home zone (for a new login before
/// the owner's write commits).
const RECENT_ROWS_FOR: Duration = Duration::from_secs(120);

/// Where a hand-off of an owned player is.
#[derive(Debug, Default)]
pub(crate) enum Handoff {
    /// None.
    #[default]
    None,
    /// The gateway was asked to hold the player's packets (`HandoffBegin`).
    Asked(Instant),
    /// The state went to the new zone, which is to take it at `epoch`; `view` is the
    /// client's picture then (restored if the hand-off times out).
    Sent {
        epoch: u32,
        since: Instant,
        view: Vec<(u32, u16, u16)>,
    },
    /// This zone holds the player (it arrived, or the hand-off out timed out) and waits for
    /// the gateway's `Confirm` before it tells the client anything: `view` is the client's
    /// picture, brought up to date then. (A `Revoke` instead: the client never heard from
    /// this claim.)
    Unconfirmed { view: Vec<(u32, u16, u16)> },
}

/// A zone's settings.
#[derive(Debug, Clone)]
pub struct ZoneSetup {
    /// The cluster's zones.
    pub layout: Layout,
    /// This zone's number.
    pub me: u16,
    /// How long the old owner waits for the new zone to take a handed-off player before it
    /// keeps the player (default 500 ms).
    pub handoff_timeout: Duration,
    /// Test hook: the new zone takes a handed-off player only this long after it arrives
    /// (`Duration::ZERO`: at once).
    pub transfer_delay: Duration,
}

impl ZoneSetup {
    /// Zone `me` of `layout`, with the default timeout and no test delay.
    pub fn new(layout: Layout, me: u16) -> ZoneSetup {
        ZoneSetup {
            layout,
            me,
            handoff_timeout: Duration::from_millis(500),
            transfer_delay: Duration::ZERO,
        }
    }
}

/// What one zone did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneStats {
    /// This zone's number.
    pub zone: u16,
    /// Ghosts on this zone's board now (players and NPCs of other zones).
    pub ghosts: usize,
    /// Players handed to other zones (answered).
    pub handoffs_out: u64,
    /// Players taken from other zones.
    pub handoffs_in: u64,
    /// Hand-offs called off because the player walked back before the gateway held it.
    pub handoff_cancels: u64,
    /// Hand-offs the new zone did not answer in time (the player stayed).
    pub handoff_timeouts: u64,
    /// Claims the gateway refused (`Revoke`).
    pub revokes: u64,
    /// Logins this zone loaded as the name's home.
    pub home_logins: u64,
    /// Logins refused because the name was on already.
    pub duplicate_logins: u64,
    /// Hits on NPCs of other zones sent there.
    pub remote_attacks: u64,
    /// Messages dropped as stale (an epoch not held, an object owned here).
    pub stale: u64,
    /// Messages dropped as invalid (ids off the board, a message of the wrong direction).
    pub invalid: u64,
    /// Hand-off time at the old owner, from the decision to the new zone's answer: median.
    pub handoff_p50_us: u64,
    /// ... 99th percentile.
    pub handoff_p99_us: u64,
    /// ... largest.
    pub handoff_max_us: u64,
}

#[derive(Default)]
pub(crate) struct ZoneCounters {
    ghosts: AtomicUsize,
    handoffs_out: AtomicU64,
    handoffs_in: AtomicU64,
    handoff_cancels: AtomicU64,
    handoff_timeouts: AtomicU64,
    revokes: AtomicU64,
    home_logins: AtomicU64,
    duplicate_logins: AtomicU64,
    remote_attacks: AtomicU64,
    stale: AtomicU64,
    invalid: AtomicU64,
}

/// A zone's own state beside the game's.
pub(crate) struct ZoneState {
    pub layout: Layout,
    pub me: u16,
    pub rect: Rect,
    /// Per object (as its owner sees it): the zones that hold a ghost of it (bit per zone).
    /// Written by the object's mover only.
    pub ghosts: Box<[AtomicU64]>,
    /// Home duties: the names logged in through this zone, and their players.
    names: Mutex<HashMap<String, u32>>,
    /// Home duties: the last row of players that left, until it is surely committed.
    recent: Mutex<HashMap<String, (Row, Instant)>>,
    /// Test hook: transfers held back (`ZoneSetup::transfer_delay`).
    delayed: Mutex<Vec<(u16, Box<Transfer>)>>,
    transfer_delay: Duration,
    handoff_timeout: Duration,
    counters: ZoneCounters,
    handoff_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl ZoneState {
    pub(crate) fn new(setup: &ZoneSetup, objects: usize) -> ZoneState {
        ZoneState {
            rect: setup.layout.rect(usize::from(setup.me)),
            layout: setup.layout.clone(),
            me: setup.me,
            ghosts: (0..objects).map(|_| AtomicU64::new(0)).collect(),
            names: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            delayed: Mutex::new(Vec::new()),
            transfer_delay: setup.transfer_delay,
            handoff_timeout: setup.handoff_timeout,
            counters: ZoneCounters::default(),
            handoff_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("valid histogram bounds"),
            ),
        }
    }

    pub(crate) fn stats(&self) -> ZoneStats {
        let c = &self.counters;
        let h = self.handoff_us.lock();
        ZoneStats {
            zone: self.me,
            ghosts: c.ghosts.load(Relaxed),
            handoffs_out: c.handoffs_out.load(Relaxed),
            handoffs_in: c.handoffs_in.load(Relaxed),
            handoff_cancels: c.handoff_cancels.load(Relaxed),
            handoff_timeouts: c.handoff_timeouts.load(Relaxed),
            revokes: c.revokes.load(Relaxed),
            home_logins: c.home_logins.load(Relaxed),
            duplicate_logins: c.duplicate_logins.load(Relaxed),
            remote_attacks: c.remote_attacks.load(Relaxed),
            stale: c.stale.load(Relaxed),
            invalid: c.invalid.load(Relaxed),
            handoff_p50_us: h.value_at_quantile(0.5),
            handoff_p99_us: h.value_at_quantile(0.99),
            handoff_max_us: h.max(),
        }
    }

    fn others(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.layout.zones() as u16).filter(move |&z| z != self.me)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Hooks the rest of the game calls; each does nothing on a single server.
impl<H: Host> Game<H> {
    /// The zone that owns NPC `npc`, if not this one.
    pub(crate) fn npc_elsewhere(&self, npc: u32) -> Option<u16> {
        let z = self.zone.as_ref()?;
        let (x, y) = unpack(self.npc_spawn[(npc - self.world.max_users) as usize]);
        let owner = z.layout.zone_of(x, y) as u16;
        (owner != z.me).then_some(owner)
    }

    /// Whether cell `p` is this zone's (always, on a single server).
    pub(super) fn in_my_zone(&self, p: u32) -> bool {
        let (x, y) = unpack(p);
        self.zone.as_ref().is_none_or(|z| z.rect.contains(x, y))
    }

    /// The owner of object `id` put it at `pos`: ghost enters, moves and leaves for the other
    /// zones, by distance to their rectangles (with the hysteresis of [`GHOST_ADD`] and
    /// [`GHOST_DROP`]).
    pub(super) fn publish_band(
        &self,
        srv: &H,
        id: u32,
        pos: u32,
        move_time: u32,
        name: Option<Name>,
    ) {
        let Some(z) = &self.zone else { return };
        let (x, y) = unpack(pos);
        let r = self.world.range;
        let cell = &z.ghosts[id as usize];
        let before = cell.load(Relaxed);
        let mut mask = before;
        let mut name = name;
        for other in z.others() {
            let d = z.layout.rect(usize::from(other)).distance(x, y);
            let bit = 1u64 << other;
            if mask & bit == 0 {
                if d <= r + GHOST_ADD {
                    mask |= bit;
                    let name =
                        *name.get_or_insert_with(|| self.world.objs[id as usize].view.lock().name);
                    srv.to_zone(other, &Msg::GhostEnter { id, x, y, name });
                }
            } else if d > r + GHOST_DROP {
                mask &= !bit;
                srv.to_zone(other, &Msg::GhostLeave { id });
            } else {
                srv.to_zone(
                    other,
                    &Msg::GhostMove {
                        id,
                        x,
                        y,
                        move_time,
                    },
                );
            }
        }
        if mask != before {
            cell.store(mask, Relaxed);
        }
    }

    /// Object `id` left the board here (logout, death): its ghosts go too.
    pub(super) fn leave_band(&self, srv: &H, id: u32) {
        let Some(z) = &self.zone else { return };
        let mask = z.ghosts[id as usize].swap(0, Relaxed);
        for other in z.others() {
            if mask & (1 << other) != 0 {
                srv.to_zone(other, &Msg::GhostLeave { id });
            }
        }
    }

    /// `CS_CHAT` of an owned player: the zones that hold its ghost tell their players.
    pub(super) fn ghost_chat_out(&self, srv: &H, id: u32, mess: Bytes) {
        let Some(z) = &self.zone else { return };
        let mask = z.ghosts[id as usize].load(Relaxed);
        for other in z.others() {
            if mask & (1 << other) != 0 {
                srv.to_zone(
                    other,
                    &Msg::GhostChat {
                        id,
                        mess: mess.clone(),
                    },
                );
            }
        }
    }

    /// An owned player moved (its login lock held): ghosts; and if it is now
    /// [`HANDOFF_DEPTH`] cells past the border (or teleported out), the hand-off begins.
    pub(super) fn zone_moved(
        &self,
        session: &H::Conn,
        id: u32,
        to: u32,
        move_time: u32,
        teleport: bool,
        l: &mut Login<H::Conn>,
    ) {
        let Some(z) = &self.zone else { return };
        let srv = session.server();
        self.publish_band(&srv, id, to, move_time, None);
        let (x, y) = unpack(to);
        if z.rect.contains(x, y) || !matches!(l.handoff, Handoff::None) {
            return;
        }
        if !teleport && z.rect.distance(x, y) < HANDOFF_DEPTH {
            return;
        }
        let Some((gateway, s)) = session.route() else {
            return;
        };
        l.handoff = Handoff::Asked(Instant::now());
        srv.to_gateway(
            gateway,
            &Msg::HandoffBegin {
                session: s,
                player: id,
                epoch: l.epoch,
                to: z.layout.zone_of(x, y) as u16,
            },
        );
    }

    /// An owned player left the game (its row written): its home zone frees the name.
    pub(super) fn departed(&self, srv: &H, name: &str, row: PlayerRow) {
        let Some(z) = &self.zone else { return };
        let row = self.persist.as_ref().map(|_| Row {
            x: row.x,
            y: row.y,
            hp: row.hp,
            max_hp: row.max_hp,
            exp: row.exp,
            level: row.level,
        });
        let home = z.layout.home_of(name) as u16;
        if home == z.me {
            self.home_offline(name.to_string(), row);
        } else {
            srv.to_zone(
                home,
                &Msg::Offline {
                    name: name.to_string(),
                    row,
                },
            );
        }
    }
}

/// The zone's entry points: messages from the bus, the start, its timers.
impl<H: Host> Game<H> {
    /// This zone just started: every other zone gets the ghosts of what this one owns near
    /// it, and is asked for its own (so restarts in any order end with all ghosts in place).
    pub(crate) fn zone_started(&self, srv: &H) {
        let Some(z) = &self.zone else { return };
        for other in z.others() {
            self.snapshot_to(srv, other);
            srv.to_zone(other, &Msg::SnapshotRequest);
        }
    }

    /// `GhostEnter` for every object this zone owns within ghost range of zone `other`.
    fn snapshot_to(&self, srv: &H, other: u16) {
        let Some(z) = &self.zone else { return };
        let w = &self.world;
        let rect = z.layout.rect(usize::from(other));
        let r = w.range;
        for id in 0..w.objs.len() as u32 {
            if w.is_npc(id) && self.npc_elsewhere(id).is_some() {
                continue;
            }
            let v = w.objs[id as usize].view.lock();
            // Owned players have a session (ghosts have none); NPCs here are this zone's.
            if v.state != State::InGame || (!w.is_npc(id) && v.session.is_none()) {
                continue;
            }
            let (x, y) = unpack(w.pos(id));
            if rect.distance(x, y) <= r + GHOST_ADD {
                z.ghosts[id as usize].fetch_or(1 << other, Relaxed);
                srv.to_zone(
                    other,
                    &Msg::GhostEnter {
                        id,
                        x,
                        y,
                        name: v.name,
                    },
                );
            }
        }
    }

    /// One message from the bus (in the order its sender sent it).
    pub(crate) fn on_cluster(&self, srv: &H, from: Source, msg: Msg) {
        let Some(z) = &self.zone else { return };
        let n = self.world.objs.len() as u32;
        let players = self.world.max_users;
        let bad = || bump(&z.counters.invalid);
        match (from, msg) {
            (
                Source::Gateway(g),
                Msg::Login {
                    session,
                    player,
                    name,
                },
            ) if player < players => self.home_login(srv, g, session, player, name),
            (
                Source::Gateway(_),
                Msg::Packet {
                    player,
                    epoch,
                    packet,
                },
            ) if player < players => self.remote_packet(player, epoch, &packet),
            (Source::Gateway(_), Msg::Held { player, epoch }) if player < players => {
                self.on_held(srv, player, epoch)
            }
            (Source::Gateway(_), Msg::Confirm { player, epoch }) if player < players => {
                self.on_confirm(srv, player, epoch)
            }
            (Source::Gateway(_), Msg::Revoke { player, epoch }) if player < players => {
                self.on_revoke(srv, player, epoch)
            }
            (Source::Gateway(_), Msg::Disconnect { player, epoch }) if player < players => {
                self.on_disconnect(srv, player, epoch)
            }
            (Source::Zone(o), Msg::GhostEnter { id, x, y, name })
                if id < n && self.ghostable(id, o) =>
            {
                self.ghost_enter(srv, id, pack(x, y), name)
            }
            (
                Source::Zone(o),
                Msg::GhostMove {
                    id,
                    x,
                    y,
                    move_time,
                },
            ) if id < n && self.ghostable(id, o) => self.ghost_move(srv, id, pack(x, y), move_time),
            (Source::Zone(o), Msg::GhostLeave { id }) if id < n && self.ghostable(id, o) => {
                self.ghost_leave(srv, id)
            }
            (Source::Zone(o), Msg::GhostChat { id, mess })
                if id < players && self.ghostable(id, o) =>
            {
                let mut mess = mess.to_vec();
                mess.truncate(cport_mmo_proto::CHAT_SIZE);
                let pkt = self.encode(ServerPacket::Chat {
                    id: id as i32,
                    mess,
                });
                self.ghost_locked(id, || {
                    if self.world.objs[id as usize].view.lock().state == State::InGame {
                        self.chat_to_viewers(id, &pkt);
                    }
                });
            }
            (
                Source::Zone(o),
                Msg::Attack {
                    attacker,
                    level,
                    npc,
                },
            ) if npc < n && npc >= players && self.npc_elsewhere(npc).is_none() => {
                if let Some((damage, left)) = self.hit_npc(srv, npc, level) {
                    srv.to_zone(
                        o,
                        &Msg::AttackResult {
                            attacker,
                            npc,
                            damage,
                            left,
                        },
                    );
                }
            }
            (
                Source::Zone(_),
                Msg::AttackResult {
                    attacker,
                    npc,
                    damage,
                    left,
                },
            ) if attacker < players => self.attack_result(attacker, npc, damage, left),
            (Source::Zone(o), Msg::Transfer(t)) if t.player < players => {
                if z.transfer_delay.is_zero() || t.login {
                    self.arrive(srv, o, *t);
                } else {
                    z.delayed.lock().push((o, t));
                    let _ = srv.post_after(z.transfer_delay, DELAYED_TRANSFER, 0);
                }
            }
            (Source::Zone(_), Msg::TransferAck { player, epoch }) if player < players => {
                self.on_transfer_ack(player, epoch)
            }
            (Source::Zone(o), Msg::SnapshotRequest) if usize::from(o) < z.layout.zones() => {
                self.snapshot_to(srv, o)
            }
            (Source::Zone(_), Msg::Offline { name, row }) => self.home_offline(name, row),
            (from, msg) => {
                bad();
                tracing::debug!(
                    ?from,
                    ?msg,
                    "cluster message dropped: not for a zone, or ids off the board"
                );
            }
        }
    }

    /// Whether zone `from` may publish a ghost of object `id` here: it is not this zone's
    /// own NPC (a player owned here is checked under its login lock).
    fn ghostable(&self, id: u32, from: u16) -> bool {
        let Some(z) = &self.zone else { return false };
        if from == z.me || usize::from(from) >= z.layout.zones() {
            return false;
        }
        !self.world.is_npc(id) || self.npc_elsewhere(id).is_some()
    }

    /// Runs `f` with player `id`'s login lock held if it is a player not owned here (an NPC:
    /// without a lock; ghosts of one object come from one zone at a time, in order). A
    /// player this zone owns is never touched by ghost messages: counted as stale.
    fn ghost_locked(&self, id: u32, f: impl FnOnce()) {
        let z = self.zone.as_ref().expect("a zone");
        if self.world.is_npc(id) {
            return f();
        }
        let l = self.players[id as usize].login.lock();
        if l.epoch != 0 {
            bump(&z.counters.stale);
            return;
        }
        f();
        drop(l);
    }

    fn ghost_enter(&self, srv: &H, id: u32, pos: u32, name: Name) {
        let w = &self.world;
        let z = self.zone.as_ref().expect("a zone");
        self.ghost_locked(id, || {
            let (was_in, from) = {
                let mut v = w.objs[id as usize].view.lock();
                let was_in = v.state == State::InGame;
                v.state = State::InGame;
                v.name = name;
                let from = w.pos(id);
                w.set_pos(id, pos);
                (was_in, from)
            };
            if was_in {
                w.sector_move(id, from, pos);
            } else {
                w.sector_insert(id, pos);
                z.counters.ghosts.fetch_add(1, Relaxed);
            }
            let mine = self.mine(id, pos, name, None);
            self.reconcile_all(srv, id, pos, &mine);
        });
    }

    fn ghost_move(&self, srv: &H, id: u32, pos: u32, move_time: u32) {
        let w = &self.world;
        let z = self.zone.as_ref().expect("a zone");
        self.ghost_locked(id, || {
            let (name, from) = {
                let v = w.objs[id as usize].view.lock();
                if v.state != State::InGame {
                    bump(&z.counters.stale);
                    return;
                }
                let from = w.pos(id);
                w.set_pos(id, pos);
                (v.name, from)
            };
            w.sector_move(id, from, pos);
            let mine = self.mine(id, pos, name, Some(self.move_packet(id, pos, move_time)));
            self.reconcile_all(srv, id, pos, &mine);
        });
    }

    fn ghost_leave(&self, srv: &H, id: u32) {
        let z = self.zone.as_ref().expect("a zone");
        self.ghost_locked(id, || {
            if self.take_off(srv, id) {
                z.counters.ghosts.fetch_sub(1, Relaxed);
            }
        });
    }

    /// A packet the gateway routed to an owned player.
    fn remote_packet(&self, player: u32, epoch: u32, packet: &[u8]) {
        let z = self.zone.as_ref().expect("a zone");
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != epoch || epoch == 0 || l.phase != Phase::InGame {
            bump(&z.counters.stale);
            return;
        }
        let Some(session) = l.session.clone() else {
            return;
        };
        match cport_mmo_proto::ClientPacket::decode(packet, self.header) {
            Ok(p) => self.handle(&session, player, p, &mut l),
            Err(e) => {
                drop(l);
                self.reject(&session, e.to_string());
            }
        }
    }

    /// The result of a hit on another zone's NPC, for the attacker owned here.
    fn attack_result(&self, attacker: u32, npc: u32, damage: i32, left: i32) {
        let z = self.zone.as_ref().expect("a zone");
        let mut l = self.players[attacker as usize].login.lock();
        if l.epoch == 0 || !l.placed {
            // It left or moved on meanwhile: the hit stands, its reward is lost.
            bump(&z.counters.stale);
            return;
        }
        let Some(session) = l.session.clone() else {
            return;
        };
        bump(&z.counters.remote_attacks);
        let before = *self.players[attacker as usize].stats.lock();
        self.credit_hit(&session, attacker, npc, damage, left);
        self.after_hits(&session, attacker, before, &mut l);
    }

    /// `Held`: the gateway holds the player's packets. Still past the border: the state goes
    /// to the new zone; walked back: the hand-off is called off.
    fn on_held(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let w = &self.world;
        let pl = &self.players[player as usize];
        let mut l = pl.login.lock();
        let Handoff::Asked(since) = l.handoff else {
            bump(&z.counters.stale);
            return;
        };
        if l.epoch != epoch || l.phase != Phase::InGame {
            bump(&z.counters.stale);
            return;
        }
        let Some((gateway, session)) = l.session.as_ref().and_then(|s| s.route()) else {
            return;
        };
        let (x, y) = unpack(w.pos(player));
        if z.rect.contains(x, y) {
            l.handoff = Handoff::None;
            bump(&z.counters.handoff_cancels);
            srv.to_gateway(
                gateway,
                &Msg::HandoffCancel {
                    session,
                    player,
                    epoch,
                },
            );
            return;
        }
        let to = z.layout.zone_of(x, y) as u16;
        // From here the client hears nothing from this zone: its picture is `view`.
        let view: Vec<(u32, u16, u16)> = {
            let mut v = w.objs[player as usize].view.lock();
            v.session = None;
            let mut view: Vec<(u32, u16, u16)> = v
                .set
                .iter()
                .map(|&o| {
                    let (ox, oy) = unpack(w.pos(o));
                    (o, ox, oy)
                })
                .collect();
            view.sort_unstable();
            view
        };
        let s = *pl.stats.lock();
        let new_epoch = epoch.max(l.offered) + 1;
        l.offered = new_epoch;
        let t = Transfer {
            player,
            epoch: new_epoch,
            gateway,
            session,
            login: false,
            name: l.name.clone(),
            x,
            y,
            hp: s.hp,
            max_hp: s.max_hp,
            exp: s.exp,
            level: s.level,
            last_move_time: self.last_move_time[player as usize].load(Relaxed),
            ghosts: z.ghosts[player as usize].load(Relaxed) | (1 << z.me),
            view: view.clone(),
        };
        l.phase = Phase::Moving;
        l.handoff = Handoff::Sent {
            epoch: new_epoch,
            since,
            view,
        };
        srv.to_zone(to, &Msg::Transfer(Box::new(t)));
        let _ = srv.post_after(
            z.handoff_timeout,
            HANDOFF_TIMEOUT | u64::from(player),
            u64::from(new_epoch),
        );
    }

    /// `TransferAck`: the new zone took the player; this zone keeps a ghost of it.
    fn on_transfer_ack(&self, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let pl = &self.players[player as usize];
        let mut l = pl.login.lock();
        let Handoff::Sent {
            epoch: e, since, ..
        } = l.handoff
        else {
            bump(&z.counters.stale);
            return;
        };
        if e != epoch || l.phase != Phase::Moving {
            bump(&z.counters.stale);
            return;
        }
        let _ = z
            .handoff_us
            .lock()
            .record((since.elapsed().as_micros() as u64).max(1));
        bump(&z.counters.handoffs_out);
        self.let_go(player, &mut l);
        z.counters.ghosts.fetch_add(1, Relaxed);
    }

    /// This zone no longer owns the player (its object stays on the board as a ghost, or is
    /// taken off by the caller): no row is written from here.
    fn let_go(&self, player: u32, l: &mut Login<H::Conn>) {
        let z = self.zone.as_ref().expect("a zone");
        let pl = &self.players[player as usize];
        l.phase = Phase::Idle;
        l.handoff = Handoff::None;
        l.placed = false;
        l.epoch = 0;
        l.confirmed = false;
        l.session = None;
        l.gen += 1;
        l.pending.clear();
        pl.dirty.store(false, Relaxed);
        pl.regen.store(false, SeqCst);
        self.world.objs[player as usize].view.lock().session = None;
        z.ghosts[player as usize].store(0, Relaxed);
        self.counters.players.fetch_sub(1, Relaxed);
    }

    /// The hand-off's answer is overdue: this zone keeps the player (the client's picture
    /// brought up to date) and the gateway releases the held packets back here.
    pub(super) fn handoff_timeout(&self, srv: &H, player: u32, epoch: u32) {
        let Some(z) = &self.zone else { return };
        let mut l = self.players[player as usize].login.lock();
        let Handoff::Sent { epoch: e, .. } = l.handoff else {
            return;
        };
        if e != epoch || l.phase != Phase::Moving {
            return;
        }
        let Handoff::Sent { view, .. } = std::mem::take(&mut l.handoff) else {
            unreachable!("matched above")
        };
        let Some(session) = l.session.clone() else {
            return;
        };
        bump(&z.counters.handoff_timeouts);
        tracing::warn!(
            player,
            epoch,
            "hand-off not answered in {:?}: the player stays",
            z.handoff_timeout
        );
        l.phase = Phase::InGame;
        l.ghost_if_revoked = true;
        l.confirmed = false;
        // The client hears from this zone again once the gateway confirms the claim.
        l.handoff = Handoff::Unconfirmed { view };
        if let Some((gateway, s)) = session.route() {
            srv.to_gateway(
                gateway,
                &Msg::HandoffCancel {
                    session: s,
                    player,
                    epoch: l.epoch,
                },
            );
        }
    }

    /// The transfers the test hook held back are due.
    pub(super) fn delayed_transfers(&self, srv: &H) {
        let Some(z) = &self.zone else { return };
        let due = std::mem::take(&mut *z.delayed.lock());
        for (from, t) in due {
            self.arrive(srv, from, *t);
        }
    }

    /// A player's state arrived (a login placed here, or a hand-off): this zone owns it at
    /// `t.epoch`, tells the gateway (`Owned`) and the old owner (`TransferAck`).
    fn arrive(&self, srv: &H, from: u16, t: Transfer) {
        let z = self.zone.as_ref().expect("a zone");
        let id = t.player;
        let Some(session) = srv.remote(t.gateway, t.session, id) else {
            return;
        };
        let pl = &self.players[id as usize];
        let mut l = pl.login.lock();
        let replaces = l.epoch != 0
            && t.epoch > l.epoch
            && !l.confirmed
            && matches!(l.handoff, Handoff::Unconfirmed { .. });
        if l.epoch != 0 && !replaces {
            // This zone owns the player already (a duplicate, or a stale claim): no change.
            bump(&z.counters.stale);
            return;
        }
        if replaces {
            // A retried hand-off supersedes this zone's earlier claim, which the gateway
            // refuses (its `Revoke` is stale by then): one claim, the newer.
            self.counters.players.fetch_sub(1, Relaxed);
        }
        let row = self.sanitize(PlayerRow {
            name: t.name.clone(),
            x: t.x,
            y: t.y,
            hp: t.hp,
            max_hp: t.max_hp,
            exp: t.exp,
            level: t.level,
        });
        l.phase = Phase::InGame;
        l.gen += 1;
        l.name = t.name.clone();
        l.session = Some(session.clone());
        l.placed = true;
        l.epoch = t.epoch;
        l.confirmed = false;
        l.handoff = Handoff::None;
        l.pending.clear();
        l.ghost_if_revoked = t.ghosts & (1 << z.me) != 0;
        // Written by this owner at its next save tick (a new player's row is created then).
        pl.dirty.store(true, Relaxed);
        self.last_move_time[id as usize].store(t.last_move_time, Relaxed);
        z.ghosts[id as usize].store(t.ghosts & !(1 << z.me), Relaxed);
        let pos = pack(row.x, row.y);
        if t.login {
            if self.take_off(srv, id) {
                z.counters.ghosts.fetch_sub(1, Relaxed);
            }
            self.place(&session, id, &row);
            self.publish_band(srv, id, pos, 0, None);
        } else {
            *pl.stats.lock() = PStats {
                hp: row.hp,
                max_hp: row.max_hp,
                exp: row.exp,
                level: row.level,
            };
            let name = cport_mmo_proto::name(&row.name);
            let was_ghost = self.make_real(id, pos, name);
            if was_ghost {
                z.counters.ghosts.fetch_sub(1, Relaxed);
            }
            // The client hears from this zone once the gateway confirms the claim.
            l.handoff = Handoff::Unconfirmed {
                view: t.view.clone(),
            };
            self.counters.players.fetch_add(1, Relaxed);
            bump(&z.counters.handoffs_in);
        }
        srv.to_gateway(
            t.gateway,
            &Msg::Owned {
                session: t.session,
                player: id,
                epoch: t.epoch,
            },
        );
        if !t.login {
            srv.to_zone(
                from,
                &Msg::TransferAck {
                    player: id,
                    epoch: t.epoch,
                },
            );
        }
        if row.hp < row.max_hp {
            self.start_regen(srv, id, l.gen);
        }
    }

    /// Puts player `id` on this zone's board at `pos` (from its ghost if it has one: `true`),
    /// still without a session: nothing goes to its client until the claim is confirmed.
    fn make_real(&self, id: u32, pos: u32, name: Name) -> bool {
        let w = &self.world;
        let (was_in, from) = {
            let mut v = w.objs[id as usize].view.lock();
            let was_in = v.state == State::InGame;
            v.state = State::InGame;
            v.session = None;
            v.name = name;
            let from = w.pos(id);
            w.set_pos(id, pos);
            (was_in, from)
        };
        if was_in {
            w.sector_move(id, from, pos);
        } else {
            w.sector_insert(id, pos);
        }
        was_in
    }

    /// `Confirm`: the gateway routes the player here at `epoch`. A claim that waited for it
    /// (an arrival, a hand-off that timed out) now brings the client's picture up to date.
    fn on_confirm(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let w = &self.world;
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != epoch || epoch == 0 {
            bump(&z.counters.stale);
            return;
        }
        l.confirmed = true;
        if let Handoff::Unconfirmed { view } = std::mem::take(&mut l.handoff) {
            if let Some(session) = l.session.clone() {
                let pos = w.pos(player);
                let name = w.objs[player as usize].view.lock().name;
                self.promote(srv, &session, player, pos, name, &view);
                // A hand-off that timed out: the player is still outside; try again.
                let t = self.last_move_time[player as usize].load(Relaxed);
                self.zone_moved(&session, player, pos, t, true, &mut l);
            }
        }
    }

    /// Makes player `id` real here with `session`, its client having been told `told` (ids
    /// and positions): the client's picture becomes its view set, and every pair is brought
    /// in line with the world (only what changed is sent: ADD, REMOVE, or a MOVE of an object
    /// that moved since).
    fn promote(
        &self,
        srv: &H,
        session: &H::Conn,
        id: u32,
        pos: u32,
        name: Name,
        told: &[(u32, u16, u16)],
    ) {
        let w = &self.world;
        let (old, was_in, from) = {
            let mut v = w.objs[id as usize].view.lock();
            let was_in = v.state == State::InGame;
            let old: Vec<u32> = v.set.iter().copied().collect();
            v.set = told.iter().map(|t| t.0).filter(|&o| o != id).collect();
            v.session = Some(session.clone());
            v.state = State::InGame;
            v.name = name;
            let from = w.pos(id);
            w.set_pos(id, pos);
            (old, was_in, from)
        };
        if was_in {
            w.sector_move(id, from, pos);
        } else {
            w.sector_insert(id, pos);
        }
        let mut mine = self.mine(id, pos, name, None);
        mine.told = told.iter().map(|&(o, x, y)| (o, pack(x, y))).collect();
        mine.told.sort_unstable();
        let mut cands = old;
        cands.extend(
            told.iter()
                .map(|t| t.0)
                .filter(|&o| (o as usize) < w.objs.len()),
        );
        w.near(pos, true, &mut cands);
        cands.sort_unstable();
        cands.dedup();
        for c in cands {
            self.reconcile(srv, id, c, &mine);
        }
    }

    /// `Revoke`: the gateway gave the player to another zone; this zone's claim at `epoch`
    /// ends without a write.
    fn on_revoke(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != epoch || epoch == 0 {
            bump(&z.counters.stale);
            return;
        }
        bump(&z.counters.revokes);
        tracing::info!(
            player,
            epoch,
            "claim revoked by the gateway: another zone owns the player"
        );
        let keep = l.ghost_if_revoked;
        self.let_go(player, &mut l);
        if keep {
            z.counters.ghosts.fetch_add(1, Relaxed);
        } else {
            self.take_off(srv, player);
        }
    }

    /// `Disconnect`: the client is gone; the owner writes the row and takes it off.
    fn on_disconnect(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let pl = &self.players[player as usize];
        let mut l = pl.login.lock();
        if epoch == 0 {
            // The gateway gave up on a login before any zone took it: free the name.
            z.names.lock().retain(|_, p| *p != player);
            return;
        }
        if l.epoch != epoch {
            bump(&z.counters.stale);
            return;
        }
        self.depart(srv, player, &mut l);
        l.phase = Phase::Idle;
        l.handoff = Handoff::None;
        l.epoch = 0;
        l.confirmed = false;
        l.gen += 1;
        l.pending.clear();
        l.session = None;
        l.name.clear();
        pl.regen.store(false, SeqCst);
    }

    /// `Login` at the name's home zone: the name is marked on for the whole cluster, the row
    /// loaded (the last one an owner sent here, else the database, else a new one), and the
    /// player goes to the zone that owns its cell.
    fn home_login(&self, srv: &H, gateway: u16, session: u64, player: u32, name: String) {
        let z = self.zone.as_ref().expect("a zone");
        let Some(conn) = srv.remote(gateway, session, player) else {
            return;
        };
        bump(&z.counters.home_logins);
        if z.layout.home_of(&name) != usize::from(z.me) {
            bump(&z.counters.invalid);
            return self.login_fail(&conn, &format!("{name:?} is not this zone's to log in"));
        }
        {
            let mut names = z.names.lock();
            if names.contains_key(&name) {
                drop(names);
                bump(&z.counters.duplicate_logins);
                return self.login_fail(&conn, &format!("{name:?} is already logged in"));
            }
            names.insert(name.clone(), player);
        }
        let Some(p) = &self.persist else {
            return self.home_loaded(srv, &conn, player, name, Ok(None));
        };
        let recent = z.recent.lock().remove(&name);
        if let Some((r, _)) = recent {
            let row = PlayerRow {
                name: name.clone(),
                x: r.x,
                y: r.y,
                hp: r.hp,
                max_hp: r.max_hp,
                exp: r.exp,
                level: r.level,
            };
            return self.home_loaded(srv, &conn, player, name, Ok(Some(row)));
        }
        if let Some(row) = p.get(&name) {
            return self.home_loaded(srv, &conn, player, name, Ok(Some(row)));
        }
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != 0 || l.phase != Phase::Idle {
            drop(l);
            z.names.lock().remove(&name);
            return self.login_fail(&conn, "player id in use here");
        }
        l.phase = Phase::Loading;
        l.name = name.clone();
        l.session = Some(conn.clone());
        l.asked = Instant::now();
        let job = crate::db::LoadJob {
            session: conn.id(),
            id: player,
            gen: l.gen,
            name: name.clone(),
        };
        if p.pool.loads.try_send(job).is_err() {
            l.phase = Phase::Idle;
            l.session = None;
            l.name.clear();
            drop(l);
            z.names.lock().remove(&name);
            self.login_fail(&conn, "the database's queue is full");
        }
    }

    /// The home zone has the row (or the error): to the owner of its cell.
    pub(super) fn home_loaded(
        &self,
        srv: &H,
        conn: &H::Conn,
        player: u32,
        name: String,
        row: Result<Option<PlayerRow>, String>,
    ) {
        let z = self.zone.as_ref().expect("a zone");
        let row = match row {
            Ok(Some(r)) => self.sanitize(r),
            Ok(None) => self.new_row(&name),
            Err(e) => {
                z.names.lock().remove(&name);
                return self.login_fail(conn, &format!("database error: {e}"));
            }
        };
        let Some((gateway, session)) = conn.route() else {
            return;
        };
        let t = Transfer {
            player,
            epoch: 1,
            gateway,
            session,
            login: true,
            name,
            x: row.x,
            y: row.y,
            hp: row.hp,
            max_hp: row.max_hp,
            exp: row.exp,
            level: row.level,
            last_move_time: 0,
            ghosts: 0,
            view: Vec::new(),
        };
        let owner = z.layout.zone_of(row.x, row.y) as u16;
        if owner == z.me {
            self.arrive(srv, z.me, t);
        } else {
            srv.to_zone(owner, &Msg::Transfer(Box::new(t)));
        }
    }

    /// `Offline` (or a local departure) at the name's home zone.
    fn home_offline(&self, name: String, row: Option<Row>) {
        let z = self.zone.as_ref().expect("a zone");
        z.names.lock().remove(&name);
        if let Some(row) = row {
            let mut recent = z.recent.lock();
            let now = Instant::now();
            if recent.len() >= 1024 {
                recent.retain(|_, (_, at)| now.duration_since(*at) < RECENT_ROWS_FOR);
            }
            recent.insert(name, (row, now));
        }
    }
}
