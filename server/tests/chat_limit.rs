//! The `server_chat` example keeps its own line limit (4096 bytes): a longer line closes the
//! sender's session and reaches no one, whether its newline arrived or not; the others keep
//! chatting. Run as a program with real clients, on Linux's two backends.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cport_testkit::examples::{example, start};
use cport_testkit::TIMEOUT;

fn client(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c
}

/// Reads until the server closes the connection (end of stream or reset).
fn expect_closed(c: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server did not close the over-long line's session: {e}"),
        }
    }
}

fn over_long_line_closes_its_sender(backend: &str, newline: bool) {
    let (_server, addr) = start(example("server_chat"), &["127.0.0.1:0"], backend);
    let mut sender = client(addr);
    let listener = client(addr);
    // Let both connections be accepted before the first line.
    std::thread::sleep(Duration::from_millis(200));

    // 6,006 bytes: the length the old example relayed whole once its newline arrived.
    let mut line = vec![b'x'; 6006];
    if newline {
        line.push(b'\n');
    }
    sender.write_all(&line).unwrap();
    expect_closed(&mut sender);

    // Nothing reached the other client; it still chats with a newcomer.
    let mut reader = BufReader::new(listener.try_clone().unwrap());
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = String::new();
    assert!(
        reader.read_line(&mut got).is_err(),
        "the over-long line was relayed: {} bytes",
        got.len()
    );
    reader.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut newcomer = client(addr);
    std::thread::sleep(Duration::from_millis(200));
    newcomer.write_all(b"still here\r\n").unwrap();
    let mut got = String::new();
    reader.read_line(&mut got).unwrap();
    let (_id, text) = got.split_once(": ").expect("ID: line");
    assert_eq!(text, "still here\n", "the ending is the server's own");
}

#[test]
fn an_over_long_complete_line_closes_its_sender_on_uring() {
    over_long_line_closes_its_sender("uring", true);
}

#[test]
fn an_over_long_complete_line_closes_its_sender_on_epoll() {
    over_long_line_closes_its_sender("epoll", true);
}

#[test]
fn an_over_long_partial_line_closes_its_sender_on_epoll() {
    over_long_line_closes_its_sender("epoll", false);
}
