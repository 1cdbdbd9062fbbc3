//! Peer echo server: compio, one runtime per thread, each with its own `SO_REUSEPORT`
//! listener on the same port (compio's documented multi-core pattern); one spawned task per
//! connection: read into an owned buffer, `write_all` it back.

use std::time::Duration;

use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use cport_bench::peer::{self, PeerArgs};

fn main() -> std::io::Result<()> {
    let a = PeerArgs::parse();
    let listeners = peer::reuseport_listeners(a.addr, a.threads)?;
    let addr = listeners[0].local_addr()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    for (i, l) in listeners.into_iter().enumerate() {
        let ready = ready_tx.clone();
        let spin = a.spin;
        std::thread::Builder::new()
            .name(format!("compio-{i}"))
            .spawn(move || {
                let rt = match compio::runtime::Runtime::new() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                rt.block_on(serve(l, spin, ready));
            })?;
    }
    drop(ready_tx);
    for _ in 0..a.threads {
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("a compio thread died"))??;
    }
    peer::print_listening(addr, "compio", a.threads)?;
    peer::exit_on_signal()
}

async fn serve(
    l: std::net::TcpListener,
    spin: Duration,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let listener = match TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => compio::runtime::spawn(echo(stream, spin)).detach(),
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

async fn echo(mut stream: TcpStream, spin: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(peer::RECV_BUF);
    loop {
        buf.clear();
        let BufResult(res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        peer::maybe_spin(spin, &buf);
        let BufResult(res, b) = stream.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
    }
}
