//! Peer echo server: tokio multi-thread runtime with `--threads` workers, the idiomatic
//! accept loop with one `tokio::spawn`ed task per connection (read into a buffer, `write_all`).

use cport_bench::peer::{self, PeerArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let a = PeerArgs::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()?;
    // One listener; SO_REUSEPORT is not needed with one accept loop.
    let std_listener = peer::reuseport_listeners(a.addr, 1)?.remove(0);
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let spin = a.spin;
    rt.spawn(async move {
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream, spin));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
    });
    peer::print_listening(addr, "tokio", a.threads)?;
    peer::exit_on_signal()
}

async fn echo(mut stream: TcpStream, spin: std::time::Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; peer::RECV_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        peer::maybe_spin(spin, &buf[..n]);
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
