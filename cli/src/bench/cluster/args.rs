//! The flags of `cport bench cluster`.

use std::path::PathBuf;

/// Options of `cport bench cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The layouts: zone counts, comma-separated (each its own cluster, one gateway).
    #[arg(long, default_value = "1,4")]
    pub zones: String,
    /// NPCs on the board (over all zones).
    #[arg(long, default_value_t = 200_000)]
    pub npcs: usize,
    /// Each zone process's CPU share (1.0 = one CPU): cpu.cfs_quota_us = this × the period.
    #[arg(long, default_value_t = 0.25)]
    pub zone_cpu: f64,
    /// The CFS period (µs) of every zone's group: the quota is spent within each period, so
    /// a zone out of it waits for the next; a short period keeps those waits short.
    #[arg(long, default_value_t = 20_000)]
    pub cfs_period_us: u64,
    /// Rounds; each runs every layout once, in turn (medians over the rounds).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// The first step's clients.
    #[arg(long, default_value_t = 250)]
    pub start: usize,
    /// Most clients of any step (capped at --max-users).
    #[arg(long, default_value_t = 16_000)]
    pub max_clients: usize,
    /// The search stops when the gap between the most clients held and the fewest failed
    /// is at most this fraction of the most held.
    #[arg(long, default_value_t = 0.05)]
    pub resolution: f64,
    /// Most steps per layout and round (a retried step counts twice).
    #[arg(long, default_value_t = 16)]
    pub max_steps: usize,
    /// A step that fails is run again this many times before it counts as failed (the
    /// machine is shared: another process's burst can spoil one hold).
    #[arg(long, default_value_t = 1)]
    pub retries: usize,
    /// Clients added per second in a step's climb (at most 1000).
    #[arg(long, default_value_t = 500)]
    pub climb_per_s: u64,
    /// Seconds after the climb before the hold.
    #[arg(long, default_value_t = 3)]
    pub settle_s: u64,
    /// Seconds each step is held (the measured window).
    #[arg(long, default_value_t = 10)]
    pub hold_s: u64,
    /// Seconds between steps (the last step's players log out).
    #[arg(long, default_value_t = 2)]
    pub gap_s: u64,
    /// The delay limit: a step is held with the delay's p99 under this in every second.
    #[arg(long, default_value_t = 100)]
    pub delay_limit_ms: u64,
    /// Worker threads of every zone and of the gateway.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Stress client worker threads.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// The cluster's MAX_USER.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// The game's VIEW_RANGE.
    #[arg(long, default_value_t = cport_mmo_proto::VIEW_RANGE)]
    pub view_range: u16,
    /// The bus tick of every process (µs).
    #[arg(long, default_value_t = 1000)]
    pub bus_tick_us: u64,
    /// A NATS server already running (nats://HOST:PORT); by default `nats-server` is started
    /// from PATH for each layout.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Also write the figures as JSON here (with the ratio as `scaling`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}
