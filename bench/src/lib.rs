//! Benchmark machinery shared by `cport bench`: a closed-loop echo load client built on the
//! port itself, and helpers to run each server under test as its own process and read its
//! CPU time.

#![warn(missing_docs)]

pub mod load;
pub mod proc;
pub mod stats;
