// The live page: polls /mmbee/page/ every REFRESH_MS while visible and draws what it gets.
// Plain DOM and SVG; every value from the worker goes in as text (dead letters carry input).
"use strict";

const REFRESH_MS = 3000;
const DATA_URL = "/mmbee/page/";
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#58a6ff", "#3fb950", "#f0883e", "#a371f7", "#ff7b72", "#d29922", "#39c5cf", "#db61a2"];

const $ = (id) => document.getElementById(id);

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  const d = digits === undefined ? (Number.isInteger(v) ? 0 : 1) : digits;
  return v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
}

function setNum(id, v, digits) {
  const el = $(id);
  el.textContent = fmt(v, digits);
  el.dataset.value = v === null || v === undefined ? "" : String(v);
}

function utc(ms, withDate) {
  if (ms === null || ms === undefined) return "–";
  const s = new Date(ms).toISOString();
  return withDate ? s.slice(0, 19).replace("T", " ") : s.slice(11, 19);
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fillRows(tbodyParent, rows) {
  const tbody = tbodyParent.querySelector("tbody");
  tbody.replaceChildren(...rows);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c);
  return tr;
}

function health(w) {
  if (!w.live) return ["down", `down (${w.state})`];
  if (w.ready) return ["ready", "ready"];
  const why = w.ready_reason || "";
  if (why === "rebalancing") return ["rebalancing", "rebalancing"];
  if (why.startsWith("recovering")) return ["recovering", "recovering"];
  return ["starting", why || "starting"];
}

function drawHeader(s, nowMs) {
  const w = s.worker;
  $("instance").textContent = w.instance;
  const [cls, text] = health(w);
  const badge = $("health");
  badge.className = `badge ${cls}`;
  badge.textContent = text.toUpperCase();
  badge.dataset.value = cls;
  badge.title = w.ready_reason;
  $("broker").textContent = w.bootstrap;
  $("profile").textContent = w.profile;
  $("uptime").textContent = duration(w.uptime_s);
  setNum("assignments", w.assignments);
  $("updated").textContent = `updated ${utc(nowMs)} UTC`;
}

function drawCards(data) {
  const s = data.status;
  const m = s.model;
  $("model-version").textContent = m.version || "none";
  $("model-version").dataset.value = m.version || "";
  $("model-loaded").textContent = m.loaded_at_ms
    ? `loaded ${utc(m.loaded_at_ms, true)} UTC (${duration((data.now_ms - m.loaded_at_ms) / 1000)} ago)`
    : "no model loaded";
  setNum("p50", s.scoring.p50_ms, 1);
  setNum("p99", s.scoring.p99_ms, 1);
  setNum("scored", s.scoring.requests);
  const p = s.partitions;
  setNum("lag-total", p.lag_total);
  setNum("assigned", p.assigned.length);
  $("lag-age").textContent = p.lag_error ? `lag error: ${p.lag_error}`
    : p.lag_age_s === null ? "not sampled yet" : `sampled ${fmt(p.lag_age_s)} s ago`;
  let rate = 0, processed = 0, dlq = 0;
  const reasons = {};
  for (const a of Object.values(s.agents)) {
    rate += a.per_s; processed += a.processed; dlq += a.errors;
    for (const [r, n] of Object.entries(a.dlq)) reasons[r] = (reasons[r] || 0) + n;
  }
  setNum("rate-total", Math.round(rate * 10) / 10);
  setNum("processed-total", processed);
  setNum("dlq-total", dlq);
  const top = Object.entries(reasons).sort((a, b) => b[1] - a[1]).slice(0, 3);
  $("dlq-top").textContent = top.length ? top.map(([r, n]) => `${r} ${fmt(n)}`).join(" · ") : "none";
}

function drawTop(top) {
  const rows = [];
  const best = Math.max(1e-12, ...top.streams.map((x) => x.score || 0));
  top.streams.forEach((x, i) => {
    const score = el("td", null, "num");
    if (x.score === null || x.score === undefined) {
      score.textContent = "–";
    } else {
      const bar = el("span", null, "bar");
      bar.style.width = `${Math.round(60 * x.score / best)}px`;
      score.append(bar, el("span", (100 * x.score).toFixed(2) + " %"));
      score.dataset.value = String(x.score);
    }
    const seg = x.segment;
    const moved = el("td");
    if (x.moved_by) {
      const d = x.without[x.moved_by];
      moved.append(el("span", x.moved_by, `mod-${x.moved_by}`),
        el("span", ` ${d <= 0 ? "raised it" : "lowered it"} ${(100 * Math.abs(d)).toFixed(3)} pts`, "muted"));
    } else {
      moved.textContent = x.score === null || x.score === undefined ? "–" : "no content";
    }
    const author = el("td", x.author_id);
    author.dataset.value = x.author_id;
    rows.push(row([
      el("td", i + 1), author, el("td", x.live_id), score,
      el("td", `${utc(seg.start_ms, true)} – ${utc(seg.end_ms)}`),
      el("td", `${seg.frames} · ${seg.speech} · ${seg.comments}`, "num"),
      el("td", x.segments, "num"), moved,
    ]));
  });
  if (!rows.length) {
    const td = el("td", top.note || "no live stream", "muted");
    td.colSpan = 8;
    rows.push(row([td]));
  }
  fillRows($("top"), rows);
  $("top-note").textContent = top.model
    ? `model ${top.model}, ${fmt(top.scored)} live scored in ${fmt(top.compute_ms)} ms` : (top.note || "");
  $("top-explain").textContent =
    `Gift rate: P(gift within 1 h) for ${top.reference}, at the stream's event time ` +
    `${utc(top.ts_ms, true)} UTC; live: newest segment ended within ${fmt(top.live_within_s)} s of the newest one. ` +
    `Moved most: ${top.attribution} (the modality whose removal changes the score most).`;
}

function drawAgents(s) {
  const rows = Object.entries(s.agents).map(([name, a]) => {
    const cells = [el("td", name), el("td", fmt(a.processed), "num"),
      el("td", fmt(a.per_s, 1), "num"), el("td", fmt(a.errors), "num")];
    cells[1].dataset.value = String(a.processed);
    cells[3].dataset.value = String(a.errors);
    const tr = row(cells);
    tr.dataset.agent = name;
    return tr;
  });
  fillRows($("agents"), rows);
}

function drawDeadLetters(dl) {
  const rows = [];
  for (const [agent, reasons] of Object.entries(dl.by_agent)) {
    for (const [reason, n] of Object.entries(reasons)) {
      const count = el("td", fmt(n), "num");
      count.dataset.value = String(n);
      const tr = row([el("td", agent), el("td", reason), count]);
      tr.dataset.agent = agent; tr.dataset.reason = reason;
      rows.push(tr);
    }
  }
  if (!rows.length) { const td = el("td", "none", "muted"); td.colSpan = 3; rows.push(row([td])); }
  fillRows($("dlq"), rows);
  const recent = dl.recent.map((x) => {
    const tr = row([el("td", utc(x.at_ms)), el("td", x.reason), el("td", x.topic),
      el("td", x.agent), el("td", x.event_id === null || x.event_id === undefined ? "–" : x.event_id),
      el("td", x.detail, "detail")]);
    tr.lastChild.title = x.detail || "";
    return tr;
  });
  if (!recent.length) { const td = el("td", "none seen since start (or below the log level)", "muted"); td.colSpan = 6; recent.push(row([td])); }
  fillRows($("dlq-recent"), recent);
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// series: {name: [[secondsBeforeNow, value], ...]}; at most 8 lines (the largest now).
function lineChart(container, series, historyS, unit) {
  const W = 600, H = 190, L = 46, R = 8, T = 8, B = 20;
  const names = Object.keys(series)
    .map((k) => [k, series[k].length ? series[k][series[k].length - 1][1] : 0])
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 8).map((x) => x[0]);
  let ymax = 0;
  for (const k of names) for (const [, v] of series[k]) ymax = Math.max(ymax, v);
  ymax = ymax <= 0 ? 1 : ymax * 1.1;
  const x = (t) => L + (W - L - R) * (1 + t / historyS);
  const y = (v) => T + (H - T - B) * (1 - v / ymax);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  for (let i = 0; i <= 4; i++) {
    const v = ymax * i / 4;
    root.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "axis" }));
    const t = svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" });
    t.textContent = fmt(v, v < 10 ? 1 : 0);
    root.appendChild(t);
  }
  for (let m = 0; m <= historyS / 60; m++) {
    const t = svg("text", { x: x(-60 * m), y: H - 5, "text-anchor": m === 0 ? "end" : "middle" });
    t.textContent = m === 0 ? "now" : `-${m} min`;
    root.appendChild(t);
  }
  names.forEach((k, i) => {
    const pts = series[k].filter(([t]) => t >= -historyS).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    if (pts.length === 1) pts.push(pts[0].replace(/^[^,]+/, (s) => String(Number(s) + 1)));
    root.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.6 }));
  });
  const legend = el("div", null, "legend");
  names.forEach((k, i) => {
    const s = series[k];
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    item.append(swatch, el("span", `${k} ${fmt(s.length ? s[s.length - 1][1] : null)}${unit}`));
    legend.appendChild(item);
  });
  if (!names.length) legend.appendChild(el("span", "no samples yet", "muted"));
  container.replaceChildren(root, legend);
}

function draw(data) {
  const s = data.status;
  drawHeader(s, data.now_ms);
  drawCards(data);
  drawTop(data.top);
  drawAgents(s);
  drawDeadLetters(data.dead_letters);
  for (const e of document.querySelectorAll(".hist")) e.textContent = String(Math.round(data.history_s / 60));
  lineChart($("rates-chart"), data.rates, data.history_s, "/s");
  const lag = {};
  for (const [k, pts] of Object.entries(data.lag)) lag[k.replace(/^.*?\.(?=[^.]+\.[^.]+:)/, "")] = pts;
  lineChart($("lag-chart"), lag, data.history_s, "");
  document.body.dataset.loaded = String((Number(document.body.dataset.loaded) || 0) + 1);
}

let timer = null;
let inFlight = false;

async function refresh() {
  if (inFlight) return;
  if (document.hidden) { schedule(); return; }  // nobody looks: no request at all
  inFlight = true;
  try {
    const resp = await fetch(DATA_URL, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${DATA_URL} answered ${resp.status}`);
    draw(await resp.json());
    $("banner").hidden = true;
  } catch (err) {
    const b = $("banner");
    b.hidden = false;
    b.textContent = `worker unreachable or answering errors: ${err.message} (showing the last data)`;
    $("health").className = "badge down";
  } finally {
    inFlight = false;
  }
  schedule();
}

function schedule() {
  window.clearTimeout(timer);
  timer = window.setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
refresh();
