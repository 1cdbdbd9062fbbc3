//! The gateway's state machine: which zone each client's player is routed to, at which
//! ownership epoch, and what is held while a login or a hand-off is under way. It knows no
//! sockets and no bus: the glue ([`super`]) feeds it client packets, closes, bus entries and
//! timers, and it answers through [`Effects`] (messages to zones, bytes and closes to
//! clients, timers), so every rule of the contract with the zones is unit-tested here.
//!
//! Why one file: each rule below is one transition of one session's phase, and they are
//! read together against the zones' side (`mmo/src/game/zone/`); the tests live apart.
//!
//! The rules (the zones implement the other side):
//! - The first packet must be `CS_LOGIN`; its name goes to the name's home zone with a fresh
//!   player id, and the session holds its later packets until a zone sends `Owned`.
//! - `Owned` while holding switches the route — for a login at any newer epoch, for a
//!   hand-off only at the epoch its `HandoffBegin` offered (`next`) — `Confirm` first, then
//!   the held packets in order, at the new epoch. A stale `Owned` is answered `Revoke`; one for a
//!   client that is gone is answered `Disconnect` (unless a zone was already told so).
//! - `HandoffBegin` from the route zone at the current epoch holds the session and is
//!   answered `Held` (after every packet already sent to that zone: same outbox, same order).
//!   `HandoffCancel` releases the held packets back to it (`Confirm` first); a cancel that
//!   comes after the hand-off completed (or after the client left and the zone that took it
//!   was told `Disconnect`) is answered `Revoke`.
//! - A hand-off that is not resolved within the timeout (both zones' answers lost) falls
//!   back to the old owner: the new zone's claim at the offered epoch is `Revoke`d, the old
//!   owner gets `Confirm` at its epoch and the held packets. If the client is gone by then,
//!   the route zone is told `Disconnect`; if that zone cancels afterwards (it had sent the
//!   player's state on and ignored the `Disconnect`, then gave up waiting), it is told again.
//! - A claim said again (`Owned` or `HandoffCancel` from the route zone at the current
//!   epoch, its `Confirm` lost on the bus) is answered `Confirm` again; the zones repeat an
//!   unanswered claim every second.
//! - A client that closes: `Disconnect` to its owner; mid-hand-off, to whichever zone the
//!   hand-off resolves to. One zone, at one epoch, is told; any other claim is `Revoke`d.
//!   Before any zone took it (a login given up): `Disconnect` at epoch 0 to the name's home
//!   zone, which frees the name.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;
use cport_mmo::cluster::Layout;
use cport_mmo_proto::{ClientPacket, ServerPacket, SizeField};

use super::effects::{Closing, Effects, Timer, TimerKind};
use super::ids::{Ids, QUARANTINE};

#[cfg(test)]
mod check;
mod faults;
mod picture;

/// Most packets held for a session while a login, a hand-off or a resume is under way; one
/// more closes the session. A resume after a zone died holds for about a restart's time (up
/// to a few seconds), and a client may send tens of packets a second.
pub const MAX_HELD: usize = 256;

/// A hand-off whose old owner was replaced waits this long for the new zone's claim (it
/// answers within milliseconds if the player's state reached it) before the player is
/// resumed from its last save.
pub const ORPHAN_WAIT: Duration = Duration::from_millis(500);

/// A resume not answered within the login timeout is asked again (the bus may have lost
/// it), this many times in all, before the client is closed.
pub const RESUME_TRIES: u8 = 3;

/// The settings the state machine needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The board's cut into zones (a login's home zone).
    pub layout: Layout,
    /// The course header's size field.
    pub header: SizeField,
    /// How long a login may wait for `Owned`.
    pub login_timeout: Duration,
    /// How long a hand-off may wait for `Owned` or `HandoffCancel`.
    pub handoff_timeout: Duration,
}

/// Counters of what the state machine saw (totals since start, but `sessions` and `held`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sessions open now (a client gone mid-hand-off is not counted).
    pub sessions: u64,
    /// Packets held now.
    pub held: u64,
    /// Logins a zone took (`Owned` for a login).
    pub logins: u64,
    /// Logins refused here (bad name, no free id, no answer in time).
    pub login_fails: u64,
    /// Logins that no zone answered in time.
    pub login_timeouts: u64,
    /// Client packets sent to a zone.
    pub routed: u64,
    /// Clients closed for what they sent (bad packet, too many held).
    pub rejected: u64,
    /// Hand-offs begun (`Held` sent).
    pub handoffs_begun: u64,
    /// Hand-offs that moved the player (`Owned` while holding for one).
    pub handoffs_completed: u64,
    /// Hand-offs released back to the old zone (`HandoffCancel`).
    pub handoffs_cancelled: u64,
    /// Hand-offs that timed out (back to the old owner, or the client was gone).
    pub handoff_timeouts: u64,
    /// `Revoke`s sent.
    pub revokes: u64,
    /// `Disconnect`s sent.
    pub disconnects: u64,
    /// Zone entries ignored as stale (an epoch or a state that has moved on).
    pub stale: u64,
    /// Zone entries for a session that is not open here (dropped).
    pub unknown_session: u64,
    /// Zone entries a gateway should never receive (dropped).
    pub misdirected: u64,
    /// Zones seen restarting (a newer run spoke).
    pub zone_restarts: u64,
    /// Players sent to be resumed from their last save (their zone was replaced).
    pub resumes: u64,
    /// Of those, resumed (a zone took the player).
    pub resumed: u64,
    /// Of those, given up (the client was closed).
    pub resume_timeouts: u64,
    /// Batches from a zone run that has been replaced (dropped; the sender told `Fenced`).
    pub stale_batches: u64,
    /// Claims a zone said again (its answer lost on the bus), answered `Confirm` again.
    pub restated: u64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected: the first packet must be `CS_LOGIN`.
    New,
    /// `Login` sent to the home zone; packets held until `Owned`.
    Login,
    /// Packets go to `route` at `epoch`.
    Routed,
    /// The route zone hands the player to zone `to`; packets held.
    Handoff { to: u16, next: u32 },
    /// No zone owns the player for this session any more (a zone was told `Disconnect`).
    Released,
    /// Its zone was replaced: `Resume` sent to the name's home zone; packets held until
    /// `Owned` (as for a login, at any epoch above the session's).
    Resume,
}

#[derive(Debug)]
struct Sess<S> {
    /// The client; `None` once it closed while a hand-off was under way (kept until the
    /// hand-off resolves, to tell the right zone).
    conn: Option<S>,
    /// We asked the client's connection to close: what it sends is ignored, and a zone that
    /// claims the player now is told `Disconnect`.
    closing: bool,
    phase: Phase,
    player: Option<u32>,
    route: u16,
    epoch: u32,
    held: Vec<Bytes>,
    serial: u32,
    /// The zone and epoch told `Disconnect` (phase `Released`).
    told: Option<(u16, u32)>,
    /// The name it logged in with (a resume and a relock restate it).
    name: String,
    /// What the client has been sent: each object it sees at the position it was told, its
    /// own player included (a resume hands it to the new owner).
    picture: HashMap<u32, (u16, u16)>,
    /// Its hand-off's old owner was replaced meanwhile: if no zone claims the player in
    /// time, it is resumed rather than closed.
    orphan: bool,
    /// `Resume`s sent for the current resume (one lost on the bus is sent again).
    resume_tries: u8,
}

/// A session that is gone, remembered for a quarantine's time: which zone, if any, was told
/// to remove its player. A late `Owned` is answered `Revoke` if one was (`Disconnect` if
/// none); a late `HandoffCancel` is answered `Disconnect` again if it comes from that zone at
/// that epoch (it may have ignored the first while its hand-off was under way), else `Revoke`.
#[derive(Debug, Clone, Copy)]
struct Gone {
    player: u32,
    told: Option<(u16, u32)>,
}

/// The gateway's routing state, generic over the client handle `S` (the server layer's
/// `Session` in the gateway, anything in tests).
#[derive(Debug)]
pub struct Routes<S> {
    set: Settings,
    ids: Ids,
    sessions: HashMap<u64, Sess<S>>,
    gone: HashMap<u64, Gone>,
    gone_order: VecDeque<(Instant, u64)>,
    serial: u32,
    counters: Counters,
    /// The newest run (incarnation) seen of each zone (0: none yet).
    runs: Vec<u64>,
}

impl<S: Clone> Routes<S> {
    /// A gateway's state: its settings and its share of the player ids.
    pub fn new(set: Settings, ids: Ids) -> Routes<S> {
        Routes {
            ids,
            sessions: HashMap::new(),
            gone: HashMap::new(),
            gone_order: VecDeque::new(),
            serial: 0,
            runs: vec![0; set.layout.zones()],
            counters: Counters::default(),
            set,
        }
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The zone and epoch a session's packets go to now (`None`: not routed, or holding).
    pub fn route_of(&self, session: u64) -> Option<(u16, u32)> {
        let s = self.sessions.get(&session)?;
        (s.phase == Phase::Routed).then_some((s.route, s.epoch))
    }

    /// The player id of a session, once it sent `CS_LOGIN`.
    pub fn player_of(&self, session: u64) -> Option<u32> {
        self.sessions.get(&session)?.player
    }

    /// A client connected.
    pub fn on_connect(&mut self, session: u64, conn: S) {
        self.counters.sessions += 1;
        // Session ids are not reused (the server layer's generations), but were one to be,
        // the counters stay true.
        let old = self.sessions.insert(
            session,
            Sess {
                conn: Some(conn),
                closing: false,
                phase: Phase::New,
                player: None,
                route: 0,
                epoch: 0,
                held: Vec::new(),
                serial: 0,
                told: None,
                name: String::new(),
                picture: HashMap::new(),
                orphan: false,
                resume_tries: 0,
            },
        );
        if let Some(old) = old {
            self.counters.held -= old.held.len() as u64;
            if old.conn.is_some() {
                self.counters.sessions -= 1;
            }
        }
    }

    /// One framed packet of a client.
    pub fn on_packet(
        &mut self,
        session: u64,
        packet: &[u8],
        now: Instant,
        fx: &mut impl Effects<S>,
    ) {
        let Routes {
            set,
            ids,
            sessions,
            serial,
            counters,
            ..
        } = self;
        let Some(s) = sessions.get_mut(&session) else {
            return;
        };
        let Some(conn) = s.conn.clone() else {
            return;
        };
        if s.closing {
            return;
        }
        let p = match ClientPacket::decode(packet, set.header) {
            Ok(p) => p,
            Err(e) => return reject(s, &conn, counters, fx, e.to_string()),
        };
        match s.phase {
            Phase::New => {
                let ClientPacket::Login { name } = p else {
                    let why = format!("packet type {} before login", p.kind());
                    return reject(s, &conn, counters, fx, why);
                };
                let name = match cport_mmo::login_name(&name) {
                    Ok(n) => n,
                    Err(why) => return login_fail(s, &conn, set, counters, fx, why),
                };
                let Some(player) = ids.take(now) else {
                    return login_fail(s, &conn, set, counters, fx, "server full");
                };
                *serial = serial.wrapping_add(1);
                s.player = Some(player);
                s.name = name.clone();
                s.phase = Phase::Login;
                s.epoch = 0;
                s.serial = *serial;
                let home = set.layout.home_of(&name) as u16;
                // Not a route yet: the zone to tell should the login be given up.
                s.route = home;
                fx.zone(
                    home,
                    Msg::Login {
                        session,
                        player,
                        name,
                    },
                );
                fx.timer(
                    set.login_timeout,
                    Timer {
                        kind: TimerKind::Login,
                        session,
                        serial: s.serial,
                    },
                );
            }
            Phase::Login | Phase::Handoff { .. } | Phase::Resume => {
                if s.held.len() < MAX_HELD {
                    s.held.push(Bytes::copy_from_slice(packet));
                    counters.held += 1;
                } else {
                    let what = match s.phase {
                        Phase::Login => "logging in",
                        Phase::Resume => "resumed",
                        _ => "handed off",
                    };
                    let why = format!("more than {MAX_HELD} packets while {what}");
                    reject(s, &conn, counters, fx, why);
                }
            }
            Phase::Routed => {
                counters.routed += 1;
                fx.zone(
                    s.route,
                    Msg::Packet {
                        player: s.player.expect("routed"),
                        epoch: s.epoch,
                        packet: Bytes::copy_from_slice(packet),
                    },
                );
            }
            Phase::Released => {}
        }
    }

    /// A client's connection closed (after its last packet).
    pub fn on_close(&mut self, session: u64, now: Instant, fx: &mut impl Effects<S>) {
        self.forget_gone(now);
        let Some(mut s) = self.sessions.remove(&session) else {
            return;
        };
        if s.conn.is_none() {
            // A zombie closes only once; the server layer calls this once per session.
            self.sessions.insert(session, s);
            return;
        }
        self.counters.sessions -= 1;
        self.counters.held -= s.held.len() as u64;
        s.held.clear();
        let Some(player) = s.player else {
            return;
        };
        self.ids.free(player, now);
        match s.phase {
            // No zone took the player yet: the home zone frees the name (`Disconnect` at epoch
            // 0), and a late `Owned` is answered `Disconnect`. (`New` has no player: listed
            // for completeness.)
            Phase::New | Phase::Login | Phase::Resume => {
                self.disconnect(fx, s.route, player, 0);
                self.bury(session, player, None, now);
            }
            Phase::Released => self.bury(session, player, s.told, now),
            Phase::Routed => {
                self.disconnect(fx, s.route, player, s.epoch);
                self.bury(session, player, Some((s.route, s.epoch)), now);
            }
            Phase::Handoff { .. } => {
                // Whoever the hand-off resolves to is told (see `owned`, `cancel`, the timer).
                s.conn = None;
                self.sessions.insert(session, s);
            }
        }
    }

    /// One entry of a batch from zone `zone` (already checked to be a zone of this cluster).
    pub fn on_bus(&mut self, zone: u16, m: Msg, now: Instant, fx: &mut impl Effects<S>) {
        match m {
            Msg::Send { session, bytes } => match self.sessions.get_mut(&session) {
                Some(s) if s.conn.is_some() => {
                    picture::track(&mut s.picture, &bytes, self.set.header);
                    fx.send(s.conn.as_ref().expect("checked"), bytes);
                }
                _ => self.counters.unknown_session += 1,
            },
            Msg::Alive => {}
            Msg::Fenced { .. } => {}
            Msg::Close { session, reason } => match self.open(session) {
                Some(conn) => {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.closing = true;
                    }
                    let how = match reason {
                        Some(why) => {
                            tracing::info!(session, zone, "closed by the zone: {why}");
                            Closing::Reject(why)
                        }
                        None => Closing::AfterFlush,
                    };
                    fx.close(&conn, how);
                }
                None => self.counters.unknown_session += 1,
            },
            Msg::Owned {
                session,
                player,
                epoch,
            } => self.owned(zone, session, player, epoch, now, fx),
            Msg::HandoffBegin {
                session,
                player,
                epoch,
                to,
                next,
            } => self.begin(zone, session, player, epoch, to, next, fx),
            Msg::HandoffCancel {
                session,
                player,
                epoch,
            } => self.cancel(zone, session, player, epoch, now, fx),
            other => {
                self.counters.misdirected += 1;
                tracing::debug!(zone, "an entry a gateway does not take: {other:?}");
            }
        }
    }

    /// A timer fired.
    pub fn on_timer(&mut self, t: Timer, now: Instant, fx: &mut impl Effects<S>) {
        let Some(s) = self.sessions.get_mut(&t.session) else {
            return;
        };
        if s.serial != t.serial {
            return;
        }
        match (t.kind, s.phase) {
            (TimerKind::Login, Phase::Login) => {
                let Some(conn) = s.conn.clone() else {
                    return;
                };
                if s.closing {
                    return;
                }
                self.counters.login_timeouts += 1;
                login_fail(
                    s,
                    &conn,
                    &self.set,
                    &mut self.counters,
                    fx,
                    "no zone answered the login in time",
                );
            }
            (TimerKind::Login, Phase::Resume) => {
                let Some(conn) = s.conn.clone() else {
                    return;
                };
                if s.closing {
                    return;
                }
                if s.resume_tries < RESUME_TRIES {
                    return self.resume(t.session, fx);
                }
                self.counters.resume_timeouts += 1;
                s.closing = true;
                let why = format!(
                    "no zone resumed player {:?} in time",
                    s.player.unwrap_or_default()
                );
                fx.close(&conn, Closing::Abort(why));
            }
            (TimerKind::Handoff, Phase::Handoff { .. }) if s.orphan && s.conn.is_some() => {
                // Its old owner was replaced and no zone took the player: from its save.
                self.resume(t.session, fx);
            }
            (TimerKind::Handoff, Phase::Handoff { to, next }) => {
                let player = s.player.expect("a hand-off has a player");
                let (route, epoch) = (s.route, s.epoch);
                self.counters.handoff_timeouts += 1;
                if s.conn.is_some() && !s.closing {
                    // Neither zone was heard (the bus lost the messages, say): the player
                    // stays with its old owner, which keeps it after its own timeout — the
                    // new zone's claim, if it made one, is refused.
                    tracing::warn!(
                        session = t.session,
                        player,
                        "hand-off from zone {route} to zone {to} at epoch {epoch} timed out: back to zone {route}"
                    );
                    self.revoke(fx, to, player, next);
                    let s = self.sessions.get_mut(&t.session).expect("checked");
                    return route_held(&mut self.counters, s, player, fx);
                }
                tracing::warn!(
                    session = t.session,
                    player,
                    "hand-off from zone {route} to zone {to} at epoch {epoch} timed out; the client is gone"
                );
                self.release(t.session, route, epoch, now, fx);
            }
            _ => {}
        }
    }

    /// The client of a session, if the session is open here.
    fn open(&self, session: u64) -> Option<S> {
        self.sessions.get(&session)?.conn.clone()
    }

    fn disconnect(&mut self, fx: &mut impl Effects<S>, zone: u16, player: u32, epoch: u32) {
        self.counters.disconnects += 1;
        fx.zone(zone, Msg::Disconnect { player, epoch });
    }

    fn revoke(&mut self, fx: &mut impl Effects<S>, zone: u16, player: u32, epoch: u32) {
        self.counters.revokes += 1;
        fx.zone(zone, Msg::Revoke { player, epoch });
    }

    /// The client is gone or going: `zone` is told `Disconnect` at `epoch` (it saves and
    /// removes the player) and no zone owns the player for this session any more. Drops what
    /// was held, and forgets a client that already closed.
    fn release(
        &mut self,
        session: u64,
        zone: u16,
        epoch: u32,
        now: Instant,
        fx: &mut impl Effects<S>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let player = s.player.expect("a released session has a player");
        self.counters.held -= s.held.len() as u64;
        s.held.clear();
        s.phase = Phase::Released;
        s.told = Some((zone, epoch));
        if s.conn.is_none() {
            self.sessions.remove(&session);
            self.bury(session, player, Some((zone, epoch)), now);
        }
        self.disconnect(fx, zone, player, epoch);
    }

    /// Remembers a closed session for a quarantine's time, for late `Owned`s and cancels.
    fn bury(&mut self, session: u64, player: u32, told: Option<(u16, u32)>, now: Instant) {
        self.gone.insert(session, Gone { player, told });
        self.gone_order.push_back((now, session));
    }

    fn forget_gone(&mut self, now: Instant) {
        while let Some(&(t, session)) = self.gone_order.front() {
            if now.saturating_duration_since(t) < QUARANTINE {
                break;
            }
            self.gone_order.pop_front();
            self.gone.remove(&session);
        }
    }

    /// `Owned` from `zone`.
    fn owned(
        &mut self,
        zone: u16,
        session: u64,
        player: u32,
        epoch: u32,
        now: Instant,
        fx: &mut impl Effects<S>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            // The client has gone: tell the zone to remove the player, unless some zone was
            // already told (then this claim is simply refused).
            match self.gone.get_mut(&session) {
                Some(g) if g.player == player && g.told.is_some() => {
                    self.revoke(fx, zone, player, epoch)
                }
                Some(g) if g.player == player => {
                    g.told = Some((zone, epoch));
                    self.disconnect(fx, zone, player, epoch);
                }
                _ => {
                    self.counters.unknown_session += 1;
                    self.disconnect(fx, zone, player, epoch);
                }
            }
            return;
        };
        // A login takes any epoch above the current; a hand-off only the one its attempt
        // offered (a late claim from an earlier, timed-out attempt is refused).
        if s.phase == Phase::Routed
            && (s.route, s.epoch) == (zone, epoch)
            && s.player == Some(player)
        {
            // The zone says its claim again (our Confirm was lost on the bus): again.
            self.counters.restated += 1;
            return fx.zone(zone, Msg::Confirm { player, epoch });
        }
        let expected = match s.phase {
            Phase::Login | Phase::Resume => epoch > s.epoch,
            Phase::Handoff { next, .. } => epoch == next,
            _ => false,
        };
        if s.player != Some(player) || !expected {
            self.counters.stale += 1;
            tracing::debug!(session, player, epoch, zone, "stale Owned: revoked");
            return self.revoke(fx, zone, player, epoch);
        }
        let login = s.phase == Phase::Login;
        let resumed = s.phase == Phase::Resume;
        if s.conn.is_none() || s.closing {
            // The client closed (or is closing) while held: the new owner removes it.
            return self.release(session, zone, epoch, now, fx);
        }
        s.route = zone;
        s.epoch = epoch;
        route_held(&mut self.counters, s, player, fx);
        if resumed {
            self.counters.resumed += 1;
        } else if login {
            self.counters.logins += 1;
        } else {
            self.counters.handoffs_completed += 1;
        }
    }

    /// `HandoffBegin` from `zone` (its fields, as the message has them).
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        zone: u16,
        session: u64,
        player: u32,
        epoch: u32,
        to: u16,
        next: u32,
        fx: &mut impl Effects<S>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            self.counters.unknown_session += 1;
            return;
        };
        let current = s.phase == Phase::Routed
            && next > epoch
            && s.route == zone
            && s.epoch == epoch
            && s.player == Some(player)
            && s.conn.is_some()
            && !s.closing
            && usize::from(to) < self.set.layout.zones()
            && to != zone;
        if !current {
            self.counters.stale += 1;
            tracing::debug!(
                session,
                player,
                epoch,
                zone,
                to,
                "stale HandoffBegin ignored"
            );
            return;
        }
        self.serial = self.serial.wrapping_add(1);
        s.serial = self.serial;
        s.phase = Phase::Handoff { to, next };
        self.counters.handoffs_begun += 1;
        fx.zone(zone, Msg::Held { player, epoch });
        fx.timer(
            self.set.handoff_timeout,
            Timer {
                kind: TimerKind::Handoff,
                session,
                serial: s.serial,
            },
        );
    }

    /// `HandoffCancel` from `zone`.
    fn cancel(
        &mut self,
        zone: u16,
        session: u64,
        player: u32,
        epoch: u32,
        now: Instant,
        fx: &mut impl Effects<S>,
    ) {
        // The sender believes it keeps the player at `epoch`. If the client is gone (or
        // going) and a zone was told to remove the player: the sender, if it is that zone at
        // that epoch, is told again (it may have ignored the first while handing off); any
        // other must drop the player without writing.
        let told = match self.sessions.get(&session) {
            Some(s) if s.phase == Phase::Released && s.player == Some(player) => Some(s.told),
            Some(_) => None,
            None => {
                self.counters.unknown_session += 1;
                Some(self.gone.get(&session).and_then(|g| g.told))
            }
        };
        if let Some(told) = told {
            return if told == Some((zone, epoch)) {
                self.disconnect(fx, zone, player, epoch)
            } else {
                self.revoke(fx, zone, player, epoch)
            };
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.player != Some(player) {
            self.counters.stale += 1;
            return;
        }
        if epoch < s.epoch {
            // The hand-off completed: another zone owns the player now.
            return self.revoke(fx, zone, player, epoch);
        }
        if s.phase == Phase::Routed && (s.route, s.epoch) == (zone, epoch) {
            // A cancel said again (our Confirm was lost on the bus): confirmed again.
            self.counters.restated += 1;
            return fx.zone(zone, Msg::Confirm { player, epoch });
        }
        if !matches!(s.phase, Phase::Handoff { .. }) || epoch != s.epoch || zone != s.route {
            self.counters.stale += 1;
            tracing::debug!(session, player, epoch, zone, "stale HandoffCancel ignored");
            return;
        }
        self.counters.handoffs_cancelled += 1;
        if s.conn.is_none() || s.closing {
            return self.release(session, zone, epoch, now, fx);
        }
        route_held(&mut self.counters, s, player, fx);
    }
}

/// The session is routed to `s.route` at `s.epoch` (an `Owned` accepted, or a cancelled
/// hand-off back to its old zone): `Confirm` to that zone first, then every held packet, in
/// order, at that epoch.
fn route_held<S>(c: &mut Counters, s: &mut Sess<S>, player: u32, fx: &mut impl Effects<S>) {
    let (zone, epoch) = (s.route, s.epoch);
    c.held -= s.held.len() as u64;
    s.phase = Phase::Routed;
    s.orphan = false;
    fx.zone(zone, Msg::Confirm { player, epoch });
    for packet in s.held.drain(..) {
        c.routed += 1;
        fx.zone(
            zone,
            Msg::Packet {
                player,
                epoch,
                packet,
            },
        );
    }
}

/// Closes a client for what it sent.
fn reject<S>(
    s: &mut Sess<S>,
    conn: &S,
    counters: &mut Counters,
    fx: &mut impl Effects<S>,
    why: String,
) {
    counters.rejected += 1;
    s.closing = true;
    fx.close(conn, Closing::Reject(why));
}

/// Refuses a login: `SC_LOGIN_FAIL`, then the close once it is sent.
fn login_fail<S>(
    s: &mut Sess<S>,
    conn: &S,
    set: &Settings,
    counters: &mut Counters,
    fx: &mut impl Effects<S>,
    why: &str,
) {
    counters.login_fails += 1;
    tracing::info!("SC_LOGIN_FAIL: {why}");
    s.closing = true;
    fx.send(
        conn,
        Bytes::from(ServerPacket::LoginFail.encode(set.header)),
    );
    fx.close(conn, Closing::AfterFlush);
}
