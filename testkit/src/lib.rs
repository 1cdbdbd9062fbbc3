//! Test support shared by the test suites of `cport`, `cport-server` and `cport-mmo`: every
//! networked test runs once per backend, with timeouts that fail a test instead of hanging it.
//! Empty under `--cfg loom`, where `cport` builds only its scheduler model.
#![cfg(not(loom))]

use std::time::Duration;

/// The backend type the tests of [`per_backend!`] take (re-exported so that the macro names
/// it from any crate).
pub use cport::Backend;

/// How long anything may take before a test fails rather than hangs.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Expands each listed test function `fn name(backend: Backend)` into a `#[test]` per backend:
/// `uring::name` and `epoll::name`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name($crate::Backend::Uring) } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name($crate::Backend::Epoll) } )*
        }
    };
}
