//! Benchmark machinery shared by `cport bench`, `cport soak` and the tests: an echo load
//! client built on the port itself (closed loop, open loop at a fixed rate, skewed handler
//! cost), the one spawner of server processes and reader of their startup line ([`proc`]:
//! start, wait for `listening on ADDR`, measure CPU time and context switches, stop with
//! SIGTERM), medians and ranges ([`stats`]), the JSON results, and what the peer echo servers
//! share ([`peer`]; the peers themselves are the binaries of `cport-bench-peers`, built only
//! when a benchmark needs them), and a CPU share for a process ([`cgroup`], Linux: a cgroup v1
//! `cpu` group with a CFS quota).

#![warn(missing_docs)]

#[cfg(target_os = "linux")]
pub mod cgroup;
pub mod load;
pub mod peer;
pub mod proc;
pub mod results;
pub mod stats;
