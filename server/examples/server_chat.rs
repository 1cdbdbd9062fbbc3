//! A line chat on the server layer: every line a client sends goes to every other client,
//! as `SESSION: line`. The same program as `cport/examples/chat.rs`, with sessions, framing,
//! send queues and limits done by the layer: a codec that cuts lines, and a handler.
//!
//! ```text
//! cargo run -p cport-server --example server_chat -- [127.0.0.1:7002]
//! ```
//!
//! Prints `listening on ADDR` once ready, then serves until killed. Exercised by
//! `server/tests/examples.rs` with real clients.

use std::net::SocketAddr;

use cport_server::{Bytes, Codec, Config, FrameError, Handler, Server, Session};

/// Longest line accepted; a longer one closes the session with a reason.
const MAX_LINE: usize = 4096;

/// Packets are lines, `\n` included.
struct Lines;

impl Codec for Lines {
    fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => Ok(Some(end + 1)),
            None if buf.len() > MAX_LINE => Err(FrameError::TooLarge {
                size: buf.len(),
                max: MAX_LINE,
            }),
            None => Ok(None),
        }
    }
}

struct Chat;

impl Handler for Chat {
    fn on_packet(&self, session: &Session, line: &[u8]) {
        let mut msg = format!("{}: ", session.id()).into_bytes();
        msg.extend_from_slice(line);
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
    let server = Server::start(cfg, Lines, Chat)?;
    println!("listening on {}", server.local_addr());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
