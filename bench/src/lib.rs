//! Benchmark machinery shared by `cport bench`: an echo load client built on the port itself
//! (closed loop, open loop at a fixed rate, skewed handler cost), helpers to run each server
//! under test as its own process and read its CPU time, and the peer echo servers it is
//! compared with (the binaries `peer_tokio`, `peer_compio`, `peer_raw` and
//! `cport_echo_bench`: dependencies of this crate only, never of `cport` or `cport-server`).

#![warn(missing_docs)]

pub mod load;
pub mod peer;
pub mod proc;
pub mod results;
pub mod stats;
