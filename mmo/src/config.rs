//! The game server's settings ([`Config`]) and the most ids the protocol can carry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cport_mmo_proto as protocol;
use cport_server::cport::Backend;
use cport_server::SizeField;

use crate::db::DbConfig;
use crate::map::Map;
use crate::script::{Limits, ScriptSource};

/// Game server settings. `Config::default()` is the course's game on loopback, port 0.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Worker threads (`0` = available parallelism).
    pub threads: usize,
    /// Backend; `None` = the port's default (`CPORT_BACKEND`, else auto).
    pub backend: Option<Backend>,
    /// Width of the size field (`u8` is the course's default).
    pub header: SizeField,
    /// `VIEW_RANGE`: A sees B when `|dx| ≤ R` and `|dy| ≤ R`.
    pub view_range: u16,
    /// `MAX_USER`: player ids are `0..max_users` (a session gets a free one at login, the
    /// most recently freed first); logins when none is free get `SC_LOGIN_FAIL`.
    pub max_users: usize,
    /// NPCs, ids from `max_users` up.
    pub npcs: usize,
    /// Seeds NPC placement, login positions, teleports and NPC moves.
    pub seed: u64,
    /// Board width and height (`W_WIDTH`; the protocol's is 2000, tests use small boards).
    pub world_size: u16,
    /// How often an awake NPC moves (the course: once a second).
    pub npc_interval: Duration,
    /// Connections accepted beyond `max_users`, so that they can be told `SC_LOGIN_FAIL`
    /// rather than just closed (beyond that, the server layer closes them at once).
    pub overflow_sessions: usize,
    /// Most sessions open at once (`None`: `max_users + overflow_sessions`); connections
    /// beyond are accepted and closed at once. Each session is an open file: `cport mmo`
    /// sets this to what the process's open-files limit can hold when that is less.
    pub max_sessions: Option<usize>,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    pub max_send_queue: usize,
    /// Receive buffers shared by all sessions (`cport_server::Config::recv_pool`; 0: a
    /// buffer per session).
    pub recv_pool: usize,
    /// Where players are kept (`DbConfig::None`: nowhere, every login starts fresh).
    pub db: DbConfig,
    /// DB threads that load players at login (one more thread writes the saves).
    pub db_threads: usize,
    /// A changed player is written at most this long after the change (at once on logout
    /// and disconnect, and everything at shutdown).
    pub save_interval: Duration,
    /// How long a killed NPC stays dead.
    pub npc_respawn: Duration,
    /// How often a hurt player regains hit points.
    pub regen_interval: Duration,
    /// Obstacles (`--map FILE`): its width and height must be `world_size` (the game does
    /// not start otherwise). `None`: an open board.
    pub map: Option<Arc<Map>>,
    /// The share of NPCs, in percent (0..=100), that are aggressive: they chase the nearest
    /// player they see and attack it. Which ones is decided by id and seed. The others are
    /// peaceful: they walk at random and fight back the player who hit them.
    pub aggressive_npcs: u8,
    /// A chasing NPC gives up when its target or itself is farther than this many cells
    /// (on either axis) from its spawn cell, or its target farther than this from it.
    pub npc_give_up: u16,
    /// The script every NPC runs (`None`: no scripts; see SCRIPTING.md).
    pub npc_script: Option<ScriptSource>,
    /// What one script event may spend before it is stopped and its NPC disabled.
    pub script_limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 0,
            backend: None,
            header: SizeField::U8,
            view_range: protocol::VIEW_RANGE,
            max_users: protocol::MAX_USER,
            npcs: 0,
            seed: 1,
            world_size: protocol::W_WIDTH,
            npc_interval: Duration::from_secs(1),
            overflow_sessions: 64,
            max_sessions: None,
            max_send_queue: 1 << 20,
            recv_pool: cport_server::Config::default().recv_pool,
            db: DbConfig::None,
            db_threads: 2,
            save_interval: Duration::from_secs(1),
            npc_respawn: Duration::from_secs(30),
            regen_interval: Duration::from_secs(5),
            map: None,
            aggressive_npcs: 0,
            npc_give_up: 12,
            npc_script: None,
            script_limits: Limits::default(),
        }
    }
}

/// Most player and NPC ids together: ids are the protocol's `int` (i32), players
/// `0..max_users` and NPCs from `max_users` up, so the last id must be at most `i32::MAX`.
pub const MAX_IDS: usize = i32::MAX as usize + 1;
