//! Test support shared by the test suites of `cport`, `cport-server`, `cport-mmo` and the
//! `cport` binary: every
//! networked test runs once per backend, with timeouts that fail a test instead of hanging it;
//! a test that needs a service (PostgreSQL, Chromium) finds it with [`service`], which skips
//! it where the service is missing unless `scripts/test` asks for every service.
//! Empty under `--cfg loom`, where `cport` builds only its scheduler model.
#![cfg(not(loom))]
#![warn(missing_docs)]

use std::time::Duration;

#[cfg(feature = "game")]
pub mod game;
pub mod nats;

/// The reader of the startup line every server of the workspace prints (`listening on ADDR
/// (…)` → ADDR), for the tests that start a server themselves.
pub use cport_bench::proc::parse_listening;

/// The backend type the tests of [`per_backend!`] take (re-exported so that the macro names
/// it from any crate).
pub use cport::Backend;

/// How long anything may take before a test fails rather than hangs.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Expands each listed test function `fn name(backend: Backend)` into a `#[test]` per backend
/// of the platform: `uring::name` and `epoll::name` on Linux, `iocp::name` on Windows.
/// Attributes written before a name go on each of its tests, e.g.
/// `#[cfg_attr(wine, ignore = "why")] name` for a difference of Wine's from Windows
/// (`scripts/wine-test` builds with `--cfg wine`).
#[macro_export]
macro_rules! per_backend {
    ($( $(#[$attr:meta])* $name:ident ),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod uring {
            $( #[test] $(#[$attr])* fn $name() { super::$name($crate::Backend::Uring) } )*
        }
        #[cfg(target_os = "linux")]
        mod epoll {
            $( #[test] $(#[$attr])* fn $name() { super::$name($crate::Backend::Epoll) } )*
        }
        #[cfg(windows)]
        mod iocp {
            $( #[test] $(#[$attr])* fn $name() { super::$name($crate::Backend::Iocp) } )*
        }
    };
}

/// The variable that turns a missing service into a failure: `scripts/test` (and so CI) sets
/// it to `1`, so that a test needing a service never passes without running there.
pub const REQUIRE_SERVICES: &str = "CPORT_REQUIRE_SERVICES";

/// Where a test finds a service or program it needs (PostgreSQL, Chromium, …): the value of
/// `var` (set by `scripts/test`, through `scripts/deps/*.sh`), or `None` after
/// [`missing_service`] said the test is skipped. A test that gets `None` returns at once (and
/// passes), so that plain `cargo test` passes on a machine without the service.
///
/// ```
/// // A test (under `#[test]`):
/// fn a_player_comes_back_where_it_logged_out_on_postgres() {
///     let Some(url) = cport_testkit::service("PostgreSQL", "CPORT_TEST_POSTGRES") else {
///         return; // skipped (said on stderr)
///     };
///     // ... connect to `url` and test ...
/// #   let _ = url;
/// }
/// ```
pub fn service(name: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            missing_service(name, var);
            None
        }
    }
}

/// A test cannot find `name` (which `var` would name): says `skipped: no NAME (run
/// scripts/test)` on stderr, or panics when [`REQUIRE_SERVICES`] is set (to anything but
/// `0`), as `scripts/test` and CI do. For a test that looks in other places too before giving
/// up (a browser on `PATH`); others call [`service`].
pub fn missing_service(name: &str, var: &str) {
    let required = std::env::var(REQUIRE_SERVICES).is_ok_and(|v| !v.is_empty() && v != "0");
    if required {
        panic!(
            "no {name}: {var} is not set, and {REQUIRE_SERVICES} is, so a missing service fails \
             the test instead of skipping it. Run the tests with scripts/test (it installs and \
             starts what they need, and sets {var}), or set {var} yourself"
        );
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    // Straight to the stderr handle, past the test harness's capture of `eprintln!`: the
    // skip is seen even though the test passes.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: no {name} (run scripts/test)"
    );
}

/// Example programs run as child processes and driven by real clients (the programs a new
/// user writes first must keep working).
pub mod examples {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use cport_bench::proc::{ServerProc, Startup};

    use super::TIMEOUT;

    /// A built example (`cargo test` builds the examples next to the test binaries).
    pub fn example(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> → target/<profile>/examples/<name>
        let dir = exe.parent().unwrap().parent().unwrap().join("examples");
        let path = dir.join(name);
        assert!(
            path.exists(),
            "{} not built (cargo test builds the examples; run `cargo build --examples`)",
            path.display()
        );
        path
    }

    /// Starts `program args` with `backend` and waits for its `listening on ADDR` line (the
    /// workspace's one spawner, `cport_bench::proc::ServerProc`: killed and reaped when the
    /// test ends, however it ends).
    pub fn start(program: PathBuf, args: &[&str], backend: &str) -> (ServerProc, SocketAddr) {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("CPORT_BACKEND", backend)
            .stderr(Stdio::inherit());
        let server = ServerProc::start(cmd, Startup::first_line())
            .unwrap_or_else(|e| panic!("no startup line: {e}"));
        let addr = server.addr;
        (server, addr)
    }

    /// Three clients: each line one sends reaches the two others, whole and in order, and never
    /// the sender.
    pub fn chat_relays_lines_to_the_others(program: PathBuf, args: &[&str], backend: &str) {
        let (_server, addr) = start(program, args, backend);
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // Let every connection be accepted before the first line.
        std::thread::sleep(Duration::from_millis(200));
        let mut readers: Vec<_> = clients
            .iter()
            .map(|c| {
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                BufReader::new(c.try_clone().unwrap())
            })
            .collect();
        let mut writers: Vec<_> = clients;
        for round in 0..5 {
            for (i, w) in writers.iter_mut().enumerate() {
                // A line in two writes, to cross packet boundaries.
                w.write_all(format!("line {round} from").as_bytes())
                    .unwrap();
                w.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
                w.write_all(format!(" client {i}\n").as_bytes()).unwrap();
                for (j, r) in readers.iter_mut().enumerate() {
                    if j == i {
                        continue;
                    }
                    let mut got = String::new();
                    r.read_line(&mut got).unwrap();
                    let (_key, text) = got.split_once(": ").expect("KEY: line");
                    assert_eq!(
                        text,
                        format!("line {round} from client {i}\n"),
                        "client {j}"
                    );
                }
            }
        }
        // The senders never got their own lines: nothing is left to read.
        for r in &mut readers {
            r.get_ref()
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut extra = String::new();
            assert!(r.read_line(&mut extra).is_err(), "unexpected {extra:?}");
        }
    }
}
