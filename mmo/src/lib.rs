//! # cport-mmo — the IOCP course's game server on cport
//!
//! The course's term project: a 2000×2000 board, players who
//! log in, move one cell per request and see everything within a square view range, and
//! NPCs that move once a second while a player sees them and sleep otherwise.
//!
//! IOCP style: the game runs on the server layer's worker threads, whichever takes the
//! completion; there is no game thread and no world lock. Per-object view locks (two at a
//! time, lower id first), per-sector locks (leaves) and atomic positions — the design and
//! the lock order are in [`world`]'s docs. NPC moves are timers posted to the port
//! ([`ServerHandle::post_after`](cport_server::ServerHandle::post_after) → `on_timer`).
//!
//! Players persist ([`DbConfig`]: SQLite embedded, PostgreSQL, or none): the workers never
//! wait on the database. Loads and batches of saves are jobs for blocking DB threads, whose
//! results come back through the port as posted completions that own them
//! ([`ServerHandle::post_message`](cport_server::ServerHandle::post_message) → `on_message`),
//! the course's `EV_DB`. Changes are written behind, at most [`Config::save_interval`] after
//! they happen, at once on logout, and all of them at shutdown. Combat follows the course:
//! [`rules`].
//!
//! ```no_run
//! let server = cport_mmo::start(cport_mmo::Config { npcs: 1000, ..Default::default() })?;
//! println!("listening on {}", server.local_addr());
//! let stats = server.stats();
//! println!("{} players, {} NPCs awake", stats.players, stats.awake_npcs);
//! server.shutdown(std::time::Duration::from_secs(1));
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs)]

pub mod args;
pub mod cluster;
mod config;
pub mod db;
mod engine;
mod game;
pub mod map;
pub mod net;
pub mod rules;
pub mod script;
mod server;
mod stats;
pub mod world;

pub use config::{Config, MAX_IDS};
pub use db::{DbConfig, PlayerRow};
pub use engine::Engine;
pub use game::login::login_name;
pub use game::npc::{npc_aggressive, npc_position, npc_spawn};
pub use game::Rng;
pub use map::Map;
pub use net::{Conn, DbResult, Host};
pub use script::{Limits, ScriptSource, COURSE_SCRIPT};
pub use server::{start, MmoServer};
pub use stats::{DbStats, Placed, Snapshot, Stats};
