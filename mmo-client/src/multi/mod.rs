//! The stress tester over several client processes, for more clients than one process may
//! open files (`cport stress --procs K`).
//!
//! The parent runs the course's ramp on **one global tracked delay**, exactly as one process
//! would: each child forwards every delay sample it measures (batched every 10 ms) with its
//! counters, and the parent feeds them to its [`DelayTracker`](crate::DelayTracker) and its
//! histograms. The children own the sockets and do only what they are told, one line per
//! command on their input:
//!
//! * `a`: start one dummy (the parent gives each add to the child with the fewest live
//!   clients, below its open-files cap);
//! * `s`: shed this child's oldest dummy (the parent keeps the global order of adds, so the
//!   globally oldest is shed, as one process does);
//! * `m`: send the map now (for a live view); `q`: stop, send the final counts and the map,
//!   and exit. End of input is `q` (the parent is gone).
//!
//! Children answer with JSON lines ([`run_child`]): a hello with their cap, then a tick every
//! 10 ms, maps when asked, and the end. The parent ([`run_multi`]) merges them into the same
//! [`Report`](crate::Report) and [`MapSnapshot`](crate::MapSnapshot) as one process gives,
//! with each child's share in [`Report::children`](crate::Report::children). The transport is
//! any pair of byte streams (pipes to child processes in `cport stress`, socket pairs to
//! threads in the tests).
//!
//! The files: `wire` (the settings a child is started with, the lines both ways), `child`
//! (a child's side: its dummies on its own port), `parent` (the children as the ramp's group,
//! and [`run_multi`]).

mod child;
mod parent;
mod wire;

pub use child::run_child;
pub use parent::run_multi;
pub use wire::{shares, ChildSettings, Link};
