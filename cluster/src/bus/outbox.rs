//! Per-destination batching of what the workers send.

use std::collections::HashMap;
use std::fmt;

use parking_lot::Mutex;

use cport_mmo::cluster::wire::{BatchWriter, Msg, Source};

use super::Bus;

/// A batch this big (bytes, header included) is published by the thread that pushed into
/// it, without waiting for the scheduled flush: a NATS message stays far below the server's
/// 1 MiB maximum payload, and a burst does not sit in memory until a worker gets to it.
pub const BATCH_LIMIT: usize = 60 * 1024;

/// One open batch per destination, filled by any worker.
///
/// The first push into a destination's empty batch calls `schedule(index)`; the glue posts a
/// completion to the port whose handler calls [`Outbox::flush`]`(index)`. So under load many
/// entries pushed before a worker gets to that completion share one NATS message, and when
/// idle a lone entry leaves as soon as a worker is free. A batch reaching [`BATCH_LIMIT`]
/// is published at once by the pushing thread.
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
    schedule: Box<dyn Fn(usize) + Send + Sync>,
}

struct Slot {
    dest: Source,
    open: Mutex<Option<BatchWriter>>,
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
                    open: Mutex::new(None),
                })
                .collect(),
            index,
            schedule: Box::new(schedule),
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
        if let Some(w) = open.take() {
            self.bus.publish(slot.dest, w.finish());
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
            .map(|s| s.open.lock().as_ref().map_or(0, BatchWriter::entries))
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
            let opened = open.is_none();
            let w = open.get_or_insert_with(|| BatchWriter::new(self.bus.header(to)));
            write(w);
            if w.len() >= BATCH_LIMIT {
                let full = open.take().expect("just filled");
                self.bus.publish(to, full.finish());
                // Published whole: nothing is left for a flush to do.
                return;
            }
            opened
        };
        if opened {
            (self.schedule)(i);
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
