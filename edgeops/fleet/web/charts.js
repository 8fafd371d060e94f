// edgeops fleet dashboard: DOM helpers and the inline SVG charts (line chart, paired bars).
// Loaded before app.js. Text is only ever set as textContent / SVG text nodes, never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

// ------------------------------------------------------------------ small helpers

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (value !== 0 && Math.abs(value) < 0.001) return value.toExponential(1);
  return value.toFixed(digits === undefined ? 3 : digits);
}

function fmtP(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1e-4) return "< 0.0001";
  return value.toFixed(4);
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

function clock(ts, withDate) {
  const d = new Date(ts * 1000);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  return withDate ? `${d.getMonth() + 1}/${d.getDate()} ${hm}` : hm;
}

function badge(text, cls, title) { return el("span", { class: `badge ${cls}`, title: title || null, text }); }

// ------------------------------------------------------------------ charts (inline SVG)

// A y axis from 0 with 4-5 round ticks: step = 1, 2, 2.5 or 5 x 10^k.
function niceScale(value, ticks) {
  const n = ticks || 4;
  if (!(value > 0)) value = 1;
  const raw = value / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw);
  const count = Math.ceil(value / step - 1e-9);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (step / p === 2.5 ? 1 : 0));
  return { max: step * count, step, count, label: (v) => v.toFixed(decimals) };
}

function emptyChart(container, message) {
  clear(container).append(el("p", { class: "empty chart-empty", text: message }));
}

// series: [{name, cls, points: [{x, y, flag, title}]}]; x in Unix seconds.
function lineChart(container, series, opts) {
  const W = opts.width || 560, H = 250, L = 48, R = 16, T = 14, B = 34;
  const pts = series.flatMap((s) => s.points).filter((p) => p.y !== null && p.y !== undefined);
  if (!pts.length) { emptyChart(container, opts.empty); return; }
  let x0 = Math.min(...pts.map((p) => p.x)), x1 = Math.max(...pts.map((p) => p.x));
  if (x1 - x0 < 60) { x0 -= 30; x1 += 30; }
  const guides = opts.guides || [];
  const scale = niceScale(Math.max(...pts.map((p) => p.y), ...guides.map((g) => g * 1.15)));
  const yMax = scale.max;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - y / yMax) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: `chart-svg ${opts.cls || ""}`, role: "img",
    "aria-label": opts.label || "line chart" });
  for (let i = 0; i <= scale.count; i++) {
    const v = scale.step * i, y = sy(v);
    root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    root.append(svg("text", { x: L - 6, y: y + 4, class: "tick", "text-anchor": "end" }, scale.label(v)));
  }
  const withDate = x1 - x0 > 86400;
  for (let i = 0; i <= 4; i++) {
    const v = x0 + ((x1 - x0) * i) / 4;
    root.append(svg("text", { x: sx(v), y: H - B + 18, class: "tick", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, clock(v, withDate)));
  }
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  let lastLabel = Infinity;
  for (const g of guides.slice().sort((a, b) => a - b)) {
    root.append(svg("line", { x1: L, x2: W - R, y1: sy(g), y2: sy(g), class: "guide" }));
    // On a tall scale the guides crowd together: label only those with room.
    if (lastLabel - sy(g) < 12) continue;
    root.append(svg("text", { x: W - R - 2, y: sy(g) - 3, class: "guide-label", "text-anchor": "end" }, `PSI ${g}`));
    lastLabel = sy(g);
  }
  if (opts.yLabel) root.append(svg("text", { x: 12, y: T + (H - T - B) / 2, class: "axis-label", "text-anchor": "middle", transform: `rotate(-90 12 ${T + (H - T - B) / 2})` }, opts.yLabel));
  for (const s of series) {
    const ps = s.points.filter((p) => p.y !== null && p.y !== undefined).sort((a, b) => a.x - b.x);
    if (!ps.length) continue;
    const d = ps.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, class: `line ${s.cls || ""}` }));
    for (const p of ps) {
      const dot = svg("circle", { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: p.flag ? 4 : 2.5,
        class: `dot ${s.cls || ""} ${p.flag ? "flag" : ""}` });
      dot.append(svg("title", {}, p.title || `${clock(p.x, true)}: ${fmt(p.y)}`));
      root.append(dot);
    }
  }
  if (series.length > 1) legend(root, series.map((s) => [s.name, s.cls]), W - R, T);
  clear(container).append(root);
}

function legend(root, items, right, top) {
  let x = right;
  for (const [name, cls] of items.slice().reverse()) {
    const width = 16 + name.length * 6.5;
    x -= width + 10;
    root.append(svg("rect", { x, y: top - 2, width: 10, height: 10, class: `swatch ${cls}` }));
    root.append(svg("text", { x: x + 14, y: top + 7, class: "legend" }, name));
  }
}

// Side-by-side bars per bin: reference (frequency) next to current (frequency).
function barChart(container, labels, ref, cur, opts) {
  const W = 560, H = 270, L = 44, R = 12, T = 22, B = 62;
  const n = labels.length;
  if (!n) { emptyChart(container, opts.empty); return; }
  const scale = niceScale(Math.max(...ref, ...cur, 0.01));
  const yMax = scale.max;
  const band = (W - L - R) / n, bar = Math.max(2, Math.min(22, band * 0.38));
  const sy = (y) => T + (1 - y / yMax) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg bars", role: "img", "aria-label": opts.label || "bar chart" });
  for (let i = 0; i <= scale.count; i++) {
    const v = scale.step * i, y = sy(v);
    root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    root.append(svg("text", { x: L - 6, y: y + 4, class: "tick", "text-anchor": "end" }, `${+(v * 100).toFixed(1)}%`));
  }
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  const slant = n > 6 || labels.some((l) => l.length > 8);
  labels.forEach((label, i) => {
    const cx = L + band * (i + 0.5);
    [[ref[i], "ref", "reference"], [cur[i], "cur", "current"]].forEach(([v, cls, name], k) => {
      const y = sy(v || 0);
      const rect = svg("rect", { x: (cx - bar - 1 + k * (bar + 2)).toFixed(1), y: y.toFixed(1), width: bar.toFixed(1),
        height: Math.max(0, H - B - y).toFixed(1), class: `bar ${cls}` });
      rect.append(svg("title", {}, `${label} — ${name}: ${(100 * (v || 0)).toFixed(1)}%`));
      root.append(rect);
    });
    const short = label.length > 14 ? `${label.slice(0, 13)}…` : label;
    const tx = cx, ty = H - B + 14;
    root.append(svg("text", { x: tx, y: ty, class: "tick", "text-anchor": slant ? "end" : "middle",
      transform: slant ? `rotate(-35 ${tx} ${ty})` : "" }, short));
  });
  legend(root, [["reference", "ref"], ["current", "cur"]], W - R, 8);
  clear(container).append(root);
}
