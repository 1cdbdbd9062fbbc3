//! The game's side of NPC scripts ([`crate::script`]): the `API_*` functions scripts call,
//! and script events as posted completions. A player's move seen by a scripted NPC posts
//! `SCRIPT_MOVE` (under the view locks, where it is noticed: posting never blocks); the
//! completion runs `event_player_move` on whichever worker takes it, with no game lock held,
//! and the API functions take the locks they need as any packet's handling does.
//! `SCRIPT_TIMER` is the completion of `API_set_timer`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cport_mmo_proto::ServerPacket;
use mlua::{Integer, Lua, Table};

use super::{Game, SCRIPT_DRAIN, SCRIPT_MOVE, SCRIPT_TIMER};
use crate::net::Host;
use crate::script::{Event, Outcome};
use crate::world::unpack;

/// Times an event whose shard is busy is posted again before its worker waits for the shard.
const MAX_DEFER: u64 = 8;

/// Waiting script events a worker runs before it goes back to the port.
const DRAIN_BATCH: usize = 64;

/// Longest `API_set_timer` delay (a day).
const MAX_TIMER_MS: u64 = 24 * 3600 * 1000;

/// Registers the game's API functions in `shared` (every NPC environment reads through it).
/// They reach the game through the shard's app data: the `Weak<Game<H>>` the engine
/// attaches once the game is built, and the host `H` set while an event runs.
pub(crate) fn register<H: Host>(lua: &Lua, shared: &Table) -> mlua::Result<()> {
    shared.raw_set(
        "API_get_x",
        lua.create_function(|lua, id: Integer| {
            with_game::<H, _>(lua, |g, _| Ok(g.script_pos(id).map(|p| p.0)))
        })?,
    )?;
    shared.raw_set(
        "API_get_y",
        lua.create_function(|lua, id: Integer| {
            with_game::<H, _>(lua, |g, _| Ok(g.script_pos(id).map(|p| p.1)))
        })?,
    )?;
    shared.raw_set(
        "API_SendMessage",
        lua.create_function(|lua, (from, to, text): (Integer, Integer, mlua::String)| {
            with_game::<H, _>(lua, |g, _| Ok(g.script_message(from, to, &text.as_bytes())))
        })?,
    )?;
    shared.raw_set(
        "API_move_toward",
        lua.create_function(|lua, (npc, x, y): (Integer, Integer, Integer)| {
            with_game::<H, _>(lua, |g, srv| {
                let (Some(npc), Some(x), Some(y)) = (g.script_npc(npc), cell(x), cell(y)) else {
                    return Ok(false);
                };
                Ok(g.script_step_toward(srv, npc, x, y))
            })
        })?,
    )?;
    shared.raw_set(
        "API_set_timer",
        lua.create_function(|lua, (npc, ms, name): (Integer, Integer, mlua::String)| {
            with_game::<H, _>(lua, |g, srv| {
                let Some(npc) = g.script_npc(npc) else {
                    return Ok(false);
                };
                let name = name.to_str()?;
                let scripts = g.scripts.as_ref().expect("scripts run");
                let Some(id) = scripts.timer_id(&name) else {
                    return Err(mlua::Error::runtime("too many distinct timer names"));
                };
                let ms = u64::try_from(ms).unwrap_or(0).min(MAX_TIMER_MS);
                Ok(srv.post_after(
                    Duration::from_millis(ms),
                    SCRIPT_TIMER | u64::from(npc),
                    u64::from(id),
                ))
            })
        })?,
    )?;
    shared.raw_set(
        "API_attack",
        lua.create_function(|lua, (npc, player): (Integer, Integer)| {
            with_game::<H, _>(lua, |g, _| {
                let (Some(npc), Ok(player)) = (g.script_npc(npc), u32::try_from(player)) else {
                    return Ok(false);
                };
                Ok(g.npc_attack(npc, player))
            })
        })?,
    )?;
    Ok(())
}

/// `f` with the game and the host of the event running now.
fn with_game<H: Host, R>(
    lua: &Lua,
    f: impl FnOnce(&Game<H>, &H) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let game: Arc<Game<H>> = lua
        .app_data_ref::<Weak<Game<H>>>()
        .and_then(|w| w.upgrade())
        .ok_or_else(|| mlua::Error::runtime("the game API is not available here"))?;
    let srv: H = lua
        .app_data_ref::<H>()
        .map(|h| h.clone())
        .ok_or_else(|| mlua::Error::runtime("the game API is only available in an event"))?;
    f(&game, &srv)
}

/// A board coordinate from a script's number (`None` off the protocol's range).
fn cell(v: Integer) -> Option<u16> {
    u16::try_from(v).ok()
}

impl<H: Host> Game<H> {
    /// Where object `id` (player or NPC) is, for `API_get_x`/`API_get_y`.
    fn script_pos(&self, id: Integer) -> Option<(u16, u16)> {
        let id = u32::try_from(id).ok()?;
        ((id as usize) < self.world.objs.len()).then(|| unpack(self.world.pos(id)))
    }

    /// `id` if it is one of this game's NPCs.
    fn script_npc(&self, id: Integer) -> Option<u32> {
        let id = u32::try_from(id).ok()?;
        (self.world.is_npc(id) && (id as usize) < self.world.objs.len()).then_some(id)
    }

    /// `API_SendMessage`: an `SC_CHAT` from `from` (its id as the speaker) to player `to`.
    fn script_message(&self, from: Integer, to: Integer, text: &[u8]) -> bool {
        let w = &self.world;
        let (Ok(from), Ok(to)) = (u32::try_from(from), u32::try_from(to)) else {
            return false;
        };
        if w.is_npc(to) || (from as usize) >= w.objs.len() {
            return false;
        }
        let mut mess = text.to_vec();
        mess.truncate(cport_mmo_proto::CHAT_SIZE);
        let pkt = self.encode(ServerPacket::Chat {
            id: from as i32,
            mess,
        });
        let v = w.objs[to as usize].view.lock();
        match &v.session {
            Some(s) => {
                crate::net::Conn::send(s, pkt);
                true
            }
            None => false,
        }
    }

    /// `API_move_toward`: one A* step of `npc` toward `(x, y)`, around the map's obstacles
    /// ([`Game::npc_step_toward`]).
    fn script_step_toward(&self, srv: &H, npc: u32, x: u16, y: u16) -> bool {
        self.npc_step_toward(srv, npc, x, y)
    }

    /// Player `player`'s move was seen by NPC `npc` (called under view locks): its script's
    /// `event_player_move` is posted, to run on a worker without them.
    pub(super) fn script_saw_move(&self, srv: &H, npc: u32, player: u32) {
        let Some(s) = &self.scripts else { return };
        if s.enabled(npc) && self.npc_elsewhere(npc).is_none() {
            let _ = srv.post_after(
                Duration::ZERO,
                SCRIPT_MOVE | u64::from(npc),
                u64::from(player),
            );
        }
    }

    /// A posted script event, through the gate that keeps a worker for the network
    /// ([`crate::script::Gate`]): run now if this worker may run scripts, else queued for the
    /// worker that does. That worker runs what waits, a batch at a time, before it leaves;
    /// a longer queue is handed on in a posted `SCRIPT_DRAIN`, so it too comes back to the
    /// port between batches.
    pub(super) fn script_event(&self, srv: &H, tag: u64, npc: u32, value: u64) {
        let Some(s) = &self.scripts else { return };
        if tag != SCRIPT_DRAIN {
            if s.gate.enter() {
                self.run_script_event(srv, tag, npc, value);
            } else if !(s.gate.wait((tag, npc, value)) && s.gate.enter()) {
                // Queued for the worker inside (which looks at the queue before it leaves;
                // if it left meanwhile, the `enter` above got the turn), or dropped.
                return;
            }
        } else if !s.gate.enter() {
            return; // a worker is inside: it drains
        }
        for _ in 0..DRAIN_BATCH {
            match s.gate.next() {
                Some((t, n, v)) => self.run_script_event(srv, t, n, v),
                None => break,
            }
        }
        s.gate.leave();
        if s.gate.waiting() > 0 {
            // More waits: hand it on, back to the port first. (An event queued after this
            // look gets the turn itself: see above.)
            let _ = srv.post_after(Duration::ZERO, SCRIPT_DRAIN, 0);
        }
    }

    /// One script event (`tag`, its `value`: the payload in the low 32 bits, how often it
    /// was posted again for a busy shard above).
    fn run_script_event(&self, srv: &H, tag: u64, npc: u32, value: u64) {
        let Some(s) = &self.scripts else { return };
        let payload = value & 0xFFFF_FFFF;
        let tries = value >> 32;
        if !self.npc_life[(npc - self.world.max_users) as usize]
            .lock()
            .alive
        {
            return; // a dead NPC hears nothing
        }
        let name;
        let ev = if tag == SCRIPT_MOVE {
            Event::PlayerMove(payload as u32)
        } else {
            let Some(n) = s.timer_name(payload as u32) else {
                return;
            };
            name = n;
            Event::Timer(&name)
        };
        // A busy shard is not waited for (the worker takes other completions meanwhile),
        // up to a few times.
        if s.run(npc, srv.clone(), ev, tries >= MAX_DEFER) == Outcome::Busy {
            s.deferred.fetch_add(1, Relaxed);
            let _ = srv.post_after(
                Duration::ZERO,
                tag | u64::from(npc),
                payload | ((tries + 1) << 32),
            );
        }
    }
}
