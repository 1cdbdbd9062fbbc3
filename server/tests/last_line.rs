//! A last line before a protocol close (`Session::send`, then
//! `Session::close_after_flush_for(reason)`), on both backends: the peer reads everything
//! queued before it, the line, then the end of the stream; `on_close` gets the reason given;
//! sends after it are refused.

mod common;

use std::io::Read;

use common::{config, connect, probe, write, TIMEOUT};
use cport_server::cport::Backend;
use cport_server::{Bytes, CloseReason, Delimited, Server, Session};
use cport_testkit::per_backend;

per_backend!(
    the_last_line_arrives_after_everything_queued_then_the_end_of_stream,
    on_close_gets_the_reason_given_with_the_last_line,
);

/// A body queued before the last line: large enough to take several sends.
const BODY: usize = 256 * 1024;

/// `BIG`: a large body, then `BYE`, then the close. Anything else: `ERR`, then the close.
fn strict(session: &Session, line: &[u8]) {
    if line == b"BIG" {
        assert!(session.send(Bytes::from(vec![b'.'; BODY])));
        assert!(session.send("BYE\n"));
        session.close_after_flush_for(CloseReason::Local);
    } else {
        assert!(session.send("ERR unknown command\n"));
        session.close_after_flush_for(CloseReason::Rejected("unknown command".into()));
        assert!(!session.send("late\n"), "a send after it is refused");
        assert!(!session.is_open());
    }
}

fn the_last_line_arrives_after_everything_queued_then_the_end_of_stream(backend: Backend) {
    let (handler, _events) = probe(strict);
    let server = Server::start(config(backend), Delimited::lines(64), handler).unwrap();
    let mut c = connect(server.local_addr());
    write(&mut c, b"BIG\n");
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("the end of the stream");
    assert_eq!(got.len(), BODY + 4);
    assert!(got[..BODY].iter().all(|&b| b == b'.'));
    assert_eq!(&got[BODY..], b"BYE\n");
    drop(c);
    let _ = server.shutdown(TIMEOUT);
}

fn on_close_gets_the_reason_given_with_the_last_line(backend: Backend) {
    let (handler, events) = probe(strict);
    let server = Server::start(config(backend), Delimited::lines(64), handler).unwrap();
    let mut c = connect(server.local_addr());
    let session = events.connected();
    write(&mut c, b"JUMP\r\n");
    let mut got = String::new();
    c.read_to_string(&mut got).expect("the end of the stream");
    assert_eq!(got, "ERR unknown command\n");
    // The session waits, half-closed, for the peer's close; then reports the reason.
    drop(c);
    let (closed, reason) = events.closed();
    assert_eq!(closed.id(), session.id());
    assert_eq!(reason, CloseReason::Rejected("unknown command".into()));
    let _ = server.shutdown(TIMEOUT);
}
