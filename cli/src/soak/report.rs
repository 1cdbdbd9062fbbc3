//! The table and the verdict at the end of a soak.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use cport_bench::stats;

use super::counts::{ClientCounts, HOSTILE};
use super::options::{HOSTILE_CLOSE, RSS_JUDGED, SLOW_CLOSE, STALL};
use super::sampler::Sample;
use super::servers::Exit;

pub(crate) struct Report<'a> {
    pub(crate) duration: Duration,
    pub(crate) tally: &'a ClientCounts,
    pub(crate) samples: &'a [Vec<Sample>],
    pub(crate) idle_start: &'a [u64],
    pub(crate) idle_end: &'a [u64],
    pub(crate) leaked: &'a [(u64, Option<u64>)],
    pub(crate) last_stats: &'a [HashMap<String, u64>],
    pub(crate) exits: &'a [(&'static str, Exit)],
    pub(crate) max_rss_growth_pct: f64,
    pub(crate) max_heap_growth_pct: f64,
}

/// The median of counts (the one median of the workspace, `cport_bench::stats::median`).
fn median(v: Vec<u64>) -> u64 {
    let v: Vec<f64> = v.into_iter().map(|x| x as f64).collect();
    stats::median(&v).round() as u64
}
/// The samples of the first and the last window (a minute, or a third of a shorter run).
pub(crate) fn windows(s: &[Sample]) -> (Vec<&Sample>, Vec<&Sample>) {
    let end = s.last().map_or(0.0, |l| l.t);
    let w = (end / 3.0).min(60.0);
    (
        s.iter().filter(|x| x.t <= w).collect(),
        s.iter().filter(|x| x.t >= end - w).collect(),
    )
}

/// Rows of (what, figure, threshold, ok).
pub(crate) type Row = (String, String, String, bool);

impl Report<'_> {
    fn rows(&self) -> Vec<Row> {
        let t = self.tally;
        let mut rows: Vec<Row> = Vec::new();
        let mut row = |what: &str, fig: String, thr: &str, ok: bool| {
            rows.push((what.to_string(), fig, thr.to_string(), ok));
        };
        row(
            "load ran",
            format!("{:.1} s", self.duration.as_secs_f64()),
            "",
            true,
        );
        row(
            "echo bytes sent / verified",
            format!("{} / {}", t.echo_sent.get(), t.echo_verified.get()),
            "verified > 0",
            t.echo_verified.get() > 0,
        );
        row(
            "echo bytes lost / corrupted",
            format!("{} / {}", t.echo_lost.get(), t.echo_corrupt.get()),
            "0 / 0",
            t.echo_lost.get() == 0 && t.echo_corrupt.get() == 0,
        );
        row(
            "verified connections: made / closed by the server / stalled",
            format!(
                "{} / {} / {}",
                t.echo_conns.get(),
                t.echo_dropped.get(),
                t.echo_stalls.get()
            ),
            "- / 0 / 0",
            t.echo_dropped.get() == 0 && t.echo_stalls.get() == 0,
        );
        row(
            "churn connections: echo / game (of which reset mid-packet)",
            format!(
                "{} / {} ({} / {})",
                t.churn_echo.get(),
                t.churn_mmo.get(),
                t.resets_echo.get(),
                t.resets_mmo.get()
            ),
            "> 0",
            t.churn_echo.get() + t.churn_mmo.get() > 0,
        );
        row(
            "connects failed",
            t.connect_errors.get().to_string(),
            "0",
            t.connect_errors.get() == 0,
        );
        row(
            "never-reading clients closed by echo / started",
            format!(
                "{} / {} ({} MiB written)",
                t.never_readers_closed.get(),
                t.never_readers.get(),
                t.never_reader_bytes.get() >> 20
            ),
            &format!("all, within {} s", SLOW_CLOSE.as_secs()),
            t.never_readers_closed.get() == t.never_readers.get(),
        );
        for (k, name) in HOSTILE.iter().enumerate() {
            let limit = if k == 7 { SLOW_CLOSE } else { HOSTILE_CLOSE };
            row(
                &format!("hostile ({name}): closed by mmo / sent"),
                format!("{} / {}", t.hostile_closed[k].get(), t.hostile[k].get()),
                &format!("all, within {} s", limit.as_secs()),
                t.hostile_closed[k].get() == t.hostile[k].get(),
            );
        }
        let (p50, p99, max) = t.answer_us.borrow().as_ref().map_or((0, 0, 0), |h| {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        });
        row(
            "game logins / refused or stalled",
            format!("{} / {}", t.logins.get(), t.login_fails.get()),
            "- / 0",
            t.login_fails.get() == 0,
        );
        row(
            "player moves answered / sent (unanswered)",
            format!(
                "{} / {} ({})",
                t.moves_answered.get(),
                t.moves_sent.get(),
                t.moves_unanswered.get()
            ),
            &format!("all, within {} s", STALL.as_secs()),
            t.moves_answered.get() > 0 && t.moves_unanswered.get() == 0,
        );
        row(
            "move answer time p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                p50 as f64 / 1e3,
                p99 as f64 / 1e3,
                max as f64 / 1e3
            ),
            "",
            true,
        );
        let npc = self.last_stats.get(1);
        let awake: Vec<u64> = self
            .samples
            .get(1)
            .map_or(Vec::new(), |s| s.iter().map(|x| x.extra).collect());
        row(
            "NPC moves (server) / seen by players; awake NPCs median / max",
            format!(
                "{} / {}; {} / {}",
                npc.and_then(|k| k.get("npc_moves")).copied().unwrap_or(0),
                t.npc_moves_seen.get(),
                median(awake.clone()),
                awake.iter().max().copied().unwrap_or(0)
            ),
            "seen > 0",
            t.npc_moves_seen.get() > 0,
        );
        row(
            "players dropped / bad packets from the server",
            format!(
                "{} / {}",
                t.players_dropped.get(),
                t.bad_server_packets.get()
            ),
            "0 / 0",
            t.players_dropped.get() == 0 && t.bad_server_packets.get() == 0,
        );
        let judged = self.duration >= RSS_JUDGED;
        for (i, name) in ["echo", "mmo"].iter().enumerate() {
            let s = self.samples.get(i).map_or(&[][..], |v| &v[..]);
            let (first, last) = windows(s);
            let rss = |w: &[&Sample]| median(w.iter().map(|x| x.rss_kib).collect());
            let (r0, r1) = (rss(&first), rss(&last));
            let growth = if r0 > 0 {
                (r1 as f64 / r0 as f64 - 1.0) * 100.0
            } else {
                0.0
            };
            row(
                &format!("{name}: RSS median, first / last window"),
                format!(
                    "{:.1} / {:.1} MiB ({growth:+.1} %); max {:.1} MiB",
                    r0 as f64 / 1024.0,
                    r1 as f64 / 1024.0,
                    s.iter().map(|x| x.rss_kib).max().unwrap_or(0) as f64 / 1024.0
                ),
                &if judged {
                    format!("≤ +{} %", self.max_rss_growth_pct)
                } else {
                    format!(
                        "not judged: runs under {} s are warm-up",
                        RSS_JUDGED.as_secs()
                    )
                },
                !judged || (r0 > 0 && growth <= self.max_rss_growth_pct),
            );
            let heap = |w: &[&Sample]| median(w.iter().map(|x| x.heap_used).collect());
            let (h0, h1) = (heap(&first), heap(&last));
            let free = |w: &[&Sample]| median(w.iter().map(|x| x.heap_free).collect());
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            if h0 > 0 {
                let growth = (h1 as f64 / h0 as f64 - 1.0) * 100.0;
                row(
                    &format!("{name}: heap in use median, first / last window (held free)"),
                    format!(
                        "{:.1} / {:.1} MiB ({growth:+.1} %) ({:.1} / {:.1} MiB)",
                        mib(h0),
                        mib(h1),
                        mib(free(&first)),
                        mib(free(&last))
                    ),
                    &if judged {
                        format!("≤ +{} % or ≤ +1 MiB", self.max_heap_growth_pct)
                    } else {
                        format!(
                            "not judged: runs under {} s are warm-up",
                            RSS_JUDGED.as_secs()
                        )
                    },
                    !judged || growth <= self.max_heap_growth_pct || h1 <= h0 + (1 << 20),
                );
            }
            let fds = |w: &[&Sample]| w.iter().map(|x| x.fds).max().unwrap_or(0);
            let (i0, i1) = (self.idle_start[i], self.idle_end[i]);
            row(
                &format!("{name}: fds max first / last window; idle before / after"),
                format!("{} / {}; {i0} / {i1}", fds(&first), fds(&last)),
                "after ≤ before",
                i1 <= i0,
            );
            let open: Vec<u64> = s.iter().map(|x| x.open).collect();
            let queued = s.iter().map(|x| x.queued).max().unwrap_or(0);
            row(
                &format!("{name}: sessions median / max; queued bytes max"),
                format!(
                    "{} / {}; {} KiB",
                    median(open.clone()),
                    open.iter().max().copied().unwrap_or(0),
                    queued / 1024
                ),
                "",
                true,
            );
            let (open, players) = self.leaked[i];
            row(
                &format!("{name}: sessions leaked (open after all clients closed)"),
                match players {
                    Some(p) => format!("{open} (players {p})"),
                    None => open.to_string(),
                },
                "0",
                open == 0 && players.is_none_or(|p| p == 0),
            );
            if let Some(kv) = self.last_stats.get(i) {
                let mut closes: Vec<String> = kv
                    .iter()
                    .filter(|(k, v)| k.starts_with("closed_") && **v > 0)
                    .map(|(k, v)| format!("{}={v}", &k["closed_".len()..]))
                    .collect();
                closes.sort();
                row(
                    &format!("{name}: sessions accepted; closed by reason"),
                    format!(
                        "{}; {}",
                        kv.get("accepted").copied().unwrap_or(0),
                        closes.join(" ")
                    ),
                    "",
                    true,
                );
            }
            let exit = self.exits.iter().find(|(n, _)| n == name).map(|(_, e)| e);
            let (fig, ok) = match exit {
                Some(Exit::Stopped(st, took)) => (
                    format!(
                        "ran throughout; SIGTERM → {st} in {:.2} s",
                        took.as_secs_f64()
                    ),
                    st.success(),
                ),
                Some(Exit::Died(st)) => (format!("DIED during the run: {st}"), false),
                Some(Exit::Hung) => ("did not exit within 15 s of SIGTERM".into(), false),
                None => ("unknown".into(), false),
            };
            row(&format!("{name}: crashes"), fig, "none, exit 0", ok);
        }
        rows
    }

    /// The table (markdown) and the failed rows.
    pub(crate) fn render(&self) -> (String, Vec<String>) {
        let rows = self.rows();
        let mut out = String::from("| check | figure | pass when | |\n|---|---|---|---|\n");
        let mut failures = Vec::new();
        for (what, fig, thr, ok) in rows {
            let _ = writeln!(
                out,
                "| {what} | {fig} | {thr} | {} |",
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(what);
            }
        }
        (out, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::ExitStatus;

    struct Fixture {
        duration: Duration,
        t: ClientCounts,
        samples: Vec<Vec<Sample>>,
        idle_end: [u64; 2],
        leaked: [(u64, Option<u64>); 2],
        exits: Vec<(&'static str, Exit)>,
    }

    /// The failed rows of a clean run's report after `fault` changed it.
    fn failures(fault: impl FnOnce(&mut Fixture)) -> Vec<String> {
        let t = ClientCounts::default();
        t.echo_sent.set(1000);
        t.echo_verified.set(1000);
        t.churn_echo.set(3);
        t.moves_sent.set(5);
        t.moves_answered.set(5);
        t.npc_moves_seen.set(9);
        let sample = |t: f64| Sample {
            t,
            rss_kib: 10_000,
            fds: 20,
            heap_used: 5 << 20,
            ..Sample::default()
        };
        let ok = ExitStatus::default();
        let mut f = Fixture {
            duration: Duration::from_secs(270),
            t,
            samples: vec![(0..10).map(|i| sample(i as f64 * 30.0)).collect::<Vec<_>>(); 2],
            idle_end: [12, 12],
            leaked: [(0, None), (0, Some(0))],
            exits: vec![
                ("echo", Exit::Stopped(ok, Duration::ZERO)),
                ("mmo", Exit::Stopped(ok, Duration::ZERO)),
            ],
        };
        fault(&mut f);
        let report = Report {
            duration: f.duration,
            tally: &f.t,
            samples: &f.samples,
            idle_start: &[12, 12],
            idle_end: &f.idle_end,
            leaked: &f.leaked,
            last_stats: &[HashMap::new(), HashMap::new()],
            exits: &f.exits,
            max_rss_growth_pct: 25.0,
            max_heap_growth_pct: 10.0,
        };
        report.render().1
    }

    #[test]
    fn the_verdict_fails_on_each_kind_of_fault() {
        assert_eq!(failures(|_| {}), Vec::<String>::new());
        let lost = ["echo bytes lost / corrupted"];
        assert_eq!(failures(|f| f.t.echo_lost.set(1)), lost);
        assert_eq!(failures(|f| f.t.echo_corrupt.set(1)), lost);
        assert_eq!(
            failures(|f| f.idle_end[1] = 13),
            ["mmo: fds max first / last window; idle before / after"]
        );
        let rss = failures(|f| {
            for x in f.samples[0].iter_mut().skip(7) {
                x.rss_kib = 20_000;
            }
        });
        assert_eq!(rss, ["echo: RSS median, first / last window"]);
        let heap = failures(|f| {
            for x in f.samples[1].iter_mut().skip(7) {
                x.heap_used = 7 << 20;
            }
        });
        assert_eq!(
            heap,
            ["mmo: heap in use median, first / last window (held free)"]
        );
        let short = failures(|f| {
            f.duration = Duration::from_secs(60);
            for x in f.samples[0].iter_mut().skip(7) {
                x.rss_kib = 20_000;
            }
        });
        assert_eq!(
            short,
            Vec::<String>::new(),
            "a short run's RSS is not judged"
        );
        assert_eq!(
            failures(|f| f.leaked[0].0 = 1),
            ["echo: sessions leaked (open after all clients closed)"]
        );
        assert_eq!(
            failures(|f| f.leaked[1].1 = Some(1)),
            ["mmo: sessions leaked (open after all clients closed)"]
        );
        assert_eq!(failures(|f| f.exits[0].1 = Exit::Hung), ["echo: crashes"]);
        assert_eq!(
            failures(|f| f.exits[1].1 = Exit::Died(ExitStatus::default())),
            ["mmo: crashes"]
        );
        assert_eq!(
            failures(|f| f.t.hostile[2].set(1)),
            ["hostile (size over the max): closed by mmo / sent"]
        );
        assert_eq!(
            failures(|f| f.t.moves_unanswered.set(1)),
            ["player moves answered / sent (unanswered)"]
        );
        assert_eq!(
            failures(|f| f.t.never_readers.set(1)),
            ["never-reading clients closed by echo / started"]
        );
        assert_eq!(
            failures(|f| f.t.echo_verified.set(0)).len(),
            1,
            "a run that verified nothing fails"
        );
    }
}
