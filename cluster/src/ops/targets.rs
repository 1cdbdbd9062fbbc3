//! What a zone and a gateway serve: their probes go into their ports, readiness is the bus's
//! connection, and their series are read from `Zone::stats()` & co. and `Gateway::stats()`.

use std::borrow::Cow;
use std::fmt;

use super::{Probe, Series, Target, PROBE_KEY};
use crate::bus::{Bus, BusCounters};
use crate::gateway::Gateway;
use crate::zone::Zone;

/// `Ok` when the bus is connected, else why not.
fn bus_ready(bus: &Bus) -> Result<(), String> {
    if bus.connected() {
        Ok(())
    } else {
        Err(format!(
            "not connected to NATS at {} (reconnecting)",
            bus.url()
        ))
    }
}

/// The series every process on the bus has.
fn bus_series(out: &mut Series<'_, '_>, bus: &Bus, c: BusCounters) -> fmt::Result {
    out.gauge(
        "incarnation",
        "This run of the process: its start time in µs since the Unix epoch (a restarted process has a larger one)",
        bus.incarnation() as f64,
    )?;
    out.gauge(
        "bus_connected",
        "1 while connected to NATS, 0 while reconnecting",
        if bus.connected() { 1.0 } else { 0.0 },
    )?;
    out.counters(
        "bus_messages",
        "NATS messages (batches) sent and received",
        "direction",
        &[("in", c.msgs_in), ("out", c.msgs_out)],
    )?;
    out.counters(
        "bus_bytes",
        "Payload bytes of those messages",
        "direction",
        &[("in", c.bytes_in), ("out", c.bytes_out)],
    )?;
    out.counter(
        "bus_errors",
        "Publishes refused, entries not batched, callback panics",
        c.errors,
    )
}

impl Target for Zone {
    fn labels(&self) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        vec![("zone".into(), self.me().to_string().into())]
    }

    fn post_probe(&self, probe: Probe) -> Result<(), String> {
        self.handle()
            .post_message(PROBE_KEY, probe)
            .map_err(|e| format!("the port refused the probe: {e}"))
    }

    fn ready(&self) -> Result<(), String> {
        bus_ready(self.bus())
    }

    fn collect(&self, out: &mut Series<'_, '_>) -> fmt::Result {
        let s = self.stats();
        let z = self.zone_stats();
        let b = self.bus_stats();
        let db = self.engine().db_stats();
        out.gauge(
            "zone_players",
            "Players this zone owns now",
            s.players as f64,
        )?;
        out.gauge(
            "zone_ghosts",
            "Ghosts on this zone's board now (players and NPCs of other zones)",
            z.ghosts as f64,
        )?;
        out.gauge(
            "zone_npcs_awake",
            "NPCs of this zone awake now (a move timer pending)",
            s.awake_npcs as f64,
        )?;
        out.counter("zone_logins", "Logins this zone took", s.logins)?;
        out.counter(
            "zone_resumed",
            "Players taken over from their last save after their zone was replaced",
            z.resumed,
        )?;
        out.counter(
            "zone_gateway_logouts",
            "Players logged out because their gateway was replaced or went silent",
            z.gateway_logouts,
        )?;
        out.counter(
            "zone_ghosts_dropped",
            "Ghosts dropped because the zone that sent them was replaced or lost batches",
            z.ghosts_dropped,
        )?;
        out.counter(
            "bus_stale_batches",
            "Batches dropped as coming from a replaced run of their sender",
            self.stale_batches(),
        )?;
        out.gauge(
            "fenced",
            "1 once this run learnt that a newer run of its zone replaced it",
            if self.fenced() { 1.0 } else { 0.0 },
        )?;
        out.counter(
            "zone_home_logins",
            "Logins this zone loaded as the name's home",
            z.home_logins,
        )?;
        out.counters(
            "zone_handoffs",
            "Players handed to another zone (out) or taken from one (in)",
            "direction",
            &[("in", z.handoffs_in), ("out", z.handoffs_out)],
        )?;
        out.counter(
            "zone_handoff_cancels",
            "Hand-offs called off (the player walked back)",
            z.handoff_cancels,
        )?;
        out.counter(
            "zone_handoff_timeouts",
            "Hand-offs the new zone did not answer in time (the player stayed)",
            z.handoff_timeouts,
        )?;
        out.gauges(
            "zone_handoff_latency_seconds",
            "Hand-off time at the old owner, from the decision to the new zone's answer, since start (quantile 1 is the largest)",
            "quantile",
            &[
                ("0.5", z.handoff_p50_us as f64 / 1e6),
                ("0.99", z.handoff_p99_us as f64 / 1e6),
                ("1", z.handoff_max_us as f64 / 1e6),
            ],
        )?;
        out.counter("zone_player_moves", "Player moves and teleports", s.moves)?;
        out.counter("zone_npc_moves", "NPC moves", s.npc_moves)?;
        out.counter(
            "zone_stale_messages",
            "Bus messages dropped as stale (an epoch not held)",
            z.stale,
        )?;
        out.counter(
            "zone_invalid_messages",
            "Bus messages dropped as invalid",
            z.invalid,
        )?;
        bus_series(out, self.bus(), b.bus)?;
        out.counter(
            "bus_lost_batches",
            "Batches after a gap in their sender's sequence (core NATS is at most once)",
            b.gaps,
        )?;
        out.counter(
            "bus_malformed",
            "Bus messages that were not batches, or were cut short",
            b.junk + b.malformed,
        )?;
        out.gauge(
            "inbox_queued_batches",
            "Batches received and waiting for a worker",
            b.queued as f64,
        )?;
        out.gauge(
            "outbox_pending_entries",
            "Entries in open batches not yet published",
            self.outbox_pending() as f64,
        )?;
        out.gauge(
            "db_pending_rows",
            "Player rows not yet known to be in the database",
            db.pending_rows as f64,
        )?;
        out.counter("db_rows_saved", "Player rows written", db.rows_saved)?;
        out.counter(
            "db_save_errors",
            "Save batches that failed (their rows are sent again)",
            db.save_errors,
        )
    }
}

impl Target for Gateway {
    fn labels(&self) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        vec![("gateway".into(), self.me().to_string().into())]
    }

    fn post_probe(&self, probe: Probe) -> Result<(), String> {
        self.handle()
            .post_message(PROBE_KEY, probe)
            .map_err(|e| format!("the port refused the probe: {e}"))
    }

    fn ready(&self) -> Result<(), String> {
        bus_ready(self.bus())
    }

    fn collect(&self, out: &mut Series<'_, '_>) -> fmt::Result {
        let s = self.stats();
        let r = s.routes;
        out.gauge(
            "gateway_sessions",
            "Client sessions open now",
            r.sessions as f64,
        )?;
        out.gauge(
            "gateway_held_packets",
            "Client packets held now for hand-offs and logins",
            r.held as f64,
        )?;
        out.counter("gateway_logins", "Logins a zone took", r.logins)?;
        out.counter(
            "gateway_zone_restarts",
            "Zones seen restarting (a newer run spoke)",
            r.zone_restarts,
        )?;
        out.counters(
            "gateway_resumes",
            "Players resumed from their last save after their zone was replaced",
            "outcome",
            &[
                ("asked", r.resumes),
                ("resumed", r.resumed),
                ("timed_out", r.resume_timeouts),
            ],
        )?;
        out.counter(
            "bus_stale_batches",
            "Batches dropped as coming from a replaced run of their sender",
            r.stale_batches,
        )?;
        out.counter(
            "gateway_login_fails",
            "Logins refused (bad name, no free id, no zone answer in time)",
            r.login_fails,
        )?;
        out.counter(
            "gateway_routed_packets",
            "Client packets sent to a zone",
            r.routed,
        )?;
        out.counters(
            "gateway_handoffs",
            "Hand-offs by what became of them",
            "outcome",
            &[
                ("begun", r.handoffs_begun),
                ("completed", r.handoffs_completed),
                ("cancelled", r.handoffs_cancelled),
                ("timed_out", r.handoff_timeouts),
            ],
        )?;
        out.counter(
            "gateway_rejected",
            "Clients closed for what they sent",
            r.rejected,
        )?;
        bus_series(out, self.bus(), s.bus)?;
        out.counter(
            "bus_lost_batches",
            "Batches a zone sent that never arrived (gaps in its sequence)",
            s.lost_batches,
        )?;
        out.counter(
            "bus_malformed",
            "Bus messages or entries dropped as unreadable or foreign",
            s.malformed_batches + s.malformed_entries + s.foreign_batches,
        )?;
        out.gauge(
            "inbox_queued_batches",
            "Batches received and waiting for a worker",
            self.inbox_queued() as f64,
        )?;
        out.gauge(
            "outbox_pending_entries",
            "Entries in open batches not yet published",
            self.outbox_pending() as f64,
        )
    }
}
