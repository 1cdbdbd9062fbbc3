//! The cluster's messages on the bus, and their encoding. Written down for operators in
//! ARCHITECTURE.md ("Cluster: subjects and messages").
//!
//! Every NATS message is one **batch**: a header naming its sender, then entries, each a
//! tag and a length, so that a reader skips an entry it does not know (a newer sender) and
//! stops at the first one it cannot read (counted and logged by the caller, never a panic).
//!
//! ```text
//! batch  = magic "CPC" | version u8 (=2) | source kind u8 (1 gateway, 2 zone) | source u16
//!          | incarnation u64 | seq u64 | entry*
//! entry  = tag u8 | len u32 | body (len bytes)
//! ```
//! All integers little-endian. Strings are a `u8` length and UTF-8 bytes; byte blobs the rest
//! of the entry's body. `seq` counts the sender's batches to one destination from 0 per
//! incarnation, so a reader can tell a gap (NATS is at-most-once) from a restart. The
//! incarnation is the process's start time in microseconds since the Unix epoch: a restarted
//! process has a larger one, so a receiver tells the new run from a stale one (a process that
//! was stopped and woke up after its replacement started) and drops the stale one's batches.
//!
//! Why one file: each message's writer and reader sit side by side (and the round-trip
//! test that lists them all), so a change to a message's layout cannot miss its other half.

use bytes::{BufMut, Bytes, BytesMut};

use cport_mmo_proto::{Name, NAME_SIZE};

/// The first bytes of every batch.
pub const MAGIC: &[u8; 3] = b"CPC";
/// The format version this build writes (and the only one it reads).
pub const VERSION: u8 = 2;
/// Bytes before the first entry.
pub const HEADER_LEN: usize = 3 + 1 + 1 + 2 + 8 + 8;

/// Who sent a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Gateway number `n`.
    Gateway(u16),
    /// Zone number `n`.
    Zone(u16),
}

/// A batch's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender.
    pub source: Source,
    /// The sender process's start time (µs since the Unix epoch): a restarted process has a
    /// larger one, and a batch of a smaller one than the newest seen from that source comes
    /// from a process that has been replaced.
    pub incarnation: u64,
    /// The sender's batch count to this destination in this incarnation.
    pub seq: u64,
}

/// A client's picture: each object it was told of, at the position it was told (sorted by
/// id).
pub type Picture = Vec<(u32, u16, u16)>;

/// A player's state as it moves from zone to zone (hand-off) or from the zone that loaded it
/// to the zone that owns its cell (login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The player's id (cluster-wide, assigned by its gateway).
    pub player: u32,
    /// The ownership epoch the receiver takes the player at.
    pub epoch: u32,
    /// The player's gateway and its session there.
    pub gateway: u16,
    /// The session on that gateway.
    pub session: u64,
    /// `true`: a login (the receiver sends `SC_LOGIN_INFO`); `false`: a hand-off or a resume.
    pub login: bool,
    /// `true`: the player's zone died and this is its last saved state, sent by its home zone
    /// at the gateway's [`Msg::Resume`]; the client stays connected and `view` is what the
    /// gateway forwarded to it (the player's own entry included: where the client believes
    /// it is). No [`Msg::TransferAck`] is sent for it.
    pub resume: bool,
    /// The incarnation of the player's gateway this session belongs to (a zone that has seen
    /// a newer incarnation of that gateway knows the session is gone).
    pub gw_inc: u64,
    /// The player's name.
    pub name: String,
    /// Position.
    pub x: u16,
    /// Position.
    pub y: u16,
    /// Stats.
    pub hp: i32,
    /// Stats.
    pub max_hp: i32,
    /// Stats.
    pub exp: i32,
    /// Stats.
    pub level: i32,
    /// The last `CS_MOVE` `move_time` (a teleport echoes it).
    pub last_move_time: u32,
    /// The zones that hold a ghost of the player now (bit `z` = zone `z`).
    pub ghosts: u64,
    /// What the client has been told: each object it sees, at the position it was told.
    pub view: Vec<(u32, u16, u16)>,
}

/// A player's row as the owner last wrote it (sent with [`Msg::Offline`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Position.
    pub x: u16,
    /// Position.
    pub y: u16,
    /// Stats.
    pub hp: i32,
    /// Stats.
    pub max_hp: i32,
    /// Stats.
    pub exp: i32,
    /// Stats.
    pub level: i32,
}

/// One entry of a batch. Who sends each, and to whom, is in its doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    // --- gateway → zone -------------------------------------------------------------
    /// A client sent `CS_LOGIN` (to the name's home zone, [`Layout::home_of`](super::Layout::home_of)).
    /// The gateway holds the session's later packets until some zone sends [`Msg::Owned`].
    Login {
        /// The session on the sending gateway.
        session: u64,
        /// The id the gateway gave the player.
        player: u32,
        /// The name, as the client sent it (checked by the gateway).
        name: String,
    },
    /// One course-protocol packet of a player, to the zone that owns it at `epoch`.
    Packet {
        /// The player.
        player: u32,
        /// The epoch the gateway routes at.
        epoch: u32,
        /// The whole packet, size field included.
        packet: Bytes,
    },
    /// The gateway holds the player's packets from now on (answer to [`Msg::HandoffBegin`]);
    /// every packet sent before it has been sent before it.
    Held {
        /// The player.
        player: u32,
        /// The epoch of the hand-off's start.
        epoch: u32,
    },
    /// The gateway routes the player to this zone at `epoch` (answer to [`Msg::Owned`] or to
    /// [`Msg::HandoffCancel`]): the zone is the owner, and may save the player's row.
    Confirm {
        /// The player.
        player: u32,
        /// The epoch.
        epoch: u32,
    },
    /// The gateway refused this zone's claim on the player at `epoch` (another zone owns
    /// it): the zone keeps at most a ghost and writes nothing.
    Revoke {
        /// The player.
        player: u32,
        /// The refused epoch.
        epoch: u32,
    },
    /// The client is gone (closed or dropped): the owner at `epoch` saves and removes it.
    Disconnect {
        /// The player.
        player: u32,
        /// The epoch.
        epoch: u32,
    },
    /// The zone that owned the player was replaced (a newer incarnation of it spoke): to the
    /// name's home zone, which loads the player's last saved row and sends it
    /// ([`Transfer::resume`]) to the zone owning its cell, at `epoch` or later. The client
    /// stays connected; its packets are held until [`Msg::Owned`].
    Resume {
        /// The session on the sending gateway.
        session: u64,
        /// The player.
        player: u32,
        /// The name.
        name: String,
        /// The epoch the new owner takes the player at (the gateway's last, plus one).
        epoch: u32,
        /// What the gateway forwarded to the client: each object it sees at the position it
        /// was told, the player itself included.
        view: Vec<(u32, u16, u16)>,
    },
    /// To a home zone that was replaced: this gateway's player `player` holds the name (the
    /// new incarnation rebuilds its cluster-wide login marks from these).
    Relock {
        /// The player.
        player: u32,
        /// The name.
        name: String,
    },
    /// Every [`Msg::Relock`] of this gateway for the receiver has been sent.
    RelockDone,

    // --- zone → gateway -------------------------------------------------------------
    /// Course-protocol packets for one session (one or more whole packets, concatenated).
    Send {
        /// The session.
        session: u64,
        /// The packets.
        bytes: Bytes,
    },
    /// Close the session: `None` once what was sent is flushed (logout, login refused),
    /// `Some(why)` at once, for what the client sent.
    Close {
        /// The session.
        session: u64,
        /// Why, if rejected.
        reason: Option<String>,
    },
    /// The sending zone took the player at `epoch` (a login placed, a hand-off arrived).
    Owned {
        /// The session.
        session: u64,
        /// The player.
        player: u32,
        /// The new epoch.
        epoch: u32,
    },
    /// The owner wants to hand the player to zone `to`: hold its packets and answer
    /// [`Msg::Held`].
    HandoffBegin {
        /// The session.
        session: u64,
        /// The player.
        player: u32,
        /// The owner's (current) epoch.
        epoch: u32,
        /// The zone it would go to.
        to: u16,
        /// The epoch this attempt offers the new owner: the gateway accepts an `Owned` only at
        /// this epoch while it holds for this hand-off (a late claim of an earlier, timed-out
        /// attempt is refused).
        next: u32,
    },
    /// The hand-off at `epoch` did not happen (walked back, the new zone did not answer):
    /// release the held packets to the sender, which keeps the player at `epoch`.
    HandoffCancel {
        /// The session.
        session: u64,
        /// The player.
        player: u32,
        /// The epoch the sender keeps.
        epoch: u32,
    },

    // --- zone → zone ----------------------------------------------------------------
    /// An object of the sender is now within ghost range of the receiver (or the sender
    /// restates it, answering [`Msg::SnapshotRequest`]): place or update the ghost.
    GhostEnter {
        /// Object id (player or NPC).
        id: u32,
        /// Position.
        x: u16,
        /// Position.
        y: u16,
        /// Name (`SC_ADD_OBJECT`'s).
        name: Name,
    },
    /// A ghosted object moved.
    GhostMove {
        /// Object id.
        id: u32,
        /// New position.
        x: u16,
        /// New position.
        y: u16,
        /// The `move_time` its own `SC_MOVE_OBJECT` carried (0 for NPCs).
        move_time: u32,
    },
    /// A ghosted object left ghost range, logged out or died: remove the ghost.
    GhostLeave {
        /// Object id.
        id: u32,
    },
    /// A ghosted player said something: `SC_CHAT` to the receiver's players who see it.
    GhostChat {
        /// The speaker.
        id: u32,
        /// The text as the client sent it.
        mess: Bytes,
    },
    /// A player of the sender hit an NPC the receiver owns.
    Attack {
        /// The attacking player.
        attacker: u32,
        /// The attacker's level (the damage rule's input).
        level: i32,
        /// The NPC.
        npc: u32,
    },
    /// What [`Msg::Attack`] did: `damage` dealt, the NPC left with `left` hit points (`≤ 0`:
    /// killed). Not sent for an NPC that was already dead.
    AttackResult {
        /// The attacking player.
        attacker: u32,
        /// The NPC.
        npc: u32,
        /// Damage dealt.
        damage: i32,
        /// Hit points left.
        left: i32,
    },
    /// A player's state, to the zone that will own it.
    Transfer(Box<Transfer>),
    /// The receiver of a [`Msg::Transfer`] took the player (a hand-off's old owner then
    /// keeps only a ghost).
    TransferAck {
        /// The player.
        player: u32,
        /// The epoch taken.
        epoch: u32,
    },
    /// Send a [`Msg::GhostEnter`] for every object of yours within ghost range of me (a zone
    /// that (re)started).
    SnapshotRequest,

    // --- any → any ------------------------------------------------------------------
    /// "This incarnation is alive": every process sends it to every other about twice a
    /// second (the header says who and which run). A new incarnation's first one tells the
    /// others that the previous run is gone.
    Alive,
    /// To a process whose batch came from an incarnation older than the newest one seen
    /// from its source: it has been replaced and must stop at once, writing nothing.
    Fenced {
        /// The newest incarnation the receiver's source is known by.
        newer: u64,
    },
    /// The player left the game (to its home zone): the name is free again; `row` is what
    /// the owner wrote last (newer than the database until that write commits).
    Offline {
        /// The name.
        name: String,
        /// Its last row, if it was placed.
        row: Option<Row>,
    },
}

mod tag {
    pub const LOGIN: u8 = 1;
    pub const PACKET: u8 = 2;
    pub const HELD: u8 = 3;
    pub const CONFIRM: u8 = 4;
    pub const REVOKE: u8 = 5;
    pub const DISCONNECT: u8 = 6;
    pub const RESUME: u8 = 7;
    pub const RELOCK: u8 = 8;
    pub const RELOCK_DONE: u8 = 9;
    pub const SEND: u8 = 20;
    pub const CLOSE: u8 = 21;
    pub const OWNED: u8 = 22;
    pub const HANDOFF_BEGIN: u8 = 23;
    pub const HANDOFF_CANCEL: u8 = 24;
    pub const GHOST_ENTER: u8 = 40;
    pub const GHOST_MOVE: u8 = 41;
    pub const GHOST_LEAVE: u8 = 42;
    pub const GHOST_CHAT: u8 = 43;
    pub const ATTACK: u8 = 44;
    pub const ATTACK_RESULT: u8 = 45;
    pub const TRANSFER: u8 = 46;
    pub const TRANSFER_ACK: u8 = 47;
    pub const SNAPSHOT_REQUEST: u8 = 48;
    pub const OFFLINE: u8 = 49;
    pub const ALIVE: u8 = 60;
    pub const FENCED: u8 = 61;
}

/// Why a batch (or the rest of it) could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header, or not starting with [`MAGIC`].
    NotABatch,
    /// A version this build does not read.
    Version(u8),
    /// An unknown source kind.
    SourceKind(u8),
    /// An entry's length runs past the batch's end.
    Truncated,
    /// An entry of a known tag whose body does not parse.
    BadEntry(u8),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::NotABatch => write!(f, "not a cluster batch (no CPC header)"),
            WireError::Version(v) => write!(f, "batch version {v}, this build reads {VERSION}"),
            WireError::SourceKind(k) => write!(f, "unknown source kind {k}"),
            WireError::Truncated => write!(f, "an entry runs past the end of the batch"),
            WireError::BadEntry(t) => write!(f, "entry of tag {t} does not parse"),
        }
    }
}

impl std::error::Error for WireError {}

/// Builds one batch: a header, then entries as they are pushed.
#[derive(Debug)]
pub struct BatchWriter {
    buf: BytesMut,
    entries: usize,
    /// Where the last entry starts, and its session if it is a `Send` (to append to it).
    last_send: Option<(usize, u64)>,
}

impl BatchWriter {
    /// An empty batch from `source`.
    pub fn new(h: Header) -> BatchWriter {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_slice(MAGIC);
        buf.put_u8(VERSION);
        let (kind, id) = match h.source {
            Source::Gateway(n) => (1, n),
            Source::Zone(n) => (2, n),
        };
        buf.put_u8(kind);
        buf.put_u16_le(id);
        buf.put_u64_le(h.incarnation);
        buf.put_u64_le(h.seq);
        BatchWriter {
            buf,
            entries: 0,
            last_send: None,
        }
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes so far (header included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// No entries yet.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn begin(&mut self, t: u8) -> usize {
        self.buf.put_u8(t);
        let at = self.buf.len();
        self.buf.put_u32_le(0);
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.entries += 1;
    }

    /// Appends packets for `session`: to the last entry if that is a `Send` to the same
    /// session (consecutive packets to one client share an entry), else as a new entry.
    pub fn push_send(&mut self, session: u64, bytes: &[u8]) {
        if let Some((at, s)) = self.last_send {
            if s == session {
                self.buf.put_slice(bytes);
                let len = (self.buf.len() - at - 4) as u32;
                self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
                return;
            }
        }
        let at = self.begin(tag::SEND);
        self.buf.put_u64_le(session);
        self.buf.put_slice(bytes);
        self.end(at);
        self.last_send = Some((at, session));
    }

    /// Appends one entry.
    pub fn push(&mut self, m: &Msg) {
        if let Msg::Send { session, bytes } = m {
            return self.push_send(*session, bytes);
        }
        self.last_send = None;
        let b = &mut self.buf;
        let at;
        match m {
            Msg::Login {
                session,
                player,
                name,
            } => {
                at = begin(b, tag::LOGIN);
                b.put_u64_le(*session);
                b.put_u32_le(*player);
                put_str(b, name);
            }
            Msg::Packet {
                player,
                epoch,
                packet,
            } => {
                at = begin(b, tag::PACKET);
                b.put_u32_le(*player);
                b.put_u32_le(*epoch);
                b.put_slice(packet);
            }
            Msg::Held { player, epoch } => at = pe(b, tag::HELD, *player, *epoch),
            Msg::Confirm { player, epoch } => at = pe(b, tag::CONFIRM, *player, *epoch),
            Msg::Revoke { player, epoch } => at = pe(b, tag::REVOKE, *player, *epoch),
            Msg::Disconnect { player, epoch } => at = pe(b, tag::DISCONNECT, *player, *epoch),
            Msg::Send { .. } => unreachable!("handled above"),
            Msg::Close { session, reason } => {
                at = begin(b, tag::CLOSE);
                b.put_u64_le(*session);
                if let Some(r) = reason {
                    b.put_u8(1);
                    put_str(b, r);
                } else {
                    b.put_u8(0);
                }
            }
            Msg::Owned {
                session,
                player,
                epoch,
            } => {
                at = begin(b, tag::OWNED);
                b.put_u64_le(*session);
                b.put_u32_le(*player);
                b.put_u32_le(*epoch);
            }
            Msg::HandoffBegin {
                session,
                player,
                epoch,
                to,
                next,
            } => {
                at = begin(b, tag::HANDOFF_BEGIN);
                b.put_u64_le(*session);
                b.put_u32_le(*player);
                b.put_u32_le(*epoch);
                b.put_u16_le(*to);
                b.put_u32_le(*next);
            }
            Msg::HandoffCancel {
                session,
                player,
                epoch,
            } => {
                at = begin(b, tag::HANDOFF_CANCEL);
                b.put_u64_le(*session);
                b.put_u32_le(*player);
                b.put_u32_le(*epoch);
            }
            Msg::GhostEnter { id, x, y, name } => {
                at = begin(b, tag::GHOST_ENTER);
                b.put_u32_le(*id);
                b.put_u16_le(*x);
                b.put_u16_le(*y);
                b.put_slice(name);
            }
            Msg::GhostMove {
                id,
                x,
                y,
                move_time,
            } => {
                at = begin(b, tag::GHOST_MOVE);
                b.put_u32_le(*id);
                b.put_u16_le(*x);
                b.put_u16_le(*y);
                b.put_u32_le(*move_time);
            }
            Msg::GhostLeave { id } => {
                at = begin(b, tag::GHOST_LEAVE);
                b.put_u32_le(*id);
            }
            Msg::GhostChat { id, mess } => {
                at = begin(b, tag::GHOST_CHAT);
                b.put_u32_le(*id);
                b.put_slice(mess);
            }
            Msg::Attack {
                attacker,
                level,
                npc,
            } => {
                at = begin(b, tag::ATTACK);
                b.put_u32_le(*attacker);
                b.put_i32_le(*level);
                b.put_u32_le(*npc);
            }
            Msg::AttackResult {
                attacker,
                npc,
                damage,
                left,
            } => {
                at = begin(b, tag::ATTACK_RESULT);
                b.put_u32_le(*attacker);
                b.put_u32_le(*npc);
                b.put_i32_le(*damage);
                b.put_i32_le(*left);
            }
            Msg::Transfer(t) => {
                at = begin(b, tag::TRANSFER);
                b.put_u32_le(t.player);
                b.put_u32_le(t.epoch);
                b.put_u16_le(t.gateway);
                b.put_u64_le(t.session);
                b.put_u8(u8::from(t.login) | u8::from(t.resume) << 1);
                b.put_u64_le(t.gw_inc);
                put_str(b, &t.name);
                b.put_u16_le(t.x);
                b.put_u16_le(t.y);
                b.put_i32_le(t.hp);
                b.put_i32_le(t.max_hp);
                b.put_i32_le(t.exp);
                b.put_i32_le(t.level);
                b.put_u32_le(t.last_move_time);
                b.put_u64_le(t.ghosts);
                put_view(b, &t.view);
            }
            Msg::TransferAck { player, epoch } => at = pe(b, tag::TRANSFER_ACK, *player, *epoch),
            Msg::Resume {
                session,
                player,
                name,
                epoch,
                view,
            } => {
                at = begin(b, tag::RESUME);
                b.put_u64_le(*session);
                b.put_u32_le(*player);
                put_str(b, name);
                b.put_u32_le(*epoch);
                put_view(b, view);
            }
            Msg::Relock { player, name } => {
                at = begin(b, tag::RELOCK);
                b.put_u32_le(*player);
                put_str(b, name);
            }
            Msg::RelockDone => at = begin(b, tag::RELOCK_DONE),
            Msg::Alive => at = begin(b, tag::ALIVE),
            Msg::Fenced { newer } => {
                at = begin(b, tag::FENCED);
                b.put_u64_le(*newer);
            }
            Msg::SnapshotRequest => at = begin(b, tag::SNAPSHOT_REQUEST),
            Msg::Offline { name, row } => {
                at = begin(b, tag::OFFLINE);
                put_str(b, name);
                match row {
                    Some(r) => {
                        b.put_u8(1);
                        b.put_u16_le(r.x);
                        b.put_u16_le(r.y);
                        b.put_i32_le(r.hp);
                        b.put_i32_le(r.max_hp);
                        b.put_i32_le(r.exp);
                        b.put_i32_le(r.level);
                    }
                    None => b.put_u8(0),
                }
            }
        }
        self.end(at);
    }

    /// The finished batch.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

fn begin(b: &mut BytesMut, t: u8) -> usize {
    b.put_u8(t);
    let at = b.len();
    b.put_u32_le(0);
    at
}

fn pe(b: &mut BytesMut, t: u8, player: u32, epoch: u32) -> usize {
    let at = begin(b, t);
    b.put_u32_le(player);
    b.put_u32_le(epoch);
    at
}

fn put_view(b: &mut BytesMut, view: &[(u32, u16, u16)]) {
    b.put_u32_le(view.len() as u32);
    for &(id, x, y) in view {
        b.put_u32_le(id);
        b.put_u16_le(x);
        b.put_u16_le(y);
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(255)];
    b.put_u8(s.len() as u8);
    b.put_slice(s);
}

/// Reads a batch: [`read_header`], then [`BatchReader::next`] until `None`.
#[derive(Debug)]
pub struct BatchReader {
    buf: Bytes,
    at: usize,
    /// Entries of tags this build does not know, skipped so far.
    pub unknown: usize,
}

/// Checks a batch's header; the reader yields its entries.
pub fn read_header(buf: Bytes) -> Result<(Header, BatchReader), WireError> {
    if buf.len() < HEADER_LEN || &buf[..3] != MAGIC {
        return Err(WireError::NotABatch);
    }
    if buf[3] != VERSION {
        return Err(WireError::Version(buf[3]));
    }
    let id = u16::from_le_bytes([buf[5], buf[6]]);
    let source = match buf[4] {
        1 => Source::Gateway(id),
        2 => Source::Zone(id),
        k => return Err(WireError::SourceKind(k)),
    };
    let incarnation = u64::from_le_bytes(buf[7..15].try_into().expect("8 bytes"));
    let seq = u64::from_le_bytes(buf[15..23].try_into().expect("8 bytes"));
    Ok((
        Header {
            source,
            incarnation,
            seq,
        },
        BatchReader {
            buf,
            at: HEADER_LEN,
            unknown: 0,
        },
    ))
}

/// A cursor over one entry's body.
struct Body<'a> {
    b: &'a [u8],
    whole: &'a Bytes,
    base: usize,
}

impl Body<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        self.base += n;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = usize::from(self.u8()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// The rest of the body, without a copy.
    fn rest(&mut self) -> Bytes {
        let out = self.whole.slice(self.base..self.base + self.b.len());
        self.base += self.b.len();
        self.b = &[];
        out
    }
    fn done(&self) -> Option<()> {
        self.b.is_empty().then_some(())
    }
    /// A count and that many `(id u32, x u16, y u16)`.
    fn view(&mut self) -> Option<Vec<(u32, u16, u16)>> {
        let n = self.u32()? as usize;
        if n > self.b.len() / 8 {
            return None;
        }
        let mut view = Vec::with_capacity(n);
        for _ in 0..n {
            view.push((self.u32()?, self.u16()?, self.u16()?));
        }
        Some(view)
    }
}

impl BatchReader {
    /// The next entry: `None` at the end; an error stops the batch (what was read before it
    /// stands).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Msg, WireError>> {
        loop {
            if self.at == self.buf.len() {
                return None;
            }
            if self.buf.len() - self.at < 5 {
                self.at = self.buf.len();
                return Some(Err(WireError::Truncated));
            }
            let t = self.buf[self.at];
            let len = u32::from_le_bytes(self.buf[self.at + 1..self.at + 5].try_into().expect("4"))
                as usize;
            let start = self.at + 5;
            if self.buf.len() - start < len {
                self.at = self.buf.len();
                return Some(Err(WireError::Truncated));
            }
            self.at = start + len;
            let mut body = Body {
                b: &self.buf[start..start + len],
                whole: &self.buf,
                base: start,
            };
            match parse(t, &mut body) {
                Parsed::Msg(m) => return Some(Ok(m)),
                Parsed::Unknown => self.unknown += 1,
                Parsed::Bad => {
                    self.at = self.buf.len();
                    return Some(Err(WireError::BadEntry(t)));
                }
            }
        }
    }
}

enum Parsed {
    Msg(Msg),
    Unknown,
    Bad,
}

fn parse(t: u8, b: &mut Body<'_>) -> Parsed {
    let m = match t {
        tag::LOGIN => (|| {
            let m = Msg::Login {
                session: b.u64()?,
                player: b.u32()?,
                name: b.str()?,
            };
            b.done().map(|_| m)
        })(),
        tag::PACKET => (|| {
            Some(Msg::Packet {
                player: b.u32()?,
                epoch: b.u32()?,
                packet: b.rest(),
            })
        })(),
        tag::HELD | tag::CONFIRM | tag::REVOKE | tag::DISCONNECT | tag::TRANSFER_ACK => (|| {
            let (player, epoch) = (b.u32()?, b.u32()?);
            b.done()?;
            Some(match t {
                tag::HELD => Msg::Held { player, epoch },
                tag::CONFIRM => Msg::Confirm { player, epoch },
                tag::REVOKE => Msg::Revoke { player, epoch },
                tag::DISCONNECT => Msg::Disconnect { player, epoch },
                _ => Msg::TransferAck { player, epoch },
            })
        })(
        ),
        tag::SEND => (|| {
            Some(Msg::Send {
                session: b.u64()?,
                bytes: b.rest(),
            })
        })(),
        tag::CLOSE => (|| {
            let session = b.u64()?;
            let reason = match b.u8()? {
                0 => None,
                1 => Some(b.str()?),
                _ => return None,
            };
            b.done()?;
            Some(Msg::Close { session, reason })
        })(),
        tag::OWNED => (|| {
            let m = Msg::Owned {
                session: b.u64()?,
                player: b.u32()?,
                epoch: b.u32()?,
            };
            b.done().map(|_| m)
        })(),
        tag::HANDOFF_BEGIN => (|| {
            let m = Msg::HandoffBegin {
                session: b.u64()?,
                player: b.u32()?,
                epoch: b.u32()?,
                to: b.u16()?,
                next: b.u32()?,
            };
            b.done().map(|_| m)
        })(),
        tag::HANDOFF_CANCEL => (|| {
            let m = Msg::HandoffCancel {
                session: b.u64()?,
                player: b.u32()?,
                epoch: b.u32()?,
            };
            b.done().map(|_| m)
        })(),
        tag::GHOST_ENTER => (|| {
            let (id, x, y) = (b.u32()?, b.u16()?, b.u16()?);
            let name: Name = b.take(NAME_SIZE)?.try_into().ok()?;
            b.done()?;
            Some(Msg::GhostEnter { id, x, y, name })
        })(),
        tag::GHOST_MOVE => (|| {
            let m = Msg::GhostMove {
                id: b.u32()?,
                x: b.u16()?,
                y: b.u16()?,
                move_time: b.u32()?,
            };
            b.done().map(|_| m)
        })(),
        tag::GHOST_LEAVE => (|| {
            let m = Msg::GhostLeave { id: b.u32()? };
            b.done().map(|_| m)
        })(),
        tag::GHOST_CHAT => (|| {
            Some(Msg::GhostChat {
                id: b.u32()?,
                mess: b.rest(),
            })
        })(),
        tag::ATTACK => (|| {
            let m = Msg::Attack {
                attacker: b.u32()?,
                level: b.i32()?,
                npc: b.u32()?,
            };
            b.done().map(|_| m)
        })(),
        tag::ATTACK_RESULT => (|| {
            let m = Msg::AttackResult {
                attacker: b.u32()?,
                npc: b.u32()?,
                damage: b.i32()?,
                left: b.i32()?,
            };
            b.done().map(|_| m)
        })(),
        tag::TRANSFER => (|| {
            let player = b.u32()?;
            let epoch = b.u32()?;
            let gateway = b.u16()?;
            let session = b.u64()?;
            let (login, resume) = match b.u8()? {
                0 => (false, false),
                1 => (true, false),
                2 => (false, true),
                _ => return None,
            };
            let gw_inc = b.u64()?;
            let name = b.str()?;
            let (x, y) = (b.u16()?, b.u16()?);
            let (hp, max_hp, exp, level) = (b.i32()?, b.i32()?, b.i32()?, b.i32()?);
            let last_move_time = b.u32()?;
            let ghosts = b.u64()?;
            let view = b.view()?;
            b.done()?;
            Some(Msg::Transfer(Box::new(Transfer {
                player,
                epoch,
                gateway,
                session,
                login,
                resume,
                gw_inc,
                name,
                x,
                y,
                hp,
                max_hp,
                exp,
                level,
                last_move_time,
                ghosts,
                view,
            })))
        })(),
        tag::SNAPSHOT_REQUEST => b.done().map(|_| Msg::SnapshotRequest),
        tag::RESUME => (|| {
            let m = Msg::Resume {
                session: b.u64()?,
                player: b.u32()?,
                name: b.str()?,
                epoch: b.u32()?,
                view: b.view()?,
            };
            b.done().map(|_| m)
        })(),
        tag::RELOCK => (|| {
            let m = Msg::Relock {
                player: b.u32()?,
                name: b.str()?,
            };
            b.done().map(|_| m)
        })(),
        tag::RELOCK_DONE => b.done().map(|_| Msg::RelockDone),
        tag::ALIVE => b.done().map(|_| Msg::Alive),
        tag::FENCED => (|| {
            let m = Msg::Fenced { newer: b.u64()? };
            b.done().map(|_| m)
        })(),
        tag::OFFLINE => (|| {
            let name = b.str()?;
            let row = match b.u8()? {
                0 => None,
                1 => Some(Row {
                    x: b.u16()?,
                    y: b.u16()?,
                    hp: b.i32()?,
                    max_hp: b.i32()?,
                    exp: b.i32()?,
                    level: b.i32()?,
                }),
                _ => return None,
            };
            b.done()?;
            Some(Msg::Offline { name, row })
        })(),
        _ => return Parsed::Unknown,
    };
    match m {
        Some(m) => Parsed::Msg(m),
        None => Parsed::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Login {
                session: 7,
                player: 3,
                name: "dummy1".into(),
            },
            Msg::Packet {
                player: 3,
                epoch: 2,
                packet: Bytes::from_static(&[3, 1, 2]),
            },
            Msg::Held {
                player: 1,
                epoch: 2,
            },
            Msg::Confirm {
                player: 1,
                epoch: 3,
            },
            Msg::Revoke {
                player: 1,
                epoch: 4,
            },
            Msg::Disconnect {
                player: 1,
                epoch: 5,
            },
            Msg::Send {
                session: 9,
                bytes: Bytes::from_static(b"abc"),
            },
            Msg::Close {
                session: 9,
                reason: None,
            },
            Msg::Close {
                session: 9,
                reason: Some("bad".into()),
            },
            Msg::Owned {
                session: 1,
                player: 2,
                epoch: 3,
            },
            Msg::HandoffBegin {
                session: 1,
                player: 2,
                epoch: 3,
                to: 4,
                next: 5,
            },
            Msg::HandoffCancel {
                session: 1,
                player: 2,
                epoch: 3,
            },
            Msg::GhostEnter {
                id: 10_001,
                x: 5,
                y: 6,
                name: cport_mmo_proto::name("NPC10001"),
            },
            Msg::GhostMove {
                id: 4,
                x: 1,
                y: 2,
                move_time: 99,
            },
            Msg::GhostLeave { id: 4 },
            Msg::GhostChat {
                id: 4,
                mess: Bytes::from_static(b"hi"),
            },
            Msg::Attack {
                attacker: 1,
                level: 3,
                npc: 10_005,
            },
            Msg::AttackResult {
                attacker: 1,
                npc: 10_005,
                damage: 30,
                left: -5,
            },
            Msg::Transfer(Box::new(Transfer {
                player: 5,
                epoch: 6,
                gateway: 1,
                session: 77,
                login: false,
                resume: false,
                gw_inc: 1_765_000_000_000_001,
                name: "a".into(),
                x: 999,
                y: 1000,
                hp: 10,
                max_hp: 100,
                exp: 3,
                level: 2,
                last_move_time: 123,
                ghosts: 0b1010,
                view: vec![(1, 2, 3), (10_001, 4, 5)],
            })),
            Msg::Transfer(Box::new(Transfer {
                player: 6,
                epoch: 2,
                gateway: 0,
                session: 78,
                login: false,
                resume: true,
                gw_inc: 9,
                name: "b".into(),
                x: 1,
                y: 2,
                hp: 10,
                max_hp: 100,
                exp: 3,
                level: 2,
                last_move_time: 0,
                ghosts: 0,
                view: vec![(6, 1, 2)],
            })),
            Msg::TransferAck {
                player: 5,
                epoch: 6,
            },
            Msg::SnapshotRequest,
            Msg::Resume {
                session: 78,
                player: 6,
                name: "b".into(),
                epoch: 4,
                view: vec![(6, 1, 1), (10_001, 3, 3)],
            },
            Msg::Relock {
                player: 6,
                name: "b".into(),
            },
            Msg::RelockDone,
            Msg::Alive,
            Msg::Fenced {
                newer: 1_765_000_000_000_002,
            },
            Msg::Offline {
                name: "a".into(),
                row: None,
            },
            Msg::Offline {
                name: "b".into(),
                row: Some(Row {
                    x: 1,
                    y: 2,
                    hp: 3,
                    max_hp: 4,
                    exp: 5,
                    level: 6,
                }),
            },
        ]
    }

    fn header() -> Header {
        Header {
            source: Source::Zone(3),
            incarnation: 0xDEAD_BEEF_0000_0001,
            seq: 42,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let mut w = BatchWriter::new(header());
        for m in all() {
            w.push(&m);
        }
        let (h, mut r) = read_header(w.finish()).unwrap();
        assert_eq!(h, header());
        let mut got = Vec::new();
        while let Some(m) = r.next() {
            got.push(m.unwrap());
        }
        assert_eq!(got, all());
    }

    #[test]
    fn consecutive_sends_to_one_session_share_an_entry() {
        let mut w = BatchWriter::new(header());
        w.push_send(1, b"ab");
        w.push_send(1, b"cd");
        w.push_send(2, b"ef");
        w.push(&Msg::GhostLeave { id: 1 });
        w.push_send(2, b"gh");
        assert_eq!(w.entries(), 4);
        let (_, mut r) = read_header(w.finish()).unwrap();
        let got: Vec<Msg> = std::iter::from_fn(|| r.next())
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got[0],
            Msg::Send {
                session: 1,
                bytes: Bytes::from_static(b"abcd")
            }
        );
        assert_eq!(
            got[3],
            Msg::Send {
                session: 2,
                bytes: Bytes::from_static(b"gh")
            }
        );
    }

    #[test]
    fn unknown_tags_are_skipped_and_junk_is_an_error() {
        let mut w = BatchWriter::new(header());
        w.push(&Msg::GhostLeave { id: 1 });
        let mut b = w.finish().to_vec();
        b.extend_from_slice(&[200, 2, 0, 0, 0, 9, 9]); // a newer sender's entry
        b.extend_from_slice(&[tag::GHOST_LEAVE, 4, 0, 0, 0, 2, 0, 0, 0]);
        let (_, mut r) = read_header(Bytes::from(b.clone())).unwrap();
        let got: Vec<Msg> = std::iter::from_fn(|| r.next())
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got,
            vec![Msg::GhostLeave { id: 1 }, Msg::GhostLeave { id: 2 }]
        );
        assert_eq!(r.unknown, 1);

        assert_eq!(
            read_header(Bytes::from_static(b"junk")).unwrap_err(),
            WireError::NotABatch
        );
        let mut v = b.clone();
        v[3] = 9;
        assert_eq!(
            read_header(Bytes::from(v)).unwrap_err(),
            WireError::Version(9)
        );
        // A body too short for its tag, and a length past the end.
        let mut bad = b[..HEADER_LEN].to_vec();
        bad.extend_from_slice(&[tag::GHOST_LEAVE, 2, 0, 0, 0, 1, 0]);
        let (_, mut r) = read_header(Bytes::from(bad)).unwrap();
        assert_eq!(r.next(), Some(Err(WireError::BadEntry(tag::GHOST_LEAVE))));
        assert_eq!(r.next(), None);
        let mut bad = b[..HEADER_LEN].to_vec();
        bad.extend_from_slice(&[tag::GHOST_LEAVE, 200, 0, 0, 0, 1]);
        let (_, mut r) = read_header(Bytes::from(bad)).unwrap();
        assert_eq!(r.next(), Some(Err(WireError::Truncated)));
    }

    proptest::proptest! {
        /// Any bytes after a valid header: entries or an error, never a panic, and the reader
        /// always ends.
        #[test]
        fn any_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut b = BatchWriter::new(header()).finish().to_vec();
            b.extend_from_slice(&tail);
            let (_, mut r) = read_header(Bytes::from(b)).unwrap();
            let mut n = 0;
            while let Some(m) = r.next() {
                n += 1;
                if m.is_err() { proptest::prop_assert!(r.next().is_none()); break; }
                proptest::prop_assert!(n < 400);
            }
        }
    }
}
