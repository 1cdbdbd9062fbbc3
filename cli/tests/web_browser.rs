//! The live view (`cport stress --web`) in a real browser: a short stress run serves the page,
//! headless Chromium loads it, and the test reads the rendered page through the DevTools
//! protocol (a websocket): the map's canvas has player and NPC dots in its pixels, the
//! chart's clients line reaches further right a few seconds later, the figures show clients,
//! and at the end the page shows the report the run wrote to its JSON file.
//!
//! Chromium comes from `CPORT_TEST_CHROMIUM` (set by `scripts/deps/chromium.sh`, which
//! `scripts/test` sources) or from `PATH`; without one the test says it is skipped and passes,
//! except under `scripts/test`, where it fails (`cport_testkit::missing_service`).

mod common;

use common::Proc;
use cport_bench::proc::stderr_lines;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CPORT_TEST_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "CPORT_TEST_CHROMIUM={} does not exist: run the tests with scripts/test, which installs Debian's chromium",
            p.display()
        );
        return Some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    // scripts/deps/chromium.sh installs Debian's chromium and sets CPORT_TEST_CHROMIUM.
    cport_testkit::missing_service("Chromium", "CPORT_TEST_CHROMIUM");
    None
}

/// Waits for a line for which `pick` gives something; `seen` keeps every line for messages.
fn wait_line<T>(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    timeout: Duration,
    what: &str,
    pick: impl Fn(&str) -> Option<T>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let got = pick(&line);
                seen.push(line);
                if let Some(v) = got {
                    return v;
                }
            }
            Err(_) => panic!("no {what} within {timeout:?}; output:\n{}", seen.join("\n")),
        }
    }
}

/// A DevTools protocol client on the browser's websocket: one call at a time.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
        let hostport = ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws://host:port/...");
        let tcp = TcpStream::connect(hostport).expect("connect to DevTools");
        // Bounds every wait for an answer.
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (ws, _) = tungstenite::client(ws_url, tcp).expect("DevTools websocket handshake");
        Cdp { ws, next: 0 }
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .expect("send to DevTools");
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("{method}: {e}"));
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools JSON");
            if v["id"] != id {
                continue; // an event
            }
            if !v["error"].is_null() {
                panic!("{method}: {}", v["error"]);
            }
            return v["result"].clone();
        }
    }

    /// Evaluates `expr` in the page and returns its value (JSON).
    fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if !r["exceptionDetails"].is_null() {
            panic!("the page threw: {}", r["exceptionDetails"]);
        }
        r["result"]["value"].clone()
    }
}

/// What the test reads from the rendered page: pixels of the two canvases (counted here, by
/// colour, not taken from the page's own bookkeeping) and the text of the figures and report.
const LOOK: &str = r#"(() => {
  if (!document.getElementById('map') || !document.getElementById('chart')) return null; // still loading
  const pixels = (id) => { const c = document.getElementById(id); return [c.width, c.getContext('2d').getImageData(0, 0, c.width, c.height).data]; };
  const near = (d, i, rgb, tol) => Math.abs(d[i] - rgb[0]) <= tol && Math.abs(d[i + 1] - rgb[1]) <= tol && Math.abs(d[i + 2] - rgb[2]) <= tol && d[i + 3] > 200;
  const [mw, m] = pixels('map');
  let red = 0, green = 0;
  for (let i = 0; i < m.length; i += 4) {
    if (near(m, i, [214, 39, 40], 24)) red++;
    else if (near(m, i, [30, 158, 58], 24)) green++;
  }
  // The rightmost column with the clients line's blue inside the top panel (rows 28-302).
  const [cw, c] = pixels('chart');
  let right = -1;
  for (let y = 28; y < 303; y++) for (let x = right + 1; x < cw; x++) {
    if (near(c, (y * cw + x) * 4, [31, 95, 214], 40)) right = x;
  }
  const rep = document.getElementById('report');
  return {
    red, green, right,
    clients: document.getElementById('fig-clients').textContent,
    status: document.getElementById('status').textContent,
    report: rep.hidden ? null : document.getElementById('report-table').innerText,
  };
})()"#;

fn look(cdp: &mut Cdp, session: &str) -> Value {
    cdp.eval(session, LOOK)
}

fn number(text: &Value) -> u64 {
    text.as_str()
        .unwrap_or("")
        .replace(',', "")
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn the_live_view_draws_dots_and_a_growing_chart_in_chromium_then_the_report() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("cport-web-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("r.json");

    // The browser first: its start-up (seconds on a loaded machine) is not the run's time.
    let profile = dir.join("chromium-profile");
    let mut chrome = Proc(
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--window-size=1400,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", browser.display())),
    );
    let chrome_err = stderr_lines(&mut chrome.0);
    let mut chrome_lines = Vec::new();
    let ws_url = wait_line(
        &chrome_err,
        &mut chrome_lines,
        Duration::from_secs(40),
        "DevTools address from Chromium",
        |l| {
            l.strip_prefix("DevTools listening on ")
                .map(|r| r.trim().to_string())
        },
    );
    let mut cdp = Cdp::connect(&ws_url);

    // The run: long enough to look twice while it runs, short for CI.
    let duration_s = 16;
    let mut stress = Proc(
        Command::new(env!("CARGO_BIN_EXE_cport"))
            .args(["stress", "--spawn", "--web", "127.0.0.1:0"])
            .args(["--duration-s", &duration_s.to_string()])
            .args(["--max-clients", "400", "--ramp-interval-ms", "10"])
            .args(["--npcs", "20000", "--threads", "1"])
            .arg("--json")
            .arg(&json_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cport stress"),
    );
    let t0 = Instant::now();
    let stress_err = stderr_lines(&mut stress.0);
    let mut stress_lines = Vec::new();
    let url = wait_line(
        &stress_err,
        &mut stress_lines,
        Duration::from_secs(20),
        "live view URL from cport stress",
        |l| {
            l.strip_prefix("stress: live view at ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        },
    );
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let target = cdp.call(None, "Target.createTarget", json!({ "url": url }));
    let target_id = target["targetId"].as_str().expect("targetId").to_string();
    let attached = cdp.call(
        None,
        "Target.attachToTarget",
        json!({ "targetId": target_id, "flatten": true }),
    );
    let session = attached["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_string();

    // First look: as soon as the map has players and NPCs and the chart has a line.
    let run_end = t0 + Duration::from_secs(duration_s);
    let first = loop {
        let v = look(&mut cdp, &session);
        if !v.is_null()
            && v["red"].as_u64() > Some(0)
            && v["green"].as_u64() > Some(0)
            && v["right"].as_i64() > Some(0)
        {
            break v;
        }
        assert!(
            Instant::now() + Duration::from_secs(4) < run_end,
            "no dots or no chart line while the run had time left: {v}\nstress:\n{}",
            stress_lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(number(&first["clients"]) > 0, "{first}");
    assert_eq!(first["status"], "live", "{first}");
    assert!(first["report"].is_null(), "{first}");

    // Second look, three seconds on: the chart has grown to the right.
    std::thread::sleep(Duration::from_secs(3));
    let second = look(&mut cdp, &session);
    assert!(!second.is_null(), "the page went away");
    assert!(
        Instant::now() < run_end,
        "the second look came after the end of the run: the machine is too slow for this test"
    );
    let (a, b) = (
        first["right"].as_i64().unwrap(),
        second["right"].as_i64().unwrap(),
    );
    // 16 s over ~910 px: three seconds are ~170 px; ask for a third of it.
    assert!(
        b > a + 60,
        "the clients line did not advance: {a} px then {b} px\n{first}\n{second}"
    );
    assert!(second["red"].as_u64() > Some(0), "{second}");
    assert!(second["report"].is_null(), "{second}");
    if let Ok(path) = std::env::var("CPORT_WEB_SCREENSHOT") {
        screenshot(&mut cdp, &session, Path::new(&path));
    }

    // Zoom: the button halves the region around its centre, the other shows the whole board.
    let zoomed = cdp.eval(
        &session,
        "document.getElementById('zoom-in').click(); new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(document.getElementById('map-region').textContent))))",
    );
    assert!(
        zoomed
            .as_str()
            .unwrap_or("")
            .starts_with("x 500–1500, y 500–1500"),
        "{zoomed}"
    );
    let whole = cdp.eval(
        &session,
        "document.getElementById('zoom-reset').click(); document.getElementById('map-region').textContent",
    );
    assert_eq!(whole, "2000 × 2000");
    // Everything the page loaded came from the binary: no other origin (no CDN).
    let origin = url.trim_end_matches('/');
    let resources = cdp.eval(
        &session,
        "JSON.stringify([location.href, ...performance.getEntriesByType('resource').map(e => e.name)])",
    );
    let resources: Vec<String> = serde_json::from_str(resources.as_str().unwrap()).unwrap();
    assert!(
        resources.len() >= 3,
        "the page, its script, its style: {resources:?}"
    );
    for r in &resources {
        assert!(
            r.starts_with(origin),
            "{r} is not from {origin}: {resources:?}"
        );
    }

    // The end: the page shows the report the run wrote.
    let end = Instant::now() + Duration::from_secs(duration_s + 30);
    let last = loop {
        let v = look(&mut cdp, &session);
        assert!(!v.is_null(), "the page went away");
        if !v["report"].is_null() {
            break v;
        }
        assert!(
            Instant::now() < end,
            "no report on the page after the run: {v}\nstress:\n{}",
            stress_lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let status = stress.0.wait().expect("wait for cport stress");
    while let Ok(l) = stress_err.try_recv() {
        stress_lines.push(l);
    }
    assert!(
        status.success(),
        "cport stress: {status}\n{}",
        stress_lines.join("\n")
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let max = r["max_clients_under_limit"].as_u64().unwrap();
    assert!(max > 0, "{r}");
    let text = last["report"].as_str().unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("max clients under 100 ms"))
        .unwrap_or_else(|| panic!("no maximum in the report on the page:\n{text}"));
    assert_eq!(
        number(&json!(row.trim_start_matches("max clients under 100 ms"))),
        max,
        "the page's report is the run's: {row:?} vs {max}"
    );
    assert!(
        last["status"].as_str().unwrap().starts_with("finished"),
        "{last}"
    );
    assert!(
        last["red"].as_u64() > Some(0),
        "the final map is drawn: {last}"
    );
    if let Ok(path) = std::env::var("CPORT_WEB_SCREENSHOT") {
        screenshot(
            &mut cdp,
            &session,
            &Path::new(&path).with_extension("end.png"),
        );
    }

    let _ = cdp.call(None, "Browser.close", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = chrome.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(chrome);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Saves a PNG of the page (for a person to look at; `CPORT_WEB_SCREENSHOT=path`).
fn screenshot(cdp: &mut Cdp, session: &str, path: &Path) {
    let r = cdp.call(
        Some(session),
        "Page.captureScreenshot",
        json!({ "format": "png" }),
    );
    let data = base64_decode(r["data"].as_str().unwrap_or(""));
    std::fs::write(path, data).unwrap();
}

/// Standard base64, enough for a screenshot (no dependency for it).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
