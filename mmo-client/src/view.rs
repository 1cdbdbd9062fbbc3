//! One client's picture of the board, painted by the server's packets: its own id and
//! position, and every object it was sent an `SC_ADD_OBJECT` for and no `SC_REMOVE_OBJECT`
//! since, where the last ADD or MOVE put it. The dummies of a run keep one each (for the
//! map), and so does the blocking course client of the game's tests ([`crate::blocking`]),
//! which fails on every packet that contradicts it.

use std::collections::BTreeMap;

use cport_mmo_proto::ServerPacket;

/// What one client sees: itself and the objects in its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Its own object id (`u32::MAX` until `SC_LOGIN_INFO`).
    pub id: u32,
    /// Where it is.
    pub pos: (u16, u16),
    /// The other objects it sees, by id, where they are.
    pub picture: BTreeMap<u32, (u16, u16)>,
    /// Keep the other objects (a dummy whose run draws no map keeps only itself).
    others: bool,
}

/// A packet that contradicts the picture (applied as far as it goes all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// An `SC_ADD_OBJECT` of the client itself.
    AddOfItself,
    /// An `SC_ADD_OBJECT` of an object already in view.
    AddOfSeen(u32),
    /// An `SC_MOVE_OBJECT` of an object not in view.
    MoveOfUnseen(u32),
    /// An `SC_REMOVE_OBJECT` of an object not in view.
    RemoveOfUnseen(u32),
    /// A second `SC_LOGIN_INFO`.
    LoginAgain,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::AddOfItself => write!(f, "ADD for itself"),
            Mismatch::AddOfSeen(id) => write!(f, "ADD of {id}, already seen"),
            Mismatch::MoveOfUnseen(id) => write!(f, "MOVE of {id}, not in view"),
            Mismatch::RemoveOfUnseen(id) => write!(f, "REMOVE of {id}, not in view"),
            Mismatch::LoginAgain => write!(f, "SC_LOGIN_INFO after login"),
        }
    }
}

impl Default for View {
    fn default() -> View {
        View::new()
    }
}

impl View {
    /// Not logged in yet, nothing seen.
    pub fn new() -> View {
        View {
            id: u32::MAX,
            pos: (0, 0),
            picture: BTreeMap::new(),
            others: true,
        }
    }

    /// A view that keeps only the client's own id and position (the other objects'
    /// packets are taken and forgotten).
    pub fn of_itself() -> View {
        View {
            others: false,
            ..View::new()
        }
    }

    /// Whether `SC_LOGIN_INFO` came.
    pub fn logged_in(&self) -> bool {
        self.id != u32::MAX
    }

    /// Paints `p` into the picture: `SC_LOGIN_INFO` says who and where the client is,
    /// `SC_ADD_OBJECT`/`SC_MOVE_OBJECT`/`SC_REMOVE_OBJECT` change what it sees (its own MOVE
    /// moves it), the rest changes nothing. A packet that contradicts the picture is applied
    /// all the same (an ADD of a seen object moves it, a MOVE of an unseen one adds it) and
    /// reported.
    pub fn apply(&mut self, p: &ServerPacket) -> Result<(), Mismatch> {
        match *p {
            ServerPacket::LoginInfo { id, x, y, .. } => {
                let again = self.logged_in();
                self.id = id as u32;
                self.pos = (x as u16, y as u16);
                if again {
                    return Err(Mismatch::LoginAgain);
                }
            }
            ServerPacket::AddObject { id, x, y, .. } => {
                let id = id as u32;
                if id == self.id {
                    self.pos = (x as u16, y as u16);
                    return Err(Mismatch::AddOfItself);
                }
                if self.others && self.picture.insert(id, (x as u16, y as u16)).is_some() {
                    return Err(Mismatch::AddOfSeen(id));
                }
            }
            ServerPacket::MoveObject { id, x, y, .. } => {
                let id = id as u32;
                if id == self.id {
                    self.pos = (x as u16, y as u16);
                } else if self.others && self.picture.insert(id, (x as u16, y as u16)).is_none() {
                    return Err(Mismatch::MoveOfUnseen(id));
                }
            }
            ServerPacket::RemoveObject { id } => {
                let id = id as u32;
                if self.picture.remove(&id).is_none() && self.others {
                    return Err(Mismatch::RemoveOfUnseen(id));
                }
            }
            ServerPacket::LoginOk
            | ServerPacket::LoginFail
            | ServerPacket::Chat { .. }
            | ServerPacket::StatChange { .. } => {}
        }
        Ok(())
    }

    /// Where the client sees object `id` (itself included), if it does.
    pub fn where_is(&self, id: u32) -> Option<(u16, u16)> {
        if id == self.id {
            return Some(self.pos);
        }
        self.picture.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: i32, x: i16, y: i16) -> ServerPacket {
        ServerPacket::AddObject {
            id,
            x,
            y,
            name: cport_mmo_proto::name("npc"),
        }
    }

    fn mv(id: i32, x: i16, y: i16) -> ServerPacket {
        ServerPacket::MoveObject {
            id,
            x,
            y,
            move_time: 0,
        }
    }

    #[test]
    fn the_packets_paint_what_is_seen_where() {
        let mut v = View::new();
        assert!(!v.logged_in());
        let login = ServerPacket::LoginInfo {
            id: 7,
            x: 10,
            y: 20,
            hp: 100,
            max_hp: 100,
            level: 1,
            exp: 0,
        };
        assert_eq!(v.apply(&login), Ok(()));
        assert_eq!((v.id, v.pos), (7, (10, 20)));
        assert_eq!(v.apply(&add(9, 11, 21)), Ok(()));
        assert_eq!(v.apply(&mv(9, 12, 21)), Ok(()));
        assert_eq!(v.apply(&mv(7, 10, 21)), Ok(()));
        assert_eq!(v.where_is(9), Some((12, 21)));
        assert_eq!(v.where_is(7), Some((10, 21)));
        assert_eq!(v.apply(&ServerPacket::RemoveObject { id: 9 }), Ok(()));
        assert_eq!(v.where_is(9), None);
        assert!(v.picture.is_empty());
    }

    #[test]
    fn contradictions_are_reported_and_applied() {
        let mut v = View::new();
        v.id = 1;
        assert_eq!(v.apply(&add(1, 5, 5)), Err(Mismatch::AddOfItself));
        assert_eq!(v.pos, (5, 5));
        assert_eq!(v.apply(&mv(2, 3, 3)), Err(Mismatch::MoveOfUnseen(2)));
        assert_eq!(v.apply(&add(2, 4, 4)), Err(Mismatch::AddOfSeen(2)));
        assert_eq!(v.where_is(2), Some((4, 4)));
        assert_eq!(
            v.apply(&ServerPacket::RemoveObject { id: 3 }),
            Err(Mismatch::RemoveOfUnseen(3))
        );
    }

    #[test]
    fn a_view_of_itself_keeps_only_itself() {
        let mut v = View::of_itself();
        v.id = 1;
        assert_eq!(v.apply(&add(2, 4, 4)), Ok(()));
        assert_eq!(v.apply(&mv(2, 4, 5)), Ok(()));
        assert_eq!(v.apply(&mv(1, 6, 6)), Ok(()));
        assert_eq!(v.apply(&ServerPacket::RemoveObject { id: 2 }), Ok(()));
        assert!(v.picture.is_empty());
        assert_eq!(v.pos, (6, 6));
    }
}
