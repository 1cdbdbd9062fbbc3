//! What a run measured: the [`Report`] (written by `--json`, read back typed by
//! `cport bench mmo`), its per-second series, its errors, and each client process's share.

use serde::{Deserialize, Serialize};

use crate::settings::{header_name, Settings};

/// The settings as the report shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsReport {
    /// The game server.
    pub addr: String,
    /// `u8` or `u16`.
    pub header: String,
    /// Most clients at once (after the open-files limit).
    pub max_clients: usize,
    /// The delay limit.
    pub delay_limit_ms: u64,
    /// The run's length.
    pub duration_s: f64,
    /// Time between adds under the limit.
    pub ramp_interval_ms: f64,
    /// Time between sheds.
    pub shed_interval_ms: f64,
    /// Time between a dummy's moves.
    pub move_interval_ms: f64,
    /// Client worker threads.
    pub client_threads: usize,
    /// The client port's backend.
    pub client_backend: String,
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start (end of this second).
    pub t: f64,
    /// Clients logged in.
    pub clients: usize,
    /// Clients started and not closed (connecting, logging in, in game).
    pub live: usize,
    /// The course's tracked delay at the end of this second.
    pub tracked_delay_ms: u64,
    /// The highest tracked delay the ramp saw during this second.
    pub tracked_max_ms: u64,
    /// Delay samples in this second.
    pub samples: u64,
    /// Median delay in this second (0 without samples).
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
    /// Server packets received per second.
    pub packets_in_per_s: u64,
    /// Client packets sent per second.
    pub packets_out_per_s: u64,
    /// Errors so far (all kinds).
    pub errors: u64,
    /// The highest number of clients logged in while the tracked delay was under the limit,
    /// so far (the report's `max_clients_under_limit` at this point of the run).
    pub max_under_limit: usize,
}

/// Errors met, by kind (counted, never hidden).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connects refused (`ECONNREFUSED`: nothing listening, or the backlog full).
    pub connect_refused: u64,
    /// Connects that failed otherwise (timeouts, resets).
    pub connect_failed: u64,
    /// Sockets that could not be created (`EMFILE`/`ENFILE`: the open-files limit).
    pub fd_limit: u64,
    /// Connections the server closed or reset while the dummy was in use.
    pub server_closed: u64,
    /// `SC_LOGIN_FAIL`s.
    pub login_fail: u64,
    /// Server packets that did not decode.
    pub protocol: u64,
    /// Sends that failed.
    pub send_failed: u64,
}

impl Errors {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.connect_refused
            + self.connect_failed
            + self.fd_limit
            + self.server_closed
            + self.login_fail
            + self.protocol
            + self.send_failed
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (connect refused {}, connect failed {}, fd limit {}, server closed {}, login fail {}, protocol {}, send failed {})",
            self.total(),
            self.connect_refused,
            self.connect_failed,
            self.fd_limit,
            self.server_closed,
            self.login_fail,
            self.protocol,
            self.send_failed
        )
    }
}

/// What a run measured (written by `--json`, read back by `cport bench mmo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The highest number of clients logged in while the tracked delay was under the limit.
    pub max_clients_under_limit: usize,
    /// The most clients logged in at once.
    pub peak_clients: usize,
    /// The maximum the ramp recorded at its last excursion above 1.5 × the limit.
    pub ramp_max_recorded: Option<usize>,
    /// The tracked delay at the end.
    pub final_tracked_delay_ms: u64,
    /// Clients logged in at the end.
    pub final_clients: usize,
    /// Dummies started (connects attempted).
    pub clients_started: u64,
    /// Dummies shed by the ramp.
    pub clients_shed: u64,
    /// Delay samples in all.
    pub delay_samples: u64,
    /// Delay percentiles over the whole run.
    pub p50_ms: u64,
    /// 99th percentile over the whole run.
    pub p99_ms: u64,
    /// Largest delay seen.
    pub max_ms: u64,
    /// Server packets received.
    pub packets_in: u64,
    /// Client packets sent.
    pub packets_out: u64,
    /// The per-second series.
    pub series: Vec<Second>,
    /// Errors met.
    pub errors: Errors,
    /// The open-files limit, when it capped `max_clients` (with several client processes:
    /// the sum of what theirs allow).
    pub fd_limited_to: Option<usize>,
    /// The highest player id the server gave a dummy (ids are dense from 0: with no client
    /// shed or lost, it is `clients_started − 1`).
    pub max_player_id: Option<u32>,
    /// Client processes (1: this one alone; more: `children` did the sockets).
    pub procs: usize,
    /// With several client processes, what each did (the counts above are their sums).
    pub children: Vec<ChildSummary>,
    /// The client's CPU time (user + system) during the run.
    pub client_cpu_s: f64,
    /// The client's CPU use as a share of one core.
    pub client_cpu_pct: f64,
    /// The server's, when it was spawned (filled in by the caller).
    pub server_cpu_s: Option<f64>,
    /// The server's startup line, when spawned (filled in by the caller).
    pub server: Option<String>,
    /// How long the run lasted.
    pub elapsed_s: f64,
    /// Why it ended early, if it did.
    pub stopped_early: Option<String>,
    /// The settings.
    pub settings: SettingsReport,
}

/// What one client process did (in [`Report::children`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildSummary {
    /// Its number.
    pub index: usize,
    /// Most clients it could hold (its share, or its open-files limit).
    pub cap: usize,
    /// Dummies it started.
    pub clients_started: u64,
    /// Dummies it shed.
    pub clients_shed: u64,
    /// Its dummies logged in at the end.
    pub final_clients: usize,
    /// Delay samples it measured (each was forwarded to the parent's tracker).
    pub delay_samples: u64,
    /// Server packets it received.
    pub packets_in: u64,
    /// Client packets it sent.
    pub packets_out: u64,
    /// Errors it met.
    pub errors: Errors,
    /// Its CPU time.
    pub client_cpu_s: f64,
    /// The highest player id its dummies got.
    pub max_player_id: Option<u32>,
}

impl SettingsReport {
    /// `settings` as run, with at most `max_clients` (after the open-files limits) on a client
    /// port of `client_backend`.
    pub(crate) fn of(settings: &Settings, max_clients: usize, client_backend: String) -> Self {
        SettingsReport {
            addr: settings.addr.to_string(),
            header: header_name(settings.header).to_string(),
            max_clients,
            delay_limit_ms: settings.delay_limit_ms,
            duration_s: settings.duration.as_secs_f64(),
            ramp_interval_ms: settings.ramp_interval.as_secs_f64() * 1e3,
            shed_interval_ms: settings.shed_interval.as_secs_f64() * 1e3,
            move_interval_ms: settings.move_interval.as_secs_f64() * 1e3,
            client_threads: settings.threads.max(1),
            client_backend,
        }
    }
}

impl Errors {
    /// Adds `other`'s counts to these (the errors of several client processes).
    pub(crate) fn add(&mut self, other: &Errors) {
        self.connect_refused += other.connect_refused;
        self.connect_failed += other.connect_failed;
        self.fd_limit += other.fd_limit;
        self.server_closed += other.server_closed;
        self.login_fail += other.login_fail;
        self.protocol += other.protocol;
        self.send_failed += other.send_failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of a two-process run with every field set (figures with fractions, options
    /// on and off), as `--json` writes it.
    fn full_report() -> Report {
        let errors = Errors {
            connect_refused: 1,
            connect_failed: 2,
            fd_limit: 3,
            server_closed: 4,
            login_fail: 5,
            protocol: 6,
            send_failed: 7,
        };
        let second = |t: f64, clients: usize| Second {
            t,
            clients,
            live: clients + 3,
            tracked_delay_ms: 42,
            tracked_max_ms: 57,
            samples: 1234,
            p50_ms: 3,
            p95_ms: 17,
            p99_ms: 33,
            max_ms: 120,
            packets_in_per_s: 98_765,
            packets_out_per_s: 4_321,
            errors: 28,
            max_under_limit: clients,
        };
        let child = |index: usize| ChildSummary {
            index,
            cap: 10_000,
            clients_started: 5_000 + index as u64,
            clients_shed: 12,
            final_clients: 4_988,
            delay_samples: 77_777,
            packets_in: 1 << 33,
            packets_out: 999,
            errors,
            client_cpu_s: 12.345_678_9,
            max_player_id: (index == 0).then_some(9_999),
        };
        Report {
            max_clients_under_limit: 9_876,
            peak_clients: 10_001,
            ramp_max_recorded: Some(10_000),
            final_tracked_delay_ms: 87,
            final_clients: 9_976,
            clients_started: 10_001,
            clients_shed: 24,
            delay_samples: 155_554,
            p50_ms: 4,
            p99_ms: 95,
            max_ms: 400,
            packets_in: 1 << 34,
            packets_out: 1_998,
            series: vec![second(1.000_123_4, 17), second(2.000_987_6, 39)],
            errors,
            fd_limited_to: Some(19_900),
            max_player_id: Some(9_999),
            procs: 2,
            children: vec![child(0), child(1)],
            client_cpu_s: 25.123_456_789,
            client_cpu_pct: 41.872_427_981_666,
            server_cpu_s: Some(33.3),
            server: Some("listening on 127.0.0.1:4000 (backend: io_uring, threads: 2)".into()),
            elapsed_s: 60.000_321,
            stopped_early: None,
            settings: SettingsReport {
                addr: "127.0.0.1:4000".into(),
                header: "u8".into(),
                max_clients: 20_000,
                delay_limit_ms: 100,
                duration_s: 60.0,
                ramp_interval_ms: 50.0,
                shed_interval_ms: 500.0,
                move_interval_ms: 1_000.0,
                client_threads: 2,
                client_backend: "io_uring".into(),
            },
        }
    }

    #[test]
    fn a_report_written_as_json_reads_back_equal() {
        let r = full_report();
        let json = serde_json::to_string_pretty(&r).expect("write");
        let back: Report = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, r);
        // And the other way round: no field is lost or renamed on the way.
        let again: serde_json::Value = serde_json::to_value(&back).expect("write again");
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        );
    }

    #[test]
    fn the_json_keeps_the_keys_readers_use() {
        let v = serde_json::to_value(full_report()).expect("write");
        for key in [
            "max_clients_under_limit",
            "peak_clients",
            "ramp_max_recorded",
            "final_tracked_delay_ms",
            "final_clients",
            "clients_started",
            "clients_shed",
            "delay_samples",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "packets_in",
            "packets_out",
            "series",
            "errors",
            "fd_limited_to",
            "max_player_id",
            "procs",
            "children",
            "client_cpu_s",
            "client_cpu_pct",
            "server_cpu_s",
            "server",
            "elapsed_s",
            "stopped_early",
            "settings",
        ] {
            assert!(v.get(key).is_some(), "key {key}");
        }
        assert_eq!(v.as_object().unwrap().len(), 26, "no key added or dropped");
        assert_eq!(v["series"][0]["max_under_limit"], 17);
        assert_eq!(v["settings"]["client_backend"], "io_uring");
        assert_eq!(v["errors"]["send_failed"], 7);
    }
}
