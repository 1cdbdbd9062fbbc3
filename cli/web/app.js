// The live view of `cport stress --web`: one EventSource (/events) brings the run's settings
// (`hello`), then each second the seconds not yet seen, the errors and the number of the latest
// map (`state`); the map itself is fetched from /map.bin when its number changes (binary:
// u32 seq, world size, players, npcs; then u16 x, y per player, then per NPC). The last
// `state` carries the report. Everything is drawn on two canvases, no library.
"use strict";

const COLORS = {
  clients: "#1f5fd6",
  maxUnder: "#2ca02c",
  tracked: "#d62728",
  trackedMax: "#ffa0a0",
  p99: "#c030c0",
  p50: "#17becf",
  limit: "#000000",
  player: "#d62728",
  npc: "#1e9e3a",
};

const view = {
  hello: null,
  series: [],
  errors: null,
  mapSeq: 0, // the latest map announced
  done: false,
  report: null,
  map: null, // { seq, world, players: Uint16Array, npcs: Uint16Array }
  drawn: { players: 0, npcs: 0, mapSeq: 0, chartPoints: 0 },
};
// For whoever wants to look from outside (a test, the console).
window.cportView = view;

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

// ---------------------------------------------------------------- the stream

let es = null;
function connect() {
  es = new EventSource("/events");
  es.addEventListener("hello", (e) => {
    view.hello = JSON.parse(e.data);
    view.series = [];
    view.done = false;
    view.report = null;
    showSettings();
    setStatus("live", "live");
  });
  es.addEventListener("state", (e) => onState(JSON.parse(e.data)));
  es.onerror = () => {
    if (view.done) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (not a stream): too many pages open, or not a live view.
      setStatus("lost", "not connected: too many pages are open on this run, or it has ended (reload to try again)");
    } else {
      setStatus("lost", "disconnected: the stress run has stopped or cannot be reached (retrying)");
    }
  };
  es.onopen = () => {
    if (!view.done) setStatus("live", "live");
  };
}

function onState(st) {
  // Seconds arrive once each, in order; `from` is the index of the first one here.
  if (st.from <= view.series.length) {
    view.series.length = st.from;
    for (const s of st.series) view.series.push(s);
  }
  view.errors = st.errors;
  view.mapSeq = st.map.seq;
  $("map-players").textContent = fmt(st.map.players);
  $("map-npcs").textContent = fmt(st.map.npcs);
  if (st.map.sample_ms > 0) {
    $("map-info").textContent = `map sampled in ${st.map.sample_ms.toFixed(1)} ms · wheel: zoom · drag: move · double-click: whole board`;
  }
  showFigures();
  drawChart();
  fetchMap();
  if (st.report) {
    view.done = true;
    view.report = st.report;
    es.close();
    showReport(st.report);
    setStatus("over", "finished: the report is below");
    document.title = `${fmt(st.report.max_clients_under_limit)} clients under ${st.report.settings.delay_limit_ms} ms — cport stress (finished)`;
  }
}

let fetching = false;
async function fetchMap() {
  if (fetching || !view.mapSeq || (view.map && view.map.seq >= view.mapSeq)) return;
  fetching = true;
  try {
    const r = await fetch("/map.bin", { cache: "no-store" });
    if (r.ok) {
      const buf = await r.arrayBuffer();
      view.map = decodeMap(buf);
      drawMap();
    }
  } catch (e) {
    // The run is over or the page lost it: keep what is drawn.
  } finally {
    fetching = false;
  }
  if (view.map && view.map.seq < view.mapSeq) fetchMap();
}

function decodeMap(buf) {
  const dv = new DataView(buf);
  const seq = dv.getUint32(0, true);
  const world = dv.getUint32(4, true);
  const np = dv.getUint32(8, true);
  const nn = dv.getUint32(12, true);
  const read = (off, n) => {
    const a = new Uint16Array(2 * n);
    for (let i = 0; i < 2 * n; i++) a[i] = dv.getUint16(off + 2 * i, true);
    return a;
  };
  return { seq, world, players: read(16, np), npcs: read(16 + 4 * np, nn) };
}

function setStatus(cls, text) {
  const el = $("status");
  el.className = "status " + cls;
  el.textContent = text;
}

// ---------------------------------------------------------------- figures

function showSettings() {
  const h = view.hello;
  const parts = [];
  parts.push(h.server ? `server ${h.server}` : `server ${h.addr}`);
  parts.push(`up to ${fmt(h.max_clients)} clients`);
  parts.push(`limit ${h.delay_limit_ms} ms`);
  parts.push(`a client every ${h.ramp_interval_ms} ms under it`);
  parts.push(`${h.duration_s} s`);
  parts.push(`${h.client_threads} client threads`);
  if (h.zones && h.zones.length) parts.push(`a cluster of ${h.zones.length} zones (borders on the map)`);
  $("settings").textContent = parts.join(" · ");
  view.world = h.world_size;
  resetZoom();
}

function showFigures() {
  const s = view.series[view.series.length - 1];
  if (!s) return;
  const h = view.hello || {};
  const limit = h.delay_limit_ms || 100;
  $("fig-clients").textContent = fmt(s.clients);
  document.title = `${fmt(s.clients)} clients · ${fmt(s.tracked_delay_ms)} ms — cport stress`;
  $("fig-live").textContent = `${fmt(s.live)} connected or logging in`;
  const d = $("fig-delay");
  d.textContent = `${fmt(s.tracked_delay_ms)} ms`;
  d.classList.toggle("bad", s.tracked_delay_ms >= limit);
  const p = $("fig-p99");
  p.textContent = s.samples ? `${fmt(s.p99_ms)} ms` : "no samples";
  p.classList.toggle("bad", s.p99_ms >= limit);
  $("fig-p50").textContent = s.samples ? `p50 ${fmt(s.p50_ms)} ms, ${fmt(s.samples)} samples` : "";
  $("fig-max").textContent = fmt(s.max_under_limit);
  $("fig-limit").textContent = `clients while the delay < ${limit} ms`;
  const e = view.errors || {};
  const total = s.errors;
  const el = $("fig-errors");
  el.textContent = fmt(total);
  el.classList.toggle("bad", total > 0);
  const kinds = Object.entries(e).filter(([, v]) => v > 0).map(([k, v]) => `${k.replace(/_/g, " ")} ${fmt(v)}`);
  $("fig-errors-kinds").textContent = kinds.join(", ");
  $("fig-time").textContent = `${Math.round(s.t)} / ${h.duration_s === undefined ? "?" : h.duration_s} s`;
  $("fig-packets").textContent = `in ${fmt(s.packets_in_per_s)}/s · out ${fmt(s.packets_out_per_s)}/s`;
}

function showReport(r) {
  const st = r.settings;
  const rows = [];
  const row = (k, v, main) => rows.push(`<tr${main ? ' class="main"' : ""}><td>${k}</td><td>${v}</td></tr>`);
  row(`max clients under ${st.delay_limit_ms} ms`, fmt(r.max_clients_under_limit), true);
  row("peak clients", fmt(r.peak_clients));
  row(`ramp maximum recorded (above ${st.delay_limit_ms + Math.floor(st.delay_limit_ms / 2)} ms)`,
    r.ramp_max_recorded === null ? "none (never above)" : fmt(r.ramp_max_recorded));
  row("at the end", `${fmt(r.final_clients)} clients, tracked delay ${fmt(r.final_tracked_delay_ms)} ms`);
  row("delay (whole run)", `${fmt(r.delay_samples)} samples · p50 ${fmt(r.p50_ms)} ms · p99 ${fmt(r.p99_ms)} ms · max ${fmt(r.max_ms)} ms`);
  row("clients", `${fmt(r.clients_started)} started · ${fmt(r.clients_shed)} shed`);
  row("packets", `${fmt(r.packets_in)} in · ${fmt(r.packets_out)} out`);
  const e = r.errors;
  const total = Object.values(e).reduce((a, b) => a + b, 0);
  const kinds = Object.entries(e).filter(([, v]) => v > 0).map(([k, v]) => `${k.replace(/_/g, " ")} ${fmt(v)}`);
  row("errors", kinds.length ? `${fmt(total)} (${kinds.join(", ")})` : "0");
  row("client CPU", `${r.client_cpu_s.toFixed(1)} s (${Math.round(r.client_cpu_pct)}% of one core; ${st.client_threads} threads, ${st.client_backend})`);
  if (r.server_cpu_s !== null) {
    row("server CPU", `${r.server_cpu_s.toFixed(1)} s (${Math.round((100 * r.server_cpu_s) / Math.max(r.elapsed_s, 1e-3))}% of one core)`);
  }
  if (r.server) row("server", escapeHtml(r.server));
  row("run", `${r.elapsed_s.toFixed(1)} s${r.stopped_early ? ` — stopped early: ${escapeHtml(r.stopped_early)}` : ""}`);
  if (r.fd_limited_to !== null) row("note", `the open-files limit capped the clients at ${fmt(r.fd_limited_to)}`);
  $("report-table").innerHTML = rows.join("");
  $("report").hidden = false;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ---------------------------------------------------------------- the chart

function niceStep(max, n) {
  const raw = max / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

function drawChart() {
  const c = $("chart");
  const g = c.getContext("2d");
  const W = c.width, H = c.height;
  g.fillStyle = "#ffffff";
  g.fillRect(0, 0, W, H);
  const h = view.hello || { duration_s: 60, delay_limit_ms: 100 };
  const S = view.series;
  const last = S[S.length - 1];
  const tMax = Math.max(h.duration_s || 1, last ? last.t : 1, 1);
  const L = 70, R = W - 16;
  const x = (t) => L + ((R - L) * t) / tMax;

  // Clients (top).
  let cMax = 10;
  for (const s of S) cMax = Math.max(cMax, s.live);
  cMax *= 1.1;
  const top = { y0: 30, y1: 300 };
  axes(g, top, L, R, tMax, cMax, "clients");
  const yTop = (v) => top.y1 - ((top.y1 - top.y0) * v) / cMax;
  if (last) {
    line(g, [[x(0), yTop(last.max_under_limit)], [x(tMax), yTop(last.max_under_limit)]], COLORS.maxUnder, 1.5);
  }
  line(g, S.map((s) => [x(s.t), yTop(s.clients)]), COLORS.clients, 2);
  // Above the panel, so that nothing but the series is drawn in its colours inside it.
  legendRow(g, L, 12, [["clients logged in", COLORS.clients], ["max under the limit", COLORS.maxUnder]]);

  // Delay (bottom).
  const limit = h.delay_limit_ms || 100;
  let dMax = limit * 1.6;
  for (const s of S) dMax = Math.max(dMax, s.tracked_max_ms, s.p99_ms);
  dMax = Math.min(dMax, limit * 20);
  const bot = { y0: 372, y1: H - 40 };
  axes(g, bot, L, R, tMax, dMax, "delay (ms)");
  const yBot = (v) => bot.y1 - ((bot.y1 - bot.y0) * Math.min(v, dMax)) / dMax;
  line(g, S.map((s) => [x(s.t), yBot(s.tracked_max_ms)]), COLORS.trackedMax, 2);
  line(g, S.map((s) => [x(s.t), yBot(s.p99_ms)]), COLORS.p99, 2);
  line(g, S.map((s) => [x(s.t), yBot(s.p50_ms)]), COLORS.p50, 2);
  line(g, S.map((s) => [x(s.t), yBot(s.tracked_delay_ms)]), COLORS.tracked, 2);
  g.setLineDash([6, 4]);
  line(g, [[x(0), yBot(limit)], [x(tMax), yBot(limit)]], COLORS.limit, 1);
  g.setLineDash([]);
  legendRow(g, L, bot.y0 - 12, [
    ["tracked delay (course)", COLORS.tracked],
    ["tracked, highest in the second", COLORS.trackedMax],
    ["p99", COLORS.p99],
    ["p50", COLORS.p50],
    ["limit", COLORS.limit],
  ]);
  view.drawn.chartPoints = S.length;
  c.dataset.points = String(S.length);
}

function axes(g, box, L, R, tMax, vMax, label) {
  g.strokeStyle = "#cfd3da";
  g.fillStyle = "#556";
  g.lineWidth = 1;
  g.font = "13px system-ui, sans-serif";
  g.textAlign = "right";
  g.textBaseline = "middle";
  const vs = niceStep(vMax, 5);
  for (let v = 0; v <= vMax + 1e-9; v += vs) {
    const y = Math.round(box.y1 - ((box.y1 - box.y0) * v) / vMax) + 0.5;
    g.beginPath(); g.moveTo(L, y); g.lineTo(R, y); g.stroke();
    g.fillText(fmt(Math.round(v)), L - 6, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const ts = niceStep(tMax, 8);
  for (let t = 0; t <= tMax + 1e-9; t += ts) {
    const xx = Math.round(L + ((R - L) * t) / tMax) + 0.5;
    g.beginPath(); g.moveTo(xx, box.y0); g.lineTo(xx, box.y1); g.stroke();
    g.fillText(`${Math.round(t)}`, xx, box.y1 + 4);
  }
  g.fillText("seconds", (L + R) / 2, box.y1 + 20);
  g.save();
  g.translate(16, (box.y0 + box.y1) / 2);
  g.rotate(-Math.PI / 2);
  g.fillText(label, 0, -6);
  g.restore();
  g.strokeStyle = "#8a90a0";
  g.strokeRect(L + 0.5, box.y0 + 0.5, R - L, box.y1 - box.y0);
}

function line(g, pts, color, width) {
  if (!pts.length) return;
  g.strokeStyle = color;
  g.fillStyle = color;
  g.lineWidth = width;
  g.lineJoin = "round";
  if (pts.length === 1) {
    g.beginPath();
    g.arc(pts[0][0], pts[0][1], width + 1, 0, 2 * Math.PI);
    g.fill();
    return;
  }
  g.beginPath();
  g.moveTo(pts[0][0], pts[0][1]);
  for (let i = 1; i < pts.length; i++) g.lineTo(pts[i][0], pts[i][1]);
  g.stroke();
}

function legendRow(g, x, y, items) {
  g.font = "13px system-ui, sans-serif";
  g.textAlign = "left";
  g.textBaseline = "middle";
  for (const [text, color] of items) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath(); g.moveTo(x, y); g.lineTo(x + 22, y); g.stroke();
    g.fillStyle = "#334";
    g.fillText(text, x + 28, y);
    x += 28 + g.measureText(text).width + 24;
  }
}

// ---------------------------------------------------------------- the map

const zoom = { x0: 0, y0: 0, span: 2000 };
const MIN_SPAN = 20;

function worldSize() {
  return (view.map && view.map.world) || view.world || 2000;
}

function resetZoom() {
  zoom.x0 = 0;
  zoom.y0 = 0;
  zoom.span = worldSize();
  drawMap();
}

function clampZoom() {
  const w = worldSize();
  zoom.span = Math.min(Math.max(zoom.span, MIN_SPAN), w);
  zoom.x0 = Math.min(Math.max(zoom.x0, 0), w - zoom.span);
  zoom.y0 = Math.min(Math.max(zoom.y0, 0), w - zoom.span);
}

function zoomAt(cx, cy, factor) {
  // Keep the cell at (cx, cy) where it is on the screen.
  const fx = (cx - zoom.x0) / zoom.span, fy = (cy - zoom.y0) / zoom.span;
  zoom.span *= factor;
  zoom.span = Math.min(Math.max(zoom.span, MIN_SPAN), worldSize());
  zoom.x0 = cx - fx * zoom.span;
  zoom.y0 = cy - fy * zoom.span;
  clampZoom();
  scheduleMap();
}

let mapQueued = false;
function scheduleMap() {
  if (mapQueued) return;
  mapQueued = true;
  requestAnimationFrame(() => {
    mapQueued = false;
    drawMap();
  });
}

// Canvas colours as 32-bit pixels (ImageData's bytes are r, g, b, a in memory order).
const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function pixel(hex) {
  const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
  return (LITTLE ? ((255 << 24) | (b << 16) | (g << 8) | r) : ((r << 24) | (g << 16) | (b << 8) | 255)) >>> 0;
}
const PX = { bg: pixel("#fbfbfd"), grid: pixel("#e6e8ee"), zone: pixel("#c06080"), player: pixel(COLORS.player), npc: pixel(COLORS.npc) };
let mapImage = null;

// The board is drawn pixel by pixel into one ImageData (tens of thousands of dots a second
// cost a few milliseconds this way, where one fillRect each costs a hundred), then the
// grid's labels on top.
function drawMap() {
  const c = $("map");
  const g = c.getContext("2d");
  const W = c.width;
  clampZoom();
  if (!mapImage || mapImage.width !== W) mapImage = g.createImageData(W, W);
  const buf = new Uint32Array(mapImage.data.buffer);
  buf.fill(PX.bg);
  const s = W / zoom.span; // pixels per cell
  const px = (v) => (v - zoom.x0) * s;
  const py = (v) => (v - zoom.y0) * s;

  // Grid: a line every `step` cells, at least ~45 px apart.
  let step = 1;
  for (const k of [1, 5, 10, 25, 50, 100, 250, 500, 1000]) {
    step = k;
    if (k * s >= 45) break;
  }
  const first = (v) => Math.ceil(v / step) * step;
  const xs = [], ys = [];
  for (let v = first(zoom.x0); v <= zoom.x0 + zoom.span; v += step) xs.push(v);
  for (let v = first(zoom.y0); v <= zoom.y0 + zoom.span; v += step) ys.push(v);
  for (const v of xs) {
    const xx = Math.round(px(v));
    if (xx >= 0 && xx < W) for (let y = 0; y < W; y++) buf[y * W + xx] = PX.grid;
  }
  for (const v of ys) {
    const yy = Math.round(py(v));
    if (yy >= 0 && yy < W) buf.fill(PX.grid, yy * W, yy * W + W);
  }

  // A cluster's zone borders (`cport demo --cluster`): each rectangle's inner edges, two
  // pixels wide, under the dots.
  const size = worldSize();
  for (const [x0, y0, x1, y1] of (view.hello && view.hello.zones) || []) {
    const ya = Math.max(0, Math.round(py(y0))), yb = Math.min(W, Math.round(py(y1)));
    const xa = Math.max(0, Math.round(px(x0))), xb = Math.min(W, Math.round(px(x1)));
    for (const v of [x0, x1]) {
      if (v <= 0 || v >= size) continue;
      const xx = Math.round(px(v));
      for (const c of [xx - 1, xx]) {
        if (c >= 0 && c < W) for (let y = ya; y < yb; y++) buf[y * W + c] = PX.zone;
      }
    }
    for (const v of [y0, y1]) {
      if (v <= 0 || v >= size) continue;
      const yy = Math.round(py(v));
      for (const r of [yy - 1, yy]) if (r >= 0 && r < W && xa < xb) buf.fill(PX.zone, r * W + xa, r * W + xb);
    }
  }

  let players = 0, npcs = 0;
  const m = view.map;
  if (m) {
    const x1 = zoom.x0 + zoom.span, y1 = zoom.y0 + zoom.span;
    const dots = (a, size, color) => {
      const n0 = Math.max(1, Math.round(size));
      let n = 0;
      for (let i = 0; i < a.length; i += 2) {
        const x = a[i], y = a[i + 1];
        if (x < zoom.x0 || x >= x1 || y < zoom.y0 || y >= y1) continue;
        n++;
        const ax = Math.round(px(x + 0.5) - size / 2), ay = Math.round(py(y + 0.5) - size / 2);
        const bx = Math.min(ax + n0, W), by = Math.min(ay + n0, W);
        for (let yy = Math.max(ay, 0); yy < by; yy++) {
          buf.fill(color, yy * W + Math.max(ax, 0), yy * W + bx);
        }
      }
      return n;
    };
    // Players under the NPCs: the NPCs a player wakes stand within a few cells of it and
    // would disappear under it (as in demo-map.svg).
    players = dots(m.players, Math.max(4, s * 0.9), PX.player);
    npcs = dots(m.npcs, Math.max(2, s * 0.6), PX.npc);
  }
  g.putImageData(mapImage, 0, 0);

  g.fillStyle = "#8890a0";
  g.font = "12px system-ui, sans-serif";
  g.textBaseline = "top";
  g.textAlign = "left";
  for (const v of xs) g.fillText(String(v), Math.round(px(v)) + 2, 2);
  for (const v of ys) if (v > zoom.y0) g.fillText(String(v), 2, Math.round(py(v)) + 2);

  view.drawn.players = players;
  view.drawn.npcs = npcs;
  view.drawn.mapSeq = m ? m.seq : 0;
  c.dataset.players = String(players);
  c.dataset.npcs = String(npcs);
  const whole = zoom.span >= worldSize();
  $("map-region").textContent = whole
    ? `${worldSize()} × ${worldSize()}`
    : `x ${Math.round(zoom.x0)}–${Math.round(zoom.x0 + zoom.span)}, y ${Math.round(zoom.y0)}–${Math.round(zoom.y0 + zoom.span)}: ${fmt(players)} players, ${fmt(npcs)} NPCs here`;
}

function mapPoint(e) {
  const c = $("map");
  const r = c.getBoundingClientRect();
  const fx = (e.clientX - r.left) / r.width, fy = (e.clientY - r.top) / r.height;
  return [zoom.x0 + fx * zoom.span, zoom.y0 + fy * zoom.span];
}

function setupMap() {
  const c = $("map");
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [cx, cy] = mapPoint(e);
    zoomAt(cx, cy, Math.exp(Math.max(-300, Math.min(300, e.deltaY)) * 0.002));
  }, { passive: false });
  let drag = null;
  c.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, x0: zoom.x0, y0: zoom.y0 };
    c.setPointerCapture(e.pointerId);
    c.classList.add("dragging");
  });
  c.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const r = c.getBoundingClientRect();
    zoom.x0 = drag.x0 - ((e.clientX - drag.x) / r.width) * zoom.span;
    zoom.y0 = drag.y0 - ((e.clientY - drag.y) / r.height) * zoom.span;
    clampZoom();
    scheduleMap();
  });
  const end = () => {
    drag = null;
    c.classList.remove("dragging");
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  c.addEventListener("dblclick", resetZoom);
  const center = () => [zoom.x0 + zoom.span / 2, zoom.y0 + zoom.span / 2];
  $("zoom-in").onclick = () => zoomAt(...center(), 0.5);
  $("zoom-out").onclick = () => zoomAt(...center(), 2);
  $("zoom-reset").onclick = resetZoom;
}

setupMap();
drawMap();
drawChart();
connect();
