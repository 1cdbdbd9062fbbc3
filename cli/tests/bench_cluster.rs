//! `cport bench cluster`, end to end and small: a cluster of 1 zone and one of 4, every zone
//! process in a cgroup v1 cpu group of its own with the same quota, the stress client in
//! steps; the JSON has both layouts, clients held by each, `scaling` their ratio, and shows
//! the quota in force. Skipped (said on stderr) without a writable cgroup v1 cpu controller
//! or `nats-server`, unless `CPORT_REQUIRE_SERVICES` is set (then it fails). Linux only: the
//! command holds each zone with a cgroup.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cgroup v1 cpu controller, or `None` after saying why the test is skipped.
fn cgroup_v1() -> Option<std::path::PathBuf> {
    match cport_bench::cgroup::cpu_v1_root() {
        Ok(root) => Some(root),
        Err(e) => {
            let required = std::env::var(cport_testkit::REQUIRE_SERVICES)
                .is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(
                !required,
                "{} is set and the cgroup v1 cpu controller is not usable: {e}",
                cport_testkit::REQUIRE_SERVICES
            );
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: {e}");
            None
        }
    }
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

#[test]
fn bench_cluster_reports_both_layouts_their_ratio_and_the_quota_in_force() {
    let Some(root) = cgroup_v1() else {
        return;
    };
    // The bench starts its own NATS per layout; this one only proves there is a
    // `nats-server` to start (and skips the test otherwise), and is then given to the bench
    // so that it does not look for another.
    let Some(nats) = cport_testkit::nats::nats_server() else {
        return;
    };
    let cport = Path::new(env!("CARGO_BIN_EXE_cport"));
    let dir = std::env::temp_dir().join(format!("cport-bench-cluster-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("c.json");
    let t0 = Instant::now();
    let out = Command::new(cport)
        .args(["bench", "cluster", "--zones", "1,4", "--npcs", "2000"])
        .args(["--zone-cpu", "0.5", "--cfs-period-us", "20000"])
        .args(["--start", "40", "--max-clients", "160", "--max-steps", "4"])
        .args(["--hold-s", "2", "--settle-s", "1", "--gap-s", "1"])
        .args(["--threads", "1", "--client-threads", "1"])
        .args(["--nats", &nats.url])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run cport bench cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "bounded: {:?}",
        t0.elapsed()
    );
    assert!(
        stdout.contains("cgroup v1 cpu controller"),
        "the mechanism is named: {stdout}"
    );
    assert!(stdout.contains("scaling (4 zones"), "{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let layouts = r["layouts"].as_array().expect("layouts");
    assert_eq!(layouts.len(), 2, "{r}");
    let mut held = Vec::new();
    for (l, zones) in layouts.iter().zip([1.0, 4.0]) {
        assert_eq!(f(l, "zones"), zones);
        let n = f(l, "clients_held");
        assert!(n > 0.0 && n <= 160.0, "{zones} zones held {n}");
        held.push(n);
        let round = &l["rounds"][0];
        // The quota was in force: each zone was throttled, or used no more than its share
        // (50% of a CPU, with room for /proc's 4 ms ticks).
        let cpus: Vec<f64> = round["zone_cpu_pct"]
            .as_array()
            .expect("zone CPU at the held step")
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(cpus.len(), zones as usize, "{round}");
        let throttled = f(round, "throttled_periods_total");
        assert!(
            throttled > 0.0 || cpus.iter().all(|&c| c <= 55.0),
            "zones used {cpus:?}% of a CPU against a quota of 50%, never throttled"
        );
        // A group counts periods only while its tasks run: periods counted in the hold
        // prove the zones were in their groups, under the quota.
        assert!(
            f(round, "periods") > 0.0,
            "cpu.stat counted periods: {round}"
        );
        assert!(f(round, "gateway_cpu_pct") > 0.0, "{round}");
        assert!(round["steps"].as_array().is_some_and(|s| !s.is_empty()));
    }
    let scaling = f(&r, "scaling");
    assert!(
        (scaling - held[1] / held[0]).abs() < 1e-9,
        "scaling {scaling} is not {} / {}",
        held[1],
        held[0]
    );
    assert_eq!(r["settings"]["cfs_quota_us"].as_u64(), Some(10_000));
    // Every group this run made is gone.
    let pid_part = "cport-bench-";
    let left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(pid_part) && n.contains("-r1-z"))
        .filter(|n| {
            // Only this bench's: its pid is not known here, so any group whose owner is
            // gone counts (a concurrent bench run's groups have a live owner).
            let pid = n[pid_part.len()..].split('-').next().unwrap_or("");
            !Path::new(&format!("/proc/{pid}")).exists()
        })
        .collect();
    assert!(left.is_empty(), "groups left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
