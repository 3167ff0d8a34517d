"""A self-contained HTML view of an attribution graph: no network, inline JS and SVG.

Layers are rows (token embeddings at the bottom, logits at the top), prompt positions are
columns; edges are drawn with width and opacity by |weight| (blue positive, red negative).
Clicking a node (or opening the page with `#node=<id>`) shows its details, its strongest
incoming and outgoing edges and, for a feature of a layer with a feature index, its card.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }
#graph { flex: 3; overflow: auto; border-right: 1px solid #ddd; }
#side { flex: 1; min-width: 300px; padding: 12px; overflow: auto; font-size: 13px; }
h1 { font-size: 15px; margin: 8px 12px; }
.meta { color: #555; margin: 0 12px 8px; font-size: 12px; }
.node { cursor: pointer; stroke: #333; stroke-width: 0.6; }
.node.sel { stroke: #000; stroke-width: 2.5; }
.feature { fill: #f6c445; } .error { fill: #aaa; } .embedding { fill: #9bd39b; }
.logit { fill: #8fb8f0; }
.edge { fill: none; }
.dim .edge { opacity: 0.05 !important; }
.dim .edge.hi { opacity: 0.9 !important; }
table { border-collapse: collapse; } td { padding: 1px 6px; }
.tok { background: #fde68a; } .ctx span { white-space: pre; }
</style></head><body>
<div id="graph"><h1>__TITLE__</h1><div class="meta" id="meta"></div><svg id="svg"></svg></div>
<div id="side"><div id="panel">Click a node.</div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const cards = data.cards || {};
const nodes = data.nodes, edges = data.edges;
const byId = Object.fromEntries(nodes.map(n => [n.id, n]));
const nL = data.n_layers, nPos = data.tokens.length;
const colW = 110, rowH = 70, padX = 60, padY = 30;
const rowOf = n => n.kind === "embedding" ? nL + 1 : n.kind === "logit" ? 0 : nL - n.layer;
const cells = {};
nodes.forEach(n => { const k = rowOf(n) + ":" + n.pos; (cells[k] = cells[k] || []).push(n); });
Object.values(cells).forEach(list => {
  list.sort((a, b) => (b.influence || 0) - (a.influence || 0));
  list.forEach((n, i) => {
    const step = Math.min(14, (colW - 16) / Math.max(1, list.length));
    n.x = padX + n.pos * colW + 8 + i * step + step / 2;
    n.y = padY + rowOf(n) * rowH + rowH / 2 + (i % 2 ? 8 : -8);
  });
});
const W = padX + nPos * colW + 20, H = padY + (nL + 2) * rowH + 40;
const svg = document.getElementById("svg");
svg.setAttribute("width", W); svg.setAttribute("height", H);
const NS = "http://www.w3.org/2000/svg";
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e); return e;
}
for (let r = 0; r < nL + 2; r++) {
  const label = r === 0 ? "logits" : r === nL + 1 ? "emb" : "L" + (nL - r);
  el("text", {x: 4, y: padY + r * rowH + rowH / 2 + 4, "font-size": 11}, svg).textContent = label;
  el("line", {x1: padX, x2: W, y1: padY + r * rowH, y2: padY + r * rowH, stroke: "#eee"}, svg);
}
data.token_strs.forEach((t, p) => {
  const e = el("text", {x: padX + p * colW + colW / 2, y: H - 14, "font-size": 11,
                        "text-anchor": "middle"}, svg);
  e.textContent = JSON.stringify(t).slice(1, -1);
});
const maxW = Math.max(1e-12, ...edges.map(e => Math.abs(e.weight)));
const gEdges = el("g", {}, svg);
edges.forEach(e => {
  const s = byId[e.source], t = byId[e.target], a = Math.abs(e.weight) / maxW;
  e.el = el("path", {class: "edge", d: `M${s.x},${s.y} L${t.x},${t.y}`,
    stroke: e.weight >= 0 ? "#2563eb" : "#dc2626", "stroke-width": 0.4 + 4 * a,
    opacity: 0.15 + 0.75 * a}, gEdges);
});
const gNodes = el("g", {}, svg);
nodes.forEach(n => {
  const shape = n.kind === "error" ? "rect" : "circle";
  const attrs = shape === "rect" ? {x: n.x - 5, y: n.y - 5, width: 10, height: 10}
                                 : {cx: n.x, cy: n.y, r: n.kind === "feature" ? 5 : 7};
  n.el = el(shape, {...attrs, class: "node " + n.kind, "data-id": n.id}, gNodes);
  el("title", {}, n.el).textContent = n.id;
  if (n.kind === "logit") {
    const t = el("text", {x: n.x, y: n.y - 10, "font-size": 9, "text-anchor": "middle"}, gNodes);
    t.textContent = JSON.stringify(n.token_str).slice(1, -1);
  }
  n.el.addEventListener("click", () => select(n.id));
});
document.getElementById("meta").textContent =
  `${nodes.length} nodes, ${edges.length} edges kept of ${data.stats.nodes} nodes; ` +
  `replacement score ${num(data.scores.replacement, 3)}, ` +
  `completeness ${num(data.scores.completeness, 3)}`;
function num(x, d) { return x === null || x === undefined ? "n/a" : x.toFixed(d); }
function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }
function label(n) {
  if (n.kind === "feature") return `Feature ${n.feature} (layer ${n.layer}, pos ${n.pos})`;
  if (n.kind === "error") return `Error (layer ${n.layer}, pos ${n.pos})`;
  if (n.kind === "embedding") return `Embedding ${JSON.stringify(n.token_str)} (pos ${n.pos})`;
  return `Logit ${JSON.stringify(n.token_str)} (p=${n.prob.toFixed(3)})`;
}
function edgeTable(list, key) {
  return "<table>" + list.slice(0, 10).map(e =>
    `<tr><td>${e.weight.toFixed(3)}</td><td>${esc(label(byId[e[key]]))}</td></tr>`).join("") +
    "</table>";
}
function cardHtml(n) {
  const c = cards[n.layer + "." + n.feature];
  if (!c) return "<p>No feature index for this layer.</p>";
  const density = c.density === null ? "n/a" : c.density.toExponential(2);
  let h = `<div class="card"><b>Feature card</b>: density ${density}, ` +
          `max act ${num(c.max_act, 2)}`;
  if (c.promoted.length) h += `<br>Promoted: ${c.promoted.map(esc).join(" ")}`;
  h += "<br>Top activations:";
  c.top.forEach(ex => {
    h += '<div class="ctx">' + ex.tokens.map((t, i) =>
      `<span class="${i === ex.center ? "tok" : ""}">${esc(t)}</span>`).join("") + "</div>";
  });
  return h + "</div>";
}
function select(id) {
  const n = byId[id];
  if (!n) return;
  nodes.forEach(m => m.el.classList.toggle("sel", m.id === id));
  svg.classList.add("dim");
  const inc = edges.filter(e => e.target === id), out = edges.filter(e => e.source === id);
  edges.forEach(e => e.el.classList.toggle("hi", e.target === id || e.source === id));
  let h = `<h3 id="sel-title">${esc(label(n))}</h3>`;
  if (n.act !== undefined) h += `activation ${n.act.toFixed(4)}<br>`;
  if (n.input !== undefined) h += `input ${n.input.toFixed(4)} (bias ${n.bias.toFixed(4)})<br>`;
  h += `influence ${(n.influence || 0).toFixed(4)}`;
  if (n.kind === "feature") h += cardHtml(n);
  h += `<h4>Incoming (${inc.length})</h4>` + edgeTable(inc, "source");
  h += `<h4>Outgoing (${out.length})</h4>` + edgeTable(out, "target");
  document.getElementById("panel").innerHTML = h;
}
const m = location.hash.match(/node=([^&]+)/);
if (m) select(decodeURIComponent(m[1]));
</script></body></html>
"""


def write_graph_html(data: dict, path: str | Path, cards: dict | None = None) -> Path:
    """Write the page for a graph dict (`export.graph_dict`), with optional feature cards."""
    payload = dict(data, cards=cards or {})
    text = json.dumps(payload, allow_nan=False).replace(
        "</", "<\\/"
    )  # no `</script>` inside the data block
    title = html.escape(f"Attribution graph: {data.get('prompt', '')!r}")
    page = _PAGE.replace("__TITLE__", title).replace("__DATA__", text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
