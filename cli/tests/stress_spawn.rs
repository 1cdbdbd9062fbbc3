//! `cport stress --spawn`, end to end: the binary starts `cport mmo` as its child, ramps
//! dummies against it for a bounded time, stops it, and writes a sane JSON report and SVGs.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn stress_spawn_completes_and_reports_a_sane_maximum() {
    let dir = std::env::temp_dir().join(format!("cport-stress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cport"))
        .args([
            "stress",
            "--spawn",
            "--duration-s",
            "3",
            "--max-clients",
            "100",
        ])
        .args(["--ramp-interval-ms", "5", "--npcs", "500", "--threads", "2"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(dir.join("r.svg"))
        .arg("--map-svg")
        .arg(dir.join("m.svg"))
        .output()
        .expect("run cport stress");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "bounded by --duration-s"
    );
    assert!(stdout.contains("max clients under 100 ms:"), "{stdout}");
    assert!(stderr.contains("listening on 127.0.0.1:"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let max = r["max_clients_under_limit"].as_u64().unwrap();
    assert!(max > 0 && max <= 100, "{max}");
    assert!(!r["series"].as_array().unwrap().is_empty());
    assert_eq!(r["errors"]["protocol"], 0);
    assert_eq!(r["errors"]["server_closed"], 0);
    assert!(r["server_cpu_s"].is_f64());
    for svg in ["r.svg", "m.svg"] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
