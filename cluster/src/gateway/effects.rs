//! What the routing state machine ([`Routes`](super::Routes)) does to the world, as calls on
//! [`Effects`]: the gateway's glue runs them on the outbox, the sessions and the port's
//! timers; the tests record them.

use std::time::Duration;

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;

/// How a client connection is to be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Once what was sent to it has left (a refused login, a zone's orderly close).
    AfterFlush,
    /// At once, for what the client sent (logged by the server layer as its fault).
    Reject(String),
    /// At once, for a reason on our side (a hand-off that never finished).
    Abort(String),
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// No `Owned` came for a login.
    Login,
    /// No `Owned` or `HandoffCancel` came for a hand-off.
    Handoff,
}

/// A timer the state machine asked for: it fires for one hold of one session (`serial`), and
/// is ignored when that hold is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// What for.
    pub kind: TimerKind,
    /// The session (its whole id).
    pub session: u64,
    /// Which hold of the session.
    pub serial: u32,
}

const KIND_SHIFT: u32 = 40;

impl Timer {
    /// The timer as a port timer's key (below the server layer's `MAX_USER_KEY`) ...
    pub fn key(&self) -> u64 {
        let kind = match self.kind {
            TimerKind::Login => 1u64,
            TimerKind::Handoff => 2,
        };
        kind << KIND_SHIFT | u64::from(self.serial)
    }

    /// ... and value.
    pub fn value(&self) -> u64 {
        self.session
    }

    /// The timer a port timer's key and value stand for, if they are one of ours.
    pub fn from_key(key: u64, value: u64) -> Option<Timer> {
        let kind = match key >> KIND_SHIFT {
            1 => TimerKind::Login,
            2 => TimerKind::Handoff,
            _ => return None,
        };
        Some(Timer {
            kind,
            session: value,
            serial: (key & 0xFFFF_FFFF) as u32,
        })
    }
}

/// What the state machine does to the world. The glue runs each call while it holds the
/// state machine, so that two decisions about one player reach the outbox in the order
/// they were made.
pub trait Effects<S> {
    /// Queue `m` for zone `zone` (batched; one outbox per zone keeps the order).
    fn zone(&mut self, zone: u16, m: Msg);
    /// Write bytes (whole course packets) to a client.
    fn send(&mut self, conn: &S, bytes: Bytes);
    /// Close a client.
    fn close(&mut self, conn: &S, how: Closing);
    /// Call [`Routes::on_timer`](super::Routes::on_timer) with `timer` after `after`.
    fn timer(&mut self, after: Duration, timer: Timer);
}
