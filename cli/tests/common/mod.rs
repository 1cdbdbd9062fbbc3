//! Shared by the live view's tests.
#![allow(dead_code)]

use std::process::Child;
use std::time::Duration;

/// Ends the child at the end of the test, whatever happens (the test started it): SIGTERM
/// first, so that `cport stress` stops the server it started, then SIGKILL after 10 s
/// (`cport_bench::proc::terminate`).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = cport_bench::proc::terminate(&mut self.0, Duration::from_secs(10));
    }
}
