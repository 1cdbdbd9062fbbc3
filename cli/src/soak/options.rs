//! The options of `cport soak`, and the limits its clients hold the servers to.

use std::path::PathBuf;
use std::time::Duration;

use cport::Backend;
use cport_mmo_proto as protocol;
use cport_server::SizeField;
/// Options of `cport soak`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long the load runs, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// How long the load runs, in seconds (instead of --minutes).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Backend of both servers: auto, uring or epoll [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Worker threads of each server.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Verified echo connections open at once (each reconnects after 64 KiB..8 MiB).
    #[arg(long, default_value_t = 32)]
    pub echo_conns: usize,
    /// Verified echo traffic offered over all those connections, MiB/s.
    #[arg(long, default_value_t = 16.0)]
    pub echo_mib_s: f64,
    /// Short connections per second, half to each server (connect, maybe a few bytes or a
    /// login, then close or reset).
    #[arg(long, default_value_t = 40.0)]
    pub churn_per_s: f64,
    /// Players walking the game's board (each moves every 100..300 ms and waits for its move).
    #[arg(long, default_value_t = 200)]
    pub players: usize,
    /// NPCs on the game's board (they sleep until a player sees them: timers).
    #[arg(long, default_value_t = 200_000)]
    pub npcs: usize,
    /// The game's board width and height (`cport mmo --world-size`).
    #[arg(long, default_value_t = protocol::W_WIDTH)]
    pub world_size: u16,
    /// Each player walks within this many cells of where it logged in (0: anywhere), so
    /// that the NPCs the run wakes are a fixed set that wake and sleep over and over: RSS
    /// then reaches a steady state, and growth after it is a leak, not new ground.
    #[arg(long, default_value_t = 20)]
    pub walk_range: u16,
    /// Hostile connections to the game per second (bad sizes, unknown types, garbage,
    /// packets before login, floods).
    #[arg(long, default_value_t = 4.0)]
    pub hostile_per_s: f64,
    /// Clients at once that write to the echo server and never read.
    #[arg(long, default_value_t = 2)]
    pub never_readers: usize,
    /// The echo server's per-session send-queue cap (`cport echo --max-send-queue`).
    #[arg(long, default_value_t = 1 << 20)]
    pub echo_send_queue: usize,
    /// Fail when the median RSS of the last minute exceeds the first minute's by more than
    /// this, percent (judged on runs of 3 minutes or more).
    #[arg(long, default_value_t = 25.0)]
    pub max_rss_growth_pct: f64,
    /// Fail when the median heap in use (glibc `mallinfo2`: bytes allocated and not freed)
    /// of the last minute exceeds the first minute's by more than this, percent, and by more
    /// than 1 MiB (judged on runs of 3 minutes or more). Unlike RSS it does not count what the
    /// allocator keeps.
    #[arg(long, default_value_t = 10.0)]
    pub max_heap_growth_pct: f64,
    /// Where the servers' output and stats files go [default: a new directory in the temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The `cport` binary that runs the servers [default: this one].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// A reply not seen after this long is a stall (echo bytes, a player's move, a login).
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// A hostile connection must be closed by the server within this long.
pub(crate) const HOSTILE_CLOSE: Duration = Duration::from_secs(5);
/// A never-reading client or a flooder must be closed within this long.
pub(crate) const SLOW_CLOSE: Duration = Duration::from_secs(30);
/// Echo bytes written and not yet read back, per connection, at most.
pub(crate) const WINDOW: u64 = 512 * 1024;
/// RSS growth is judged on runs at least this long (shorter ones are mostly warm-up).
pub(crate) const RSS_JUDGED: Duration = Duration::from_secs(180);
/// The game's `MAX_USER` as `cport mmo` runs it: ids from here up are NPCs.
pub(crate) const MAX_USERS: i32 = protocol::MAX_USER as i32;
pub(crate) const H: SizeField = SizeField::U8;
