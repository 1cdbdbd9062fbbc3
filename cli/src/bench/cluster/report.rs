//! The figures of `cport bench cluster`: what the zones and the gateway said at shutdown
//! (hand-offs, bus counters), one layout's run, the medians over rounds, the table and the
//! `--json` file.

use std::io;
use std::path::Path;

use cport_bench::cgroup::{CpuStat, MECHANISM};
use cport_bench::stats::median;
use cport_cluster::supervisor::{Role, StopReport};
use serde_json::{json, Value};

use super::args::ClusterArgs;
use super::step::Step;

/// The number after `key: ` in a `Debug`-printed line (`… key: 123, …`), where `key` is a
/// whole field name.
fn field(text: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}: ");
    let mut from = 0;
    while let Some(i) = text[from..].find(&pat) {
        let at = from + i;
        let whole = at == 0
            || !text.as_bytes()[at - 1].is_ascii_alphanumeric() && text.as_bytes()[at - 1] != b'_';
        let rest = &text[at + pat.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if whole && !digits.is_empty() {
            return digits.parse().ok();
        }
        from = at + pat.len();
    }
    None
}

/// The bus counters (`BusCounters { msgs_out: …, bytes_out: …, msgs_in: …, bytes_in: … }`)
/// in a line.
fn bus_counters(line: &str) -> Option<[u64; 4]> {
    let (_, rest) = line.split_once("BusCounters {")?;
    Some([
        field(rest, "msgs_out")?,
        field(rest, "bytes_out")?,
        field(rest, "msgs_in")?,
        field(rest, "bytes_in")?,
    ])
}

/// What the zones and the gateway printed at shutdown, as far as it could be read (the
/// processes print their counters with `Debug`; a field that is not there is `None`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Said {
    /// Hand-offs answered, over the zones (`handoffs_out`).
    pub(crate) handoffs: Option<u64>,
    /// The highest of the zones' hand-off p99s (µs).
    pub(crate) handoff_p99_us: Option<u64>,
    /// Messages and bytes the zones published, in all.
    pub(crate) zone_msgs_out: Option<u64>,
    pub(crate) zone_bytes_out: Option<u64>,
    /// Messages and bytes the gateway received (all of them from zones).
    pub(crate) gateway_msgs_in: Option<u64>,
    pub(crate) gateway_bytes_in: Option<u64>,
    /// Messages and bytes the gateway published (all of them to zones).
    pub(crate) gateway_msgs_out: Option<u64>,
    pub(crate) gateway_bytes_out: Option<u64>,
}

impl Said {
    /// Reads the last stdout lines of the zones and the gateway.
    pub(crate) fn read(r: &StopReport, zones: usize) -> Said {
        Said::of(
            (0..zones).map(|z| r.said(Role::Zone, z).to_vec()).collect(),
            r.said(Role::Gateway, 0),
        )
    }

    fn of(zones: Vec<Vec<String>>, gateway: &[String]) -> Said {
        let mut s = Said::default();
        let mut handoffs = Vec::new();
        let mut p99 = Vec::new();
        let mut out = Vec::new();
        for lines in &zones {
            for l in lines {
                if l.contains("ZoneStats {") {
                    handoffs.extend(field(l, "handoffs_out"));
                    p99.extend(field(l, "handoff_p99_us"));
                }
                if l.contains("ZoneBusStats {") {
                    out.extend(bus_counters(l));
                }
            }
        }
        let n = zones.len();
        s.handoffs = (handoffs.len() == n).then(|| handoffs.iter().sum());
        s.handoff_p99_us = (p99.len() == n).then(|| p99.iter().copied().max().unwrap_or(0));
        if out.len() == n {
            s.zone_msgs_out = Some(out.iter().map(|c| c[0]).sum());
            s.zone_bytes_out = Some(out.iter().map(|c| c[1]).sum());
        }
        if let Some(c) = gateway
            .iter()
            .find(|l| l.contains("GatewayStats {"))
            .and_then(|l| bus_counters(l))
        {
            s.gateway_msgs_out = Some(c[0]);
            s.gateway_bytes_out = Some(c[1]);
            s.gateway_msgs_in = Some(c[2]);
            s.gateway_bytes_in = Some(c[3]);
        }
        s
    }

    /// Zone-to-zone messages and bytes (ghosts, hand-offs, remote hits, logins): what the
    /// zones published less what the gateway received. Every subject is one process's inbox,
    /// so a zone's message goes either to the gateway or to another zone.
    fn border(&self) -> Option<(u64, u64)> {
        Some((
            self.zone_msgs_out?.saturating_sub(self.gateway_msgs_in?),
            self.zone_bytes_out?.saturating_sub(self.gateway_bytes_in?),
        ))
    }
}

/// One layout's run in one round.
#[derive(Debug, Clone)]
pub(crate) struct LayoutRun {
    pub(crate) zones: usize,
    pub(crate) steps: Vec<Step>,
    pub(crate) said: Said,
    /// Each zone group's `cpu.stat` over the whole run (every step).
    pub(crate) throttled_total: Vec<CpuStat>,
}

impl LayoutRun {
    pub(crate) fn new(
        zones: usize,
        steps: Vec<Step>,
        said: Said,
        throttled_total: Vec<CpuStat>,
    ) -> LayoutRun {
        LayoutRun {
            zones,
            steps,
            said,
            throttled_total,
        }
    }

    /// The held step with the most clients.
    pub(crate) fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.held)
            .max_by_key(|s| s.clients)
    }

    /// The most clients held (0 when no step was).
    pub(crate) fn clients_held(&self) -> usize {
        self.best().map_or(0, |s| s.clients)
    }

    /// Zone-to-zone messages per player per second over the whole run.
    fn border_per_player_s(&self) -> Option<(f64, f64)> {
        let ps: f64 = self.steps.iter().map(|s| s.player_seconds).sum();
        let (m, b) = self.said.border()?;
        (ps > 0.0).then(|| (m as f64 / ps, b as f64 / ps))
    }

    /// Bus messages per player per second, every publisher (zones and gateway), whole run.
    fn bus_per_player_s(&self) -> Option<(f64, f64)> {
        let ps: f64 = self.steps.iter().map(|s| s.player_seconds).sum();
        let m = self.said.zone_msgs_out? + self.said.gateway_msgs_out?;
        let b = self.said.zone_bytes_out? + self.said.gateway_bytes_out?;
        (ps > 0.0).then(|| (m as f64 / ps, b as f64 / ps))
    }

    /// The figures of this run (the held step's, and the run's).
    fn figures(&self, quota_pct: f64) -> Figures {
        let best = self.best();
        let get = |f: fn(&Step) -> f64| best.map_or(f64::NAN, f);
        let zone_cpu = best.map(|s| s.zone_cpu_pct.clone()).unwrap_or_default();
        Figures {
            clients_held: self.clients_held() as f64,
            p50_ms: get(|s| s.p50_ms),
            p99_ms: get(|s| s.p99_ms),
            zone_cpu_max_pct: zone_cpu.iter().copied().fold(f64::NAN, f64::max),
            zone_cpu_mean_pct: if zone_cpu.is_empty() {
                f64::NAN
            } else {
                zone_cpu.iter().sum::<f64>() / zone_cpu.len() as f64
            },
            zone_quota_pct: quota_pct,
            throttled_periods: best.map_or(f64::NAN, |s| {
                s.zone_stat.iter().map(|t| t.nr_throttled).sum::<u64>() as f64
            }),
            periods: best.map_or(f64::NAN, |s| {
                s.zone_stat.iter().map(|t| t.nr_periods).sum::<u64>() as f64
            }),
            throttled_periods_total: self
                .throttled_total
                .iter()
                .map(|t| t.nr_throttled)
                .sum::<u64>() as f64,
            gateway_cpu_pct: get(|s| s.gateway_cpu_pct),
            nats_cpu_pct: get(|s| s.nats_cpu_pct),
            client_cpu_pct: get(|s| s.client_cpu_pct),
            handoff_p99_ms: self
                .said
                .handoff_p99_us
                .map_or(f64::NAN, |u| u as f64 / 1000.0),
            handoffs: self.said.handoffs.map_or(f64::NAN, |h| h as f64),
            border_msgs_per_player_s: self.border_per_player_s().map_or(f64::NAN, |b| b.0),
            border_bytes_per_player_s: self.border_per_player_s().map_or(f64::NAN, |b| b.1),
            bus_msgs_per_player_s: self.bus_per_player_s().map_or(f64::NAN, |b| b.0),
            bus_bytes_per_player_s: self.bus_per_player_s().map_or(f64::NAN, |b| b.1),
        }
    }

    fn json(&self, quota_pct: f64) -> Value {
        let mut v = self.figures(quota_pct).json();
        v["zone_cpu_pct"] = json!(self.best().map(|s| s.zone_cpu_pct.clone()));
        v["throttled_total_by_zone"] = json!(self
            .throttled_total
            .iter()
            .map(|t| t.nr_throttled)
            .collect::<Vec<_>>());
        v["steps"] = Value::from(self.steps.iter().map(step_json).collect::<Vec<_>>());
        v
    }
}

fn step_json(s: &Step) -> Value {
    json!({
        "clients": s.clients,
        "held": s.held,
        "why_not": s.why_not,
        "fewest_in_game": s.fewest,
        "p50_ms": s.p50_ms,
        "p99_ms": s.p99_ms,
        "hold_s": s.hold_s,
        "zone_cpu_pct": s.zone_cpu_pct,
        "nr_throttled": s.zone_stat.iter().map(|t| t.nr_throttled).collect::<Vec<_>>(),
        "nr_periods": s.zone_stat.iter().map(|t| t.nr_periods).collect::<Vec<_>>(),
        "throttled_ms": s.zone_stat.iter().map(|t| t.throttled_ns as f64 / 1e6).collect::<Vec<_>>(),
        "gateway_cpu_pct": s.gateway_cpu_pct,
        "nats_cpu_pct": s.nats_cpu_pct,
        "client_cpu_pct": s.client_cpu_pct,
        "errors": s.errors,
    })
}

/// One run's figures, or their medians over rounds (NaN: not measured; `null` in JSON).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) clients_held: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) zone_cpu_max_pct: f64,
    pub(crate) zone_cpu_mean_pct: f64,
    pub(crate) zone_quota_pct: f64,
    pub(crate) throttled_periods: f64,
    pub(crate) periods: f64,
    pub(crate) throttled_periods_total: f64,
    pub(crate) gateway_cpu_pct: f64,
    pub(crate) nats_cpu_pct: f64,
    pub(crate) client_cpu_pct: f64,
    pub(crate) handoff_p99_ms: f64,
    pub(crate) handoffs: f64,
    pub(crate) border_msgs_per_player_s: f64,
    pub(crate) border_bytes_per_player_s: f64,
    pub(crate) bus_msgs_per_player_s: f64,
    pub(crate) bus_bytes_per_player_s: f64,
}

/// `x`, or JSON `null` for NaN.
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

impl Figures {
    fn json(&self) -> Value {
        json!({
            "clients_held": num(self.clients_held),
            "p50_ms": num(self.p50_ms),
            "p99_ms": num(self.p99_ms),
            "zone_cpu_max_pct": num(self.zone_cpu_max_pct),
            "zone_cpu_mean_pct": num(self.zone_cpu_mean_pct),
            "zone_quota_pct": num(self.zone_quota_pct),
            "throttled_periods": num(self.throttled_periods),
            "periods": num(self.periods),
            "throttled_periods_total": num(self.throttled_periods_total),
            "gateway_cpu_pct": num(self.gateway_cpu_pct),
            "nats_cpu_pct": num(self.nats_cpu_pct),
            "client_cpu_pct": num(self.client_cpu_pct),
            "handoff_p99_ms": num(self.handoff_p99_ms),
            "handoffs": num(self.handoffs),
            "border_msgs_per_player_s": num(self.border_msgs_per_player_s),
            "border_bytes_per_player_s": num(self.border_bytes_per_player_s),
            "bus_msgs_per_player_s": num(self.bus_msgs_per_player_s),
            "bus_bytes_per_player_s": num(self.bus_bytes_per_player_s),
        })
    }

    /// The medians over runs, figure by figure (those not measured left out).
    fn median_of(runs: &[Figures]) -> Figures {
        let m = |g: fn(&Figures) -> f64| {
            let v: Vec<f64> = runs.iter().map(g).filter(|x| x.is_finite()).collect();
            if v.is_empty() {
                f64::NAN
            } else {
                median(&v)
            }
        };
        Figures {
            clients_held: m(|f| f.clients_held),
            p50_ms: m(|f| f.p50_ms),
            p99_ms: m(|f| f.p99_ms),
            zone_cpu_max_pct: m(|f| f.zone_cpu_max_pct),
            zone_cpu_mean_pct: m(|f| f.zone_cpu_mean_pct),
            zone_quota_pct: m(|f| f.zone_quota_pct),
            throttled_periods: m(|f| f.throttled_periods),
            periods: m(|f| f.periods),
            throttled_periods_total: m(|f| f.throttled_periods_total),
            gateway_cpu_pct: m(|f| f.gateway_cpu_pct),
            nats_cpu_pct: m(|f| f.nats_cpu_pct),
            client_cpu_pct: m(|f| f.client_cpu_pct),
            handoff_p99_ms: m(|f| f.handoff_p99_ms),
            handoffs: m(|f| f.handoffs),
            border_msgs_per_player_s: m(|f| f.border_msgs_per_player_s),
            border_bytes_per_player_s: m(|f| f.border_bytes_per_player_s),
            bus_msgs_per_player_s: m(|f| f.bus_msgs_per_player_s),
            bus_bytes_per_player_s: m(|f| f.bus_bytes_per_player_s),
        }
    }
}

/// One layout over the rounds.
pub(crate) struct LayoutSummary {
    pub(crate) zones: usize,
    pub(crate) runs: Vec<LayoutRun>,
    pub(crate) median: Figures,
}

/// Everything measured.
pub(crate) struct Summary {
    pub(crate) layouts: Vec<LayoutSummary>,
    failures: Vec<String>,
    /// The most zones' clients held over the fewest zones' (medians); NaN without both.
    pub(crate) scaling: f64,
    settings: Value,
}

impl Summary {
    pub(crate) fn new(
        a: &ClusterArgs,
        layouts: &[usize],
        runs: Vec<Vec<LayoutRun>>,
        failures: Vec<String>,
        root: &Path,
    ) -> Summary {
        let quota_pct = 100.0 * a.zone_cpu;
        let layouts: Vec<LayoutSummary> = layouts
            .iter()
            .zip(runs)
            .map(|(&zones, runs)| {
                let figs: Vec<Figures> = runs.iter().map(|r| r.figures(quota_pct)).collect();
                LayoutSummary {
                    zones,
                    median: Figures::median_of(&figs),
                    runs,
                }
            })
            .collect();
        let fewest = layouts.iter().min_by_key(|l| l.zones);
        let most = layouts.iter().max_by_key(|l| l.zones);
        let scaling = match (fewest, most) {
            (Some(f), Some(m)) if !f.runs.is_empty() && !m.runs.is_empty() => {
                m.median.clients_held / f.median.clients_held
            }
            _ => f64::NAN,
        };
        let quota_us = (a.zone_cpu * a.cfs_period_us as f64).round() as u64;
        let settings = json!({
            "mechanism": MECHANISM,
            "cgroup_root": root.display().to_string(),
            "zone_cpu": a.zone_cpu,
            "cfs_quota_us": quota_us,
            "cfs_period_us": a.cfs_period_us,
            "npcs": a.npcs,
            "rounds": a.rounds,
            "start": a.start,
            "max_clients": a.max_clients,
            "resolution": a.resolution,
            "max_steps": a.max_steps,
            "retries": a.retries,
            "climb_per_s": a.climb_per_s,
            "settle_s": a.settle_s,
            "hold_s": a.hold_s,
            "gap_s": a.gap_s,
            "delay_limit_ms": a.delay_limit_ms,
            "threads": a.threads,
            "client_threads": a.client_threads,
            "max_users": a.max_users,
            "view_range": a.view_range,
            "bus_tick_us": a.bus_tick_us,
            "held": "every client in game through the hold (the fewest in any second ≥ 99% of the step) and the delay p99 under the limit in every second of the hold",
            "outside_the_quota": ["gateway", "nats-server", "stress client"],
        });
        Summary {
            layouts,
            failures,
            scaling,
            settings,
        }
    }

    /// The table: the layouts side by side, and the ratio.
    pub(crate) fn print_table(&self) {
        let rounds = self.layouts.iter().map(|l| l.runs.len()).max().unwrap_or(0);
        println!(
            "cluster scaling (medians over {rounds} round(s); figures at the most clients held)"
        );
        let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
            let cells: Vec<String> = self
                .layouts
                .iter()
                .map(|l| format!("{:>20}", f(&l.median)))
                .collect();
            println!("{name:<34}{}", cells.join(""));
        };
        let head: Vec<String> = self
            .layouts
            .iter()
            .map(|l| format!("{:>20}", format!("{} zone(s)", l.zones)))
            .collect();
        println!("{:<34}{}", "", head.join(""));
        let n = |x: f64, d: usize| {
            if x.is_finite() {
                format!("{x:.d$}")
            } else {
                "—".into()
            }
        };
        row("clients held", &|f| n(f.clients_held, 0));
        row("delay p50 / p99 (ms)", &|f| {
            format!("{} / {}", n(f.p50_ms, 0), n(f.p99_ms, 0))
        });
        row("zone CPU % mean / max (quota)", &|f| {
            format!(
                "{} / {} ({})",
                n(f.zone_cpu_mean_pct, 1),
                n(f.zone_cpu_max_pct, 1),
                n(f.zone_quota_pct, 0)
            )
        });
        row("throttled periods (hold / all)", &|f| {
            format!(
                "{}/{} ({})",
                n(f.throttled_periods, 0),
                n(f.periods, 0),
                n(f.throttled_periods_total, 0)
            )
        });
        row("gateway CPU %", &|f| n(f.gateway_cpu_pct, 1));
        row("NATS CPU %", &|f| n(f.nats_cpu_pct, 1));
        row("stress client CPU %", &|f| n(f.client_cpu_pct, 1));
        row("hand-offs / p99 (ms)", &|f| {
            format!("{} / {}", n(f.handoffs, 0), n(f.handoff_p99_ms, 1))
        });
        row("border msgs / player / s", &|f| {
            n(f.border_msgs_per_player_s, 2)
        });
        row("bus msgs, bytes / player / s", &|f| {
            format!(
                "{}, {}",
                n(f.bus_msgs_per_player_s, 2),
                n(f.bus_bytes_per_player_s, 0)
            )
        });
        let (fewest, most) = (
            self.layouts.iter().map(|l| l.zones).min().unwrap_or(0),
            self.layouts.iter().map(|l| l.zones).max().unwrap_or(0),
        );
        println!(
            "scaling ({most} zones' clients ÷ {fewest} zone(s)'): {}",
            n(self.scaling, 2)
        );
        println!("(held: every client in game and the delay p99 under the limit in every second of the hold; zone CPU over the hold of that step, % of one CPU; throttled: cpu.stat nr_throttled/nr_periods summed over the zones in that hold, and over the whole run; hand-offs and bus counters: the zones' and gateway's at shutdown, over every step)");
        for f in &self.failures {
            println!("  ! {f}");
        }
    }

    /// The `--json` file: `scaling`, the settings, each layout's medians, rounds and steps.
    pub(crate) fn write_json(&self, path: &Path) -> io::Result<()> {
        let quota_pct = self.settings["zone_cpu"].as_f64().unwrap_or(0.0) * 100.0;
        let layouts: Vec<Value> = self
            .layouts
            .iter()
            .map(|l| {
                let mut v = l.median.json();
                v["zones"] = json!(l.zones);
                v["rounds"] =
                    Value::from(l.runs.iter().map(|r| r.json(quota_pct)).collect::<Vec<_>>());
                v
            })
            .collect();
        let out = json!({
            "scaling": num(self.scaling),
            "layouts": layouts,
            "settings": self.settings,
            "failures": self.failures,
        });
        let text = serde_json::to_string_pretty(&out).map_err(io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// Percentages, one per zone: `12.3/11.0/…`.
pub(crate) fn pcts(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let s: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
    format!("{}%", s.join("/"))
}

/// Throttled periods over periods, summed over the zones.
pub(crate) fn throttles(v: &[CpuStat]) -> String {
    let t: u64 = v.iter().map(|s| s.nr_throttled).sum();
    let p: u64 = v.iter().map(|s| s.nr_periods).sum();
    format!("{t}/{p}")
}

/// The line printed when a layout's run ends.
pub(crate) fn print_layout_line(round: usize, r: &LayoutRun, a: &ClusterArgs) {
    let f = r.figures(100.0 * a.zone_cpu);
    println!(
        "  round {round}: {} zone(s): {} clients held (p99 {:.0} ms), hand-off p99 {}, border {} msgs/player/s",
        r.zones,
        r.clients_held(),
        f.p99_ms,
        if f.handoff_p99_ms.is_finite() { format!("{:.1} ms", f.handoff_p99_ms) } else { "—".into() },
        if f.border_msgs_per_player_s.is_finite() { format!("{:.2}", f.border_msgs_per_player_s) } else { "—".into() },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_at_shutdown_are_read_from_the_debug_lines() {
        let zones = vec![
            vec![
                "zone 0: game: players 0".to_string(),
                "zone 0: ZoneStats { zone: 0, ghosts: 3, handoffs_out: 10, handoffs_in: 9, handoff_p50_us: 800, handoff_p99_us: 2500, handoff_max_us: 4000 }".into(),
                "zone 0: bus: ZoneBusStats { bus: BusCounters { msgs_out: 1000, bytes_out: 50000, msgs_in: 700, bytes_in: 9000, errors: 0 }, junk: 0, malformed: 0, gaps: 0, queued: 0 }".into(),
            ],
            vec![
                "zone 1: ZoneStats { zone: 1, ghosts: 1, handoffs_out: 5, handoffs_in: 6, handoff_p50_us: 700, handoff_p99_us: 3100, handoff_max_us: 3900 }".into(),
                "zone 1: bus: ZoneBusStats { bus: BusCounters { msgs_out: 500, bytes_out: 20000, msgs_in: 600, bytes_in: 8000, errors: 0 }, junk: 0, malformed: 0, gaps: 0, queued: 0 }".into(),
            ],
        ];
        let gw = vec!["gateway 0: GatewayStats { routes: Counters { sessions: 4, routed: 77 }, malformed_batches: 0, lost_batches: 0, bus: BusCounters { msgs_out: 1200, bytes_out: 15000, msgs_in: 1300, bytes_in: 60000, errors: 0 } }".to_string()];
        let s = Said::of(zones, &gw);
        assert_eq!(s.handoffs, Some(15));
        assert_eq!(s.handoff_p99_us, Some(3100));
        assert_eq!(s.zone_msgs_out, Some(1500));
        assert_eq!(s.gateway_msgs_in, Some(1300));
        assert_eq!(s.border(), Some((200, 10_000)));
        // A zone that printed nothing: unknown, not zero.
        let s = Said::of(vec![vec![], vec![]], &[]);
        assert_eq!((s.handoffs, s.border()), (None, None));
    }

    #[test]
    fn a_field_is_matched_whole() {
        assert_eq!(
            field("x { handoff_p99_us: 5, p99_us: 7 }", "p99_us"),
            Some(7)
        );
        assert_eq!(field("x { msgs_out: 12 }", "msgs_out"), Some(12));
        assert_eq!(field("x { msgs_out: none }", "msgs_out"), None);
    }

    fn run(zones: usize, held: &[(usize, bool)]) -> LayoutRun {
        let steps = held
            .iter()
            .map(|&(clients, held)| Step {
                clients,
                held,
                player_seconds: clients as f64 * 10.0,
                ..Step::default()
            })
            .collect();
        LayoutRun::new(zones, steps, Said::default(), Vec::new())
    }

    #[test]
    fn scaling_is_the_ratio_of_the_median_clients_held() {
        let a = {
            use clap::Parser;
            #[derive(Parser)]
            struct T {
                #[command(flatten)]
                a: ClusterArgs,
            }
            T::parse_from(["t", "--rounds", "3"]).a
        };
        let one = vec![
            run(1, &[(250, true), (500, true), (1000, false), (750, true)]),
            run(1, &[(250, true), (500, false)]),
            run(1, &[(250, true), (500, true), (1000, false)]),
        ];
        let four = vec![
            run(4, &[(2000, true), (4000, false)]),
            run(4, &[(2000, true), (3000, true)]),
            run(4, &[(1000, true)]),
        ];
        assert_eq!(one[0].clients_held(), 750);
        let s = Summary::new(&a, &[1, 4], vec![one, four], Vec::new(), Path::new("/x"));
        // Medians: 500 (250, 500, 750) and 2000 (1000, 2000, 3000).
        assert_eq!(s.layouts[0].median.clients_held, 500.0);
        assert_eq!(s.layouts[1].median.clients_held, 2000.0);
        assert_eq!(s.scaling, 4.0);
    }
}
