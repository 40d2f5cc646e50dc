// The dashboard: polls the server's stats feed (GET /api/stats?after=T,
// one compact sample per interval) and draws the last few minutes as
// figures and sparklines. The feed keeps its own window, so a freshly
// opened dashboard shows history at once.

const TILES = [
  // [id, title, value of a sample, format, second line]
  ["connections", "Connections", (s) => s.connections, int, (s) => `${int(s.subscribers)} subscriptions`],
  ["in", "Messages in /s", (s) => s.msgs_in_per_s, rate, null],
  ["out", "Messages out /s", (s) => s.msgs_out_per_s, rate, null],
  ["deliver", "Delivery p99", (s) => s.deliver_p99_ms, ms, (s) => `p50 ${ms(s.deliver_p50_ms)}`],
  ["commit", "Commit p99", (s) => s.commit_p99_ms, ms, (s) => `p50 ${ms(s.commit_p50_ms)}`],
  ["fsync", "Fsync batch", (s) => s.fsync_batch, (v) => (v == null ? "–" : v.toFixed(1)), () => "messages per log fdatasync"],
  ["cache", "Cache hit rate", (s) => s.cache_hit_rate, pct, () => "catch-up pages from memory"],
  ["lagging", "Lagging subscribers", (s) => s.lagging, int, null],
  ["rss", "Memory (RSS)", (s) => s.rss_bytes, bytes, null],
];

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
  const root = document.getElementById("tiles");
  for (const [id, title] of TILES) {
    const t = document.createElement("div");
    t.className = "tile";
    t.id = "tile-" + id;
    t.innerHTML = `<h2></h2><div class="value">–</div><div class="sub">&nbsp;</div><canvas></canvas>`;
    t.querySelector("h2").textContent = title;
    root.append(t);
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

function draw() {
  const now = samples[samples.length - 1];
  if (!now) return;
  for (const [id, , value, format, sub] of TILES) {
    const t = document.getElementById("tile-" + id);
    t.querySelector(".value").textContent = format(value(now));
    if (sub) t.querySelector(".sub").textContent = sub(now);
    spark(t.querySelector("canvas"), samples.map(value), format);
  }
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
  const errors = new Map();
  for (const s of samples) for (const [code, n] of Object.entries(s.errors)) errors.set(code, (errors.get(code) || 0) + n);
  const rows = [...errors].sort((a, b) => b[1] - a[1]);
  document.getElementById("errors").replaceChildren(
    ...rows.map(([code, n]) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td>";
      tr.children[0].textContent = code;
      tr.children[1].textContent = int(n);
      return tr;
    }),
  );
  document.getElementById("no-errors").hidden = rows.length > 0;
  const minutes = ((now.t - samples[0].t) / 60000).toFixed(1);
  document.getElementById("status").textContent =
    `${now.shards.length} shards · updated ${new Date(now.t).toLocaleTimeString()} · window ${minutes} min`;
}

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

async function poll() {
  try {
    const res = await fetch(`/api/stats?after=${last}`);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const feed = await res.json();
    windowMax = feed.samples_max || windowMax;
    if (feed.cluster) drawCluster(feed.cluster);
    if (feed.samples.length) {
      samples = samples.concat(feed.samples).slice(-windowMax);
      last = samples[samples.length - 1].t;
      draw();
    }
    setTimeout(poll, feed.interval_ms);
  } catch (e) {
    document.getElementById("status").textContent = `server unreachable (${e.message}); retrying`;
    setTimeout(poll, 2000);
  }
}

tiles();
poll();
window.addEventListener("resize", draw);
