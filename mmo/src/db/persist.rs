//! Write-behind of players: the rows not yet known to be in the database.
//!
//! Every change of a player's position or stats marks it dirty; at most one save interval
//! later the save tick copies its row here with a new sequence number, and sends every row
//! not yet sent in batches (one transaction each) to the DB writer. A row leaves this table
//! only when the writer reports the batch that carried *its* sequence number committed; a
//! failed batch is sent again at the next tick, so nothing is dropped while the database is
//! away. A login looks here first: a row written behind but not yet committed is newer than
//! the database's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::{DbConfig, PlayerRow};
use super::pool::{DbPool, SaveJob, MAX_BATCH};
use super::store::Store;

struct Entry {
    row: PlayerRow,
    seq: u64,
    /// The sequence number of the batch in flight with this row, if any.
    sent: Option<u64>,
}

pub(crate) struct Persist<I> {
    pub db: DbConfig,
    pub pool: DbPool<I>,
    pub interval: Duration,
    rows: Mutex<HashMap<String, Entry>>,
    seq: AtomicU64,
    /// Batches sent again after a failure.
    pub retried: AtomicU64,
    /// Batches not queued because the save queue was full (kept, sent at the next tick).
    pub deferred: AtomicU64,
}

impl<I: Send + 'static> Persist<I> {
    pub fn new(db: DbConfig, pool: DbPool<I>, interval: Duration) -> Persist<I> {
        Persist {
            db,
            pool,
            interval,
            rows: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            retried: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
        }
    }

    /// The newest row of a player that may not be in the database yet.
    pub fn get(&self, name: &str) -> Option<PlayerRow> {
        self.rows.lock().get(name).map(|e| e.row.clone())
    }

    /// Records the player's row now (sent at the next flush).
    pub fn put(&self, row: PlayerRow) {
        let seq = self.seq.fetch_add(1, Relaxed);
        let mut rows = self.rows.lock();
        match rows.get_mut(&row.name) {
            Some(e) => {
                e.row = row;
                e.seq = seq;
            }
            None => {
                rows.insert(
                    row.name.clone(),
                    Entry {
                        row,
                        seq,
                        sent: None,
                    },
                );
            }
        }
    }

    /// Sends the rows not yet sent (all, or only `name`'s) to the writer, in batches of at
    /// most [`MAX_BATCH`]; never waits (a full queue leaves them for the next flush).
    pub fn flush(&self, only: Option<&str>) {
        let mut batches: Vec<Vec<(PlayerRow, u64)>> = Vec::new();
        {
            let mut rows = self.rows.lock();
            let mut take = |e: &mut Entry| {
                if e.sent != Some(e.seq) {
                    e.sent = Some(e.seq);
                    match batches.last_mut() {
                        Some(b) if b.len() < MAX_BATCH => b.push((e.row.clone(), e.seq)),
                        _ => batches.push(vec![(e.row.clone(), e.seq)]),
                    }
                }
            };
            match only {
                Some(name) => {
                    if let Some(e) = rows.get_mut(name) {
                        take(e);
                    }
                }
                None => rows.values_mut().for_each(take),
            }
        }
        for rows in batches {
            if let Err(e) = self.pool.saves.try_send(SaveJob { rows }) {
                self.deferred.fetch_add(1, Relaxed);
                self.unsent(e.into_inner().rows.iter().map(|(r, s)| (&*r.name, *s)));
            }
        }
    }

    /// These rows were not written: send them again at the next flush.
    fn unsent<'a>(&self, rows: impl Iterator<Item = (&'a str, u64)>) {
        let mut map = self.rows.lock();
        for (name, seq) in rows {
            if let Some(e) = map.get_mut(name) {
                if e.sent == Some(seq) {
                    e.sent = None;
                }
            }
        }
    }

    /// The writer's report on a batch.
    pub fn saved(&self, rows: Vec<(String, u64)>, ok: bool) {
        if !ok {
            self.retried.fetch_add(1, Relaxed);
            return self.unsent(rows.iter().map(|(n, s)| (&**n, *s)));
        }
        let mut map = self.rows.lock();
        for (name, seq) in rows {
            if map.get(&name).is_some_and(|e| e.seq == seq) {
                map.remove(&name);
            }
        }
    }

    /// Rows not yet known to be in the database.
    pub fn pending(&self) -> usize {
        self.rows.lock().len()
    }

    /// At shutdown, once no worker runs: lets the DB threads finish their queues, then writes
    /// every row still here on this thread (trying again for up to `deadline`). Returns how
    /// many rows were written.
    pub fn final_flush(&self, deadline: Duration) -> Result<usize, String> {
        self.pool.stop();
        let rows: Vec<PlayerRow> = self.rows.lock().values().map(|e| e.row.clone()).collect();
        if rows.is_empty() {
            return Ok(0);
        }
        let until = Instant::now() + deadline;
        loop {
            if self.pool.counters.fenced.load(Relaxed) {
                return Err(format!(
                    "{} rows not saved: a newer run of this zone writes now",
                    rows.len()
                ));
            }
            let fence = self.pool.fence;
            let r = Store::open(&self.db).and_then(|mut s| {
                rows.chunks(MAX_BATCH)
                    .try_for_each(|chunk| s.save(chunk, fence))
            });
            match r {
                Ok(()) => {
                    self.rows.lock().clear();
                    return Ok(rows.len());
                }
                Err(e) if e.starts_with(super::store::FENCED) => {
                    self.pool.counters.fenced.store(true, Relaxed);
                    return Err(format!("{} rows not saved: {e}", rows.len()));
                }
                Err(e) if Instant::now() >= until => {
                    return Err(format!("{} rows not saved: {e}", rows.len()))
                }
                Err(e) => {
                    tracing::warn!("final save failed, trying again: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}
