//! Faults from the network at the server layer: a client that vanishes (resets) while the
//! server has megabytes of sends queued and in flight to it. The tests count this process's
//! descriptors and read the log, so they run one at a time (`ONE_AT_A_TIME`).

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{config, connect, connect_small_rcvbuf, probe, reset, wait_until};
use cport_server::cport::Backend;
use cport_server::{Bytes, CloseReason, Config, RawStream, Server};
use cport_testkit::per_backend;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

per_backend!(a_client_that_resets_with_sends_in_flight_closes_only_its_session);

/// Everything the server layer logs at debug level and above, for the whole test binary.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("cport_server=debug,cport=warn")
            .with_ansi(false)
            .with_writer(move || Writer(w.clone()))
            .init();
        buf
    })
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A client asks for 16 MiB (32 sends of one shared 512 KiB buffer) and resets without
/// reading (`SO_LINGER` 0) while most of it is queued and a send is in flight. The session
/// closes once, as `Reset` (or `PeerClosed`, if a send took the reset's error first), with that
/// reason logged; every queued byte is accounted for
/// (`queued_bytes` back to 0) and every send's buffer is released (the shared buffer is
/// unique again); the port has nothing of it in flight and no descriptor is left; a client
/// connected meanwhile is served before and after.
fn a_client_that_resets_with_sends_in_flight_closes_only_its_session(b: Backend) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let log = log();
    let log_from = log.lock().unwrap().len();
    const SENDS: usize = 32;
    let held = Bytes::from(vec![7u8; 512 * 1024]);
    // The handler takes the buffer once, so that afterwards only the session's queue and
    // sends hold references to it besides `held`.
    let big = Mutex::new(Some(held.clone()));
    let (handler, events) = probe(move |s, p| {
        if p == b"go" {
            let big = big.lock().unwrap().take().expect("one go");
            for _ in 0..SENDS {
                let _ = s.send(big.clone());
            }
        } else {
            let _ = s.send(p.to_vec());
        }
    });
    let cfg = Config {
        max_send_queue: 64 << 20,
        ..config(b)
    };
    let server = Server::start(cfg, RawStream, handler).unwrap();
    let h = server.handle();
    let addr = server.local_addr();

    let mut other = connect(addr);
    let other_session = events.connected();
    let echo = |c: &mut std::net::TcpStream, msg: &[u8]| {
        c.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    };
    echo(&mut other, b"before");

    let fds_before = open_fds();
    let mut victim = connect_small_rcvbuf(addr, 4096);
    let session = events.connected();
    victim.write_all(b"go").unwrap();
    wait_until("the sends are queued", || {
        h.metrics().queued_bytes > (SENDS as u64 - 2) * 512 * 1024
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        h.metrics().queued_bytes > 0,
        "sends still queued at the reset"
    );
    reset(victim);

    let (closed, reason) = events.closed();
    assert_eq!(closed.id(), session.id());
    // The kernel reports the reset once (`ECONNRESET`) to whichever call comes first, and
    // end of stream after that: a send seeing it first leaves the receive an end of stream.
    assert!(
        matches!(reason, CloseReason::Reset | CloseReason::PeerClosed),
        "{reason:?}"
    );
    wait_until("the session's buffers are released", || {
        let m = h.metrics();
        m.open == 1 && m.queued_bytes == 0 && held.is_unique()
    });
    assert!(
        events.closed_so_far().is_empty(),
        "one close, of that session only"
    );
    let m = h.metrics();
    assert_eq!(m.closed_for(reason.name()), 1, "{m}");
    // The listener's accepts and the other session's receive only.
    let expected = 1 + Config::default().accepts.max(1);
    wait_until("nothing of the session is in flight", || {
        h.port().stats().in_flight == expected
    });
    let in_flight = h.port().stats().in_flight;
    assert_eq!(h.port().stats().sockets, 2, "listener + the other session");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    let logged = String::from_utf8_lossy(&log.lock().unwrap()[log_from..]).into_owned();
    let line = logged
        .lines()
        .find(|l| l.contains(&session.id().to_string()) && l.contains("session closed"))
        .unwrap_or_else(|| panic!("no close logged for {}:\n{logged}", session.id()));
    println!("{b}: {line} (in flight after: {in_flight})");
    assert!(
        line.contains(&reason.to_string()),
        "the reason is logged: {line}"
    );

    echo(&mut other, b"after");
    assert!(other_session.is_open());
    drop(other);
    let (closed, reason) = events.closed();
    assert_eq!(
        (closed.id(), reason),
        (other_session.id(), CloseReason::PeerClosed)
    );
    server.shutdown(Duration::from_secs(5));
}
