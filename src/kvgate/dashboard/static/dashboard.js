// kvgate dashboard: renders /dashboard/events snapshots (see docs/dashboard.md).
// Plain DOM + inline SVG; every value from the server is set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SHOWN_REQUESTS = 50;
const openRequests = new Set();

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return value.toFixed(digits === undefined ? 0 : digits);
}

function pct(value) {
  return value === null || value === undefined ? "–" : (value * 100).toFixed(1) + "%";
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
}

function pill(text, kind) {
  return el("span", text, "pill " + kind);
}

function renderEndpoints(rows) {
  const body = $("endpoints").tBodies[0];
  body.replaceChildren();
  for (const e of rows) {
    const tr = el("tr");
    tr.dataset.endpoint = e.name;
    const name = el("td");
    name.append(el("div", e.name));
    if (e.address !== e.name) name.append(el("div", e.address, "muted"));
    tr.append(name);
    const state = el("td");
    if (!e.healthy) state.append(pill("unhealthy", "bad"));
    else if (!e.in_rotation) state.append(pill("out of rotation", "warn"));
    else state.append(pill("in rotation", "ok"));
    tr.append(state);
    const breaker = el("td");
    breaker.append(pill(e.breaker, e.breaker === "closed" ? "ok" : e.breaker === "open" ? "bad" : "warn"));
    tr.append(breaker);
    tr.append(el("td", e.waiting, "num"), el("td", e.running, "num"));
    const kv = el("td");
    const bar = el("span", null, "bar");
    const fill = el("i");
    fill.style.width = Math.min(100, e.kv_cache_usage * 100).toFixed(1) + "%";
    bar.append(fill);
    kv.append(bar, el("span", " " + pct(e.kv_cache_usage)));
    tr.append(kv);
    tr.append(el("td", fmt(e.picks_per_s, 1), "num picks-per-s"));
    tr.append(el("td", e.picks_total, "num picks-total"));
    tr.append(el("td", pct(e.hit_rate), "num"));
    body.append(tr);
  }
}

// One SVG line chart: lines = [{values, cls}], on a shared y range from 0.
function renderChart(svgId, axisId, times, lines, unit) {
  const svg = $(svgId);
  svg.replaceChildren();
  let max = 0;
  for (const line of lines) for (const v of line.values) if (v !== null && v > max) max = v;
  const top = max > 0 ? max * 1.1 : 1;
  const n = times.length;
  for (const line of lines) {
    let points = [];
    const flush = () => {
      if (points.length === 1) points.push(points[0].replace(/^[^,]+/, (x) => String(Math.max(0, Number(x) - 3))));
      if (points.length) {
        const poly = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
        poly.setAttribute("points", points.join(" "));
        poly.setAttribute("stroke", line.color);
        svg.append(poly);
      }
      points = [];
    };
    line.values.forEach((v, i) => {
      if (v === null) { flush(); return; }
      const x = n > 1 ? (i / (n - 1)) * 300 : 300;
      const y = 100 - (v / top) * 96;
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    flush();
  }
  const axis = $(axisId);
  axis.replaceChildren();
  const span = n > 1 ? times[n - 1] - times[0] : 0;
  axis.append(el("span", "-" + duration(span)), el("span", "max " + fmt(max, max < 10 ? 2 : 0) + unit), el("span", "now"));
}

function renderSeries(series) {
  const t = series.t;
  const hasTtft = series.ttft_p50_ms.some((v) => v !== null);
  $("ttft-note").textContent = hasTtft ? "" : "(no streamed requests: end-to-end latency shown)";
  renderChart("chart-ttft", "axis-ttft", t, [
    { values: hasTtft ? series.ttft_p50_ms : series.e2e_p50_ms, color: "#2e6fd8" },
    { values: hasTtft ? series.ttft_p90_ms : series.e2e_p90_ms, color: "#d8612e" },
  ], " ms");
  renderChart("chart-tokens", "axis-tokens", t, [{ values: series.tokens_per_s, color: "#1f8a4c" }], "");
  renderChart("chart-hit", "axis-hit", t, [{ values: series.hit_rate, color: "#7b3fc4" }], "");
  renderChart("chart-rps", "axis-rps", t, [{ values: series.requests_per_s, color: "#1d2330" }], "");
  const last = series.requests_per_s.length ? series.requests_per_s[series.requests_per_s.length - 1] : 0;
  $("rps").textContent = fmt(last, 1);
}

function renderFlow(flow) {
  const section = $("flow");
  if (!flow) { section.hidden = true; return; }
  section.hidden = false;
  $("flow-summary").textContent = "queued " + flow.queued + ", saturation " + fmt(flow.saturation, 2) + (flow.saturated ? " (saturated)" : "");
  const body = $("flow-bands").tBodies[0];
  body.replaceChildren();
  for (const band of flow.bands) {
    const tr = el("tr");
    const flows = Object.entries(band.flows).map(([id, n]) => (id || "(none)") + ": " + n).join(", ");
    tr.append(el("td", band.priority), el("td", band.queued, "num"), el("td", band.queued_bytes, "num"), el("td", flows || "–"));
    body.append(tr);
  }
}

function scoreTable(req) {
  const table = el("table", null, "scores");
  const scores = req.scores || {};
  const names = Object.keys(scores);
  const scorerNames = [];
  for (const name of names) for (const k of Object.keys(scores[name])) if (k !== "total" && !scorerNames.includes(k)) scorerNames.push(k);
  const head = el("tr");
  head.append(el("th", "candidate"), el("th", "total", "num"));
  for (const s of scorerNames) head.append(el("th", s, "num"));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  names.sort((a, b) => scores[b].total - scores[a].total);
  for (const name of names) {
    const tr = el("tr");
    const win = name === req.winner;
    tr.append(el("td", (win ? "★ " : "") + name, win ? "win" : ""), el("td", fmt(scores[name].total, 3), "num" + (win ? " win" : "")));
    for (const s of scorerNames) tr.append(el("td", fmt(scores[name][s], 3), "num"));
    tbody.append(tr);
  }
  table.append(thead, tbody);
  return table;
}

function renderRequests(requests) {
  const box = $("requests");
  box.replaceChildren();
  for (const req of requests.slice(0, SHOWN_REQUESTS)) {
    const d = el("details");
    const id = req.request_id || "";
    d.dataset.requestId = id;
    if (openRequests.has(id)) d.open = true;
    d.addEventListener("toggle", () => { if (d.open) openRequests.add(id); else openRequests.delete(id); });
    const s = el("summary");
    const ok = req.status > 0 && req.status < 400;
    s.append(
      el("span", new Date(req.time * 1000).toLocaleTimeString()),
      pill(String(req.status || "–"), ok ? "ok" : "bad"),
      el("span", id.slice(0, 12), "id"),
      el("span", "→ " + (req.endpoint || req.winner || "none")),
      el("span", "queue " + fmt(req.queue_wait_ms, 1) + " ms", "muted"),
      el("span", (req.ttft_ms !== null ? "TTFT " + fmt(req.ttft_ms, 1) : "e2e " + fmt(req.duration_ms, 1)) + " ms"),
      el("span", "cached " + fmt(req.cached_tokens) + "/" + fmt(req.prompt_tokens), "muted"),
    );
    if (req.error) s.append(el("span", req.error, "muted"));
    d.append(s);
    if (req.scores) d.append(scoreTable(req));
    else d.append(el("div", "not scheduled (" + (req.error || "no scores") + ")", "muted"));
    box.append(d);
  }
}

function renderProfiles(profiles) {
  const parts = [];
  for (const [name, scorers] of Object.entries(profiles)) {
    const list = scorers.map((s) => s.name + " ×" + s.weight).join(", ");
    parts.push(name + ": " + (list || "no scorers"));
  }
  $("scorers").textContent = "weights — " + parts.join("; ");
}

function render(snap) {
  $("door").textContent = snap.door === "epp" ? "EPP (ext_proc)" : "gateway";
  $("total-requests").textContent = snap.totals.requests;
  $("total-errors").textContent = snap.totals.errors;
  $("uptime").textContent = duration(snap.uptime_s);
  renderEndpoints(snap.endpoints);
  renderSeries(snap.series);
  renderFlow(snap.flow_control);
  renderProfiles(snap.profiles);
  renderRequests(snap.requests);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function connect() {
  const conn = $("conn");
  const source = new EventSource("/dashboard/events");
  source.onopen = () => { conn.textContent = "live"; conn.className = "pill ok"; };
  source.onerror = () => { conn.textContent = "reconnecting"; conn.className = "pill warn"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
}

connect();
