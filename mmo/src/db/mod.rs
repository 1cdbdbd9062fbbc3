//! Persistence off the workers: the course's `EV_DB` pattern.
//!
//! The game's worker threads never wait on the database. A login or a batch of saves is a
//! job on a bounded queue ([`crossbeam_channel::bounded`]); blocking DB threads (separate
//! from the port's workers) run it and hand the result to a callback, which the game makes post it back to the
//! completion port with [`Host::post_db`](crate::net::Host::post_db) (on cport:
//! [`ServerHandle::post_message`](cport_server::ServerHandle::post_message)); a worker picks
//! it up in `Handler::on_message` like any I/O completion. A full queue is refused at once (a login gets `SC_LOGIN_FAIL`, a batch of
//! saves stays pending and is retried at the next save tick), never waited on.
//!
//! Threads: `loaders` threads run logins (reads only, so SQLite's WAL lets them run beside
//! the writer), and one writer runs every batch of saves, one transaction per batch, in the
//! order they were queued (so a newer row of a player is never overwritten by an older);
//! batches queued behind the one it takes join its transaction (up to 1000 rows), so the
//! one-row batches of a wave of logouts are written together.
//!
//! Stores: SQLite (embedded, bundled, WAL, `synchronous=NORMAL`: a committed transaction
//! survives `kill -9` of the server) or PostgreSQL (the sync `postgres` client; a connection
//! that fails is dropped and made again for the next job). Queries are parameterized only.
//! The schema is versioned: `cport_schema` holds the version, [`MIGRATIONS`] the steps.
//!
//! Layout, imports in one direction (this module knows nothing of the game or the network):
//! `config` (`DbConfig`, `PlayerRow`) ← `store` (the connections, the schema) ← `pool`
//! (the queues and the DB threads) ← `persist` (write-behind). The DB threads hand their
//! results to a callback given to `DbPool::spawn`; the game wraps them in
//! [`DbResult`](crate::net::DbResult) and posts them to its [`Host`](crate::net::Host).

mod config;
mod persist;
mod pool;
mod store;

pub use config::{DbConfig, PlayerRow};
pub use store::{Fence, MIGRATIONS};

pub(crate) use persist::Persist;
pub(crate) use pool::{DbPool, Done, LoadJob};
pub(crate) use store::Store;
