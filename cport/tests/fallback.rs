//! io_uring made unavailable for real, the way container runtimes do it: a seccomp filter
//! that makes `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail with `EPERM`
//! (Docker's and containerd's default profiles). A filter applies to the thread that installs
//! it and everything that thread later spawns or execs, and cannot be removed, so each test
//! runs its checks in a child process: this test binary re-executed with `--exact <test>` and
//! `CPORT_FALLBACK_CHILD` set, or the `echo` example exec'd with the filter in place.
//!
//! * `Backend::Uring` fails with an error that says why; `Backend::Auto` falls back to epoll
//!   (with one warning) and serves a TCP echo round trip.
//! * `io_uring_setup` failing with `ENOMEM` (a filter on that call alone): `Backend::Uring`
//!   is an `OutOfMemory` error naming the cause, `Backend::Auto` falls back to epoll with one
//!   warning that carries it, and serves.
//! * `CPORT_BACKEND` selects the backend of a builder that does not ignore the environment,
//!   and a bad value is an `InvalidInput` error.
//! * The `echo` example, with io_uring blocked, starts on epoll by itself, echoes, and exits 0
//!   on SIGTERM. (Skipped with a note when the example has not been built in this profile,
//!   e.g. under `cargo test --test fallback`; `cargo test -p cport` builds it.)

#![cfg(target_os = "linux")]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cport::{Backend, Op, Port};

/// Set in a re-executed child to the role it plays.
const CHILD_ENV: &str = "CPORT_FALLBACK_CHILD";
/// How long any child may take before the test fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The child's role, when this process is a re-executed child.
fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// With io_uring denied by seccomp: `Uring` is a clear error, `Auto` is epoll and serves.
#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_blocked() {
    if child_role().as_deref() == Some("fallback") {
        return fallback_child();
    }
    if !cfg!(target_arch = "x86_64") {
        println!("note: the seccomp filter of this test is written for x86_64; skipped");
        return;
    }
    let out = rerun(
        "auto_falls_back_to_epoll_when_io_uring_is_blocked",
        "fallback",
        &[],
    );
    if out.stdout.contains("FALLBACK-SKIP") {
        println!("note: skipped: {}", out.stdout.trim());
        return;
    }
    assert!(
        out.status.success(),
        "child failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("FALLBACK-OK backend=epoll"),
        "child did not report success\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("falling back to epoll").count(),
        1,
        "Auto must log exactly one fallback warning\nstderr:\n{}",
        out.stderr
    );
    for line in out
        .stdout
        .lines()
        .filter(|l| l.contains("Backend::Uring error") || l.contains("-OK"))
    {
        println!("child: {line}");
    }
}

/// `io_uring_setup` fails with `ENOMEM` (what the kernel answers when the ring's memory
/// cannot be had: the locked-memory limit on kernels before 5.12, the memory cgroup after),
/// injected for real by a seccomp filter on that one system call: `Backend::Uring` is an
/// `OutOfMemory` error that says so and what to do, `Backend::Auto` falls back to epoll with
/// one warning that carries the reason, and serves.
#[test]
fn auto_falls_back_to_epoll_when_ring_setup_fails_with_enomem() {
    if child_role().as_deref() == Some("enomem") {
        return enomem_child();
    }
    if !cfg!(target_arch = "x86_64") {
        println!("note: the seccomp filter of this test is written for x86_64; skipped");
        return;
    }
    let out = rerun(
        "auto_falls_back_to_epoll_when_ring_setup_fails_with_enomem",
        "enomem",
        &[],
    );
    if out.stdout.contains("FALLBACK-SKIP") {
        println!("note: skipped: {}", out.stdout.trim());
        return;
    }
    assert!(
        out.status.success() && out.stdout.contains("ENOMEM-OK backend=epoll"),
        "child failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("falling back to epoll"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one fallback warning\nstderr:\n{}",
        out.stderr
    );
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("Cannot allocate memory")
            && warnings[0].contains("ulimit -l"),
        "the warning gives the reason: {}",
        warnings[0]
    );
    for line in out
        .stdout
        .lines()
        .filter(|l| l.contains("error") || l.contains("-OK"))
    {
        println!("child: {line}");
    }
}

/// `CPORT_BACKEND` overrides the builder's backend unless `ignore_env` was called; a bad
/// value is an `InvalidInput` error.
#[test]
fn cport_backend_env_var_selects_the_backend() {
    match child_role().as_deref() {
        Some("env-epoll") => return env_epoll_child(),
        Some("env-bogus") => return env_bogus_child(),
        _ => {}
    }
    for (role, value) in [("env-epoll", "epoll"), ("env-bogus", "bogus")] {
        let out = rerun(
            "cport_backend_env_var_selects_the_backend",
            role,
            &[("CPORT_BACKEND", value)],
        );
        assert!(
            out.status.success() && out.stdout.contains(&format!("ENV-OK {role}")),
            "child {role} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
    }
}

/// The `echo` example, exec'd with io_uring blocked and no backend option, starts on epoll by
/// itself, echoes correctly, and exits 0 on SIGTERM.
/// IOCP is Windows' own: asking for it on Linux is a clear error, not a silent fallback.
#[test]
fn asking_for_iocp_on_linux_is_unsupported() {
    let e = cport::Port::builder()
        .backend(cport::Backend::Iocp)
        .ignore_env()
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    assert_eq!(
        "iocp".parse::<cport::Backend>().unwrap(),
        cport::Backend::Iocp
    );
}

#[test]
fn echo_example_starts_on_epoll_when_io_uring_is_blocked() {
    if child_role().is_some() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    echo_example_under_seccomp();
    #[cfg(not(target_arch = "x86_64"))]
    println!("note: the seccomp filter of this test is written for x86_64; skipped");
}

// ---------------------------------------------------------------------------------------------
// Children.

#[cfg(target_arch = "x86_64")]
fn fallback_child() {
    if let Err(e) = seccomp::Filter::deny_io_uring().install() {
        println!("FALLBACK-SKIP cannot install a seccomp filter here: {e}");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .try_init();

    // The filter works: a raw io_uring_setup is refused with EPERM.
    let mut params = [0u64; 16]; // larger than struct io_uring_params (120 bytes), zeroed
                                 // SAFETY: io_uring_setup reads and writes at most sizeof(io_uring_params) bytes at the
                                 // pointer, which targets a zeroed, writable buffer larger than that.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    let errno = io::Error::last_os_error();
    if r >= 0 {
        // SAFETY: r is the ring descriptor the call just returned, owned by nobody else.
        unsafe { libc::close(r as i32) };
        panic!("io_uring_setup succeeded under the seccomp filter");
    }
    assert_eq!(
        errno.raw_os_error(),
        Some(libc::EPERM),
        "raw io_uring_setup"
    );

    // (1) Asking for io_uring: a clear error, no silent fallback.
    let e = Port::builder()
        .backend(Backend::Uring)
        .ignore_env()
        .build()
        .expect_err("Backend::Uring must fail when io_uring is blocked");
    println!("Backend::Uring error: {e}");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("seccomp") && (msg.contains("not permitted") || msg.contains("EPERM")),
        "error should name EPERM and seccomp: {msg}"
    );

    // (2) Auto falls back to epoll.
    let port = Port::builder()
        .backend(Backend::Auto)
        .ignore_env()
        .concurrency(2)
        .build()
        .expect("Backend::Auto must fall back to epoll");
    assert_eq!(port.backend(), Backend::Epoll);

    // (3) And serves: a TCP echo round trip over loopback through the port.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = port.associate(listener, 1).unwrap();
    listener.accept(0);
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let msg = b"hello through epoll, io_uring being blocked";
    client.write_all(msg).unwrap();

    let mut conn = None;
    loop {
        let c = port
            .get(Some(Duration::from_secs(10)))
            .expect("port closed")
            .expect("no completion within 10 s");
        match c.op {
            Op::Accept(Some(a)) => {
                let s = port.associate(a.fd, 2).unwrap();
                s.recv(Vec::with_capacity(256), 0);
                conn = Some(s);
            }
            Op::Recv(buf) => {
                assert_eq!(c.key, 2);
                let n = c.result.expect("recv");
                assert!(n > 0, "unexpected end of stream");
                conn.as_ref().unwrap().send(buf, 0);
            }
            Op::Send(_) => {
                let n = c.result.expect("send");
                let mut back = vec![0u8; n];
                client.read_exact(&mut back).unwrap();
                assert_eq!(&back[..], &msg[..n]);
                if n == msg.len() {
                    break;
                }
                // A partial first receive: echo the rest too.
                conn.as_ref().unwrap().recv(Vec::with_capacity(256), 0);
            }
            other => panic!("unexpected completion {other:?}: {:?}", c.result),
        }
    }
    drop(conn);
    drop(listener);
    port.shutdown();
    println!("FALLBACK-OK backend={}", port.backend());
}

#[cfg(target_arch = "x86_64")]
fn enomem_child() {
    if let Err(e) = seccomp::Filter::deny_io_uring_setup(libc::ENOMEM).install() {
        println!("FALLBACK-SKIP cannot install a seccomp filter here: {e}");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .try_init();

    let e = Port::builder()
        .backend(Backend::Uring)
        .ignore_env()
        .build()
        .expect_err("Backend::Uring must fail when the ring cannot be set up");
    println!("Backend::Uring error: {e}");
    assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("io_uring setup") && msg.contains("Cannot allocate memory"),
        "the error names the call and ENOMEM: {msg}"
    );
    assert!(
        msg.contains("ulimit -l"),
        "the error says what to raise: {msg}"
    );

    let port = Port::builder()
        .backend(Backend::Auto)
        .ignore_env()
        .concurrency(1)
        .build()
        .expect("Backend::Auto must fall back to epoll");
    assert_eq!(port.backend(), Backend::Epoll);
    // It serves: one receive and one send through the port.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let sock = port.associate(server, 1).unwrap();
    sock.recv(Vec::with_capacity(16), 0);
    client.write_all(b"enomem").unwrap();
    let c = port
        .get(Some(Duration::from_secs(10)))
        .expect("port closed")
        .expect("no completion within 10 s");
    assert!(
        matches!(c.op, Op::Recv(ref v) if v == b"enomem"),
        "{:?}",
        c.op
    );
    sock.send(&b"served"[..], 0);
    let c = port
        .get(Some(Duration::from_secs(10)))
        .expect("port closed")
        .expect("no completion within 10 s");
    assert_eq!(c.result.unwrap(), 6);
    let mut back = [0u8; 6];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"served");
    drop(sock);
    port.shutdown();
    println!("ENOMEM-OK backend={}", port.backend());
}

#[cfg(not(target_arch = "x86_64"))]
fn enomem_child() {
    println!("FALLBACK-SKIP the seccomp filter is written for x86_64");
}

#[cfg(not(target_arch = "x86_64"))]
fn fallback_child() {
    println!("FALLBACK-SKIP the seccomp filter is written for x86_64");
}

fn env_epoll_child() {
    assert_eq!(std::env::var("CPORT_BACKEND").as_deref(), Ok("epoll"));
    let port = Port::builder().build().expect("port");
    assert_eq!(port.backend(), Backend::Epoll, "CPORT_BACKEND=epoll");
    let port = Port::new(1).expect("port");
    assert_eq!(
        port.backend(),
        Backend::Epoll,
        "Port::new honours CPORT_BACKEND"
    );
    // The variable wins over the builder's choice, unless ignore_env is called.
    let port = Port::builder()
        .backend(Backend::Uring)
        .build()
        .expect("port");
    assert_eq!(
        port.backend(),
        Backend::Epoll,
        "CPORT_BACKEND overrides .backend()"
    );
    println!("ENV-OK env-epoll");
}

fn env_bogus_child() {
    assert_eq!(std::env::var("CPORT_BACKEND").as_deref(), Ok("bogus"));
    let e = Port::builder()
        .build()
        .expect_err("CPORT_BACKEND=bogus must be refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("bogus"),
        "error should name the value: {e}"
    );
    let e = Port::new(1).expect_err("Port::new with CPORT_BACKEND=bogus");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    // ignore_env: the variable is not even parsed.
    let port = Port::builder()
        .backend(Backend::Epoll)
        .ignore_env()
        .build()
        .expect("ignore_env must not read CPORT_BACKEND");
    assert_eq!(port.backend(), Backend::Epoll);
    println!("ENV-OK env-bogus");
}

// ---------------------------------------------------------------------------------------------
// The echo example under the filter.

#[cfg(target_arch = "x86_64")]
fn echo_example_under_seccomp() {
    let Some(bin) = example_binary("echo") else {
        println!(
            "note: the echo example is not built for this profile; skipped \
             (`cargo test -p cport` builds it, or set CPORT_ECHO_EXAMPLE to its path)"
        );
        return;
    };
    println!(
        "running {} under a seccomp filter denying io_uring",
        bin.display()
    );
    let filter = seccomp::Filter::deny_io_uring();
    let mut cmd = Command::new(&bin);
    cmd.args(["--addr", "127.0.0.1:0", "--threads", "1"])
        .env_remove("CPORT_BACKEND")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec; it only makes two prctl
        // system calls on the filter program allocated before the fork: no allocation, no
        // locks, async-signal-safe. The filter stays in force across exec.
        unsafe { cmd.pre_exec(move || filter.install()) };
    }
    let mut child = KillOnDrop(cmd.spawn().expect("spawn the echo example"));
    let pid = child.0.id();

    let stdout = child.0.stdout.take().unwrap();
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = capture(child.0.stderr.take().unwrap());

    let startup = lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no startup line\nstderr:\n{}", stderr.collect()));
    println!("startup line: {startup}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the example should run in seccomp filter mode:\n{status}"
    );
    assert!(
        startup.starts_with("listening on ")
            && startup.contains("(backend: epoll, threads: 1, concurrency: "),
        "unexpected startup line: {startup}"
    );
    let addr: SocketAddr = cport_testkit::parse_listening(&startup)
        .unwrap_or_else(|| panic!("no address in {startup:?}"));
    assert_ne!(addr.port(), 0, "the real bound port is printed");

    // Echo round trips: small, and 1 MiB written while reading back.
    let mut total = 0usize;
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for msg in [
        b"ping".to_vec(),
        (0..1 << 20)
            .map(|i: u32| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    ] {
        let mut writer = client.try_clone().unwrap();
        let out = msg.clone();
        let w = std::thread::spawn(move || writer.write_all(&out));
        let mut back = vec![0u8; msg.len()];
        client.read_exact(&mut back).unwrap();
        w.join().unwrap().unwrap();
        assert!(back == msg, "echoed bytes differ ({} bytes)", msg.len());
        total += msg.len();
    }
    // Half-close: what was sent before the FIN still comes back, then the server closes.
    client.write_all(b"bye").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
    total += 3;

    // SAFETY: kill has no memory effects; pid is our child, not yet reaped (KillOnDrop
    // holds it), so the pid cannot have been reused.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = wait_timeout(&mut child.0, Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "no exit within 30 s of SIGTERM\nstderr:\n{}",
            stderr.collect()
        )
    });
    let summary = lines
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let stderr = stderr.collect();
    println!("summary line: {summary}");
    assert!(status.success(), "exit status {status}\nstderr:\n{stderr}");
    assert!(
        summary.contains("1 connections accepted") && summary.contains(&format!("{total} bytes")),
        "unexpected summary {summary:?} (expected 1 connection, {total} bytes)"
    );
    assert_eq!(
        stderr.matches("falling back to epoll").count(),
        1,
        "one fallback warning expected\nstderr:\n{stderr}"
    );
}

#[cfg(target_arch = "x86_64")]
/// Where cargo put example `name` for the profile this test binary was built with:
/// `target/<profile>/examples/<name>` (this binary is `target/<profile>/deps/<test>-<hash>`).
fn example_binary(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CPORT_ECHO_EXAMPLE") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join("examples").join(name);
    bin.is_file().then_some(bin)
}

// ---------------------------------------------------------------------------------------------
// The seccomp filter.

#[cfg(target_arch = "x86_64")]
mod seccomp {
    use std::io;
    use std::mem::offset_of;

    /// `AUDIT_ARCH_X86_64` from `<linux/audit.h>`: `EM_X86_64 | __AUDIT_ARCH_64BIT |
    /// __AUDIT_ARCH_LE`.
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

    /// A classic BPF program for `SECCOMP_MODE_FILTER`.
    pub struct Filter(Vec<libc::sock_filter>);

    /// `BPF_LD | BPF_W | BPF_ABS`: load the 32-bit word at `offset` of `seccomp_data`.
    fn ld(offset: usize) -> libc::sock_filter {
        insn(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            offset as u32,
            0,
            0,
        )
    }

    /// `BPF_JMP | BPF_JEQ | BPF_K`: skip `jt` instructions if the loaded word is `k`, else `jf`.
    fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        insn(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k, jt, jf)
    }

    /// `BPF_RET | BPF_K`: the verdict `k`.
    fn ret(k: u32) -> libc::sock_filter {
        insn(libc::BPF_RET | libc::BPF_K, k, 0, 0)
    }

    fn insn(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }

    impl Filter {
        /// Denies `io_uring_setup`, `io_uring_enter` and `io_uring_register` with `EPERM`,
        /// as Docker's default profile does; allows everything else (and every system call
        /// of another architecture's ABI, which this filter does not describe).
        pub fn deny_io_uring() -> Filter {
            let arch = offset_of!(libc::seccomp_data, arch);
            let nr = offset_of!(libc::seccomp_data, nr);
            let setup = libc::SYS_io_uring_setup as u32;
            let enter = libc::SYS_io_uring_enter as u32;
            let register = libc::SYS_io_uring_register as u32;
            let eperm = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
            Filter(vec![
                ld(arch),                     // 0
                jeq(AUDIT_ARCH_X86_64, 0, 4), // 1: another ABI: to 6, allow
                ld(nr),                       // 2
                jeq(setup, 3, 0),             // 3: to 7, deny
                jeq(enter, 2, 0),             // 4: to 7, deny
                jeq(register, 1, 0),          // 5: to 7, deny
                ret(libc::SECCOMP_RET_ALLOW), // 6
                ret(eperm),                   // 7
            ])
        }

        /// Makes `io_uring_setup` alone fail with `errno` (the ring cannot be set up; the
        /// other io_uring calls are never reached); allows everything else.
        pub fn deny_io_uring_setup(errno: i32) -> Filter {
            let arch = offset_of!(libc::seccomp_data, arch);
            let nr = offset_of!(libc::seccomp_data, nr);
            let setup = libc::SYS_io_uring_setup as u32;
            let deny = libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA);
            Filter(vec![
                ld(arch),                     // 0
                jeq(AUDIT_ARCH_X86_64, 0, 2), // 1: another ABI: to 4, allow
                ld(nr),                       // 2
                jeq(setup, 1, 0),             // 3: to 5, deny
                ret(libc::SECCOMP_RET_ALLOW), // 4
                ret(deny),                    // 5
            ])
        }

        /// Installs the filter on the calling thread; threads it spawns later and programs
        /// it execs inherit it. Async-signal-safe (two system calls, no allocation), so it
        /// may run between fork and exec.
        pub fn install(&self) -> io::Result<()> {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; it lets an
            // unprivileged process install a filter.
            let r = unsafe {
                libc::prctl(
                    libc::PR_SET_NO_NEW_PRIVS,
                    1 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            let prog = libc::sock_fprog {
                len: self.0.len() as libc::c_ushort,
                // The kernel only reads the program (and copies it).
                filter: self.0.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `prog` points to `self.0`'s instructions, valid for the whole call; the
            // kernel copies the program before returning.
            let r = unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

struct ChildOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs this test binary again, running only `test`, as a child playing `role`.
fn rerun(test: &str, role: &str, envs: &[(&str, &str)]) -> ChildOutput {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .env_remove("CPORT_BACKEND")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("re-run the test binary"));
    let stdout = capture(child.0.stdout.take().unwrap());
    let stderr = capture(child.0.stderr.take().unwrap());
    let status = wait_timeout(&mut child.0, CHILD_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "child {role} still running after {CHILD_TIMEOUT:?}\nstderr:\n{}",
            stderr.collect()
        )
    });
    ChildOutput {
        status,
        stdout: stdout.collect(),
        stderr: stderr.collect(),
    }
}

/// Kills and reaps the child if the test fails before it exited.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pipe read to its end on a thread, so the child never blocks on a full pipe.
struct Captured(mpsc::Receiver<String>);

fn capture(mut r: impl Read + Send + 'static) -> Captured {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    Captured(rx)
}

impl Captured {
    /// Everything the pipe carried, once its writer closed it (or what is known after 5 s).
    fn collect(&self) -> String {
        self.0
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "<pipe still open>".into())
    }
}
