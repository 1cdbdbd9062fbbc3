//! A line chat on the server layer: every line a client sends goes to every other client,
//! as `SESSION: line`. The same program as `cport/examples/chat.rs`, with sessions, framing,
//! send queues and limits done by the layer: the layer's line codec (`Delimited::lines`),
//! and a handler.
//!
//! ```text
//! cargo run -p cport-server --example server_chat -- [127.0.0.1:7002]
//! ```
//!
//! Prints `listening on ADDR` once ready, then serves until killed. Exercised by
//! `server/tests/examples.rs` and `server/tests/chat_limit.rs` with real clients.

use std::net::SocketAddr;

use cport_server::{Bytes, Config, Delimited, Handler, Server, Session};

/// Longest line accepted (without its ending); a longer one closes the session with a
/// reason, whether its newline has arrived or not.
const MAX_LINE: usize = 4096;

struct Chat;

impl Handler for Chat {
    /// `line` comes without its `\n` (or `\r\n`): the codec cut it off.
    fn on_packet(&self, session: &Session, line: &[u8]) {
        let mut msg = format!("{}: ", session.id()).into_bytes();
        msg.extend_from_slice(line);
        msg.push(b'\n');
        // One shared buffer for every receiver; the table is walked without a list.
        session
            .server()
            .broadcast_all(&Bytes::from(msg), Some(session.id()));
    }
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7002".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let cfg = Config {
        addr,
        threads: 2,
        ..Config::default()
    };
    let server = Server::start(cfg, Delimited::lines(MAX_LINE), Chat)?;
    println!("listening on {}", server.local_addr());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
