"""A self-contained HTML feature browser over a feature index: one file, opens from disk.

Data, CSS and JS are inline and the charts are plain SVG, so the page needs no network and no
plotly.js. The data is embedded as JSON in a `<script type="application/json">` block, with
`<`, `>`, `&`, U+2028 and U+2029 written as JSON `\\uXXXX` escapes so that no token string can
close the block or open a comment in it; the page builds the feature list with DOM calls
(`textContent`, so token strings cannot inject markup). Each latent carries its top examples and
a few quantile examples with the activation on every context token, its log-binned activation
histogram and promoted/suppressed tokens; sorting, paging and search (latent id, or a token its
top examples fire on) run in the page.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from interp_bench.analysis.top_examples import FeatureIndex, load_feature_index


def _r(v: float) -> float | None:
    """Three significant digits keep the embedded JSON small; NaN (no data) becomes null."""
    return float(f"{v:.3g}") if math.isfinite(v) else None


def _examples(a: dict, prefix: str, sl: tuple, max_act: Tensor) -> list:
    """Per latent, its examples as [act, center, token ids, context acts in % of its max].

    Works on whole arrays (one `tolist` each) rather than per-latent `feature(i)` calls, so a
    report over 10k latents builds in seconds.
    """
    acts = a[f"{prefix}_acts"][sl].reshape(max_act.numel(), -1)
    width = a[f"{prefix}_tokens"].shape[-1]
    toks = a[f"{prefix}_tokens"][sl].reshape(max_act.numel(), acts.shape[1], width)
    ctx = a[f"{prefix}_ctx_acts"][sl].float().reshape(toks.shape)
    idx = a[f"{prefix}_index"][sl].reshape(acts.shape)
    scale = torch.where(max_act > 0, 100.0 / max_act.clamp(min=1e-12), 0.0)
    pct = (ctx.nan_to_num(0.0) * scale[:, None, None]).round().int()
    window = toks.shape[2] // 2
    center = (toks[:, :, :window] >= 0).sum(2)
    out = []
    for i_, a_, t_, p_, c_ in zip(idx.tolist(), acts.tolist(), toks.tolist(), pct.tolist(),
                                  center.tolist(), strict=True):  # fmt: skip
        row = []
        for g, act, t, p, c in zip(i_, a_, t_, p_, c_, strict=True):
            if g >= 0:
                keep = [k for k, tok in enumerate(t) if tok >= 0]
                row.append([_r(act), c, [t[k] for k in keep], [p[k] for k in keep]])
        out.append(row)
    return out


def report_data(index: FeatureIndex, n_top: int = 8, per_quantile: int = 2) -> dict:
    """The compact JSON the page reads: summary, vocab of used ids, one record per latent."""
    a = index.arrays
    max_act = a["max_act"].float()
    top = _examples(a, "top", (slice(None), slice(0, n_top)), max_act)
    n_q = a["quantile_edges"].shape[1] - 1
    per_q = [_examples(a, "quantile", (slice(None), b, slice(0, per_quantile)), max_act)
             for b in range(n_q)]  # fmt: skip
    edges_q = a["quantile_edges"].tolist()
    hist = a["hist_counts"]
    has_logits = "logit_pos_ids" in a
    used: set[int] = set()
    feats = []
    cols = zip(a["density"].tolist(), a["fire_count"].tolist(), a["mean_act"].tolist(),
               max_act.tolist(), strict=True)  # fmt: skip
    for i, (d, n, m, x) in enumerate(cols):
        quant = [[_r(edges_q[i][b]), _r(edges_q[i][b + 1]), per_q[b][i]] for b in range(n_q)]
        for ex in top[i] + [e for q in quant for e in q[2]]:
            used.update(ex[2])
        nz = hist[i].nonzero().flatten().tolist()
        h = [nz[0]] + hist[i, nz[0] : nz[-1] + 1].tolist() if nz else []
        rec = {"i": i, "d": _r(d), "n": n, "m": _r(m), "x": _r(x), "h": h, "t": top[i], "q": quant}
        if has_logits:
            for key, name in (("pos", "p"), ("neg", "s")):
                ids = a[f"logit_{key}_ids"][i].tolist()
                vals = a[f"logit_{key}_vals"][i].tolist()
                rec[name] = [[t, _r(v)] for t, v in zip(ids, vals, strict=True)]
                used.update(ids)
        if "neighbour_ids" in a:  # nearest latents by decoder cosine
            pairs = zip(a["neighbour_ids"][i].tolist(), a["neighbour_cos"][i].tolist(), strict=True)
            rec["nb"] = [[j, _r(c)] for j, c in pairs]
        feats.append(rec)
    r = index.recon
    recon = {k: r.get(k) for k in ("n_tokens", "mean_rel_err", "nmse", "rel_err_quantiles")}
    recon["by_position"] = r.get("by_position", {}).get("mean_rel_err", [])
    recon["worst"] = [
        [w["rel_err"], index.window - w["context"][: index.window].count(-1),
         [t for t in w["context"] if t >= 0]]
        for w in r.get("worst", [])[:20]
    ]  # fmt: skip
    for w in recon["worst"]:
        used.update(w[2])
    dcfg = index.meta["dictionary"]
    return {
        "title": f"{dcfg.get('arch', '')} {dcfg.get('hook_in', '')}"
        + (f" -> {dcfg['hook_out']}" if dcfg.get("hook_out") else "")
        + (f" · {dcfg['model_name']}" if dcfg.get("model_name") else ""),
        "density": index.meta["density"],
        "hist_edges": [_r(e) for e in index.meta["hist_edges"]],
        "window": index.window,
        "logits": index.meta.get("logits"),
        "recon": recon,
        "vocab": {str(i): index.token_str(i) for i in sorted(used)},
        "features": feats,
    }


# Characters that could end a <script> block or start `<!--` parsing inside it, as JSON escapes.
_SCRIPT_SAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in ("<", ">", "&", "\u2028", "\u2029")})
_MARK = "<title>interp-bench feature browser</title>"  # how we recognise our own page


def script_json(obj) -> str:
    """JSON that is inert inside an HTML <script> element (JSON.parse reads it unchanged)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def _check_replaceable(out: Path) -> None:
    """Refuse a folder, or an existing file that is not a report we wrote."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'report.html'}")
    if out.exists():
        with open(out, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
        if _MARK not in head:
            raise ValueError(
                f"{out} exists and is not an interp-bench report; "
                "pick another --out (the file was not changed)"
            )


def write_report(index_dir: str | Path, out: str | Path | None = None, **kw) -> Path:
    """Write `report.html` (default: inside the index directory) and return its path."""
    index = load_feature_index(index_dir)
    out = Path(out) if out else index.path / "report.html"
    _check_replaceable(out)
    if not out.parent.is_dir():
        raise ValueError(f"folder {out.parent} does not exist; create it or pick another --out")
    page = TEMPLATE.replace("__DATA__", script_json(report_data(index, **kw)))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)  # only after a failure: the temp is this process's own
    return out


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>interp-bench feature browser</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{background:#263238;color:#eee;padding:12px 20px}
header h1{font-size:18px;margin:0 0 4px}
.stats span{margin-right:18px}
main{padding:12px 20px;max-width:1150px}
.row{display:flex;gap:20px;flex-wrap:wrap}
.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;margin-bottom:12px}
.controls{display:flex;gap:10px;align-items:center;margin:8px 0}
.controls input[type=text]{width:260px;padding:5px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin-bottom:12px}
.card h2{font-size:15px;margin:0 0 6px}
.card h2 small{font-weight:normal;color:#666;margin-left:8px}
.cols{display:flex;gap:18px}
.cols>div:first-child{flex:1;min-width:0}
.side{width:250px;flex:none;font-size:12px}
.ctx{display:flex;font-family:ui-monospace,monospace;font-size:12px;white-space:pre;
 padding:1px 0;border-bottom:1px solid #f0f0f0}
.ctx .a{flex:none;width:52px;color:#888;text-align:right;margin-right:8px}
.ctx .l{flex:0 0 42%;display:flex;justify-content:flex-end;overflow:hidden}
.ctx .r{flex:1;display:flex;overflow:hidden}
.tok{border-radius:2px}
.tok.c{outline:1px solid #b35900}
.q{color:#666;font-size:12px;margin:6px 0 2px}
.logit{display:flex;justify-content:space-between;font-family:ui-monospace,monospace}
.pos{color:#2e7d32}.neg{color:#c62828}
.dead{color:#999}
button{padding:5px 12px}
#count{color:#666}
</style></head><body>
<header><h1 id="title">interp-bench feature browser</h1>
<div class="stats" id="stats"></div></header>
<main>
<div class="row">
 <div class="panel"><b>Feature density</b> (log10 fraction of tokens)<div id="densplot"></div></div>
 <div class="panel"><b>Reconstruction error</b> by position<div id="reconplot"></div>
  <div id="reconstats"></div></div>
</div>
<details class="panel"><summary><b>Worst-reconstructed tokens</b></summary>
<div id="worst"></div></details>
<div class="controls">
 <input type="text" id="q" placeholder="latent id (e.g. 42) or token (e.g. the)">
 <label>sort <select id="sort"><option value="id">latent id</option>
  <option value="dd">density (high first)</option><option value="da">density (low first)</option>
  <option value="mx">max activation</option></select></label>
 <label><input type="checkbox" id="hidedead" checked> hide dead</label>
 <span id="count"></span>
</div>
<div id="list"></div>
<button id="more">show more</button>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const F = D.features, V = D.vocab, W = D.window, PAGE = 25;
let shown = PAGE, current = [];
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
const tokStr = (id) => (id in V ? V[id] : "<" + id + ">");
const show = (s) => s.replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5");
const fmt = (v) => (v === null || v === undefined ? "-" : Number(v).toPrecision(3));
const NS = "http://www.w3.org/2000/svg";
function bars(counts, w, h, color, labels) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h + 14);
  const mx = Math.max(1, ...counts.filter((c) => c !== null)), bw = w / Math.max(1, counts.length);
  counts.forEach((c, k) => {
    if (c === null) return;
    const r = document.createElementNS(NS, "rect"), bh = (h * c) / mx;
    r.setAttribute("x", k * bw); r.setAttribute("y", h - bh);
    r.setAttribute("width", Math.max(1, bw - 1)); r.setAttribute("height", bh);
    r.setAttribute("fill", color);
    const t = document.createElementNS(NS, "title"); t.textContent = String(c); r.appendChild(t);
    svg.appendChild(r);
  });
  (labels || []).forEach(([x, s, anchor]) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x * w); t.setAttribute("y", h + 12); t.setAttribute("font-size", 10);
    t.setAttribute("text-anchor", anchor || "middle"); t.setAttribute("fill", "#555");
    t.textContent = s; svg.appendChild(t);
  });
  return svg;
}
function context(ex, mx) {
  const [act, center, ids, acts] = ex, row = el("div", "ctx");
  const left = el("div", "l"), right = el("div", "r");
  row.appendChild(el("span", "a", fmt(act)));
  row.appendChild(left);
  row.appendChild(right);
  ids.forEach((id, k) => {
    const s = el("span", "tok" + (k === center ? " c" : ""), show(tokStr(id)));
    const a = Math.max(0, acts[k]) / 100;
    const alpha = Math.min(1, 0.12 + 0.88 * a).toFixed(3);
    if (a > 0) s.style.background = "rgba(255,140,0," + alpha + ")";
    s.title = JSON.stringify(tokStr(id)) + ": " + fmt((acts[k] / 100) * mx);
    (k < center ? left : right).appendChild(s);
  });
  return row;
}
function card(f) {
  const c = el("div", "card");
  c.id = "latent-" + f.i;
  const h = el("h2", null, "Latent " + f.i);
  h.appendChild(el("small", null, f.n === 0 ? "dead (never fired)" :
    "density " + fmt(f.d) + " · fired " + f.n + "× · mean " + fmt(f.m) + " · max " + fmt(f.x)));
  c.appendChild(h);
  if (f.n === 0) { c.classList.add("dead"); return c; }
  const cols = el("div", "cols"), main = el("div"), side = el("div", "side");
  main.appendChild(el("div", "q", "Top activations"));
  f.t.forEach((ex) => main.appendChild(context(ex, f.x)));
  f.q.forEach(([lo, hi, exs], b) => {
    if (!exs.length) return;
    const label = "Quantile " + (b + 1) + "/" + f.q.length + ": [" + fmt(lo) + ", " + fmt(hi) + "]";
    main.appendChild(el("div", "q", label));
    exs.forEach((ex) => main.appendChild(context(ex, f.x)));
  });
  if (f.h.length) {
    const lo = f.h[0], counts = f.h.slice(1), e = D.hist_edges;
    side.appendChild(el("div", "q", "Activation histogram (log bins)"));
    side.appendChild(bars(counts, 240, 60, "#f58518",
      [[0, fmt(e[lo]), "start"], [1, fmt(e[lo + counts.length]), "end"]]));
  }
  if (f.p) {
    const logits = (title, rows, cls) => {
      side.appendChild(el("div", "q", title));
      rows.forEach(([t, v]) => {
        const r = el("div", "logit " + cls);
        r.appendChild(el("span", null, JSON.stringify(tokStr(t))));
        r.appendChild(el("span", null, (v > 0 ? "+" : "") + fmt(v)));
        side.appendChild(r);
      });
    };
    logits("Promoted tokens", f.p, "pos");
    logits("Suppressed tokens", f.s, "neg");
  }
  if (f.nb && f.nb.length) {
    side.appendChild(el("div", "q", "Similar latents (decoder cosine)"));
    f.nb.forEach(([j, cs]) => {
      const r = el("div", "logit nb");
      const a = el("a", null, "#" + j);
      a.href = "#q=" + j;
      a.addEventListener("click", (ev) => {
        ev.preventDefault(); $("q").value = String(j); update();
      });
      r.appendChild(a);
      r.appendChild(el("span", null, fmt(cs)));
      side.appendChild(r);
    });
  }
  cols.appendChild(main); cols.appendChild(side); c.appendChild(cols);
  return c;
}
function select() {
  const q = $("q").value.trim(), hide = $("hidedead").checked;
  let out;
  const num = q.replace(/^#/, "");
  if (q && /^\d+$/.test(num)) {
    out = F.filter((f) => f.i === Number(num));
  } else if (q) {
    const want = q.toLowerCase(), hits = new Map();
    F.forEach((f) => {
      const n = f.t.filter((ex) => tokStr(ex[2][ex[1]]).trim().toLowerCase() === want).length;
      if (n) hits.set(f.i, n);
    });
    out = F.filter((f) => hits.has(f.i)).sort((a, b) => hits.get(b.i) - hits.get(a.i));
  } else {
    out = F.filter((f) => !(hide && f.n === 0));
    const s = $("sort").value;
    if (s === "dd") out.sort((a, b) => b.d - a.d);
    if (s === "da") out.sort((a, b) => a.d - b.d);
    if (s === "mx") out.sort((a, b) => b.x - a.x);
  }
  return out;
}
function render() {
  const list = $("list");
  list.replaceChildren();
  current.slice(0, shown).forEach((f) => list.appendChild(card(f)));
  const more = current.length > shown ? ", showing " + shown : "";
  $("count").textContent = current.length + " latents" + more;
  $("more").style.display = current.length > shown ? "" : "none";
}
function update() { shown = PAGE; current = select(); render(); }
function header() {
  const s = D.density, r = D.recon;
  $("title").textContent = "interp-bench feature browser: " + D.title;
  [["tokens", s.n_tokens.toLocaleString()], ["latents", s.d_sae.toLocaleString()],
   ["dead", s.dead], ["dense (>" + s.dense_threshold * 100 + "%)", s.dense],
   ["NMSE", fmt(r.nmse)], ["mean rel. error", fmt(r.mean_rel_err)]].forEach(([k, v]) => {
    const e = el("span");
    e.appendChild(el("b", null, k + ": "));
    e.appendChild(document.createTextNode(String(v)));
    $("stats").appendChild(e);
  });
  const ed = s.log10_density_edges;
  $("densplot").appendChild(bars(s.log10_density_counts, 420, 90, "#4c78a8",
    [[0, fmt(ed[0]), "start"], [0.5, fmt((ed[0] + ed[ed.length - 1]) / 2)], [1, "0", "end"]]));
  const bp = r.by_position || [];
  $("reconplot").appendChild(bars(bp, 420, 90, "#72b7b2",
    [[0, "pos 0", "start"], [1, "pos " + (bp.length - 1), "end"]]));
  const qs = r.rel_err_quantiles || {};
  $("reconstats").textContent = Object.entries(qs).map(([k, v]) => k + " " + fmt(v)).join(" · ");
  (r.worst || []).forEach((w) => {
    const marks = w[2].map((_, k) => (k === w[1] ? 100 : 0));
    $("worst").appendChild(context([w[0], w[1], w[2], marks], w[0]));
  });
}
// A link can carry a search: report.html#q=the or report.html#q=42
if (location.hash.startsWith("#q=")) $("q").value = decodeURIComponent(location.hash.slice(3));
$("q").addEventListener("input", update);
$("sort").addEventListener("change", update);
$("hidedead").addEventListener("change", update);
$("more").addEventListener("click", () => { shown += PAGE; render(); });
header();
update();
</script></body></html>
"""
