// The dashboard: polls the server's stats feed (GET /api/stats?after=T,
// one compact sample per interval) and draws the last few minutes as
// figures and sparklines with a time axis; a figure past its warning
// threshold is marked. The feed keeps its own window, so a freshly opened
// dashboard shows history at once. With `--dashboard-access key` the feed
// answers 401 and the page asks for a server API key (kept for the tab's
// session only).

const TILES = [
  // [id, title, value of a sample, format, second line, warn above]
  ["connections", "Connections", (s) => s.connections, int, (s) => `${int(s.subscribers)} subscriptions`],
  ["in", "Messages in /s", (s) => s.msgs_in_per_s, rate, null],
  ["out", "Messages out /s", (s) => s.msgs_out_per_s, rate, null],
  ["deliver", "Delivery p99", (s) => s.deliver_p99_ms, ms, (s) => `p50 ${ms(s.deliver_p50_ms)}`, 100],
  ["commit", "Commit p99", (s) => s.commit_p99_ms, ms, (s) => `p50 ${ms(s.commit_p50_ms)}`, 100],
  ["fsync", "Fsync batch", (s) => s.fsync_batch, (v) => (v == null ? "–" : v.toFixed(1)), () => "messages per log fdatasync"],
  ["cache", "Cache hit rate", (s) => s.cache_hit_rate, pct, () => "catch-up pages from memory"],
  ["lagging", "Lagging subscribers", (s) => s.lagging, int, null, 0],
  ["churn", "WebSockets opened /s", (s) => s.ws_opened_per_s, rate, () => "reconnect churn", 50],
  ["http", "HTTP requests /s", (s) => s.http_per_s, rate, (s) => `${int(s.http_5xx)} answered 5xx`],
  ["5xx", "HTTP 5xx", (s) => s.http_5xx, int, () => "in the interval", 0],
  ["rss", "Memory (RSS)", (s) => s.rss_bytes, bytes, null],
];

// What the server holds: [id, title, value of the feed, format, second line].
const TOTALS = [
  ["users", "Users", (f) => f.totals.users, int, () => "on this node"],
  ["rooms", "Rooms", (f) => f.totals.rooms, int, () => "on this node"],
  ["messages", "Messages since start", (f) => f.totals.messages_since_start, int, (f) => `up ${uptime(f.started_ms)}`],
  ["disk", "Data on disk", (f) => f.totals.data_bytes, bytes, (f) => `${bytes(f.totals.disk_free_bytes)} free`],
];

// Meanings of the close codes the server sends.
const CLOSE_CODES = {
  1000: "normal",
  1001: "going away (idle, or the server stopping)",
  1002: "protocol error",
  1007: "bad data",
  1008: "policy (protocol breach)",
  1009: "message too big",
  1011: "server error",
  4001: "session ended",
  4003: "disconnected by the server",
  4008: "slow consumer",
};
// Free disk under this share of what the data takes is a warning.
const DISK_FREE_WARN = 2;
const KEY = "rookery.dashboard-key";

function uptime(started) {
  if (!started) return "–";
  const s = Math.max(0, Math.round((Date.now() - started) / 1000));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}

function int(v) {
  return v == null ? "–" : Math.round(v).toLocaleString();
}
function rate(v) {
  return v == null ? "–" : v >= 100 ? int(v) : v.toFixed(1);
}
function ms(v) {
  return v == null ? "–" : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`;
}
function pct(v) {
  return v == null ? "–" : `${(v * 100).toFixed(0)}%`;
}
function bytes(v) {
  if (v == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

let samples = [];
let last = 0;
let windowMax = 300;

function tiles() {
  const make = (root, id, title, canvas) => {
    const t = document.createElement("div");
    t.className = "tile";
    t.id = "tile-" + id;
    t.innerHTML = `<h2></h2><div class="value">–</div><div class="sub">&nbsp;</div>`;
    t.querySelector("h2").textContent = title;
    if (canvas) {
      // A picture of the figure over the window: the value beside it says
      // it in words.
      const c = document.createElement("canvas");
      c.setAttribute("aria-hidden", "true");
      t.append(c);
    }
    root.append(t);
  };
  for (const [id, title] of TOTALS) make(document.getElementById("totals"), id, title, false);
  for (const [id, title] of TILES) make(document.getElementById("tiles"), id, title, true);
}

// Marks a tile past its threshold (the colour, and words for those who do
// not see it).
function warn(tile, over, why) {
  tile.classList.toggle("warn", over);
  let note = tile.querySelector(".warning");
  if (over && !note) {
    note = document.createElement("div");
    note.className = "warning";
    tile.querySelector(".value").after(note);
  }
  if (note) {
    note.hidden = !over;
    note.textContent = over ? `⚠ ${why}` : "";
  }
}

function spark(canvas, values, format) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const style = getComputedStyle(document.documentElement);
  const present = values.filter((v) => v != null);
  if (present.length < 2) return;
  const max = Math.max(...present) || 1;
  const step = w / Math.max(windowMax - 1, 1);
  const x0 = w - (values.length - 1) * step;
  g.beginPath();
  let pen = false;
  values.forEach((v, i) => {
    if (v == null) {
      pen = false;
      return;
    }
    const x = x0 + i * step;
    const y = h - 2 - (v / max) * (h - 4);
    if (pen) g.lineTo(x, y);
    else g.moveTo(x, y);
    pen = true;
  });
  g.strokeStyle = style.getPropertyValue("--accent").trim() || "#2463eb";
  g.lineWidth = 1.5;
  g.stroke();
  g.fillStyle = style.getPropertyValue("--muted").trim() || "#666";
  g.font = "10px system-ui";
  g.fillText(`max ${format(max)}`, 2, 10);
}

// The time axis under a sparkline: the window's start and "now".
function axis(tile) {
  let a = tile.querySelector(".axis");
  if (!a) {
    a = document.createElement("div");
    a.className = "axis";
    a.setAttribute("aria-hidden", "true");
    a.innerHTML = "<span></span><span>now</span>";
    tile.append(a);
  }
  const span = samples.length ? samples[samples.length - 1].t - samples[0].t : 0;
  a.firstChild.textContent = `−${(span / 60000).toFixed(span < 120000 ? 1 : 0)} min`;
}

function draw() {
  const now = samples[samples.length - 1];
  if (!now) return;
  for (const [id, , value, format, sub, above] of TILES) {
    const t = document.getElementById("tile-" + id);
    const v = value(now);
    t.querySelector(".value").textContent = format(v);
    if (sub) t.querySelector(".sub").textContent = sub(now);
    if (above !== undefined) warn(t, v != null && v > above, `above ${format(above)}`);
    spark(t.querySelector("canvas"), samples.map(value), format);
    axis(t);
  }
  drawCounts("closes", "no-closes", (s) => s.ws_closes, (code) => `${code} ${CLOSE_CODES[code] || ""}`.trim());
  const body = document.getElementById("shards");
  body.replaceChildren(
    ...now.shards.map((s, i) => {
      const tr = document.createElement("tr");
      const cells = [i, int(s.connections), rate(s.msgs_in_per_s), rate(s.msgs_out_per_s),
        `${s.cpu_pct.toFixed(0)}%`, "", int(s.subscribers), bytes(s.queued_bytes), bytes(s.tail_cache_bytes)];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.min(100, s.cpu_pct)}%`;
      tr.children[5].style.width = "6em";
      tr.children[5].append(bar);
      return tr;
    }),
  );
  drawCounts("errors", "no-errors", (s) => s.errors, (code) => code);
  const minutes = ((now.t - samples[0].t) / 60000).toFixed(1);
  document.getElementById("status").textContent =
    `v${info.version} · up ${uptime(info.started_ms)} · ${now.shards.length} shards · ` +
    `updated ${new Date(now.t).toLocaleTimeString()} · window ${minutes} min`;
}

// A table of counts by code summed over the window (`of(sample)` gives a
// sample's), largest first.
function drawCounts(tbody, none, of, label) {
  const sums = new Map();
  for (const s of samples) for (const [code, n] of Object.entries(of(s) || {})) sums.set(code, (sums.get(code) || 0) + n);
  const rows = [...sums].sort((a, b) => b[1] - a[1]);
  document.getElementById(tbody).replaceChildren(
    ...rows.map(([code, n]) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td>";
      tr.children[0].textContent = label(code);
      tr.children[1].textContent = int(n);
      return tr;
    }),
  );
  document.getElementById(none).hidden = rows.length > 0;
}

// The feed's totals: what the server holds.
function drawTotals(feed) {
  if (!feed.totals) return;
  for (const [id, , value, format, sub] of TOTALS) {
    const t = document.getElementById("tile-" + id);
    t.querySelector(".value").textContent = format(value(feed));
    t.querySelector(".sub").textContent = sub(feed);
  }
  const { data_bytes: data, disk_free_bytes: free } = feed.totals;
  warn(document.getElementById("tile-disk"), data > 0 && free < DISK_FREE_WARN * data, "free space under twice the data");
}

// The feed's own figures (version, start) from its last answer.
let info = {};

// A node of a cluster: the nodes as this one sees them (itself, and each
// other as its last request went), the NATS link and the cluster traffic.
function drawCluster(c) {
  document.getElementById("cluster").hidden = false;
  document.getElementById("cluster-summary").textContent =
    `cluster ${c.name} · this node ${c.node} · NATS ${c.nats} · users and sessions ${c.replica} · ` +
    `${int(c.forwarded)} forwarded (${int(c.forward_failed)} failed) · ${int(c.answered)} answered · ` +
    `${int(c.gap_fills)} gaps filled`;
  document.getElementById("nodes").replaceChildren(
    ...c.peers.map((p) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td>";
      tr.children[0].textContent = p.id;
      tr.children[1].textContent = p.state;
      return tr;
    }),
  );
}

// Says a change of reachability once (the status line changes every
// sample and is not announced).
let unreachable = false;
function reach(ok) {
  if (ok === !unreachable) return;
  unreachable = !ok;
  document.getElementById("reach").textContent = ok
    ? "The server is reachable again."
    : "The server is unreachable; retrying.";
}

// The next poll, one at a time (a key entered while one waits replaces it).
let pollTimer = 0;
function pollIn(ms) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, ms);
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    const key = sessionStorage.getItem(KEY);
    const res = await fetch(`/api/stats?after=${last}`, key ? { headers: { authorization: `Bearer ${key}` } } : {});
    if (res.status === 401 || res.status === 403) return askForKey(res.status, key);
    if (res.status === 429) {
      // The key's rate: wait as told.
      document.getElementById("status").textContent = "the key's rate is spent; waiting";
      return pollIn(Number(res.headers.get("retry-after") || 1) * 1000);
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const feed = await res.json();
    document.getElementById("key-form").hidden = true;
    reach(true);
    info = { version: feed.version, started_ms: feed.started_ms };
    windowMax = feed.samples_max || windowMax;
    drawTotals(feed);
    if (feed.cluster) drawCluster(feed.cluster);
    if (feed.samples.length) {
      samples = samples.concat(feed.samples).slice(-windowMax);
      last = samples[samples.length - 1].t;
      draw();
    }
    pollIn(feed.interval_ms);
  } catch (e) {
    document.getElementById("status").textContent = `server unreachable (${e.message}); retrying`;
    reach(false);
    pollIn(2000);
  }
}

// The feed wants a key (401) or refused the one given (403): the form
// asks; polling starts again once one is entered.
function askForKey(status, tried) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  form.querySelector(".error").textContent = !tried
    ? ""
    : status === 403
      ? "That key lacks the stats scope."
      : "That key is not known to this server.";
  if (tried) sessionStorage.removeItem(KEY);
  form.key.focus();
}

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, e.target.key.value.trim());
  e.target.reset();
  poll();
});

tiles();
poll();
window.addEventListener("resize", draw);
