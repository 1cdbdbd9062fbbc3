//! `cport echo` for the benchmarks: the same server-layer echo (RawStream codec, one `send`
//! of a copy of every received chunk, the same config as `cli/src/echo.rs`), plus the skew
//! spin of the other peers (`--skew-spin-ms`, see `cport_bench::peer`). `cport bench echo`
//! runs it as the cport contender when `--skew` is given.

use std::time::Duration;

use cport_bench::peer::{self, PeerArgs};
use cport_server::{Bytes, Config, Handler, RawStream, Server, Session};

struct Echo {
    spin: Duration,
}

impl Handler for Echo {
    fn on_packet(&self, session: &Session, packet: &[u8]) {
        peer::maybe_spin(self.spin, packet);
        // Refused only when the session is closing: nothing to echo to.
        let _ = session.send(Bytes::copy_from_slice(packet));
    }
}

fn main() -> std::io::Result<()> {
    let a = PeerArgs::parse();
    peer::raise_nofile();
    let backend = a
        .backend
        .as_deref()
        .map(str::parse::<cport_server::cport::Backend>)
        .transpose()?;
    let cfg = Config {
        addr: a.addr,
        threads: a.threads,
        backend,
        max_sessions: 10_000,
        max_send_queue: 4 << 20,
        recv_buffer: 16 * 1024,
        ..Config::default()
    };
    let server = Server::start(cfg, RawStream, Echo { spin: a.spin })?;
    let h = server.handle();
    peer::print_listening(h.local_addr(), &format!("cport-{}", h.backend()), a.threads)?;
    // The server's threads keep running; exit at once on the signal (as the other peers do).
    let _keep = server;
    peer::exit_on_signal()
}
