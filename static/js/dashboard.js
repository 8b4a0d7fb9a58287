// Staff dashboard: polls /api/dashboard/live every few seconds (figures summed over
// every worker process), redraws the history charts every 10 s and the usage charts
// (analytics rollups) every 5 minutes. Chart.js is vendored in static/vendor.
(() => {
  "use strict";
  const root = document.getElementById("dashboard");
  if (!root) return;
  const POLL_MS = Number(root.dataset.pollMs) || 2000;
  const HISTORY_MS = 10000;
  const USAGE_MS = 300000;
  const charts = {};
  let range = "hour";

  const $ = (id) => document.getElementById(id);
  const dash = "–";
  const fmt = {
    num: (v, digits = 0) => (v === null || v === undefined ? dash : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits })),
    ms: (v) => (v === null || v === undefined ? dash : `${Number(v).toLocaleString(undefined, { maximumFractionDigits: v < 10 ? 2 : 0 })} ms`),
    pct: (v, digits = 1) => (v === null || v === undefined ? dash : `${(v * 100).toFixed(digits)} %`),
    bytes: (v) => {
      if (!v) return dash;
      const mb = v / (1024 * 1024);
      return mb >= 1024 ? `${(mb / 1024).toFixed(2)} GB` : `${mb.toFixed(0)} MB`;
    },
  };

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).message || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response.json();
  }

  function fillTable(id, rows, emptyId) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement("td");
        if (cell instanceof Node) td.append(cell); else td.textContent = cell;
        tr.append(td);
      }
      return tr;
    }));
    if (emptyId) $(emptyId).hidden = rows.length > 0;
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = `badge ${status}`;
    span.textContent = { ok: "OK", warn: "Needs attention", idle: "No traffic" }[status] || status;
    return span;
  }

  function formatTarget(row) {
    if (row.unit === "ms") return fmt.ms(row.value);
    if (row.unit === "ratio") return fmt.pct(row.value, row.metric.startsWith("Error") ? 2 : 1);
    if (row.unit === "bytes") return fmt.bytes(row.value);
    return `${fmt.num(row.value, 1)} ${row.unit}`;
  }

  function renderLive(data) {
    const c = data.current;
    const interval = c.window_seconds ? `over the last ${Math.round(c.window_seconds)} s` : "no earlier sample yet";
    $("updated").textContent = `Updated ${new Date(data.at).toLocaleTimeString()} · ${interval}`;
    $("fig-rps").textContent = fmt.num(c.requests_per_second, 1);
    $("fig-requests").textContent = `${fmt.num(data.since_start.requests)} requests since start`;
    const l = c.latency_ms;
    $("fig-latency").textContent = l.p50 === null ? dash : `${fmt.num(l.p50, 1)} / ${fmt.num(l.p95, 1)} / ${fmt.num(l.p99, 1)}`;
    $("fig-errors").textContent = fmt.pct(c.error_rate, 2);
    $("fig-errors-total").textContent = `${fmt.num(data.since_start.errors)} 5xx since start`;
    $("fig-cache").textContent = fmt.pct(c.cache_hit_ratio);
    const lookups = Object.values(c.cache_families).reduce((sum, f) => sum + f.lookups, 0);
    $("fig-cache-lookups").textContent = `${fmt.num(lookups)} lookups`;
    $("fig-db").textContent = fmt.ms(c.db.query_ms_mean);
    $("fig-slow").textContent = `${fmt.num(c.db.queries)} queries, ${fmt.num(c.db.slow_queries)} slow (${fmt.num(data.since_start.slow_queries)} since start)`;
    $("fig-ws").textContent = fmt.num(c.websockets);
    const workers = Object.entries(c.memory.workers);
    $("fig-memory").textContent = fmt.bytes(c.memory.total_bytes);
    $("fig-workers").textContent = workers.length ? `${workers.length} worker process${workers.length > 1 ? "es" : ""}` : "no worker sampled yet";

    fillTable("targets", data.targets.map((row) => [row.metric, formatTarget(row), row.target, badge(row.status)]));
    fillTable("models", Object.entries(c.models).map(([name, m]) => [name, fmt.num(m.replies), fmt.ms(m.ttft_ms_p50), fmt.ms(m.ttft_ms_p95), fmt.num(m.tokens_per_second_p50, 1)]), "models-empty");
    fillTable("cache-families", Object.entries(c.cache_families).filter(([, f]) => f.lookups > 0).map(([name, f]) => [name, fmt.pct(f.hit_ratio), fmt.num(f.lookups)]), "cache-empty");
    fillTable("rate-limited", Object.entries(c.rate_limited).filter(([, n]) => n > 0).map(([tier, n]) => [tier, fmt.num(n)]), "rate-limited-empty");
    fillTable("workers", workers.sort().map(([pid, bytes]) => [pid, fmt.bytes(bytes)]), "workers-empty");
  }

  function lineChart(id, datasets, options = {}) {
    if (!window.Chart) return null;
    if (charts[id]) return charts[id];
    charts[id] = new window.Chart($(id), {
      type: "line",
      data: { labels: [], datasets: datasets.map((d) => ({ pointRadius: 0, borderWidth: 2, tension: 0.2, ...d, data: [] })) },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true }, ...(options.scales || {}) },
        plugins: { legend: { display: datasets.length > 1 } },
      },
    });
    return charts[id];
  }

  function setSeries(chart, labels, series) {
    if (!chart) return;
    chart.data.labels = labels;
    series.forEach((values, i) => { chart.data.datasets[i].data = values; });
    chart.update();
  }

  function renderHistory(points) {
    $("history-empty").hidden = points.length > 0;
    const labels = points.map((p) => new Date(p.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    setSeries(lineChart("chart-rps", [{ label: "req/s", borderColor: "#3456d1" }]), labels, [points.map((p) => p.requests_per_second)]);
    setSeries(
      lineChart("chart-latency", [
        { label: "p50", borderColor: "#16794c" },
        { label: "p95", borderColor: "#9a6700" },
        { label: "p99", borderColor: "#b42318" },
      ]),
      labels,
      ["p50", "p95", "p99"].map((q) => points.map((p) => p.latency_ms[q])),
    );
    setSeries(
      lineChart("chart-ratios", [
        { label: "error rate %", borderColor: "#b42318" },
        { label: "cache hit %", borderColor: "#16794c" },
      ], { scales: { y: { beginAtZero: true, max: 100 } } }),
      labels,
      [points.map((p) => (p.error_rate === null ? null : p.error_rate * 100)), points.map((p) => (p.cache_hit_ratio === null ? null : p.cache_hit_ratio * 100))],
    );
    setSeries(
      lineChart("chart-resources", [
        { label: "WebSockets", borderColor: "#3456d1" },
        { label: "memory MB", borderColor: "#6b7385" },
      ]),
      labels,
      [points.map((p) => p.websockets), points.map((p) => Math.round(p.memory_bytes / 1048576))],
    );
  }

  function barChart(id, label, labels, values, color) {
    if (!window.Chart) return;
    if (charts[id]) charts[id].destroy();
    charts[id] = new window.Chart($(id), {
      type: "bar",
      data: { labels, datasets: [{ label, data: values, backgroundColor: color }] },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
    });
  }

  async function refreshUsage() {
    const usage = $("usage");
    const to = new Date();
    const from = new Date(to.getTime() - 30 * 86400000);
    const span = `from=${from.toISOString().slice(0, 10)}&to=${to.toISOString().slice(0, 10)}`;
    try {
      const [series, models, users, keys] = await Promise.all([
        getJSON(`${usage.dataset.timeseriesUrl}?metric=messages&granularity=day&${span}`),
        getJSON(`${usage.dataset.breakdownUrl}?by=model&order=tokens&${span}`),
        getJSON(`${usage.dataset.breakdownUrl}?by=user&order=messages&limit=10&${span}`),
        getJSON(`${usage.dataset.breakdownUrl}?by=key&order=messages&limit=10&${span}`),
      ]);
      const points = series.points || [];
      const modelRows = models.results || [];
      $("usage-empty").hidden = points.some((p) => p.value > 0) || modelRows.length > 0;
      barChart("chart-messages", "messages", points.map((p) => p.t.slice(0, 10)), points.map((p) => p.value), "#3456d1");
      barChart("chart-tokens", "tokens", modelRows.map((r) => r.label), modelRows.map((r) => r.tokens), "#16794c");
      const top = (r) => [r.label, fmt.num(r.messages), fmt.num(r.tokens)];
      fillTable("top-users", (users.results || []).map(top));
      fillTable("top-keys", (keys.results || []).map(top));
    } catch (error) {
      $("usage-empty").hidden = false;
      $("usage-empty").textContent = `Usage is unavailable: ${error.message}`;
    }
  }

  async function pollLive() {
    try {
      renderLive(await getJSON(root.dataset.liveUrl));
    } catch (error) {
      $("updated").textContent = `Could not refresh: ${error.message}`;
    }
    setTimeout(pollLive, POLL_MS);
  }

  async function refreshHistory() {
    try {
      renderHistory((await getJSON(`${root.dataset.historyUrl}?range=${range}`)).points);
    } catch (error) {
      $("history-empty").hidden = false;
      $("history-empty").textContent = `History is unavailable: ${error.message}`;
    }
  }

  for (const button of document.querySelectorAll(".segmented button")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      document.querySelectorAll(".segmented button").forEach((b) => b.classList.toggle("active", b === button));
      refreshHistory();
    });
  }

  pollLive();
  refreshHistory();
  setInterval(refreshHistory, HISTORY_MS);
  refreshUsage();
  setInterval(refreshUsage, USAGE_MS);
})();
