//! `cport soak`, briefly: the whole machinery (two server processes, every kind of load, the
//! sampling, the drain, SIGTERM, the table and its verdict) runs for a few seconds, so that
//! `scripts/soak` cannot rot. The long runs are by hand (RELIABILITY.md).

use std::process::Command;
use std::time::{Duration, Instant};

/// The figure of a table row (`| check | figure | pass when | ok |`).
fn figure<'a>(table: &'a str, check: &str) -> &'a str {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {check} |")))
        .unwrap_or_else(|| panic!("no row {check:?} in\n{table}"));
    line.split(" | ").nth(1).expect("a figure column")
}

#[test]
fn a_short_soak_passes_with_every_load_applied() {
    let dir = std::env::temp_dir().join(format!("cport-soak-test-{}", std::process::id()));
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cport"))
        .args([
            "soak",
            "--seconds",
            "4",
            "--npcs",
            "20000",
            "--players",
            "30",
        ])
        .args([
            "--echo-conns",
            "6",
            "--echo-mib-s",
            "8",
            "--hostile-per-s",
            "4",
        ])
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run cport soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    assert_eq!(figure(&stdout, "echo bytes lost / corrupted"), "0 / 0");
    let (sent, verified) = figure(&stdout, "echo bytes sent / verified")
        .split_once(" / ")
        .unwrap();
    assert_eq!(sent, verified);
    assert!(verified.parse::<u64>().unwrap() > 0, "{stdout}");
    for check in [
        "echo: sessions leaked (open after all clients closed)",
        "mmo: sessions leaked (open after all clients closed)",
    ] {
        assert!(figure(&stdout, check).starts_with("0"), "{stdout}");
    }
    // Each kind of load ran: closes for every reason it provokes, in the servers' own counts.
    let echo = figure(&stdout, "echo: sessions accepted; closed by reason");
    let mmo = figure(&stdout, "mmo: sessions accepted; closed by reason");
    for reason in ["peer_closed=", "reset=", "slow_consumer="] {
        assert!(echo.contains(reason), "echo: {echo}");
    }
    for reason in ["protocol=", "rejected=", "reset="] {
        assert!(mmo.contains(reason), "mmo: {mmo}");
    }
    assert!(std::fs::read_to_string(dir.join("mmo.stats"))
        .unwrap()
        .contains(" awake_npcs="));
    let _ = std::fs::remove_dir_all(&dir);
}
