//! Graceful shutdown: queued bytes are delivered before the close, up to the deadline; what
//! is left at the deadline is closed and reported. Both tests run on both backends.

mod common;

use cport_testkit::per_backend;

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use common::{config, connect_small_rcvbuf, probe, write, TIMEOUT};
use cport_server::cport::Backend;
use cport_server::{Bytes, Config, RawStream, Server};

per_backend!(
    shutdown_delivers_every_queued_byte_to_a_slow_reader,
    shutdown_forces_a_session_that_does_not_read_at_the_deadline,
);

const CHUNK: usize = 64 * 1024;
const QUEUED: usize = 4 << 20;

/// A server whose handler, on the first bytes it receives, queues `queued` bytes in 64 KiB
/// packets (packet `i` filled with byte `i`), then reports whether every send was taken.
fn start(b: Backend, queued: usize) -> (Server, mpsc::Receiver<bool>, common::Events) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let (handler, events) = probe(move |session, _| {
        let all = (0..queued / CHUNK).all(|i| session.send(Bytes::from(vec![i as u8; CHUNK])));
        let _ = tx.lock().unwrap().send(all);
    });
    let cfg = Config {
        max_send_queue: 2 * queued,
        ..config(b)
    };
    (Server::start(cfg, RawStream, handler).unwrap(), rx, events)
}

/// 4 MiB queued to a client that reads slowly, then `shutdown` with a 10 s deadline: the
/// client reads every byte, in order, then the end of the stream; the report says the
/// session flushed and none was forced.
fn shutdown_delivers_every_queued_byte_to_a_slow_reader(b: Backend) {
    let (server, queued, _events) = start(b, QUEUED);
    let mut client = connect_small_rcvbuf(server.local_addr(), 32 * 1024);
    write(&mut client, b"go");
    assert!(queued.recv_timeout(TIMEOUT).unwrap(), "a send was refused");

    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(QUEUED);
        let mut buf = vec![0u8; 16 * 1024];
        // Bounded: one read per 16 KiB at least, plus slack for short reads.
        for i in 0..(QUEUED / buf.len()) * 64 {
            if i % 8 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // a slow reader
            }
            match client.read(&mut buf).expect("read") {
                0 => return got,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        panic!("no end of stream after {} bytes", got.len());
    });
    let report = server.shutdown(TIMEOUT);
    let got = reader.join().expect("the client failed");
    assert_eq!(got.len(), QUEUED, "bytes delivered");
    for (i, chunk) in got.chunks(CHUNK).enumerate() {
        assert!(chunk.iter().all(|&x| x == i as u8), "packet {i} corrupted");
    }
    assert_eq!(
        (
            report.sessions,
            report.flushed,
            report.forced,
            report.unsent_bytes
        ),
        (1, 1, 0, 0),
        "{report}"
    );
}

/// 16 MiB queued to a client that never reads (more than the kernel's socket buffers take),
/// then `shutdown` with a 200 ms deadline: the session is closed at the deadline and
/// reported as forced, with bytes unsent.
fn shutdown_forces_a_session_that_does_not_read_at_the_deadline(b: Backend) {
    let (server, queued, _events) = start(b, 16 << 20);
    let mut client = connect_small_rcvbuf(server.local_addr(), 16 * 1024);
    write(&mut client, b"go"); // and never read
    assert!(queued.recv_timeout(TIMEOUT).unwrap(), "a send was refused");
    let report = server.shutdown(Duration::from_millis(200));
    assert_eq!(
        (report.sessions, report.flushed, report.forced),
        (1, 0, 1),
        "{report}"
    );
    assert!(report.unsent_bytes > 0, "{report}");
    drop(client);
}
