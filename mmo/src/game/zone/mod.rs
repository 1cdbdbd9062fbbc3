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

//!
//! Here: the hooks the rest of the game calls (each does nothing on a single server) and the
//! dispatch of the bus's messages; [`ghosts`] (other zones' objects on this board, a routed
//! packet, a remote hit's result), [`handoff`] (a player changing zones, the gateway's
//! answers) and [`home`] (the name's home zone's part of a login) hold the rest. They call
//! each other's methods and import nothing from one another.

mod faults;
mod ghosts;
mod handoff;
mod home;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use cport_mmo_proto::{Name, ServerPacket};

use crate::cluster::state::{bump, Handoff, GHOST_ADD, GHOST_DROP, HANDOFF_DEPTH};
use crate::cluster::wire::{Msg, Row, Source};
use crate::db::PlayerRow;
use crate::game::{Game, Login, DELAYED_TRANSFER};
use crate::net::{Conn, Host};
use crate::world::{pack, unpack, State};

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
    pub(crate) fn in_my_zone(&self, p: u32) -> bool {
        let (x, y) = unpack(p);
        self.zone.as_ref().is_none_or(|z| z.rect.contains(x, y))
    }

    /// The owner of object `id` put it at `pos`: ghost enters, moves and leaves for the other
    /// zones, by distance to their rectangles (with the hysteresis of [`GHOST_ADD`] and
    /// [`GHOST_DROP`]).
    pub(crate) fn publish_band(
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
    pub(crate) fn leave_band(&self, srv: &H, id: u32) {
        let Some(z) = &self.zone else { return };
        let mask = z.ghosts[id as usize].swap(0, Relaxed);
        for other in z.others() {
            if mask & (1 << other) != 0 {
                srv.to_zone(other, &Msg::GhostLeave { id });
            }
        }
    }

    /// `CS_CHAT` of an owned player: the zones that hold its ghost tell their players.
    pub(crate) fn ghost_chat_out(&self, srv: &H, id: u32, mess: Bytes) {
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
    pub(crate) fn zone_moved(
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
        // Each attempt offers a higher epoch than any before it, so the gateway can refuse a
        // late claim of an earlier attempt that timed out.
        let next = l.epoch.max(l.offered) + 1;
        l.offered = next;
        l.handoff = Handoff::Asked {
            since: Instant::now(),
            next,
        };
        srv.to_gateway(
            gateway,
            &Msg::HandoffBegin {
                session: s,
                player: id,
                epoch: l.epoch,
                to: z.layout.zone_of(x, y) as u16,
                next,
            },
        );
    }

    /// An owned player left the game (its row written): its home zone frees the name.
    pub(crate) fn departed(&self, srv: &H, name: &str, row: PlayerRow) {
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
        self.close_gate(srv);
        for other in z.others() {
            self.snapshot_to(srv, other);
            srv.to_zone(other, &Msg::SnapshotRequest);
        }
    }

    /// `GhostEnter` for every object this zone owns within ghost range of zone `other`.
    pub(crate) fn snapshot_to(&self, srv: &H, other: u16) {
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
    pub(crate) fn on_cluster(&self, srv: &H, from: Source, inc: u64, msg: Msg) {
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
            ) if player < players => self.home_login(srv, g, inc, session, player, name),
            (
                Source::Gateway(g),
                Msg::Resume {
                    session,
                    player,
                    name,
                    epoch,
                    view,
                },
            ) if player < players => {
                self.home_resume(srv, g, inc, session, player, name, epoch, view)
            }
            (Source::Gateway(_), Msg::Relock { player, name }) if player < players => {
                self.home_relock(player, name)
            }
            (Source::Gateway(g), Msg::RelockDone) => self.relock_done(srv, g),
            (_, Msg::Alive) => {}
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
                z.ghost_src[id as usize].store(o, Relaxed);
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
    pub(crate) fn ghostable(&self, id: u32, from: u16) -> bool {
        let Some(z) = &self.zone else { return false };
        if from == z.me || usize::from(from) >= z.layout.zones() {
            return false;
        }
        !self.world.is_npc(id) || self.npc_elsewhere(id).is_some()
    }
}
