"""An HTML feature browser over a feature index that opens from disk, with no network.

The page (`report.html`) holds the header data and a small per-latent summary (density, fire
count, mean and max activation, the tokens its top examples fire on), so it stays small for 16k+
latents; each latent's examples, histogram, promoted tokens and neighbours live in chunk files
(`report_chunks/0000.js`, `CHUNK` latents each) that the page loads when a card is shown. A
chunk is a script that calls `ibChunk(k, data)` (JSONP style): `fetch()` of file:// URLs is
blocked in Chromium, a `<script src>` is not.

All data is JSON written by `script_json`: `<`, `>`, `&`, U+2028 and U+2029 become JSON
`\\uXXXX` escapes, so no token string can close a script block or open a comment in it; the
page builds everything with DOM calls (`textContent`, so token strings cannot inject markup).
CSS, JS and the plain-SVG charts are inline: no plotly.js, no CDN.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from interp_bench.analysis.top_examples import FeatureIndex, load_feature_index

CHUNK = 32  # latents per chunk file
CHUNK_HEAD = "/* interp-bench feature browser chunk */"  # how we recognise our own chunk files


def _r(v: float) -> float | None:
    """Three significant digits keep the JSON small; NaN (no data) becomes null."""
    return float(f"{v:.3g}") if math.isfinite(v) else None


def _examples(a: dict, prefix: str, sl: tuple, max_act: Tensor) -> list:
    """Per latent, its examples as [act, center, token ids, context acts in % of its max], and
    for top examples with direct effects also [next token id, its direct effect, act / scale].

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
    n = acts.shape[1]
    if prefix == "top" and "top_next_effect" in a:
        extra = zip(a["top_next_ids"][:, :n].tolist(), a["top_next_effect"][:, :n].tolist(),
                    a["top_direct_mult"][:, :n].tolist(), strict=True)  # fmt: skip
    else:
        extra = ([None] * n for _ in range(acts.shape[0]))
    out = []
    for i_, a_, t_, p_, c_, x_ in zip(idx.tolist(), acts.tolist(), toks.tolist(), pct.tolist(),
                                      center.tolist(), extra, strict=True):  # fmt: skip
        row = []
        for k, (g, act, t, p, c) in enumerate(zip(i_, a_, t_, p_, c_, strict=True)):
            if g >= 0:
                keep = [j for j, tok in enumerate(t) if tok >= 0]
                ex = [_r(act), c, [t[j] for j in keep], [p[j] for j in keep]]
                if x_[0] is not None:
                    ex += [x_[0][k], _r(x_[1][k]), _r(x_[2][k])]
                row.append(ex)
        out.append(row)
    return out


def _records(index: FeatureIndex, n_top: int, per_quantile: int) -> tuple[list, list, list]:
    """(per-latent card records, the ids each one uses, the tokens its top examples fire on)."""
    a = index.arrays
    max_act = a["max_act"].float()
    top = _examples(a, "top", (slice(None), slice(0, n_top)), max_act)
    n_q = a["quantile_edges"].shape[1] - 1
    per_q = [_examples(a, "quantile", (slice(None), b, slice(0, per_quantile)), max_act)
             for b in range(n_q)]  # fmt: skip
    edges_q = a["quantile_edges"].tolist()
    hist = a["hist_counts"].tolist()  # whole arrays to lists once: per-latent calls cost seconds
    logits = {
        name: (a[f"logit_{key}_ids"].tolist(), a[f"logit_{key}_vals"].tolist())
        for key, name in (("pos", "p"), ("neg", "s"))
        if f"logit_{key}_ids" in a
    }
    nbs = None
    if "neighbour_ids" in a:
        nbs = (a["neighbour_ids"].tolist(), a["neighbour_cos"].tolist())
    recs, uses, centers = [], [], []
    for i in range(index.n_features):
        quant = [[_r(edges_q[i][b]), _r(edges_q[i][b + 1]), per_q[b][i]] for b in range(n_q)]
        used: set[int] = set()
        for ex in top[i] + [e for q in quant for e in q[2]]:
            used.update(ex[2])
            if len(ex) > 4 and ex[4] >= 0:
                used.add(ex[4])
        nz = [k for k, c in enumerate(hist[i]) if c]
        h = [nz[0]] + hist[i][nz[0] : nz[-1] + 1] if nz else []
        rec = {"h": h, "t": top[i], "q": quant}
        for name, (ids, vals) in logits.items():
            rec[name] = [[t, _r(v)] for t, v in zip(ids[i], vals[i], strict=True)]
            used.update(ids[i])
        if nbs is not None:  # nearest latents by decoder cosine
            rec["nb"] = [[j, _r(c)] for j, c in zip(nbs[0][i], nbs[1][i], strict=True)]
        recs.append(rec)
        uses.append(used)
        centers.append([ex[2][ex[1]] for ex in top[i]])
    return recs, uses, centers


def report_parts(
    index: FeatureIndex, n_top: int = 8, per_quantile: int = 2, chunk: int = CHUNK
) -> tuple[dict, list[dict]]:
    """(the page's data: header, per-latent summary and the vocab it needs; the chunks, each
    `{"v": vocab, "f": records of latents chunk*k ..}`)."""
    a = index.arrays
    recs, uses, centers = _records(index, n_top, per_quantile)
    chunks = []
    for start in range(0, len(recs), chunk):
        ids = sorted(set().union(*uses[start : start + chunk]))
        chunks.append({"v": {str(i): index.token_str(i) for i in ids},
                       "f": recs[start : start + chunk]})  # fmt: skip
    r = index.recon
    recon = {k: r.get(k) for k in ("n_tokens", "mean_rel_err", "nmse", "rel_err_quantiles")}
    recon["by_position"] = r.get("by_position", {}).get("mean_rel_err", [])
    recon["worst"] = [
        [w["rel_err"], index.window - w["context"][: index.window].count(-1),
         [t for t in w["context"] if t >= 0]]
        for w in r.get("worst", [])[:20]
    ]  # fmt: skip
    used = {t for c in centers for t in c} | {t for w in recon["worst"] for t in w[2]}
    dcfg = index.meta["dictionary"]
    page = {
        "title": f"{dcfg.get('arch', '')} {dcfg.get('hook_in', '')}"
        + (f" -> {dcfg['hook_out']}" if dcfg.get("hook_out") else "")
        + (f" · {dcfg['model_name']}" if dcfg.get("model_name") else ""),
        "density": index.meta["density"],
        "hist_edges": [_r(e) for e in index.meta["hist_edges"]],
        "window": index.window,
        "logits": index.meta.get("logits"),
        "direct": index.meta.get("direct_effect"),
        "recon": recon,
        "vocab": {str(i): index.token_str(i) for i in sorted(used)},
        "chunk": chunk,
        # per latent, column-wise: density, fire count, mean and max activation, top tokens
        "summary": {
            "d": [_r(v) for v in a["density"].tolist()],
            "n": a["fire_count"].tolist(),
            "m": [_r(v) for v in a["mean_act"].tolist()],
            "x": [_r(v) for v in a["max_act"].float().tolist()],
            "c": centers,
        },
    }
    return page, chunks


def report_data(index: FeatureIndex, n_top: int = 8, per_quantile: int = 2) -> dict:
    """Everything in one dict, one record per latent (for notebooks and tests)."""
    page, chunks = report_parts(index, n_top, per_quantile)
    s = page.pop("summary")
    recs = [r for c in chunks for r in c["f"]]
    page["features"] = [
        {"i": i, "d": s["d"][i], "n": s["n"][i], "m": s["m"][i], "x": s["x"][i]} | rec
        for i, rec in enumerate(recs)
    ]
    page["vocab"] |= {k: v for c in chunks for k, v in c["v"].items()}
    return page


# Characters that could end a <script> block or start `<!--` parsing inside it, as JSON escapes.
_SCRIPT_SAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in ("<", ">", "&", "\u2028", "\u2029")})
_MARK = "<title>interp-bench feature browser</title>"  # how we recognise our own page


def script_json(obj) -> str:
    """JSON that is inert inside an HTML <script> element (JSON.parse reads it unchanged)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def chunk_dir(out: Path) -> Path:
    """Where a page's chunk files go: `report.html` -> `report_chunks/` beside it."""
    return out.with_name(f"{out.stem}_chunks")


def chunk_name(k: int) -> str:
    return f"{k:04d}.js"


def _check_replaceable(out: Path) -> None:
    """Refuse a folder, or an existing page or chunk folder that we did not write."""
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
    chunks = chunk_dir(out)
    if chunks.exists() and not _our_chunks(chunks):
        raise ValueError(
            f"{chunks} exists and does not hold only interp-bench report chunks; "
            "pick another --out (nothing was changed)"
        )


def _our_chunks(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    for p in folder.iterdir():
        if not (p.is_file() and re.fullmatch(r"\d{4,}\.js", p.name)):
            return False
        with open(p, "rb") as f:
            if f.read(len(CHUNK_HEAD)).decode("utf-8", errors="replace") != CHUNK_HEAD:
                return False
    return True


def write_report(index_dir: str | Path, out: str | Path | None = None, **kw) -> Path:
    """Write `report.html` (default: inside the index directory) and its chunk folder beside
    it; return the page's path. Chunks go in whole (a temp folder renamed), then the page."""
    index = load_feature_index(index_dir)
    out = Path(out) if out else index.path / "report.html"
    _check_replaceable(out)
    if not out.parent.is_dir():
        raise ValueError(f"folder {out.parent} does not exist; create it or pick another --out")
    page, chunks = report_parts(index, **kw)
    final = chunk_dir(out)
    page["chunks"] = final.name + "/"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out.parent))
    aside = out.with_name(f".{final.name}.old-{os.getpid()}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        for k, c in enumerate(chunks):
            # JSON.parse of a string literal parses faster than the same object as JS source
            text = f"{CHUNK_HEAD}\nibChunk({k},JSON.parse({json.dumps(script_json(c))}));\n"
            (tmp_dir / chunk_name(k)).write_text(text, encoding="utf-8")
        tmp_dir.chmod(0o777 & ~_umask())
        tmp.write_text(TEMPLATE.replace("__DATA__", script_json(page)), encoding="utf-8")
        if final.exists():
            os.replace(final, aside)
        os.replace(tmp_dir, final)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
        tmp.unlink(missing_ok=True)  # only after a failure: the temp is this process's own
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
.de{font-size:11px;color:#555;margin:0 0 3px 60px;font-family:ui-monospace,monospace}
.label{display:block;margin:2px 0 0}
.loading{color:#888;font-size:12px}
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
const S = D.summary, V = D.vocab, W = D.window, PAGE = 25, CH = D.chunk;
// One object per latent from the summary; a chunk adds its card data (h, t, q, p, s, nb).
const F = S.d.map((d, i) => ({i: i, d: d, n: S.n[i], m: S.m[i], x: S.x[i], c: S.c[i]}));
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
const signed = (v) => (v === null || v === undefined ? "-" : (v > 0 ? "+" : "") + fmt(v));
const NS = "http://www.w3.org/2000/svg";
// Chunk k (latents k*CH ..) arrives as a script calling ibChunk(k, data): file:// blocks fetch().
const chunkState = new Map();  // k -> {done, failed, waiting: [callbacks]}
window.ibChunk = function (k, data) {
  Object.assign(V, data.v);
  data.f.forEach((rec, j) => Object.assign(F[k * CH + j], rec, {ready: true}));
  const st = chunkState.get(k) || {waiting: []};
  st.done = true;
  chunkState.set(k, st);
  st.waiting.splice(0).forEach((fn) => fn(true));
};
function withData(f, fn) {
  if (f.ready) return fn(true);
  const k = Math.floor(f.i / CH);
  let st = chunkState.get(k);
  if (st && st.failed) return fn(false);
  if (!st) {
    st = {waiting: []};
    chunkState.set(k, st);
    const s = document.createElement("script");
    s.src = D.chunks + String(k).padStart(4, "0") + ".js";
    s.onerror = () => { st.failed = true; st.waiting.splice(0).forEach((g) => g(false)); };
    document.head.appendChild(s);
  }
  st.waiting.push(fn);
}
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
// An example's direct effect on the next-token logits (final norm frozen at that token): on the
// actual next token, and the latent's top promoted / suppressed tokens scaled by act / scale.
function direct(ex, f) {
  const [, , , , next, eff, mult] = ex, line = el("div", "de");
  const part = (cls, text) => line.appendChild(el("span", cls, text));
  if (next < 0) part(null, "last token of its context");
  else part(eff > 0 ? "pos" : "neg", "next " + JSON.stringify(tokStr(next)) + " " + signed(eff));
  if (mult !== null && f.p) {
    const top = (rows) => rows.slice(0, 3)
      .map(([t, v]) => JSON.stringify(tokStr(t)) + " " + signed(v * mult)).join(", ");
    part("pos", " \u00b7 \u2191 " + top(f.p));
    part("neg", " \u00b7 \u2193 " + top(f.s));
  }
  return line;
}
function cardHead(f) {
  const h = el("h2", null, "Latent " + f.i);
  h.appendChild(el("small", null, f.n === 0 ? "dead (never fired)" :
    "density " + fmt(f.d) + " · fired " + f.n + "× · mean " + fmt(f.m) + " · max " + fmt(f.x)));
  if (f.c && f.c.length) {
    const counts = new Map();
    f.c.forEach((t) => counts.set(t, (counts.get(t) || 0) + 1));
    const label = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 4)
      .map(([t, n]) => JSON.stringify(show(tokStr(t))) + (n > 1 ? " ×" + n : "")).join(" ");
    h.appendChild(el("small", "label", "fires on " + label));
  }
  return h;
}
function card(f) {
  const c = el("div", "card");
  c.id = "latent-" + f.i;
  c.appendChild(cardHead(f));
  if (f.n === 0) { c.classList.add("dead"); return c; }
  const body = el("div", "loading", "loading examples\u2026");
  c.appendChild(body);
  pending += 1;
  withData(f, (ok) => {
    if (ok) {
      body.replaceWith(cardBody(f));
    } else {
      const file = D.chunks + String(Math.floor(f.i / CH)).padStart(4, "0") + ".js";
      body.textContent = "could not load " + file + ": keep " + D.chunks + " next to this page";
    }
    pending -= 1;
    rendered();
  });
  return c;
}
function cardBody(f) {
  const cols = el("div", "cols"), main = el("div"), side = el("div", "side");
  main.appendChild(el("div", "q", "Top activations" +
    (D.direct ? " (and each one's direct effect on the next-token logits)" : "")));
  f.t.forEach((ex) => {
    main.appendChild(context(ex, f.x));
    if (ex.length > 4) main.appendChild(direct(ex, f));
  });
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
        r.appendChild(el("span", null, signed(v)));
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
  cols.appendChild(main); cols.appendChild(side);
  return cols;
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
      const n = f.c.filter((t) => tokStr(t).trim().toLowerCase() === want).length;
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
// Milliseconds from navigation to the first page of cards drawn with their data (benchmarks).
let pending = 0;
function rendered() {
  if (pending === 0 && !document.body.dataset.firstRender) {
    document.body.dataset.firstRender = performance.now().toFixed(0);
  }
}
function render() {
  const list = $("list");
  list.replaceChildren();
  current.slice(0, shown).forEach((f) => list.appendChild(card(f)));
  rendered();
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
