//! What `cport bench echo --json FILE` writes: every round's figures and each server's
//! medians.

use serde::Serialize;

/// One server measured in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundResult {
    /// Round number, from 1.
    pub round: usize,
    /// Server name (`cport-uring`, `tokio`, …).
    pub server: String,
    /// The server's startup line.
    pub startup: String,
    /// Messages completed per second in the measured window.
    pub msgs_per_s: f64,
    /// Megabytes (10^6) echoed per second.
    pub mb_per_s: f64,
    /// Round-trip latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// p99 of the messages not marked slow (equals `p99_us` without `--skew`).
    pub p99_fast_us: u64,
    /// Server CPU (user + system) over the measured window, percent of one core.
    pub server_cpu_pct: f64,
    /// Server CPU microseconds per message.
    pub server_cpu_us_per_msg: f64,
    /// Server context switches (voluntary + involuntary, summed over its threads) per
    /// message, over the same window as the CPU figures.
    pub server_cs_per_msg: f64,
    /// Server context switches per second of the measured window.
    pub server_cs_per_s: f64,
    /// The load client's CPU, percent of one core.
    pub client_cpu_pct: f64,
    /// Messages marked slow that completed in the window.
    pub slow_msgs: u64,
    /// Open loop: messages not back 2 s after the window.
    pub unfinished: u64,
    /// Open loop: the client's worst lag behind its send schedule, microseconds.
    pub max_send_lag_us: u64,
    /// Connections broken during the run.
    pub broken: u64,
    /// Echoed chunks that failed the spot check.
    pub corrupt: u64,
    /// Connections that could not connect.
    pub connect_errors: u64,
}

/// One server over all rounds: medians (latency percentiles over the merged histogram).
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// Server name.
    pub server: String,
    /// Median msgs/s over the rounds.
    pub msgs_per_s: f64,
    /// Smallest msgs/s of a round.
    pub msgs_per_s_min: f64,
    /// Largest msgs/s of a round.
    pub msgs_per_s_max: f64,
    /// Median MB/s.
    pub mb_per_s: f64,
    /// Percentiles over every round's messages, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// p99 of the messages not marked slow.
    pub p99_fast_us: u64,
    /// Median server CPU percent.
    pub server_cpu_pct: f64,
    /// Median server CPU µs per message.
    pub server_cpu_us_per_msg: f64,
    /// Median server context switches per message.
    pub server_cs_per_msg: f64,
    /// Median server context switches per second.
    pub server_cs_per_s: f64,
    /// Median msgs/s over the reference server's.
    pub ratio: f64,
    /// Sums over the rounds.
    pub broken: u64,
    /// Sum over the rounds.
    pub corrupt: u64,
    /// Sum over the rounds.
    pub connect_errors: u64,
    /// Sum over the rounds.
    pub unfinished: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct EchoBench {
    /// The command's options, as text.
    pub config: serde_json::Value,
    /// The server the ratios are relative to.
    pub reference: String,
    /// Every round of every server, in run order.
    pub rounds: Vec<RoundResult>,
    /// One line per server.
    pub summary: Vec<ServerSummary>,
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &std::path::Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// A JSON object from `(key, value)` pairs (for the config).
pub fn object<'a>(
    pairs: impl IntoIterator<Item = (&'a str, serde_json::Value)>,
) -> serde_json::Value {
    serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub use serde_json;
