//! A line chat on the completion port alone: every line a client sends goes to every other
//! client, as `KEY: line`. The first program a new user writes on a port, with the parts
//! that must hold with several workers: a shared key counter, a table of connections behind
//! a lock, completions of keys no longer in the table ignored.
//!
//! ```text
//! cargo run -p cport --example chat -- [--addr 127.0.0.1:7001] [--threads 2]
//! ```
//!
//! Prints `listening on ADDR` once ready. Runs until killed. Exercised by
//! `cport/tests/examples.rs` with real clients.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use cport::{Bytes, Op, Pool, Port, Socket};
use parking_lot::Mutex;

/// Completion key of the listener; connections get keys from 1 up.
const LISTENER: u64 = 0;
/// Longest line kept; a client that sends a longer one is disconnected.
const MAX_LINE: usize = 4096;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One client: its socket and the bytes of a line not finished yet.
struct Conn {
    sock: Socket,
    partial: Vec<u8>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let port = Port::new(args.threads)?;
    let listener = TcpListener::bind(&args.addr)?;
    let addr = listener.local_addr()?;
    let listener = Arc::new(port.associate(listener, LISTENER)?);
    listener.accept(0);

    let next_key = AtomicU64::new(1);
    let conns: Mutex<HashMap<u64, Conn>> = Mutex::new(HashMap::new());
    let l = listener.clone();
    let pool = Pool::spawn(&port, args.threads, move |port, c| match c.op {
        Op::Accept(Some(accepted)) => {
            l.accept(0); // keep one accept outstanding
            let key = next_key.fetch_add(1, Ordering::Relaxed);
            let Ok(sock) = port.associate(accepted.fd, key) else {
                return;
            };
            // Into the table before the first receive: its completion may reach another
            // worker at once.
            let mut conns = conns.lock();
            let conn = conns.entry(key).or_insert(Conn {
                sock,
                partial: Vec::new(),
            });
            conn.sock.recv(Vec::with_capacity(1024), 0);
        }
        Op::Accept(None) => l.accept(0),
        Op::Recv(buf) => {
            let mut conns = conns.lock();
            let Some(conn) = conns.get_mut(&c.key) else {
                return; // closed meanwhile
            };
            if !matches!(c.result, Ok(n) if n > 0) {
                conns.remove(&c.key); // end of stream or error: close
                return;
            }
            conn.partial.extend_from_slice(&buf);
            let mut lines = Vec::new();
            while let Some(end) = conn.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = conn.partial.drain(..=end).collect();
                lines.push(line);
            }
            if conn.partial.len() > MAX_LINE {
                conns.remove(&c.key);
                return;
            }
            let mut buf = buf;
            buf.clear();
            conn.sock.recv(buf, 0); // the next receive reuses the buffer
            for line in lines {
                let mut msg = format!("{}: ", c.key).into_bytes();
                msg.extend_from_slice(&line);
                let msg = Bytes::from(msg);
                for (key, other) in conns.iter() {
                    if *key != c.key {
                        other.sock.send(msg.clone(), 0);
                    }
                }
            }
        }
        _ => {}
    })?;
    println!("listening on {addr} (threads: {})", pool.threads());
    pool.join();
    Ok(())
}
