//! A player's moves: one step (`CS_MOVE`; into an obstacle or off the board it stays, and
//! its own `SC_MOVE_OBJECT` says so) or a teleport to a random open cell (`CS_TELEPORT`).

use std::sync::atomic::Ordering::Relaxed;

use super::Game;
use crate::net::{Conn, Host};
use crate::world::pack;

impl<H: Host> Game<H> {
    /// A random cell for a login, a teleport or a respawn: an open one when there are
    /// obstacles (redrawn from the game's generator, see `Map::open_cell`).
    pub(super) fn random_cell(&self) -> u32 {
        if let Some(m) = &self.world.map {
            // `Engine` refuses a map without an open cell.
            let (x, y) = m.open_cell(|| self.rng.next_u64()).unwrap_or((0, 0));
            return pack(x, y);
        }
        let r = self.rng.next_u64();
        let s = u64::from(self.world.size);
        pack((r % s) as u16, ((r >> 32) % s) as u16)
    }

    /// Moves player `id` to `to` (a step or a teleport) and tells everyone concerned.
    pub(super) fn relocate(&self, session: &H::Conn, id: u32, to: u32, move_time: u32) {
        let w = &self.world;
        let from = w.pos(id);
        w.set_pos(id, to);
        w.sector_move(id, from, to);
        self.counters.moves.fetch_add(1, Relaxed);
        self.players[id as usize].dirty.store(true, Relaxed);
        let own = self.move_packet(id, to, move_time);
        session.send(own.clone());
        let name = w.objs[id as usize].view.lock().name;
        let mine = self.mine(id, to, name, Some(own));
        self.reconcile_all(&session.server(), id, to, &mine);
    }
}
