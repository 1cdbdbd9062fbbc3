//! What the game tells about itself: its counters ([`Stats`]), what persistence did
//! ([`DbStats`]) and where things are ([`Snapshot`]).

use std::time::Duration;

/// Counters of the game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Players on the board now.
    pub players: usize,
    /// NPCs awake now (a move timer pending or running for each).
    pub awake_npcs: usize,
    /// NPC move timers scheduled and not yet handled.
    pub npc_timers: usize,
    /// NPC moves so far.
    pub npc_moves: u64,
    /// Logins so far.
    pub logins: u64,
    /// `SC_LOGIN_FAIL`s sent so far.
    pub login_fails: u64,
    /// Sessions closed for what they sent.
    pub rejected: u64,
    /// Player moves and teleports so far.
    pub moves: u64,
    /// `CS_ATTACK`s so far.
    pub attacks: u64,
    /// NPCs killed so far.
    pub npc_kills: u64,
    /// NPCs respawned so far.
    pub npc_respawns: u64,
    /// Levels gained so far.
    pub level_ups: u64,
    /// Players killed (by NPCs striking back) so far.
    pub player_deaths: u64,
    /// `SC_STAT_CHANGE`s sent so far.
    pub stat_changes: u64,
    /// Hits of NPCs on players so far (chases, fighting back, scripts), beyond the strike
    /// back that answers a player's hit at once.
    pub npc_attacks: u64,
    /// NPC script events run so far (`--npc-script`).
    pub script_calls: u64,
    /// NPC script events that failed (logged, dropped).
    pub script_errors: u64,
    /// NPC script events stopped by the instruction budget (each NPC then disabled).
    pub script_kills: u64,
    /// NPC script events dropped because too many waited for a worker's turn (a script
    /// slower than its events come; `script::Gate`).
    pub script_dropped: u64,
}

/// What persistence did so far (all zero with `DbConfig::None`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DbStats {
    /// Players loaded by the DB threads (found or not).
    pub loads: u64,
    /// Loads that failed (each a `SC_LOGIN_FAIL`).
    pub load_errors: u64,
    /// Batches committed (one transaction each).
    pub batches: u64,
    /// Rows written by those batches.
    pub rows_saved: u64,
    /// Largest batch committed.
    pub max_batch: u64,
    /// Batches that failed (their rows are sent again).
    pub save_errors: u64,
    /// Batches not queued because the writer's queue was full (sent at the next tick).
    pub deferred: u64,
    /// Rows not yet known to be in the database.
    pub pending_rows: usize,
    /// Time the writer spent in save transactions.
    pub save_time: Duration,
    /// CPU time of the DB threads.
    pub cpu: Duration,
    /// Login latency (`CS_LOGIN` in → `SC_LOGIN_INFO` queued), µs: p50, p99, max, count.
    pub login_p50_us: u64,
    /// See `login_p50_us`.
    pub login_p99_us: u64,
    /// See `login_p50_us`.
    pub login_max_us: u64,
    /// Logins measured.
    pub login_count: u64,
    /// Rows written by the final write at shutdown.
    pub final_rows: usize,
}

/// The totals a server prints at shutdown: "N logins, N login fails, N rejected, N player
/// moves, N NPC moves, N attacks, N NPC kills, N level-ups", and with NPC scripts ", N NPC
/// script events (N failed, N stopped by the budget)".
impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} logins, {} login fails, {} rejected, {} player moves, {} NPC moves, {} attacks, {} NPC kills, {} level-ups",
            self.logins,
            self.login_fails,
            self.rejected,
            self.moves,
            self.npc_moves,
            self.attacks,
            self.npc_kills,
            self.level_ups
        )?;
        if self.script_calls > 0 {
            write!(
                f,
                ", {} NPC script events ({} failed, {} stopped by the budget, {} dropped waiting for a worker)",
                self.script_calls, self.script_errors, self.script_kills, self.script_dropped
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Display for DbStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean = if self.batches > 0 {
            self.rows_saved as f64 / self.batches as f64
        } else {
            0.0
        };
        write!(
            f,
            "logins {} (latency p50 {} µs, p99 {} µs, max {} µs); loads {} ({} failed); saves {} rows in {} batches (mean {:.1}, max {}), {} failed, {} deferred, {} pending, {} written at shutdown; writer busy {:.1?}; DB threads CPU {:.1?}",
            self.login_count,
            self.login_p50_us,
            self.login_p99_us,
            self.login_max_us,
            self.loads,
            self.load_errors,
            self.rows_saved,
            self.batches,
            mean,
            self.max_batch,
            self.save_errors,
            self.deferred,
            self.pending_rows,
            self.final_rows,
            self.save_time,
            self.cpu
        )
    }
}

/// One object on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Its id.
    pub id: u32,
    /// Column.
    pub x: u16,
    /// Row.
    pub y: u16,
}

/// Where the players and the awake NPCs are (for maps).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Board width and height.
    pub world_size: u16,
    /// Players on the board.
    pub players: Vec<Placed>,
    /// NPCs awake.
    pub awake_npcs: Vec<Placed>,
}
