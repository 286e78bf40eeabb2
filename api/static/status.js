// The status page: logs in through POST /v1/auth/token, then polls the admin-only JSON
// (GET /v1/ops/status, the report `outbox status --json` prints, and GET /v1/ops/freshness).
// The token lives in this script's memory only (never a cookie or storage); every value is
// written with textContent, never as HTML. No build step, no third-party code.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const EVERY_S = Math.min(60, Math.max(1, Number(params.get("every")) || 5));
  const HISTORY = 60; // points per sparkline
  const KNOWN = [
    "ok", "problems", "relay.name", "relay.backlog", "relay.lag_seconds", "relay.position",
    "relay.newest_record_time", "relay.leases", "relay.oldest_unpublished", "relay.unowned",
    "indexer.consumer_lag_total", "indexer.partitions", "indexer.parked", "dlq.pending",
    "dlq.total", "collections",
  ];
  const COLLECTION_KNOWN = ["collection", "mongo", "elasticsearch"];

  let token = null;
  let timer = null;
  let updates = 0;
  const history = { backlog: [], lag: [], consumer: [] };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function get(obj, path) {
    let cur = obj;
    for (const part of path.split(".")) {
      if (cur === null || cur === undefined) return undefined;
      cur = part === "length" && Array.isArray(cur) ? cur.length : cur[part];
    }
    return cur;
  }

  function seconds(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return "—";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (s < 3600) return `${m} min ${Math.round(s % 60)} s`;
    const h = Math.floor(s / 3600);
    if (s < 86400) return `${h} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function time(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function show(node, value) {
    const format = node.dataset.format;
    node.dataset.value = JSON.stringify(value === undefined ? null : value);
    if (value === null || value === undefined) node.textContent = "—";
    else if (format === "seconds") node.textContent = seconds(value);
    else if (format === "time") node.textContent = time(value);
    else if (typeof value === "object") node.textContent = JSON.stringify(value);
    else node.textContent = String(value);
  }

  function spark(id, values) {
    const node = $(id);
    node.replaceChildren();
    if (values.length < 2) return;
    const max = Math.max(1, ...values);
    const step = 120 / (values.length - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(26 - (v / max) * 24).toFixed(1)}`);
    node.append(svg("polyline", { points: points.join(" ") }));
  }

  function remember(name, value) {
    const series = history[name];
    series.push(Number(value) || 0);
    if (series.length > HISTORY) series.shift();
  }

  function extras(report) {
    const out = [];
    const walk = (value, path) => {
      if (KNOWN.some((k) => path === k || path.startsWith(k + "."))) return;
      if (value !== null && typeof value === "object" && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) walk(v, path ? `${path}.${k}` : k);
      } else if (path) {
        out.push([path, value]);
      }
    };
    walk(report, "");
    return out;
  }

  function topicCollection(topic) {
    const i = topic.lastIndexOf(".event.");
    return i < 0 ? topic : topic.slice(i + ".event.".length);
  }

  function renderStatus(report) {
    for (const node of document.querySelectorAll("[data-field]")) {
      show(node, get(report, node.dataset.field));
    }
    const ok = report.problems.length === 0;
    const health = $("health");
    health.className = `badge ${ok ? "ok" : "bad"}`;
    health.textContent = ok ? "all well" : `${report.problems.length} problem${report.problems.length > 1 ? "s" : ""}`;
    $("problems").hidden = ok;
    $("problem-list").replaceChildren(...report.problems.map((p) => el("li", {}, p)));

    const unowned = get(report, "relay.unowned");
    $("unowned-row").hidden = unowned === undefined;
    if (unowned && Array.isArray(unowned.collections)) {
      $("unowned-collections").textContent = unowned.collections.join(", ");
    }

    $("leases").replaceChildren(...(report.relay.leases || []).map((l) => el("tr", {},
      el("td", {}, l.name ?? "—"), el("td", {}, l.holder ?? "—"), el("td", {}, l.role ?? "—"),
      el("td", { "data-oplog": JSON.stringify(l.oplog_seconds_left ?? null) }, seconds(l.oplog_seconds_left)),
      el("td", {}, time(l.expires_at)))));

    const parked = report.indexer.parked || [];
    $("parked").replaceChildren(...parked.map((p) =>
      el("li", {}, `${p.collection} (${p.events} events, since ${time(p.since)}): ${p.reason}`)));

    const lagByCollection = {};
    for (const p of report.indexer.partitions || []) {
      const c = topicCollection(p.topic);
      lagByCollection[c] = (lagByCollection[c] || 0) + p.lag;
    }
    const collections = report.collections || [];
    const extraColumns = [...new Set(collections.flatMap((c) => Object.keys(c)))]
      .filter((k) => !COLLECTION_KNOWN.includes(k));
    const head = $("collections").parentElement.querySelector("thead tr");
    head.replaceChildren(...["collection", "MongoDB live", "Elasticsearch live", "difference", "waiting in Kafka", ...extraColumns]
      .map((h, i) => el("th", i ? { class: "num" } : {}, h)));
    $("collections").replaceChildren(...collections.map((c) => {
      const es = c.elasticsearch;
      const diff = es === null || es === undefined ? null : c.mongo - es;
      const kafka = lagByCollection[c.collection] ?? 0;
      const row = el("tr", { "data-collection": c.collection, class: diff ? "drift" : "" },
        el("td", {}, c.collection),
        el("td", { class: "num", "data-field-of": "mongo", "data-value": JSON.stringify(c.mongo) }, c.mongo),
        el("td", { class: "num", "data-field-of": "elasticsearch", "data-value": JSON.stringify(es ?? null) }, es ?? "no index"),
        el("td", { class: "num" }, diff === null ? "—" : diff),
        el("td", { class: "num", "data-field-of": "kafka_lag", "data-value": JSON.stringify(kafka) }, kafka));
      for (const k of extraColumns) {
        const v = c[k];
        row.append(el("td", { class: "num", "data-field-of": k, "data-value": JSON.stringify(v ?? null) },
          v === null || v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : v));
      }
      return row;
    }));

    $("partitions").replaceChildren(...(report.indexer.partitions || []).map((p) => el("tr", {},
      el("td", {}, p.topic), el("td", { class: "num" }, p.partition),
      el("td", { class: "num" }, p.committed ?? "—"), el("td", { class: "num" }, p.end),
      el("td", { class: "num" }, p.lag))));

    const more = extras(report);
    $("extra-card").hidden = more.length === 0;
    $("extra").replaceChildren(...more.flatMap(([k, v]) => [
      el("dt", {}, k),
      el("dd", { "data-extra": k }, typeof v === "object" ? JSON.stringify(v) : String(v)),
    ]));

    remember("backlog", report.relay.backlog);
    remember("lag", report.relay.lag_seconds);
    remember("consumer", report.indexer.consumer_lag_total);
    spark("spark-backlog", history.backlog);
    spark("spark-lag", history.lag);
    spark("spark-consumer", history.consumer);
  }

  function renderRetention(report, fresh) {
    const retention = fresh ? fresh.outbox_retention_s : null;
    show($("retention"), retention);
    const age = get(report, "relay.oldest_unpublished.age_seconds");
    const bar = $("retention-bar");
    const share = retention && typeof age === "number" ? Math.min(1, age / retention) : 0;
    bar.style.width = `${(share * 100).toFixed(1)}%`;
    bar.className = share > 0.5 ? "bad" : share > 0.1 ? "warn" : "";
    $("oldest").title = age === undefined
      ? "this server's report has no oldest-unpublished age"
      : `${(share * 100).toFixed(2)}% of the outbox retention`;
  }

  function renderFreshness(fresh) {
    show($("fresh-p50"), fresh.p50_s);
    show($("fresh-p99"), fresh.p99_s);
    show($("fresh-samples"), fresh.samples);
    if (fresh.truncated) $("fresh-samples").textContent += "+";
    show($("fresh-refresh"), fresh.refresh_interval_s);
    $("window").textContent = seconds(fresh.window_s);
    const chart = $("fresh-chart");
    chart.replaceChildren();
    const W = 1000, H = 200, L = 64, R = 16, T = 12, B = 24;
    const buckets = fresh.buckets || [];
    const values = buckets.flatMap((b) => [b.p50_s, b.p99_s]).filter((v) => typeof v === "number");
    const max = Math.max(0.5, ...values) * 1.1;
    const x = (i) => L + (buckets.length > 1 ? (i / (buckets.length - 1)) * (W - L - R) : 0);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    for (const f of [0, 0.5, 1]) {
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
      const label = svg("text", { x: L - 4, y: y(max * f) + 4, "text-anchor": "end" });
      label.textContent = seconds(max * f);
      chart.append(label);
    }
    const start = svg("text", { x: L, y: H - 6 });
    start.textContent = `−${seconds(fresh.window_s)}`;
    const end = svg("text", { x: W - R, y: H - 6, "text-anchor": "end" });
    end.textContent = "now";
    chart.append(start, end);
    for (const [key, cls] of [["p50_s", "p50"], ["p99_s", "p99"]]) {
      let segment = [];
      const flush = () => {
        if (segment.length > 1) chart.append(svg("polyline", { class: cls, points: segment.join(" ") }));
        segment = [];
      };
      buckets.forEach((b, i) => {
        if (typeof b[key] !== "number") { flush(); return; }
        segment.push(`${x(i).toFixed(1)},${y(b[key]).toFixed(1)}`);
        chart.append(svg("circle", { class: cls === "p50" ? "dot50" : "dot99", cx: x(i), cy: y(b[key]), r: 2.5 }));
      });
      flush();
    }
    chart.dataset.buckets = String(buckets.length);
  }

  async function api(path, options) {
    const headers = Object.assign({ Accept: "application/json" }, (options && options.headers) || {});
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    return { status: response.status, body };
  }

  function problemText(r) {
    return (r.body && (r.body.detail || r.body.title)) || `HTTP ${r.status}`;
  }

  function loggedOut(message) {
    token = null;
    if (timer) clearTimeout(timer);
    timer = null;
    $("dashboard").hidden = true;
    $("summary").hidden = true;
    $("login-panel").hidden = false;
    $("login-error").textContent = message || "";
    document.body.dataset.state = "login";
  }

  async function refresh() {
    timer = null;
    try {
      const [status, fresh] = await Promise.all([api("/v1/ops/status"), api("/v1/ops/freshness")]);
      if (status.status === 401) return loggedOut("Your session ended: log in again.");
      if (status.status === 403) return loggedOut("This user is not an admin.");
      if (status.status !== 200) throw new Error(problemText(status));
      renderStatus(status.body);
      const freshOk = fresh.status === 200;
      if (freshOk) renderFreshness(fresh.body);
      renderRetention(status.body, freshOk ? fresh.body : null);
      updates += 1;
      $("updated").textContent = new Date().toLocaleTimeString();
      $("fetch-error").hidden = freshOk;
      $("fetch-error").textContent = freshOk ? "" : `commit → searchable: ${problemText(fresh)}`;
      document.body.dataset.state = "ready";
      document.body.dataset.updates = String(updates);
    } catch (e) {
      $("fetch-error").hidden = false;
      $("fetch-error").textContent = `Could not refresh: ${e.message}`;
    }
    if (token) timer = setTimeout(refresh, EVERY_S * 1000);
  }

  async function login(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const r = await api("/v1/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    $("password").value = "";
    if (r.status !== 200) {
      $("login-error").textContent = problemText(r);
      return;
    }
    token = r.body.access_token;
    $("login-panel").hidden = true;
    $("dashboard").hidden = false;
    $("summary").hidden = false;
    $("every").textContent = String(EVERY_S);
    document.body.dataset.state = "loading";
    await refresh();
  }

  async function logout() {
    if (token) await api("/v1/auth/logout", { method: "POST" });
    loggedOut("Logged out.");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
  });
})();
