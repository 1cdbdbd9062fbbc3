//! A zone's own state beside the game's (`Game::zone`): its settings, the ghost masks of
//! what it owns, its home-zone duties, its counters; and where each player's hand-off is.
//! Data only: the logic is `game/zone/`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::wire::{Row, Transfer};
use super::{Layout, Rect};

/// A ghost is published to a zone within `R + GHOST_ADD` of its rectangle...
pub(crate) const GHOST_ADD: u16 = 2;
/// ...and dropped beyond `R + GHOST_DROP`.
pub(crate) const GHOST_DROP: u16 = 4;
/// A walking player is handed off this many cells past its zone's border.
pub(crate) const HANDOFF_DEPTH: u16 = 2;
/// How long a departed player's last row is kept by its home zone (for a new login before
/// the owner's write commits).
pub(crate) const RECENT_ROWS_FOR: Duration = Duration::from_secs(120);
/// A zone that starts takes no login until every gateway has restated the names its players
/// hold (`RelockDone`), or this long after its start (a gateway that has not spoken by then
/// is gone, or has no players).
pub const RELOCK_WAIT: Duration = Duration::from_millis(1500);
/// An unanswered claim (`Owned`, or `HandoffCancel` of a kept player) is said again this
/// often: the gateway answers each (a `Confirm` it already gave is given again), so a claim
/// whose answer the bus lost is settled at the next try.
pub(crate) const CLAIM_RETRY_EVERY: Duration = Duration::from_secs(1);
/// No zone: the sender of a ghost (`ZoneState::ghost_src`).
pub(crate) const NO_ZONE: u16 = u16::MAX;

/// What a home zone keeps of a login or a resume while the row loads.
#[derive(Debug, Default)]
pub(crate) struct HomeAsk {
    /// The incarnation of the gateway that asked.
    pub gw_inc: u64,
    /// A resume: the epoch to take the player at and the client's picture.
    pub resume: Option<(u32, super::wire::Picture)>,
}

/// A starting zone's logins wait behind the gateways' `Relock`s.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub open: bool,
    /// Gateways that sent `RelockDone` (bit per gateway).
    pub done: u64,
    /// Logins that came while closed: (gateway, its incarnation, session, player, name).
    pub waiting: Vec<(u16, u64, u64, u32, String)>,
}

/// Where a hand-off of an owned player is.
#[derive(Debug, Default)]
pub(crate) enum Handoff {
    /// None.
    #[default]
    None,
    /// The gateway was asked to hold the player's packets (`HandoffBegin`).
    /// `next`: the epoch this attempt offers the new owner (each attempt a higher one).
    Asked { since: Instant, next: u32 },
    /// The state went to the new zone, which is to take it at `epoch`; `view` is the
    /// client's picture then (restored if the hand-off times out).
    Sent {
        epoch: u32,
        since: Instant,
        view: Vec<(u32, u16, u16)>,
    },
    /// This zone holds the player (it arrived, or the hand-off out timed out) and waits for
    /// the gateway's `Confirm` before it tells the client anything: `view` is the client's
    /// picture, brought up to date then. (A `Revoke` instead: the client never heard from
    /// this claim.)
    /// `kept`: this zone kept the player after its hand-off timed out (it said
    /// `HandoffCancel`); else the player arrived here (it said `Owned`). Either is said again
    /// every [`CLAIM_RETRY_EVERY`] until the gateway answers (the bus may lose a message).
    Unconfirmed {
        view: Vec<(u32, u16, u16)>,
        kept: bool,
    },
}

/// A zone's settings.
#[derive(Debug, Clone)]
pub struct ZoneSetup {
    /// The cluster's zones.
    pub layout: Layout,
    /// This zone's number.
    pub me: u16,
    /// How long the old owner waits for the new zone to take a handed-off player before it
    /// keeps the player (default 500 ms).
    pub handoff_timeout: Duration,
    /// Test hook: the new zone takes a handed-off player only this long after it arrives
    /// (`Duration::ZERO`: at once).
    pub transfer_delay: Duration,
    /// Gateways in the cluster (a starting zone waits for each one's `RelockDone`).
    pub gateways: u16,
    /// This run of the zone (the bus incarnation): with a database, the zone takes its lease
    /// at start and every save checks it (`None`: no lease, e.g. the tests' model).
    pub lease: Option<u64>,
}

impl ZoneSetup {
    /// Zone `me` of `layout`, with the default timeout and no test delay.
    pub fn new(layout: Layout, me: u16) -> ZoneSetup {
        ZoneSetup {
            layout,
            me,
            handoff_timeout: Duration::from_millis(500),
            transfer_delay: Duration::ZERO,
            gateways: 1,
            lease: None,
        }
    }
}

/// What one zone did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneStats {
    /// This zone's number.
    pub zone: u16,
    /// Ghosts on this zone's board now (players and NPCs of other zones).
    pub ghosts: usize,
    /// Players handed to other zones (answered).
    pub handoffs_out: u64,
    /// Players taken from other zones.
    pub handoffs_in: u64,
    /// Hand-offs called off because the player walked back before the gateway held it.
    pub handoff_cancels: u64,
    /// Hand-offs the new zone did not answer in time (the player stayed).
    pub handoff_timeouts: u64,
    /// Claims the gateway refused (`Revoke`).
    pub revokes: u64,
    /// Logins this zone loaded as the name's home.
    pub home_logins: u64,
    /// Logins refused because the name was on already.
    pub duplicate_logins: u64,
    /// Hits on NPCs of other zones sent there.
    pub remote_attacks: u64,
    /// Messages dropped as stale (an epoch not held, an object owned here).
    pub stale: u64,
    /// Messages dropped as invalid (ids off the board, a message of the wrong direction).
    pub invalid: u64,
    /// Hand-off time at the old owner, from the decision to the new zone's answer: median.
    pub handoff_p50_us: u64,
    /// ... 99th percentile.
    pub handoff_p99_us: u64,
    /// ... largest.
    pub handoff_max_us: u64,
    /// Players resumed here from their last save after their zone was replaced.
    pub resumed: u64,
    /// Players logged out because their gateway was replaced or went silent.
    pub gateway_logouts: u64,
    /// Ghosts dropped because the zone that sent them was replaced.
    pub ghosts_dropped: u64,
}

#[derive(Default)]
pub(crate) struct ZoneCounters {
    pub ghosts: AtomicUsize,
    pub handoffs_out: AtomicU64,
    pub handoffs_in: AtomicU64,
    pub handoff_cancels: AtomicU64,
    pub handoff_timeouts: AtomicU64,
    pub revokes: AtomicU64,
    pub home_logins: AtomicU64,
    pub duplicate_logins: AtomicU64,
    pub remote_attacks: AtomicU64,
    pub stale: AtomicU64,
    pub invalid: AtomicU64,
    pub resumed: AtomicU64,
    pub gateway_logouts: AtomicU64,
    pub ghosts_dropped: AtomicU64,
}

/// A zone's own state beside the game's.
pub(crate) struct ZoneState {
    pub layout: Layout,
    pub me: u16,
    pub rect: Rect,
    /// Per object (as its owner sees it): the zones that hold a ghost of it (bit per zone).
    /// Written by the object's mover only.
    pub ghosts: Box<[AtomicU64]>,
    /// Per object held here as a ghost: the zone that sent it ([`NO_ZONE`]: none), so that the
    /// ghosts of a zone that was replaced can be dropped.
    pub ghost_src: Box<[AtomicU16]>,
    /// Logins wait here while this zone starts (see [`RELOCK_WAIT`]).
    pub gate: Mutex<Gate>,
    pub gateways: u16,
    /// The newest run (incarnation) seen of each gateway and each zone (0: none yet).
    pub gw_newest: Box<[AtomicU64]>,
    pub zone_newest: Box<[AtomicU64]>,
    /// Home duties: the names logged in through this zone, and their players.
    pub names: Mutex<HashMap<String, u32>>,
    /// Home duties: the last row of players that left, until it is surely committed.
    pub recent: Mutex<HashMap<String, (Row, Instant)>>,
    /// Test hook: transfers held back (`ZoneSetup::transfer_delay`).
    pub delayed: Mutex<Vec<(u16, Box<Transfer>)>>,
    pub transfer_delay: Duration,
    pub handoff_timeout: Duration,
    pub counters: ZoneCounters,
    pub handoff_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl ZoneState {
    pub(crate) fn new(setup: &ZoneSetup, objects: usize) -> ZoneState {
        ZoneState {
            rect: setup.layout.rect(usize::from(setup.me)),
            layout: setup.layout.clone(),
            me: setup.me,
            ghosts: (0..objects).map(|_| AtomicU64::new(0)).collect(),
            ghost_src: (0..objects).map(|_| AtomicU16::new(NO_ZONE)).collect(),
            gate: Mutex::new(Gate {
                open: true,
                ..Gate::default()
            }),
            gateways: setup.gateways,
            gw_newest: (0..setup.gateways).map(|_| AtomicU64::new(0)).collect(),
            zone_newest: (0..setup.layout.zones())
                .map(|_| AtomicU64::new(0))
                .collect(),
            names: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            delayed: Mutex::new(Vec::new()),
            transfer_delay: setup.transfer_delay,
            handoff_timeout: setup.handoff_timeout,
            counters: ZoneCounters::default(),
            handoff_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("valid histogram bounds"),
            ),
        }
    }

    pub(crate) fn stats(&self) -> ZoneStats {
        let c = &self.counters;
        let h = self.handoff_us.lock();
        ZoneStats {
            zone: self.me,
            ghosts: c.ghosts.load(Relaxed),
            handoffs_out: c.handoffs_out.load(Relaxed),
            handoffs_in: c.handoffs_in.load(Relaxed),
            handoff_cancels: c.handoff_cancels.load(Relaxed),
            handoff_timeouts: c.handoff_timeouts.load(Relaxed),
            revokes: c.revokes.load(Relaxed),
            home_logins: c.home_logins.load(Relaxed),
            duplicate_logins: c.duplicate_logins.load(Relaxed),
            remote_attacks: c.remote_attacks.load(Relaxed),
            stale: c.stale.load(Relaxed),
            invalid: c.invalid.load(Relaxed),
            handoff_p50_us: h.value_at_quantile(0.5),
            handoff_p99_us: h.value_at_quantile(0.99),
            handoff_max_us: h.max(),
            resumed: c.resumed.load(Relaxed),
            gateway_logouts: c.gateway_logouts.load(Relaxed),
            ghosts_dropped: c.ghosts_dropped.load(Relaxed),
        }
    }

    pub(crate) fn others(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.layout.zones() as u16).filter(move |&z| z != self.me)
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}
