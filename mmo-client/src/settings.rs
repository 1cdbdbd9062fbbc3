//! What a run is told: the server, the ramp's pace, the client's threads.

use std::net::SocketAddr;
use std::time::Duration;

use cport_mmo_proto::SizeField;
use cport_server::cport::Backend;

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The game server.
    pub addr: SocketAddr,
    /// Its header width.
    pub header: SizeField,
    /// Most clients at once.
    pub max_clients: usize,
    /// The delay limit (ms): 100 in the course; shedding starts above 1.5 × this.
    pub delay_limit_ms: u64,
    /// How long the whole run lasts (every loop is bounded by it).
    pub duration: Duration,
    /// Time between adds under the limit (the course: 50 ms).
    pub ramp_interval: Duration,
    /// Time between sheds above 1.5 × the limit (the course: 500 ms).
    pub shed_interval: Duration,
    /// How often each dummy moves (jittered ±5%; the course: once a second).
    pub move_interval: Duration,
    /// Client worker threads.
    pub threads: usize,
    /// The client's own port backend (`None`: default).
    pub backend: Option<Backend>,
    /// Object ids from this up are NPCs (the server's `max_users`).
    pub npc_ids_from: u32,
    /// Keep each dummy's picture of the objects it sees (for the map).
    pub keep_picture: bool,
    /// With several client processes: have them send their maps once a second (for a live
    /// view's [`Probe`](crate::Probe); the map at the end is always sent).
    pub live_map: bool,
}

impl Settings {
    /// The course's settings against `addr`, for `duration`.
    pub fn new(addr: SocketAddr, duration: Duration) -> Settings {
        Settings {
            addr,
            header: SizeField::U8,
            max_clients: 20_000,
            delay_limit_ms: 100,
            duration,
            ramp_interval: Duration::from_millis(50),
            shed_interval: Duration::from_millis(500),
            move_interval: Duration::from_secs(1),
            threads: 2,
            backend: None,
            npc_ids_from: cport_mmo_proto::MAX_USER as u32,
            keep_picture: true,
            live_map: false,
        }
    }
}

/// `u8` or `u16`, as the report and the child processes' settings spell a header width.
pub(crate) fn header_name(h: SizeField) -> &'static str {
    match h {
        SizeField::U8 => "u8",
        SizeField::U16 => "u16",
    }
}
