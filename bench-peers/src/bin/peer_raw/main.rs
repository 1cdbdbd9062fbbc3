//! Peer echo server: the simplest io_uring echo loop we could write (Linux only; see
//! `linux.rs`).

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("peer-raw is an io_uring server: Linux only");
    std::process::exit(2);
}
