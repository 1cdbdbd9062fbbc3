//! The client's picture as the gateway keeps it: what the zones told the client, read from
//! the packets the gateway forwards (a resume hands it to the player's new zone).

use std::collections::HashMap;

use bytes::Bytes;
use cport_mmo_proto::{frame_len, ServerPacket, SizeField};

/// What the client is told, as far as its picture goes: objects added, moved and removed,
/// and its own position (`SC_LOGIN_INFO`, its own `SC_MOVE_OBJECT`).
pub(super) fn track(picture: &mut HashMap<u32, (u16, u16)>, bytes: &Bytes, h: SizeField) {
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = frame_len(&bytes[at..], h) else {
            return;
        };
        match ServerPacket::decode(&bytes[at..at + len], h) {
            Ok(ServerPacket::LoginInfo { id, x, y, .. })
            | Ok(ServerPacket::AddObject { id, x, y, .. })
            | Ok(ServerPacket::MoveObject { id, x, y, .. }) => {
                picture.insert(id as u32, (x as u16, y as u16));
            }
            Ok(ServerPacket::RemoveObject { id }) => {
                picture.remove(&(id as u32));
            }
            _ => {}
        }
        at += len;
    }
}
