//! `cport bench mmo`, end to end and small: every build (cport on io_uring and on epoll,
//! `mmo-tokio`) runs as its own server under the stress client process, a ramp and a fixed
//! load each, and the JSON has the figures of each build.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bench_mmo_runs_every_build_and_reports_each() {
    let cport = Path::new(env!("CARGO_BIN_EXE_cport"));
    let tokio = cport.with_file_name("mmo-tokio");
    assert!(
        tokio.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p cport-bench-peers`)",
        tokio.display()
    );
    let dir = std::env::temp_dir().join(format!("cport-bench-mmo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("b.json");
    let t0 = Instant::now();
    let out = Command::new(cport)
        .args(["bench", "mmo", "--rounds", "1", "--duration-s", "3"])
        .args([
            "--npcs",
            "500",
            "--max-users",
            "200",
            "--max-clients",
            "100",
        ])
        // The server's CPU time comes from /proc in 10 ms ticks: the hold must cost it well
        // more than a tick (30 clients held 2 s could cost a debug build of cport-uring less,
        // and measure 0).
        .args(["--fixed-clients", "150", "--hold-s", "3", "--threads", "2"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run cport bench mmo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(120), "bounded");
    assert!(stdout.contains("ramp (3 s"), "{stdout}");
    assert!(stdout.contains("fixed load (150 clients"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for build in ["cport-uring", "cport-epoll", "tokio"] {
        let b = &r[build];
        assert_eq!(b["failures"], serde_json::json!([]), "{build}: {b}");
        let max = b["max_clients_under_limit"].as_f64().unwrap();
        assert!(max > 0.0 && max <= 100.0, "{build}: {max}");
        for k in ["server_cpu_pct", "cs_per_s"] {
            assert!(b[k].as_f64().unwrap() > 0.0, "{build}: {k} = {}", b[k]);
        }
        for k in ["delay_p50_ms", "delay_p99_ms"] {
            assert!(b[k].is_f64(), "{build}: {k}");
        }
        assert_eq!(
            b["fixed"]["min_clients_held"].as_f64(),
            Some(150.0),
            "{build}"
        );
        assert!(
            b["fixed"]["server_cpu_pct"].as_f64().unwrap() > 0.0,
            "{build}"
        );
        assert_eq!(b["fixed"]["errors"].as_f64(), Some(0.0), "{build}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
