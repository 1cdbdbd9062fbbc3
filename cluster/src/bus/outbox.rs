//! Per-destination batching of what the workers send.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use cport_mmo::cluster::wire::{BatchWriter, Msg, Source};

use super::Bus;

/// A batch this big (bytes, header included) is published by the thread that pushed into
/// it, without waiting for the scheduled flush: a NATS message stays far below the server's
/// 1 MiB maximum payload, and a burst does not sit in memory until a worker gets to it.
pub const BATCH_LIMIT: usize = 60 * 1024;

/// One open batch per destination, filled by any worker.
///
/// The first push into a destination's empty batch calls `schedule(index, delay)`; the glue
/// posts a completion to the port (after `delay`, a port timer, when it is not zero) whose
/// handler calls [`Outbox::flush`]`(index)`. `delay` is what is left of the **tick** since
/// the destination's last flush ([`Outbox::with_tick`]): a destination gets at most one NATS
/// message per tick, however busy, and an entry after a quiet tick leaves as soon as a worker
/// is free. So under load many entries share one NATS message (per tick per destination),
/// and when idle nothing waits. A batch reaching [`BATCH_LIMIT`] is published at once by the
/// pushing thread.
///
/// A batch's header (and so its `seq`) is taken when it opens, and a batch is taken and
/// handed to [`Bus::publish`] under the destination's lock: batches to one destination are
/// published in `seq` order, whichever threads flush them. Every batch to a destination
/// listed here should go through the outbox (a batch built elsewhere with [`Bus::header`]
/// for the same destination may be published out of `seq` order with the outbox's).
pub struct Outbox {
    bus: Bus,
    slots: Vec<Slot>,
    index: HashMap<Source, usize>,
    schedule: Box<dyn Fn(usize, Duration) + Send + Sync>,
    tick: Duration,
}

struct Slot {
    dest: Source,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    batch: Option<BatchWriter>,
    /// When the last batch left.
    last: Option<Instant>,
}

impl Outbox {
    /// An outbox for `dests` (destination `i` is `dests[i]`; a destination listed twice keeps
    /// its first index), publishing on `bus`. `schedule(i)` is called, outside any lock, when
    /// destination `i`'s batch opens; it must not block and must lead to one
    /// [`Outbox::flush`]`(i)` soon.
    pub fn new(
        bus: Bus,
        dests: Vec<Source>,
        schedule: impl Fn(usize) + Send + Sync + 'static,
    ) -> Outbox {
        Outbox::with_tick(bus, dests, Duration::ZERO, move |i, _| schedule(i))
    }

    /// [`Outbox::new`] with a tick: `schedule(i, delay)` asks for the flush `delay` from now
    /// (zero when the destination's last batch left a tick ago or more).
    pub fn with_tick(
        bus: Bus,
        dests: Vec<Source>,
        tick: Duration,
        schedule: impl Fn(usize, Duration) + Send + Sync + 'static,
    ) -> Outbox {
        let mut index = HashMap::with_capacity(dests.len());
        for (i, &d) in dests.iter().enumerate() {
            index.entry(d).or_insert(i);
        }
        Outbox {
            bus,
            slots: dests
                .into_iter()
                .map(|dest| Slot {
                    dest,
                    open: Mutex::new(Open::default()),
                })
                .collect(),
            index,
            schedule: Box::new(schedule),
            tick,
        }
    }

    /// The index of `dest` (what `schedule` is called with), if it is one of the outbox's.
    pub fn index(&self, dest: Source) -> Option<usize> {
        self.index.get(&dest).copied()
    }

    /// The destinations, by index.
    pub fn dests(&self) -> impl Iterator<Item = Source> + '_ {
        self.slots.iter().map(|s| s.dest)
    }

    /// Appends `m` to `to`'s open batch ([`Msg::Send`] as [`Outbox::push_send`] does).
    ///
    /// A destination that is not the outbox's gets a batch of its own, published at once
    /// (counted in [`BusCounters::errors`](super::BusCounters::errors) and logged: the glue
    /// should have listed it).
    pub fn push(&self, to: Source, m: &Msg) {
        self.append(to, |w| w.push(m));
    }

    /// Appends course-protocol packets for `session` on gateway `gateway` (joined to the
    /// batch's last entry when that is a send to the same session).
    pub fn push_send(&self, gateway: u16, session: u64, bytes: &[u8]) {
        self.append(Source::Gateway(gateway), |w| w.push_send(session, bytes));
    }

    /// Publishes destination `dest_index`'s open batch, if it has one (the scheduled
    /// completion's handler calls this). An index out of range does nothing.
    pub fn flush(&self, dest_index: usize) {
        let Some(slot) = self.slots.get(dest_index) else {
            return;
        };
        let mut open = slot.open.lock();
        if let Some(w) = open.batch.take() {
            self.bus.publish(slot.dest, w.finish());
            open.last = Some(Instant::now());
        }
    }

    /// Publishes every open batch whose destination's tick is over (the rest wait for their
    /// scheduled flush): a worker that just produced a burst sends it itself, without a
    /// wake of another worker, and the one-message-per-tick cap still holds.
    pub fn flush_due(&self) {
        for slot in &self.slots {
            let mut open = slot.open.lock();
            let due = open.last.is_none_or(|t| t.elapsed() >= self.tick);
            if due {
                if let Some(w) = open.batch.take() {
                    self.bus.publish(slot.dest, w.finish());
                    open.last = Some(Instant::now());
                }
            }
        }
    }

    /// Publishes every open batch (a process stopping, a test).
    pub fn flush_all(&self) {
        for i in 0..self.slots.len() {
            self.flush(i);
        }
    }

    /// Entries waiting in open batches (a metric).
    pub fn pending(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.open.lock().batch.as_ref().map_or(0, BatchWriter::entries))
            .sum()
    }

    fn append(&self, to: Source, write: impl FnOnce(&mut BatchWriter)) {
        let Some(i) = self.index(to) else {
            let mut w = BatchWriter::new(self.bus.header(to));
            write(&mut w);
            self.bus.inner.stats.error(format_args!(
                "outbox: {to:?} is not one of its destinations; sent unbatched"
            ));
            self.bus.publish(to, w.finish());
            return;
        };
        let slot = &self.slots[i];
        let opened = {
            let mut open = slot.open.lock();
            let opened = open.batch.is_none();
            let w = open
                .batch
                .get_or_insert_with(|| BatchWriter::new(self.bus.header(to)));
            write(w);
            if w.len() >= BATCH_LIMIT {
                let full = open.batch.take().expect("just filled");
                self.bus.publish(to, full.finish());
                open.last = Some(Instant::now());
                // Published whole: nothing is left for a flush to do.
                return;
            }
            opened.then(|| {
                open.last
                    .map_or(Duration::ZERO, |t| self.tick.saturating_sub(t.elapsed()))
            })
        };
        if let Some(delay) = opened {
            (self.schedule)(i, delay);
        }
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("bus", &self.bus)
            .field("dests", &self.dests().collect::<Vec<_>>())
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}
