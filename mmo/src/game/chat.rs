//! Chat: a player's `CS_CHAT` to itself and every player that sees it, and the system
//! messages of combat.

use bytes::Bytes;
use cport_mmo_proto::ServerPacket;

use super::Game;
use crate::net::{Conn, Host};

impl<H: Host> Game<H> {
    pub(super) fn chat(&self, session: &H::Conn, id: u32, mess: Vec<u8>) {
        // In a cluster, the zones that hold a ghost of the speaker tell their own players.
        let to_ghosts = self.zone.as_ref().map(|_| Bytes::copy_from_slice(&mess));
        let pkt = self.encode(ServerPacket::Chat {
            id: id as i32,
            mess,
        });
        session.send(pkt.clone());
        self.chat_to_viewers(id, &pkt);
        if let Some(mess) = to_ghosts {
            self.ghost_chat_out(&session.server(), id, mess);
        }
    }

    /// `pkt` (an `SC_CHAT` of `id`) to every player whose client sees `id`.
    pub(super) fn chat_to_viewers(&self, id: u32, pkt: &Bytes) {
        let w = &self.world;
        let viewers: Vec<u32> = w.objs[id as usize]
            .view
            .lock()
            .set
            .iter()
            .copied()
            .filter(|&o| !w.is_npc(o))
            .collect();
        for o in viewers {
            let v = w.objs[o as usize].view.lock();
            if v.set.contains(&id) {
                if let Some(s) = &v.session {
                    s.send(pkt.clone());
                }
            }
        }
    }

    /// A system message to one player (`SC_CHAT` with the player's own id).
    pub(super) fn system_chat(&self, session: &H::Conn, id: u32, text: String) {
        let mut mess = text.into_bytes();
        mess.truncate(cport_mmo_proto::CHAT_SIZE);
        session.send(self.encode(ServerPacket::Chat {
            id: id as i32,
            mess,
        }));
    }
}
