//! # cport-mmo-proto — the course's wire protocol, byte for byte
//!
//! Shared by the game server (`cport-mmo`), its load client (`cport-mmo-client`) and the tools.
//!
//! Every packet is `[size][type][body]`: `size` counts the whole packet, header included, and
//! is one unsigned byte ([`SizeField::U8`], the default) or two bytes little-endian
//! ([`SizeField::U16`], every total one byte larger). Bodies are packed, little-endian; names
//! are 20-byte NUL-padded arrays; chat text is variable (1..=100 bytes).
//!
//! Client and server packets share type numbers (`CS_CHAT` and `SC_LOGIN_INFO` are both 2),
//! so each direction has its own enum and decoder: [`ClientPacket`] (what the server
//! receives) and [`ServerPacket`] (what clients receive).

#![warn(missing_docs)]

use std::fmt;

pub use cport_server::SizeField;

/// One round of splitmix64 on `x` (already advanced by the caller): the mixer the game and its
/// clients derive their deterministic choices from (NPC placement, dummies' moves and names),
/// kept here so that the server, the load client and the tools draw the same sequences.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes of a name (`NAME_SIZE`), NUL-padded.
pub const NAME_SIZE: usize = 20;
/// Most bytes of chat text (`CHAT_SIZE`).
pub const CHAT_SIZE: usize = 100;
/// Board width (`W_WIDTH`).
pub const W_WIDTH: u16 = 2000;
/// Board height (`W_HEIGHT`).
pub const W_HEIGHT: u16 = 2000;
/// The course's default port.
pub const DEFAULT_PORT: u16 = 4000;
/// The course's `MAX_USER`.
pub const MAX_USER: usize = 10_000;
/// The course's `MAX_NPC`.
pub const MAX_NPC: usize = 200_000;
/// The course's `VIEW_RANGE`.
pub const VIEW_RANGE: u16 = 7;

/// A fixed-size, NUL-padded name.
pub type Name = [u8; NAME_SIZE];

/// Client → server packet types.
pub mod cs {
    /// `CS_LOGIN`: `name[20]`.
    pub const LOGIN: u8 = 0;
    /// `CS_MOVE`: `direction: u8, move_time: u32`.
    pub const MOVE: u8 = 1;
    /// `CS_CHAT`: `mess[n]`, 0 < n ≤ 100.
    pub const CHAT: u8 = 2;
    /// `CS_ATTACK`: no body.
    pub const ATTACK: u8 = 3;
    /// `CS_TELEPORT`: no body.
    pub const TELEPORT: u8 = 4;
    /// `CS_LOGOUT`: no body.
    pub const LOGOUT: u8 = 5;
}

/// Server → client packet types.
pub mod sc {
    /// `SC_LOGIN_INFO`: `id, hp, max_hp, exp, level: i32, x, y: i16`.
    pub const LOGIN_INFO: u8 = 2;
    /// `SC_ADD_OBJECT`: `id: i32, x, y: i16, name[20]`.
    pub const ADD_OBJECT: u8 = 3;
    /// `SC_REMOVE_OBJECT`: `id: i32`.
    pub const REMOVE_OBJECT: u8 = 4;
    /// `SC_MOVE_OBJECT`: `id: i32, x, y: i16, move_time: u32`.
    pub const MOVE_OBJECT: u8 = 5;
    /// `SC_CHAT`: `id: i32, mess[n]`.
    pub const CHAT: u8 = 6;
    /// `SC_LOGIN_OK`: no body.
    pub const LOGIN_OK: u8 = 7;
    /// `SC_LOGIN_FAIL`: no body.
    pub const LOGIN_FAIL: u8 = 8;
    /// `SC_STAT_CHANGE`: `hp, max_hp, exp, level: i32`.
    pub const STAT_CHANGE: u8 = 9;
}

/// Header bytes (size field + type byte): [`SizeField::header_len`], the server layer's
/// `[size][type]` header, which this protocol is written on.
pub fn header_len(h: SizeField) -> usize {
    h.header_len()
}

/// A name from a string: at most 19 bytes kept (so C clients always find a NUL), NUL-padded.
pub fn name(s: &str) -> Name {
    let mut n = [0u8; NAME_SIZE];
    let b = s.as_bytes();
    let len = b.len().min(NAME_SIZE - 1);
    n[..len].copy_from_slice(&b[..len]);
    n
}

/// A name as text, up to its first NUL.
pub fn name_str(n: &Name) -> String {
    let end = n.iter().position(|&b| b == 0).unwrap_or(NAME_SIZE);
    String::from_utf8_lossy(&n[..end]).into_owned()
}

/// `CS_MOVE`'s direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// 0: y − 1.
    Up = 0,
    /// 1: y + 1.
    Down = 1,
    /// 2: x − 1.
    Left = 2,
    /// 3: x + 1.
    Right = 3,
}

impl Direction {
    /// All four, in wire order.
    pub const ALL: [Direction; 4] = [
        Direction::Up,
        Direction::Down,
        Direction::Left,
        Direction::Right,
    ];

    /// The direction with this wire value.
    pub fn from_u8(v: u8) -> Option<Direction> {
        Direction::ALL.get(v as usize).copied()
    }

    /// `(dx, dy)` of one step.
    pub fn delta(self) -> (i32, i32) {
        match self {
            Direction::Up => (0, -1),
            Direction::Down => (0, 1),
            Direction::Left => (-1, 0),
            Direction::Right => (1, 0),
        }
    }
}

/// A packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    /// `CS_LOGIN`.
    Login {
        /// The player's name.
        name: Name,
    },
    /// `CS_MOVE`.
    Move {
        /// Where to.
        direction: Direction,
        /// The client's clock (ms), echoed back unchanged in the mover's own `SC_MOVE_OBJECT`.
        move_time: u32,
    },
    /// `CS_CHAT`: 1..=100 bytes of text.
    Chat {
        /// The text.
        mess: Vec<u8>,
    },
    /// `CS_ATTACK`.
    Attack,
    /// `CS_TELEPORT`.
    Teleport,
    /// `CS_LOGOUT`.
    Logout,
}

/// A packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket {
    /// `SC_LOGIN_INFO`.
    LoginInfo {
        /// The player's id.
        id: i32,
        /// Hit points.
        hp: i32,
        /// Most hit points.
        max_hp: i32,
        /// Experience.
        exp: i32,
        /// Level.
        level: i32,
        /// Position.
        x: i16,
        /// Position.
        y: i16,
    },
    /// `SC_ADD_OBJECT`.
    AddObject {
        /// The object's id.
        id: i32,
        /// Position.
        x: i16,
        /// Position.
        y: i16,
        /// Its name.
        name: Name,
    },
    /// `SC_REMOVE_OBJECT`.
    RemoveObject {
        /// The object's id.
        id: i32,
    },
    /// `SC_MOVE_OBJECT`.
    MoveObject {
        /// The object's id.
        id: i32,
        /// New position.
        x: i16,
        /// New position.
        y: i16,
        /// The mover's `move_time` (0 for NPCs).
        move_time: u32,
    },
    /// `SC_CHAT`.
    Chat {
        /// The sender's id.
        id: i32,
        /// The text.
        mess: Vec<u8>,
    },
    /// `SC_LOGIN_OK`.
    LoginOk,
    /// `SC_LOGIN_FAIL`.
    LoginFail,
    /// `SC_STAT_CHANGE`.
    StatChange {
        /// Hit points.
        hp: i32,
        /// Most hit points.
        max_hp: i32,
        /// Experience.
        exp: i32,
        /// Level.
        level: i32,
    },
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    Short {
        /// Bytes given.
        len: usize,
    },
    /// The size field does not match the packet's length.
    SizeMismatch {
        /// What the size field says.
        declared: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A type this direction does not have.
    UnknownType(u8),
    /// The size is wrong for the type.
    WrongSize {
        /// The type.
        kind: u8,
        /// The packet's total size.
        size: usize,
        /// The size the type has.
        expected: usize,
    },
    /// `CS_MOVE` with a direction other than 0..=3.
    BadDirection(u8),
    /// Chat text of 0 or more than 100 bytes.
    BadChatSize(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { len } => {
                write!(f, "packet of {len} bytes is shorter than a header")
            }
            DecodeError::SizeMismatch { declared, actual } => {
                write!(f, "size field says {declared} bytes, packet has {actual}")
            }
            DecodeError::UnknownType(t) => write!(f, "unknown packet type {t}"),
            DecodeError::WrongSize {
                kind,
                size,
                expected,
            } => write!(
                f,
                "packet type {kind} of {size} bytes (expected {expected})"
            ),
            DecodeError::BadDirection(d) => write!(f, "bad move direction {d}"),
            DecodeError::BadChatSize(n) => {
                write!(f, "chat of {n} bytes (must be 1..={CHAT_SIZE})")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Writes a header for a packet of `body_len` body bytes (the server layer's header code).
fn put_header(out: &mut Vec<u8>, h: SizeField, kind: u8, body_len: usize) {
    h.put_header(out, kind, body_len);
}

/// Checks the header of a framed packet; returns `(type, body)`.
fn split(packet: &[u8], h: SizeField) -> Result<(u8, &[u8]), DecodeError> {
    let hl = header_len(h);
    if packet.len() < hl {
        return Err(DecodeError::Short { len: packet.len() });
    }
    let declared = h.read(packet).expect("the header's length was checked");
    if declared != packet.len() {
        return Err(DecodeError::SizeMismatch {
            declared,
            actual: packet.len(),
        });
    }
    Ok((packet[hl - 1], &packet[hl..]))
}

/// The length of the first whole packet in `buf`, if it has arrived (for clients reading a
/// stream). Sizes below the header count as a whole "packet" of that many header bytes,
/// which then fails to decode.
pub fn frame_len(buf: &[u8], h: SizeField) -> Option<usize> {
    let len = h.read(buf)?.max(header_len(h));
    (buf.len() >= len).then_some(len)
}

fn expect_body(kind: u8, body: &[u8], h: SizeField, n: usize) -> Result<(), DecodeError> {
    if body.len() == n {
        Ok(())
    } else {
        Err(DecodeError::WrongSize {
            kind,
            size: header_len(h) + body.len(),
            expected: header_len(h) + n,
        })
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn name_at(b: &[u8], at: usize) -> Name {
    b[at..at + NAME_SIZE].try_into().expect("20 bytes")
}

impl ClientPacket {
    /// The packet's type byte.
    pub fn kind(&self) -> u8 {
        match self {
            ClientPacket::Login { .. } => cs::LOGIN,
            ClientPacket::Move { .. } => cs::MOVE,
            ClientPacket::Chat { .. } => cs::CHAT,
            ClientPacket::Attack => cs::ATTACK,
            ClientPacket::Teleport => cs::TELEPORT,
            ClientPacket::Logout => cs::LOGOUT,
        }
    }

    /// Appends the encoded packet to `out`. Panics on chat text over the size field's limit
    /// (a programming error; [`ClientPacket::decode`] is what refuses bad input).
    pub fn encode_into(&self, h: SizeField, out: &mut Vec<u8>) {
        match self {
            ClientPacket::Login { name } => {
                put_header(out, h, cs::LOGIN, NAME_SIZE);
                out.extend_from_slice(name);
            }
            ClientPacket::Move {
                direction,
                move_time,
            } => {
                put_header(out, h, cs::MOVE, 5);
                out.push(*direction as u8);
                out.extend_from_slice(&move_time.to_le_bytes());
            }
            ClientPacket::Chat { mess } => {
                put_header(out, h, cs::CHAT, mess.len());
                out.extend_from_slice(mess);
            }
            ClientPacket::Attack | ClientPacket::Teleport | ClientPacket::Logout => {
                put_header(out, h, self.kind(), 0)
            }
        }
    }

    /// The encoded packet.
    pub fn encode(&self, h: SizeField) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        self.encode_into(h, &mut v);
        v
    }

    /// Decodes one framed packet (header included, as the server layer's `on_packet` gives
    /// it), refusing unknown types, wrong sizes, bad directions and empty or long chat.
    pub fn decode(packet: &[u8], h: SizeField) -> Result<ClientPacket, DecodeError> {
        let (kind, body) = split(packet, h)?;
        match kind {
            cs::LOGIN => {
                expect_body(kind, body, h, NAME_SIZE)?;
                Ok(ClientPacket::Login {
                    name: name_at(body, 0),
                })
            }
            cs::MOVE => {
                expect_body(kind, body, h, 5)?;
                let direction =
                    Direction::from_u8(body[0]).ok_or(DecodeError::BadDirection(body[0]))?;
                Ok(ClientPacket::Move {
                    direction,
                    move_time: u32_at(body, 1),
                })
            }
            cs::CHAT => {
                if body.is_empty() || body.len() > CHAT_SIZE {
                    return Err(DecodeError::BadChatSize(body.len()));
                }
                Ok(ClientPacket::Chat {
                    mess: body.to_vec(),
                })
            }
            cs::ATTACK | cs::TELEPORT | cs::LOGOUT => {
                expect_body(kind, body, h, 0)?;
                Ok(match kind {
                    cs::ATTACK => ClientPacket::Attack,
                    cs::TELEPORT => ClientPacket::Teleport,
                    _ => ClientPacket::Logout,
                })
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

impl ServerPacket {
    /// The packet's type byte.
    pub fn kind(&self) -> u8 {
        match self {
            ServerPacket::LoginInfo { .. } => sc::LOGIN_INFO,
            ServerPacket::AddObject { .. } => sc::ADD_OBJECT,
            ServerPacket::RemoveObject { .. } => sc::REMOVE_OBJECT,
            ServerPacket::MoveObject { .. } => sc::MOVE_OBJECT,
            ServerPacket::Chat { .. } => sc::CHAT,
            ServerPacket::LoginOk => sc::LOGIN_OK,
            ServerPacket::LoginFail => sc::LOGIN_FAIL,
            ServerPacket::StatChange { .. } => sc::STAT_CHANGE,
        }
    }

    /// Appends the encoded packet to `out`. Panics on chat text that does not fit the size
    /// field (a programming error).
    pub fn encode_into(&self, h: SizeField, out: &mut Vec<u8>) {
        match self {
            ServerPacket::LoginInfo {
                id,
                hp,
                max_hp,
                exp,
                level,
                x,
                y,
            } => {
                put_header(out, h, sc::LOGIN_INFO, 24);
                for v in [id, hp, max_hp, exp, level] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
            }
            ServerPacket::AddObject { id, x, y, name } => {
                put_header(out, h, sc::ADD_OBJECT, 8 + NAME_SIZE);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
                out.extend_from_slice(name);
            }
            ServerPacket::RemoveObject { id } => {
                put_header(out, h, sc::REMOVE_OBJECT, 4);
                out.extend_from_slice(&id.to_le_bytes());
            }
            ServerPacket::MoveObject {
                id,
                x,
                y,
                move_time,
            } => {
                put_header(out, h, sc::MOVE_OBJECT, 12);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
                out.extend_from_slice(&move_time.to_le_bytes());
            }
            ServerPacket::Chat { id, mess } => {
                put_header(out, h, sc::CHAT, 4 + mess.len());
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(mess);
            }
            ServerPacket::LoginOk | ServerPacket::LoginFail => put_header(out, h, self.kind(), 0),
            ServerPacket::StatChange {
                hp,
                max_hp,
                exp,
                level,
            } => {
                put_header(out, h, sc::STAT_CHANGE, 16);
                for v in [hp, max_hp, exp, level] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }

    /// The encoded packet.
    pub fn encode(&self, h: SizeField) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        self.encode_into(h, &mut v);
        v
    }

    /// Decodes one framed packet (header included).
    pub fn decode(packet: &[u8], h: SizeField) -> Result<ServerPacket, DecodeError> {
        let (kind, body) = split(packet, h)?;
        match kind {
            sc::LOGIN_INFO => {
                expect_body(kind, body, h, 24)?;
                Ok(ServerPacket::LoginInfo {
                    id: i32_at(body, 0),
                    hp: i32_at(body, 4),
                    max_hp: i32_at(body, 8),
                    exp: i32_at(body, 12),
                    level: i32_at(body, 16),
                    x: i16_at(body, 20),
                    y: i16_at(body, 22),
                })
            }
            sc::ADD_OBJECT => {
                expect_body(kind, body, h, 8 + NAME_SIZE)?;
                Ok(ServerPacket::AddObject {
                    id: i32_at(body, 0),
                    x: i16_at(body, 4),
                    y: i16_at(body, 6),
                    name: name_at(body, 8),
                })
            }
            sc::REMOVE_OBJECT => {
                expect_body(kind, body, h, 4)?;
                Ok(ServerPacket::RemoveObject {
                    id: i32_at(body, 0),
                })
            }
            sc::MOVE_OBJECT => {
                expect_body(kind, body, h, 12)?;
                Ok(ServerPacket::MoveObject {
                    id: i32_at(body, 0),
                    x: i16_at(body, 4),
                    y: i16_at(body, 6),
                    move_time: u32_at(body, 8),
                })
            }
            sc::CHAT => {
                if body.len() < 4 {
                    return Err(DecodeError::WrongSize {
                        kind,
                        size: header_len(h) + body.len(),
                        expected: header_len(h) + 4,
                    });
                }
                if body.len() - 4 > CHAT_SIZE {
                    return Err(DecodeError::BadChatSize(body.len() - 4));
                }
                Ok(ServerPacket::Chat {
                    id: i32_at(body, 0),
                    mess: body[4..].to_vec(),
                })
            }
            sc::LOGIN_OK | sc::LOGIN_FAIL => {
                expect_body(kind, body, h, 0)?;
                Ok(if kind == sc::LOGIN_OK {
                    ServerPacket::LoginOk
                } else {
                    ServerPacket::LoginFail
                })
            }
            sc::STAT_CHANGE => {
                expect_body(kind, body, h, 16)?;
                Ok(ServerPacket::StatChange {
                    hp: i32_at(body, 0),
                    max_hp: i32_at(body, 4),
                    exp: i32_at(body, 8),
                    level: i32_at(body, 12),
                })
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}
