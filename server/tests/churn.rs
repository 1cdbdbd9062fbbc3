//! Connection churn and file descriptors. This binary watches the process's descriptor count,
//! so its tests run one at a time (a static lock across the two backend variants) and no
//! other test lives in it.

mod common;

use cport_testkit::per_backend;

use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Instant;

use common::{config, reset, wait_until};
use cport_server::cport::Backend;
use cport_server::{Handler, RawStream, Server, Session};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

per_backend!(
    // Under Wine 8 the server's accepts stop once connections are reset while still in the
    // backlog (seen 2026-12-02: 98 accepted by connection 384, then none for 10 s); with
    // normal closes only, all 20,000 were accepted in 9 s. Whether real Windows completes
    // such an AcceptEx (with an error, or by skipping the dead connection) is not checked
    // here; the descriptor checks read /proc, which means nothing on Windows.
    #[cfg_attr(
        wine,
        ignore = "Wine 8: AcceptEx stalls after connections reset in the backlog; fd checks read /proc"
    )]
    churn_of_20000_connections_leaves_no_session_and_no_descriptor,
);

const CYCLES: u64 = 20_000;
/// Connections the client may be ahead of the server's accepts (well under the backlog).
const AHEAD: u64 = 256;

struct Quiet;

impl Handler for Quiet {
    fn on_packet(&self, _: &Session, _: &[u8]) {}
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// 20,000 connect/close cycles (nine in ten closed with a reset, the rest with a normal
/// close): afterwards no session is open, every connection was accepted, and the process
/// holds exactly the descriptors it held before — with the server running, and after it
/// shut down.
fn churn_of_20000_connections_leaves_no_session_and_no_descriptor(b: Backend) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before_server = open_fds();
    let server = Server::start(config(b), RawStream, Quiet).unwrap();
    let handle = server.handle();
    let addr = server.local_addr();
    let baseline = open_fds();

    let t0 = Instant::now();
    for i in 0..CYCLES {
        if i >= AHEAD && i % 64 == 0 {
            wait_until("the server caught up with accepts", || {
                handle.metrics().accepted + AHEAD >= i
            });
        }
        let c = TcpStream::connect(addr).expect("connect");
        if i % 10 == 9 {
            drop(c);
        } else {
            reset(c);
        }
    }
    wait_until("every session has closed", || {
        let m = handle.metrics();
        m.accepted + m.refused >= CYCLES && m.open == 0
    });
    wait_until("descriptors are back at the baseline", || {
        open_fds() <= baseline
    });
    let elapsed = t0.elapsed();
    let m = handle.metrics();
    eprintln!("{b:?}: {CYCLES} cycles in {elapsed:.2?} ({m})");
    assert_eq!((m.accepted, m.refused, m.open), (CYCLES, 0, 0), "{m}");
    assert_eq!(m.closed_total(), CYCLES, "{m}");
    assert_eq!(handle.sessions().len(), 0);
    assert_eq!(open_fds(), baseline, "descriptors with the server running");

    drop(handle);
    let report = server.shutdown(common::TIMEOUT);
    assert_eq!(report.sessions, 0);
    wait_until("descriptors are back to before the server", || {
        open_fds() <= before_server
    });
    assert_eq!(open_fds(), before_server, "descriptors after shutdown");
}
