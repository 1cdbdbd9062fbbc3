//! What passes between the parent and a child: the settings a child is started with, the
//! commands down (one byte a line), the JSON lines up.

use std::io::{self, BufRead, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Errors;
use crate::settings::{header_name, Settings};
use cport_mmo_proto::SizeField;

/// How often a child sends its samples and counters.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// What a child process is told at start (`cport stress` passes it as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSettings {
    /// Its number (0..K): login names are `dummy{index}.{slot}_{generation}`.
    pub index: usize,
    /// The game server.
    pub addr: String,
    /// `u8` or `u16`.
    pub header: String,
    /// Its share of the clients (fewer if its open-files limit says so).
    pub max_clients: usize,
    /// Time between a dummy's moves (ms).
    pub move_interval_ms: u64,
    /// Its worker threads.
    pub threads: usize,
    /// Its port's backend (`None`: default).
    pub backend: Option<String>,
    /// Object ids from this up are NPCs.
    pub npc_ids_from: u32,
    /// Keep the dummies' pictures (for maps).
    pub keep_picture: bool,
}

impl ChildSettings {
    /// Child `index` of a run with `settings`, owning at most `share` clients.
    pub fn new(settings: &Settings, index: usize, share: usize) -> ChildSettings {
        ChildSettings {
            index,
            addr: settings.addr.to_string(),
            header: header_name(settings.header).into(),
            max_clients: share,
            move_interval_ms: settings.move_interval.as_millis() as u64,
            threads: settings.threads,
            backend: settings.backend.map(|b| b.to_string()),
            npc_ids_from: settings.npc_ids_from,
            keep_picture: settings.keep_picture,
        }
    }

    pub(crate) fn settings(&self) -> io::Result<Settings> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let addr = self
            .addr
            .parse()
            .map_err(|e| bad(format!("child address {}: {e}", self.addr)))?;
        let backend = match &self.backend {
            Some(b) => Some(b.parse().map_err(|e| bad(format!("backend {b}: {e}")))?),
            None => None,
        };
        Ok(Settings {
            header: match self.header.as_str() {
                "u8" => SizeField::U8,
                "u16" => SizeField::U16,
                h => return Err(bad(format!("header {h}"))),
            },
            max_clients: self.max_clients,
            move_interval: Duration::from_millis(self.move_interval_ms.max(1)),
            threads: self.threads.max(1),
            backend,
            npc_ids_from: self.npc_ids_from,
            keep_picture: self.keep_picture,
            ..Settings::new(addr, Duration::ZERO)
        })
    }
}

/// A child's counters since its start (each line carries them all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Dummies started.
    pub(crate) started: u64,
    /// Dummies shed.
    pub(crate) shed: u64,
    /// `a` and `s` commands handled.
    pub(crate) adds: u64,
    pub(crate) sheds: u64,
    pub(crate) active: usize,
    pub(crate) live: usize,
    pub(crate) samples: u64,
    pub(crate) packets_in: u64,
    pub(crate) packets_out: u64,
    pub(crate) errors: Errors,
    pub(crate) max_id: i64,
    /// It cannot start more (its cap, or its open-files limit).
    pub(crate) full: bool,
}

/// One line from a child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Up {
    Hello {
        cap: usize,
        fd_limited_to: Option<usize>,
        backend: String,
    },
    Tick {
        d: Vec<u32>,
        c: Counts,
    },
    Map {
        players: Vec<(i16, i16)>,
        npcs: Vec<(u32, (i16, i16))>,
    },
    End {
        c: Counts,
        cpu_s: f64,
        players: Vec<(i16, i16)>,
        npcs: Vec<(u32, (i16, i16))>,
    },
}

/// The two ends of the pipe to a child: commands down, JSON lines up.
pub struct Link {
    /// The child's input.
    pub to: Box<dyn Write + Send>,
    /// The child's output.
    pub from: Box<dyn BufRead + Send>,
}

pub(crate) fn send_up(out: &mut impl Write, up: &Up) -> io::Result<()> {
    serde_json::to_writer(&mut *out, up).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Splits `total` clients over `procs` processes (the first ones get one more).
pub fn shares(total: usize, procs: usize) -> Vec<usize> {
    let procs = procs.max(1);
    (0..procs)
        .map(|i| total / procs + usize::from(i < total % procs))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_evenly_and_add_up() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(20_000, 2), vec![10_000, 10_000]);
        assert_eq!(shares(5, 0), vec![5]);
        assert_eq!(shares(7, 4).iter().sum::<usize>(), 7);
    }
}
