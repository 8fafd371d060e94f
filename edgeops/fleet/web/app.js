// edgeops fleet dashboard: the views, routing and refresh loop (DOM helpers and the SVG charts
// are in charts.js, loaded first). Vanilla JS, no library: devices and monitors may be offline.
// Every text from the API goes through textContent / SVG text nodes, never innerHTML:
// feature names and category labels come from bundles and devices, not from us.
"use strict";

// Refresh every 5 s; a long history costs the monitor more to read, so it refreshes less often.
function refreshMs() { const h = Number(hours()); return h <= 6 ? 5000 : h <= 24 ? 15000 : 60000; }
const STATE_ORDER = { online: 0, stale: 1, unknown: 2, offline: 3 };

const view = { route: null, sortKey: "drifted", sortDir: -1, fleet: null, busy: false, again: false };

function hours() { return $("hours").value; }

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ------------------------------------------------------------------ routing

// #/  -> fleet; #/device/ID -> device; #/device/ID/FEATURE -> device with FEATURE selected.
// ?device=ID&feature=NAME on the page URL works too (for links from alerts or scripts).
function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map((p) => { try { return decodeURIComponent(p); } catch (e) { return ""; } });
  if (parts[0] === "device" && parts[1]) return { name: "device", device: parts[1], feature: parts.slice(2).join("/") || null };
  const params = new URLSearchParams(location.search);
  if (!hash && params.get("device")) return { name: "device", device: params.get("device"), feature: params.get("feature") };
  return { name: "fleet" };
}

function deviceHref(device, feature) {
  let href = `#/device/${encodeURIComponent(device)}`;
  if (feature) href += `/${encodeURIComponent(feature)}`;
  return href;
}

function renderCrumbs(route) {
  const nav = clear($("crumbs"));
  nav.append(el("a", { href: "#/", text: "Fleet" }));
  if (route.name === "device") {
    nav.append(el("span", { class: "sep", text: "›" }), el("a", { href: deviceHref(route.device), text: route.device }));
    if (route.feature) nav.append(el("span", { class: "sep", text: "›" }), el("span", { text: route.feature }));
  }
}

// ------------------------------------------------------------------ fleet view

function sortValue(device, key) {
  switch (key) {
    case "state": return STATE_ORDER[device.state] ?? 9;
    case "bundle": return device.bundle ? `${device.bundle.name || ""} ${device.bundle.version || ""}` : "";
    case "drifted": return (device.drifted ? 1000 : 0) + device.drifted_features.length;
    case "top": return device.top_features.length ? device.top_features[0].psi || 0 : -1;
    default: return device[key] ?? -Infinity;
  }
}

function renderCards(summary) {
  const cards = clear($("cards"));
  const items = [["Devices", summary.devices, ""], ["Online", summary.online, summary.online ? "ok" : ""], ["Stale", summary.stale, summary.stale ? "warn" : ""],
    ["Offline", summary.offline, summary.offline ? "bad" : ""], ["Drifting", summary.drifting, summary.drifting ? "bad" : "ok"],
    ["Quarantined msgs", summary.quarantined, summary.quarantined ? "warn" : ""]];
  for (const [label, value, cls] of items) {
    cards.append(el("div", { class: `card ${cls}` }, el("div", { class: "card-value", text: String(value) }), el("div", { class: "card-label", text: label })));
  }
}

function renderFleetTable(devices) {
  const tbody = clear($("fleet-rows"));
  $("fleet-empty").hidden = devices.length > 0;
  $("fleet-table").hidden = devices.length === 0;
  const rows = devices.slice().sort((a, b) => {
    const va = sortValue(a, view.sortKey), vb = sortValue(b, view.sortKey);
    if (va < vb) return -view.sortDir;
    if (va > vb) return view.sortDir;
    return a.device_id < b.device_id ? -1 : 1;
  });
  for (const d of rows) {
    const drift = d.drifted ? badge(`DRIFT · ${d.drifted_features.length}`, "bad", d.drifted_features.join(", "))
      : d.evaluated ? badge("ok", "ok") : badge("not evaluated", "muted");
    const top = el("div", { class: "chips" });
    for (const f of d.top_features) {
      top.append(el("a", { class: `chip ${f.drifted ? "bad" : ""}`, href: deviceHref(d.device_id, f.feature),
        title: `${f.test || ""} p=${fmtP(f.p_value)}`, text: `${f.feature} ${fmt(f.psi, 2)}` }));
    }
    const bundle = d.bundle ? el("span", { title: d.bundle.id || "", text: `${d.bundle.name || "?"} ${d.bundle.version || ""}` }) : el("span", { class: "muted", text: "–" });
    const tr = el("tr", { "data-device": d.device_id, "data-drifted": String(d.drifted), class: d.drifted ? "row-drift" : null },
      el("td", {}, el("a", { href: deviceHref(d.device_id), class: "device-link", text: d.device_id })),
      el("td", {}, badge(d.state, d.state)),
      el("td", {}, bundle),
      el("td", { title: d.last_seen ? new Date(d.last_seen * 1000).toISOString() : "", text: ago(d.last_seen) }),
      el("td", { class: "num", text: d.windows ?? "–" }),
      el("td", { class: "num", text: d.p95_latency_ms === null || d.p95_latency_ms === undefined ? "–" : `${fmt(d.p95_latency_ms, 2)} ms` }),
      el("td", { class: "drift" }, drift),
      el("td", {}, top));
    tbody.append(tr);
  }
  for (const th of document.querySelectorAll("#fleet-table th")) {
    th.classList.toggle("sorted", th.dataset.key === view.sortKey);
    th.dataset.dir = th.dataset.key === view.sortKey ? (view.sortDir > 0 ? "asc" : "desc") : "";
  }
}

function renderFleetDrift(rows) {
  const box = clear($("fleet-drift"));
  if (!rows.length) { box.append(el("p", { class: "empty", text: "No fleet evaluation yet." })); return; }
  const table = el("table", { class: "table compact" }, el("thead", {}, el("tr", {}, ...["Feature", "PSI", "p-value", "Status"].map((h) => el("th", { text: h })))));
  const body = el("tbody");
  for (const r of rows.slice(0, 12)) {
    body.append(el("tr", {}, el("td", { text: r.feature }), el("td", { class: "num", text: fmt(r.psi, 3) }),
      el("td", { class: "num", text: fmtP(r.p_value) }), el("td", {}, r.drifted ? badge("drift", "bad") : badge("ok", "ok"))));
  }
  table.append(body);
  box.append(table);
}

function renderAlerts(alerts) {
  const list = clear($("alerts"));
  if (!alerts.length) { list.append(el("li", { class: "empty", text: "No alerts in this period." })); return; }
  // Newest first; the payload is the monitor's alert (docs/fleet-monitor.md).
  const ordered = alerts.slice().sort((a, b) => (b.ts || 0) - (a.ts || 0)).slice(0, 30);
  for (const a of ordered) {
    const cleared = a.state === "cleared";
    const first = (a.features || [])[0];
    const feature = first ? first.feature || first.name : null;
    const li = el("li", { class: `alert ${cleared ? "cleared" : ""}`, "data-alert": a.alert_id || null },
      el("span", { class: "muted small nowrap", text: a.ts ? clock(a.ts, true) : "" }),
      badge(`${a.type || "alert"} ${a.state || ""}`.trim(), cleared ? "ok" : "bad"));
    const where = a.device_id === "__fleet__" ? el("strong", { text: "fleet" })
      : el("a", { href: deviceHref(a.device_id, feature), text: a.device_id || "?" });
    li.append(where, el("span", { class: "alert-msg", text: a.message || "" }));
    list.append(li);
  }
}

async function refreshFleet() {
  const [fleet, alerts] = await Promise.all([getJSON("/api/fleet"), getJSON(`/api/alerts?hours=${hours()}`)]);
  view.fleet = fleet;
  renderMonitor(fleet.monitor);
  renderCards(fleet.summary);
  renderFleetTable(fleet.devices);
  renderFleetDrift(fleet.fleet_drift);
  renderAlerts(alerts.alerts);
}

function renderMonitor(status) {
  const pill = $("monitor");
  if (!status) { pill.hidden = true; return; }
  pill.hidden = false;
  const ok = status.connected === true;
  pill.className = `pill ${ok ? "ok" : "bad"}`;
  pill.textContent = ok ? "broker connected" : "broker disconnected";
  pill.title = JSON.stringify(status);
}

// ------------------------------------------------------------------ device view

function pickFeature(device, wanted) {
  if (wanted && device.features.some((f) => f.feature === wanted)) return wanted;
  const scored = device.features.filter((f) => f.score);
  scored.sort((a, b) => (b.score.drifted - a.score.drifted) || ((b.score.psi || 0) - (a.score.psi || 0)));
  if (scored.length) return scored[0].feature;
  return device.features.length ? device.features[0].feature : null;
}

function renderDeviceHead(d) {
  const head = clear($("device-head"));
  const b = d.bundle;
  const facts = [["Status", badge(d.state, d.state)], ["Bundle", b ? `${b.name || "?"} ${b.version || ""}` : "–"],
    ["Bundle id", b && b.id ? `${b.id.slice(0, 12)}…` : "–"], ["Last seen", ago(d.last_seen)],
    ["Last seq", d.last_seq ?? "–"], ["Windows", d.windows ?? "–"],
    ["p95 latency (1 h)", d.p95_latency_ms === null || d.p95_latency_ms === undefined ? "–" : `${fmt(d.p95_latency_ms, 2)} ms`]];
  const dl = el("dl", { class: "facts" });
  for (const [k, v] of facts) dl.append(el("div", {}, el("dt", { text: k }), el("dd", {}, v)));
  const drifting = d.features.filter((f) => f.score && f.score.drifted);
  head.append(el("h1", { text: d.device_id }, " ", drifting.length ? badge(`DRIFT · ${drifting.length}`, "bad") : null), dl);
}

function renderFeatureTable(d, selected) {
  const tbody = clear($("feature-rows"));
  const note = $("no-reference");
  note.hidden = d.has_reference;
  if (!d.has_reference) {
    note.textContent = d.bundle && d.bundle.id
      ? `No reference statistics are stored for bundle ${d.bundle.id.slice(0, 12)}…, so distributions cannot be compared. Give the monitor the bundle file.`
      : "This device has not reported a bundle yet.";
  }
  if (!d.features.length) {
    tbody.append(el("tr", {}, el("td", { colspan: "7", class: "empty", text: "No features to show." })));
    return;
  }
  for (const f of d.features) {
    const s = f.score;
    const status = !s ? badge("not evaluated", "muted") : s.drifted ? badge("drift", "bad", s.scope ? `${s.scope}-level drift` : null) : badge("ok", "ok");
    const psiCell = el("td", { class: "num" });
    if (s && s.psi !== null && s.psi !== undefined) {
      psiCell.append(el("span", { class: "psi-bar" }, el("span", { class: s.drifted ? "bad" : "", style: null })), fmt(s.psi, 3));
      psiCell.firstChild.firstChild.style.width = `${Math.min(100, (s.psi / 0.5) * 100)}%`;
    } else psiCell.textContent = "–";
    tbody.append(el("tr", { "data-feature": f.feature, class: `${f.feature === selected ? "selected" : ""} ${s && s.drifted ? "row-drift" : ""}`.trim() },
      el("td", {}, el("a", { href: deviceHref(d.device_id, f.feature), text: f.feature })),
      el("td", { text: f.role === "output" ? `${f.kind} (output)` : f.role === "signal" ? "signal" : f.kind || "–" }),
      psiCell,
      el("td", { class: "num", text: s ? fmtP(s.p_value) : "–" }),
      el("td", { text: s ? s.test || "–" : "–" }),
      el("td", { class: "num", text: s ? s.n ?? "–" : "–" }),
      el("td", {}, status)));
  }
}

function renderLatency(d) {
  // One line per variant (primary, candidate, shadow): their latencies are not comparable.
  const variants = [...new Set(d.timeline.map((w) => w.variant))];
  const classes = ["lat", "lat2", "lat3"];
  const series = variants.map((v, i) => ({ name: v, cls: classes[i % classes.length],
    points: d.timeline.filter((w) => w.variant === v && w.p95_latency_ms !== null).map((w) => ({ x: w.t, y: w.p95_latency_ms,
      title: `${clock(w.t, true)} ${v}: p95 ${fmt(w.p95_latency_ms, 2)} ms, ${w.requests} requests` +
        (w.windows > 1 ? ` (${w.windows} windows)` : "") })) }));
  lineChart($("latency-chart"), series, { yLabel: "ms", width: 440, empty: "No windows with requests in this period.", label: "p95 latency" });
  const sum = (key) => d.timeline.reduce((a, w) => a + (w[key] || 0), 0);
  $("latency-note").textContent = `${sum("windows")} windows, ${sum("requests")} requests, ${sum("errors")} errors, ` +
    `${sum("rejected")} rejected in the last ${hours()} h.`;
}

async function renderFeature(d, feature) {
  $("feature-panel").hidden = !feature;
  if (!feature) return;
  const row = d.features.find((f) => f.feature === feature) || {};
  const signal = row.role === "signal";
  $("feature-title").textContent = `${signal ? "Signal" : row.role === "output" ? "Output" : "Feature"}: ${feature}`;
  const q = `device=${encodeURIComponent(d.device_id)}&feature=${encodeURIComponent(feature)}&hours=${hours()}`;
  const wantDist = d.has_reference && !signal;
  const [history, dist] = await Promise.all([
    getJSON(`/api/drift?${q}`),
    wantDist ? getJSON(`/api/distribution?${q}`).catch((e) => ({ error: e.message })) : Promise.resolve(null),
  ]);
  // Distributions are scored by PSI; operational signals (latency, error rate, ...) have no
  // PSI, so their chart shows the test statistic against the device's own baseline.
  const value = (p) => (signal ? p.statistic : p.psi);
  const points = history.points.map((p) => ({ x: p.t, y: value(p), flag: p.drifted,
    title: `${clock(p.t, true)}: ${signal ? "statistic" : "PSI"} ${fmt(value(p))}, ${p.test || "test"} p=${fmtP(p.p_value)}, n=${p.n ?? "?"}${p.drifted ? " — DRIFT" : ""}` }));
  lineChart($("psi-chart"), [{ name: signal ? "statistic" : "PSI", cls: "psi", points }],
    { guides: signal ? [] : history.psi_guides, yLabel: signal ? (history.points[0] || {}).test || "statistic" : "PSI",
      cls: "psi-chart", label: `drift of ${feature} over time`, empty: "No drift evaluation of this feature in this period." });
  const note = $("dist-note");
  note.textContent = "";
  if (signal) { emptyChart($("dist-chart"), "An operational signal: compared with the device's own earlier baseline, not with a reference distribution."); return; }
  if (!dist) { emptyChart($("dist-chart"), "No reference statistics for this device's bundle."); return; }
  if (dist.error) { emptyChart($("dist-chart"), dist.error); return; }
  note.textContent = `(reference ${dist.reference.rows} rows; current ${dist.current.rows} rows from ${dist.current.windows} windows, last ${hours()} h)`;
  if (!dist.current.rows) { emptyChart($("dist-chart"), "No current data in this period."); return; }
  barChart($("dist-chart"), dist.labels, dist.reference.frequencies, dist.current.frequencies,
    { label: `reference vs current distribution of ${feature}`, empty: "No bins." });
}

async function refreshDevice(route) {
  let d;
  try {
    d = await getJSON(`/api/devices/${encodeURIComponent(route.device)}?hours=${hours()}`);
  } catch (e) {
    if (e.status === 404 || e.status === 400) {
      clear($("device-head")).append(el("h1", { text: route.device }), el("p", { class: "empty", text: e.message }));
      clear($("feature-rows")); $("feature-panel").hidden = true; clear($("latency-chart"));
      return;
    }
    throw e;
  }
  const feature = pickFeature(d, route.feature);
  renderDeviceHead(d);
  renderFeatureTable(d, feature);
  renderLatency(d);
  await renderFeature(d, feature);
}

// ------------------------------------------------------------------ main loop

async function refresh() {
  if (view.busy) { view.again = true; return; }  // e.g. a click while a refresh is loading
  view.busy = true;
  const route = parseRoute();
  view.route = route;
  renderCrumbs(route);
  $("fleet-view").hidden = route.name !== "fleet";
  $("device-view").hidden = route.name !== "device";
  try {
    if (route.name === "device") await refreshDevice(route);
    else await refreshFleet();
    $("error").hidden = true;
    $("updated").textContent = `updated ${clock(Date.now() / 1000)}`;
    document.body.dataset.ready = "1";
  } catch (e) {
    const banner = $("error");
    banner.hidden = false;
    banner.textContent = `Cannot load data from the monitor: ${e.message}. Retrying every ${refreshMs() / 1000} s.`;
  } finally {
    view.busy = false;
    if (view.again) { view.again = false; refresh(); }
  }
}

function init() {
  for (const th of document.querySelectorAll("#fleet-table th")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      view.sortDir = view.sortKey === key ? -view.sortDir : 1;
      view.sortKey = key;
      if (view.fleet) renderFleetTable(view.fleet.devices);
    });
  }
  $("hours").addEventListener("change", refresh);
  window.addEventListener("hashchange", refresh);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  const tick = () => {
    if (!document.hidden) refresh();  // a background tab does not poll the monitor
    setTimeout(tick, refreshMs());
  };
  refresh();
  setTimeout(tick, refreshMs());
}

init();
