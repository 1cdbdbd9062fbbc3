//! The game's command-line flags, declared once for every program that runs the game
//! (`cport mmo`, and `mmo-tokio`, the same game on tokio): flatten [`GameArgs`] into a clap
//! parser with `#[command(flatten)]` and build the [`Config`] with [`GameArgs::config`].
//! Behind the `cli` feature, so that the library pulls clap only for those programs.
#![cfg(feature = "cli")]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cport_server::SizeField;

use crate::{Config, DbConfig, Map};

/// Width of the packets' size field.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// One byte (the course's default).
    U8,
    /// Two bytes, little-endian.
    U16,
}

impl Header {
    /// The flag's value as written: `u8` or `u16` (the startup line shows it).
    pub fn name(self) -> &'static str {
        match self {
            Header::U8 => "u8",
            Header::U16 => "u16",
        }
    }
}

impl From<Header> for SizeField {
    fn from(h: Header) -> SizeField {
        match h {
            Header::U8 => SizeField::U8,
            Header::U16 => SizeField::U16,
        }
    }
}

/// The flags of the game itself, whatever runs it.
#[derive(clap::Args, Debug, Clone)]
pub struct GameArgs {
    /// Address to listen on (port 0 picks a free port; the startup line shows it).
    #[arg(long, default_value = "0.0.0.0:4000")]
    pub addr: SocketAddr,
    /// Worker threads (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Width of the size field of every packet.
    #[arg(long, value_enum, default_value = "u8")]
    pub header: Header,
    /// VIEW_RANGE: a player sees what is within this many cells on both axes.
    #[arg(long, default_value_t = cport_mmo_proto::VIEW_RANGE)]
    pub view_range: u16,
    /// MAX_USER: player slots; logins beyond get SC_LOGIN_FAIL.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// NPCs (ids from max-users up), placed from --seed.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_NPC)]
    pub npcs: usize,
    /// Seed of NPC placement, login positions, teleports and NPC moves.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_send_queue: usize,
    /// Receive buffers shared by all sessions (a session takes one only when data has
    /// arrived); 0 gives every session a buffer of its own.
    #[arg(long, default_value_t = 512)]
    pub recv_pool: usize,
    /// Where players are kept: sqlite:PATH (embedded), postgres://USER@HOST:PORT/DB, or none
    /// [default: $CPORT_MMO_DB, else sqlite:mmo.db].
    #[arg(long)]
    pub db: Option<String>,
    /// A changed player is written at most this long after the change (at once on logout).
    #[arg(long, default_value_t = 1000)]
    pub save_interval_ms: u64,
    /// DB threads that load players at login (one more writes the saves).
    #[arg(long, default_value_t = 2)]
    pub db_threads: usize,
    /// Board width and height (W_WIDTH; the course's is 2000).
    #[arg(long, default_value_t = cport_mmo_proto::W_WIDTH)]
    pub world_size: u16,
    /// How long a killed NPC stays dead (ms).
    #[arg(long, default_value_t = 30_000)]
    pub npc_respawn_ms: u64,
    /// How often a hurt player regains hit points (ms).
    #[arg(long, default_value_t = 5_000)]
    pub regen_ms: u64,
    /// Obstacles: a map file (`cport-map W H` then rows of `.`/`#`, or `cport-map-rects W H`
    /// then `x y` / `x0 y0 x1 y1` lines; `cport map gen` makes one), as wide and high as
    /// --world-size. Without it the board is open.
    #[arg(long)]
    pub map: Option<PathBuf>,
    /// Percent of NPCs that are aggressive (chase and attack the nearest player they see);
    /// the rest are peaceful (walk at random, fight back when hit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub aggressive_npcs: u8,
    /// A chasing NPC gives up beyond this many cells from its spawn cell or its target.
    #[arg(long, default_value_t = 12)]
    pub npc_give_up: u16,
    /// The Lua script every NPC runs: `course` (the course's npc.lua, built in) or a file's
    /// path [default: no scripts]. See SCRIPTING.md.
    #[arg(long, value_name = "FILE")]
    pub npc_script: Option<String>,
}

impl GameArgs {
    /// Where players are kept: `--db`, else `$CPORT_MMO_DB`, else `sqlite:mmo.db`.
    pub fn db_config(&self) -> io::Result<DbConfig> {
        let s = match &self.db {
            Some(s) => s.clone(),
            None => std::env::var("CPORT_MMO_DB").unwrap_or_else(|_| "sqlite:mmo.db".into()),
        };
        s.parse()
            .map_err(|e: String| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// The game's configuration from these flags (`threads` as given: 0 = available
    /// parallelism); the rest as [`Config::default`] has it. An error for a `--db` that does
    /// not parse, for `--save-interval-ms 0`, and for a `--map` that cannot be read, is
    /// malformed (the error names the file and line) or is not `--world-size` wide and high.
    pub fn config(&self) -> io::Result<Config> {
        let db = self.db_config()?;
        if self.save_interval_ms == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--save-interval-ms must be at least 1",
            ));
        }
        let map = match &self.map {
            None => None,
            Some(path) => {
                let m = Map::load(path)?;
                if (m.width(), m.height()) != (self.world_size, self.world_size) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "map {}: {}x{}, but --world-size is {}",
                            path.display(),
                            m.width(),
                            m.height(),
                            self.world_size
                        ),
                    ));
                }
                Some(Arc::new(m))
            }
        };
        Ok(Config {
            addr: self.addr,
            threads: self.threads,
            header: self.header.into(),
            view_range: self.view_range,
            max_users: self.max_users,
            npcs: self.npcs,
            seed: self.seed,
            max_send_queue: self.max_send_queue,
            recv_pool: self.recv_pool,
            db,
            db_threads: self.db_threads,
            save_interval: Duration::from_millis(self.save_interval_ms),
            world_size: self.world_size,
            npc_respawn: Duration::from_millis(self.npc_respawn_ms),
            regen_interval: Duration::from_millis(self.regen_ms.max(1)),
            map,
            aggressive_npcs: self.aggressive_npcs,
            npc_give_up: self.npc_give_up,
            npc_script: self.npc_script.as_deref().map(crate::ScriptSource::parse),
            ..Config::default()
        })
    }
}
