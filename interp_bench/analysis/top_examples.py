"""The feature index: top-activating and quantile examples for every latent, built in one pass.

For each chunk of whole sequences we encode once, take the firing entries (latent, token, value),
and merge them into two running per-latent selections of fixed size, all latents at once:

* the top-k by activation (`RunningTopK` keyed by the activation), and
* a uniform sample of firing events (the same structure keyed by a random number: priority
  sampling), from which quantile buckets and their examples are drawn at the end. Latents that
  fired no more often than the sample size keep every event, so their buckets are exact.

Both keep, for each kept example, the latent's activation on the `window` tokens either side
(read from the chunk, which holds whole sequences), so contexts never need a second pass. Memory is
bounded by `d_sae * (top_k + reservoir) * (2 * window + 1)` floats plus two floats per token for
the reconstruction errors. Density, histograms and reconstruction error ride along (see
`density.py`, `recon_error.py`). Everything lands in a directory that notebooks and the HTML
report read back with `load_feature_index` without recomputing:

    index.json            config, dictionary config, density summary, histogram edges
    features.safetensors  per-latent arrays (density, top/quantile examples, histograms, logits)
    stream.safetensors    tokens, seq, pos, sq_err, rel_err of every analysed token, in order
    recon.json            reconstruction-error summary (distribution, worst, by position/frequency)
    vocab.json            token id -> string for every id the index mentions
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from activation_cache.paths import save_tensors
from interp_bench.analysis.density import DensityStats, density_summary, hist_edges, whole_sequences
from interp_bench.analysis.direct_effect import (
    example_effects,
    residual_writes,
    unembed_directions,
    unembedding,  # noqa: F401  (re-exported: notebooks and tests import it from here)
)
from interp_bench.analysis.memory import RESERVOIR
from interp_bench.analysis.neighbours import nearest_latents
from interp_bench.analysis.recon_error import ReconStats, context_window, recon_summary

FORMAT_VERSION = 1


@dataclass
class AnalysisConfig:
    top_k: int = 20  # top-activating examples kept per latent
    window: int = 10  # context tokens either side of an example
    reservoir: int = RESERVOIR  # uniform sample of firing events per latent (quantile examples)
    n_quantiles: int = 4  # quantile buckets of each latent's firing activations
    per_quantile: int = 4  # examples shown per bucket
    dense_threshold: float = 0.1  # "dense" latents fire on more than this fraction of tokens
    skip_bos: bool = True  # position 0 counts for nothing (its activations are outliers)
    n_logit_tokens: int = 10  # promoted / suppressed tokens per latent
    n_worst: int = 32  # worst-reconstructed tokens listed
    direct_effects: bool = True  # per top example, the direct effect on the next-token logits
    seed: int = 0


def per_column_top(cols: Tensor, keys: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Among entries (col, key >= 0), each column's m largest keys.

    Returns (positions of the kept entries, their rank in their column, the index of their
    column in `uniq`, `uniq` = the sorted distinct columns). One sort on a composite int64
    (column, then key descending): the bits of a non-negative float32 order like the float.
    """
    bits = keys.float().view(torch.int32).long()
    order = torch.argsort((cols.long() << 32) | (0x7FFFFFFF - bits))
    uniq, counts = torch.unique_consecutive(cols[order], return_counts=True)
    seg = torch.repeat_interleave(torch.arange(uniq.numel()), counts)
    rank = torch.arange(order.numel()) - (torch.cumsum(counts, 0) - counts)[seg]
    keep = rank < m
    return order[keep], rank[keep], seg[keep], uniq


def context_acts(acts: Tensor, seq: Tensor, rows: Tensor, latents: Tensor, window: int) -> Tensor:
    """`acts[rows + o, latent]` for o in -window..window; NaN outside the row's sequence."""
    n = acts.shape[0]
    idx = rows[:, None] + torch.arange(-window, window + 1)
    safe = idx.clamp(0, n - 1)
    valid = (idx >= 0) & (idx < n) & (seq[safe] == seq[rows][:, None])
    vals = acts.reshape(-1).take(safe * acts.shape[1] + latents[:, None]).float()
    return torch.where(valid, vals, torch.tensor(float("nan")))


class RunningTopK:
    """For every latent, the m firing events with the largest key so far, with context acts.

    Slots are unordered: a newcomer takes the slot of the entry it evicts, so only newcomers'
    contexts are ever written (`sorted()` orders them at the end). Keys are >= 0; an empty slot
    holds -1 and an empty candidate -2, so a newcomer is always real and never ties with one.
    """

    def __init__(self, d_sae: int, m: int, window: int) -> None:
        self.m, self.window = m, window
        self.key = torch.full((d_sae, m), -1.0)
        self.val = torch.zeros(d_sae, m)
        self.idx = torch.full((d_sae, m), -1, dtype=torch.int64)
        self.ctx = torch.full((d_sae, m, 2 * window + 1), float("nan"))
        self.floor = torch.full((d_sae,), -1.0)  # smallest kept key per latent

    def update(
        self,
        rows: Tensor,
        cols: Tensor,
        keys: Tensor,
        vals: Tensor,
        acts: Tensor,
        seq: Tensor,
        offset: int,
    ) -> None:
        """Merge one chunk's firing entries (row in chunk, latent, key, value)."""
        m = self.m
        # Only entries beating their latent's smallest kept key can enter. Late in a long
        # stream that is a small fraction, so filter before any sorting.
        passing = keys > self.floor[cols]
        if not bool(passing.any()):
            return
        rows, cols, keys, vals = rows[passing], cols[passing], keys[passing], vals[passing]
        sel, rank, c, f = per_column_top(cols, keys, m)
        cand_key = torch.full((f.numel(), m), -2.0)
        cand_key[c, rank] = keys[sel].float()
        top = torch.cat([self.key[f], cand_key], 1).topk(m, dim=1)
        chosen = torch.zeros(f.numel(), 2 * m, dtype=torch.bool).scatter_(1, top.indices, True)
        # Evicted old slots and chosen newcomers have equal counts per row: pair them in order.
        er, es = (~chosen[:, :m]).nonzero(as_tuple=True)
        nr, nj = chosen[:, m:].nonzero(as_tuple=True)
        self.floor[f] = top.values[:, -1]
        if er.numel() == 0:
            return
        lookup = torch.full((f.numel(), m), -1, dtype=torch.int64)
        lookup[c, rank] = sel
        src = lookup[nr, nj]
        lat, slot = f[er], es
        self.key[lat, slot] = keys[src].float()
        self.val[lat, slot] = vals[src].float()
        self.idx[lat, slot] = rows[src] + offset
        self.ctx[lat, slot] = context_acts(acts, seq, rows[src], lat, self.window)

    def sorted(self) -> tuple[Tensor, Tensor, Tensor]:
        """(val, idx, ctx) with each latent's slots ordered by key, largest first."""
        order = self.key.argsort(dim=1, descending=True, stable=True)
        ctx = self.ctx.gather(1, order[..., None].expand(-1, -1, self.ctx.shape[2]))
        return self.val.gather(1, order), self.idx.gather(1, order), ctx


def logit_effects(
    W_dec: Tensor, W_U: Tensor, ln_w: Tensor | None, n: int, chunk: int = 1024
) -> dict[str, Tensor]:
    """Tokens each decoder direction promotes / suppresses: top and bottom of W_dec * ln_w @ W_U.

    This is the direct logit attribution of a unit activation (`direct_effect.unembed_directions`
    centres the directions first for LayerNorm). The final norm's division by the residual norm
    is a positive per-token scale that does not change the ranking, so it is left out (values
    are in "logits per unit pre-norm residual"; per example, `top_direct_mult` puts it back).
    """
    W = W_dec.detach().float().cpu()
    if ln_w is not None:
        W = W * ln_w
    out: dict[str, list[Tensor]] = {k: [] for k in ("pos_ids", "pos_vals", "neg_ids", "neg_vals")}
    for start in range(0, W.shape[0], chunk):
        logits = W[start : start + chunk] @ W_U
        hi, lo = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
        out["pos_ids"].append(hi.indices.int())
        out["pos_vals"].append(hi.values)
        out["neg_ids"].append(lo.indices.int())
        out["neg_vals"].append(lo.values)
    return {k: torch.cat(v) for k, v in out.items()}


class IndexPass:
    """One feature index's running state in the analysis pass: density, reconstruction error,
    top and sampled examples. Several ride one stream (a CLT's layers: `crosslayer_index.py`)."""

    def __init__(self, d_sae: int, cfg: AnalysisConfig) -> None:
        self.d_sae = d_sae
        self.density = DensityStats(d_sae)
        self.recon = ReconStats()
        self.top = RunningTopK(d_sae, cfg.top_k, cfg.window)
        self.sample = RunningTopK(d_sae, cfg.reservoir, cfg.window)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def add(self, acts: Tensor, keep: Tensor, seq: Tensor, offset: int):
        """Merge one chunk's latents `[n, d_sae]`; (rows, cols, vals) of the counted firings."""
        flat = (acts > 0).view(-1).nonzero().squeeze(1)
        rows, cols = flat // self.d_sae, flat % self.d_sae
        counted = keep[rows]
        rows, cols, flat = rows[counted], cols[counted], flat[counted]
        vals = acts.view(-1).take(flat)
        self.density.update(int(keep.sum()), cols, vals)
        self.top.update(rows, cols, vals, vals, acts, seq, offset)
        keys = torch.rand(vals.numel(), generator=self.gen)
        self.sample.update(rows, cols, keys, vals, acts, seq, offset)
        return rows, cols, vals


def run_pass(
    stream: Iterable[dict[str, Tensor]],
    step,
    *,
    skip_bos: bool = True,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Whole-sequence chunks of `stream` to `step(chunk, keep, seq, offset)` (`keep`: the rows
    that count, BOS left out with `skip_bos`); returns the tokens, seq and pos of every analysed
    token, in order."""
    streams: dict[str, list[Tensor]] = {"tokens": [], "seq": [], "pos": []}
    offset = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_tokens, unit="tok", desc="analyze")
    for chunk in whole_sequences(stream):
        if max_tokens is not None and offset + chunk["seq"].numel() > max_tokens:
            chunk = {k: v[: max_tokens - offset] for k, v in chunk.items()}
        seq, pos = chunk["seq"].long(), chunk["pos"].long()
        n = seq.numel()
        if n == 0:
            break
        step(chunk, pos != 0 if skip_bos else torch.ones(n, dtype=torch.bool), seq, offset)
        streams["tokens"].append(chunk["tokens"].to(torch.int32))
        streams["seq"].append(seq)
        streams["pos"].append(pos.to(torch.int32))
        offset += n
        if bar is not None:
            bar.update(n)
        if max_tokens is not None and offset >= max_tokens:
            break
    if bar is not None:
        bar.close()
    if offset == 0:
        raise ValueError("no tokens to analyse: the activation stream is empty (check --tokens)")
    return {k: torch.cat(v) for k, v in streams.items()}


def require_hooks(chunk: dict[str, Tensor], names) -> None:
    for name in names:
        if name and name not in chunk:
            raise ValueError(
                f"activations have no hook {name!r} (have {sorted(chunk)}); "
                "cache the dictionary's hooks or pick a matching dictionary"
            )


@torch.inference_mode()
def analyze(
    dictionary,
    stream: Iterable[dict[str, Tensor]],
    out_dir: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    max_tokens: int | None = None,
    progress: bool = False,
) -> FeatureIndex:
    """One pass over `stream` (sequential batches with tokens/seq/pos); writes the feature index.

    `model` (optional) supplies the unembedding for promoted/suppressed tokens and, with
    `tokenizer` (default `model.tokenizer`), the token strings.
    """
    cfg = cfg or AnalysisConfig()
    dcfg = dictionary.cfg
    hook_in, hook_out = dcfg.hook_in, dcfg.hook_out
    device = dictionary.W_dec.device
    state = IndexPass(dcfg.d_sae, cfg)
    t_start = time.perf_counter()

    def step(chunk, keep, seq, offset):
        require_hooks(chunk, (hook_in, hook_out))
        x = chunk[hook_in].to(device=device, dtype=torch.float32)
        acts = dictionary.encode(x).float().cpu()
        rows, cols, vals = state.add(acts, keep, seq, offset)
        recon_x = _reconstruct(dictionary, x, acts, rows, cols, vals)
        target = chunk[hook_out].to(device=device, dtype=torch.float32) if hook_out else x
        state.recon.update(recon_x.cpu(), target.cpu(), keep)

    base = run_pass(stream, step, skip_bos=cfg.skip_bos, max_tokens=max_tokens, progress=progress)
    pass_s = time.perf_counter() - t_start
    writes = residual_writes(dictionary, model) if model is not None else None
    meta = {"dictionary": dcfg.to_dict() if hasattr(dcfg, "to_dict") else dict(vars(dcfg))}
    return finish_index(
        out_dir, state, cfg, base, dictionary.W_dec, writes, meta, model=model,
        tokenizer=tokenizer, pass_s=pass_s,
    )  # fmt: skip


def finish_index(
    out_dir: str | Path,
    state: IndexPass,
    cfg: AnalysisConfig,
    base: dict[str, Tensor],
    W_dec: Tensor,
    writes: tuple[Tensor, str] | None,
    meta: dict,
    *,
    model=None,
    tokenizer=None,
    pass_s: float = 0.0,
) -> FeatureIndex:
    """Arrays, vocab and meta of one index from its pass state; writes it to `out_dir`.
    `W_dec` gives the decoder-cosine neighbours, `writes` (each latent's residual write and how
    it was read, or None) the promoted tokens and direct effects; `meta` is merged in."""
    t_finish = time.perf_counter()
    density = state.density
    if density.n_tokens == 0:
        raise ValueError("no tokens to analyse: the activation stream is empty (check --tokens)")
    stream_arrays = base | state.recon.arrays()
    tokens, seq_all = stream_arrays["tokens"], stream_arrays["seq"]
    arrays: dict[str, Tensor] = {
        "density": density.density.float(),
        "fire_count": density.fire_count,
        "mean_act": density.mean_act,
        "max_act": density.max_act,
        "hist_counts": density.histograms().int(),
    }
    # Top examples: sorted by activation already (topk's order); -1 marks an empty slot.
    arrays |= _examples("top", *state.top.sorted(), tokens, seq_all, cfg.window)
    arrays |= _quantile_examples(state.sample, cfg, tokens, seq_all)
    arrays |= nearest_latents(W_dec)

    logits_note = direct_note = None
    direct_s = 0.0
    unembed = unembed_directions(writes[0], model) if writes is not None else None
    if unembed is not None:
        dirs, W_U, how = unembed
        eff = logit_effects(dirs, W_U, None, cfg.n_logit_tokens)
        arrays |= {f"logit_{k}": v for k, v in eff.items()}
        logits_note = f"{writes[1]} {how} @ W_U".replace("  ", " ")
        if cfg.direct_effects:
            t_direct = time.perf_counter()
            per_example = example_effects(
                dirs, W_U, model, arrays["top_index"], arrays["top_acts"], tokens, seq_all,
                stream_arrays["pos"],
            )  # fmt: skip
            if per_example is not None:
                arrays |= per_example
                direct_note = f"act / ln_final scale at the token * ({logits_note})"
            direct_s = time.perf_counter() - t_direct
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    ids = torch.unique(
        torch.cat(
            [tokens.long()]
            + [
                arrays[k].long().flatten()
                for k in ("logit_pos_ids", "logit_neg_ids")
                if k in arrays
            ]
        )
    )
    vocab = {int(i): _token_str(tokenizer, int(i)) for i in ids}

    recon_info = recon_summary(
        stream_arrays["sq_err"], stream_arrays["rel_err"], tokens, seq_all,
        stream_arrays["pos"], n_worst=cfg.n_worst, window=cfg.window, nmse=state.recon.nmse,
    )  # fmt: skip
    meta = {
        "format_version": FORMAT_VERSION,
        "analysis": dataclasses.asdict(cfg),
        "n_tokens": density.n_tokens,
        "n_stream": int(tokens.numel()),
        "d_sae": state.d_sae,
        "density": density_summary(density.density, density.n_tokens, cfg.dense_threshold),
        "hist_edges": [float(e) for e in hist_edges()],
        "logits": logits_note,
        "direct_effect": direct_note,  # per top example; None: no direct path or no model
        "model": getattr(getattr(model, "cfg", None), "model_name", None),
        # the pass scales with tokens; finishing (logit effects, contexts, writing) does not
        "timings": {
            "pass_s": pass_s,  # the whole pass (shared by the indexes of one pass)
            "finish_s": time.perf_counter() - t_finish,
            "direct_effect_s": direct_s,  # part of finish_s: the forward for the norm scales
        },
    } | meta
    return write_feature_index(out_dir, meta, arrays, stream_arrays, recon_info, vocab)


def _reconstruct(dictionary, x: Tensor, acts: Tensor, rows, cols, vals) -> Tensor:
    """`forward(x)` without encoding again, on the counted rows (the others are not scored).

    When few latents fire (TopK) the firing entries, already in row-major order, form a CSR
    matrix and decoding is a sparse matmul over them.
    """
    W_dec = dictionary.W_dec
    if vals.numel() < 0.05 * acts.numel():
        crow = torch.zeros(acts.shape[0] + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(rows, minlength=acts.shape[0]).cumsum(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            f = torch.sparse_csr_tensor(crow, cols, vals, size=acts.shape, check_invariants=False)
            out = (f.to(W_dec.device) @ W_dec) + dictionary.b_dec
    else:
        out = dictionary.decode(acts.to(W_dec.device))
    W_skip = getattr(dictionary, "W_skip", None)
    return out if W_skip is None else out + x @ W_skip


def _examples(prefix, val, idx, ctx, tokens, seq, window) -> dict[str, Tensor]:
    """Flatten (latent, slot) examples into arrays with their context token ids."""
    flat = idx.reshape(-1)
    ok = flat >= 0
    ctx_tok = torch.full((flat.numel(), 2 * window + 1), -1, dtype=torch.int32)
    if ok.any():
        ctx_tok[ok] = context_window(tokens, seq, flat[ok], window).int()
    return {
        f"{prefix}_index": idx,
        f"{prefix}_acts": torch.where(idx >= 0, val, torch.tensor(0.0)),
        f"{prefix}_tokens": ctx_tok.view(*idx.shape, -1),
        f"{prefix}_ctx_acts": ctx.to(torch.float16),
    }


def _quantile_examples(sample: RunningTopK, cfg: AnalysisConfig, tokens, seq) -> dict:
    """Quantile edges of each latent's sampled firing activations, and examples per bucket.

    Bucket b holds activations in [edge_b, edge_{b+1}) (the last one closed). Examples are the
    first `per_quantile` of the bucket in the sample's random order, i.e. a uniform draw.
    """
    d_sae, q, per = sample.key.shape[0], cfg.n_quantiles, cfg.per_quantile
    valid = sample.idx >= 0
    vals = torch.where(valid, sample.val, torch.tensor(float("nan")))
    probs = torch.linspace(0, 1, q + 1)
    edges = torch.nanquantile(vals, probs, dim=1).T.contiguous()  # [d_sae, q + 1]
    bucket = (vals[..., None] >= edges[:, None, 1:q]).sum(-1)
    f, s = valid.nonzero(as_tuple=True)
    col = f * q + bucket[f, s]
    sel, rank, _, _ = per_column_top(col, sample.key[f, s], per)
    idx = torch.full((d_sae * q, per), -1, dtype=torch.int64)
    val = torch.zeros(d_sae * q, per)
    ctx = torch.full((d_sae * q, per, sample.ctx.shape[2]), float("nan"))
    idx[col[sel], rank] = sample.idx[f[sel], s[sel]]
    val[col[sel], rank] = sample.val[f[sel], s[sel]]
    ctx[col[sel], rank] = sample.ctx[f[sel], s[sel]]
    out = _examples("quantile", val.view(d_sae, q, per), idx.view(d_sae, q, per),
                    ctx.view(d_sae, q, per, -1), tokens, seq, cfg.window)  # fmt: skip
    out["quantile_edges"] = edges
    return out


def _token_str(tokenizer, i: int) -> str:
    if tokenizer is None:
        return f"<{i}>"
    try:
        return tokenizer.decode([i])
    except Exception:  # ids past the tokenizer's vocab (padded embeddings)
        return f"<{i}>"


INDEX_FILES = frozenset(
    ("index.json", "features.safetensors", "stream.safetensors", "recon.json", "vocab.json")
)
OWN_EXTRAS = frozenset(("report.html", "report_chunks"))  # written there by `report`


def _is_our_index(path: Path) -> bool:
    try:
        meta = json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"format_version", "analysis", "density"} <= set(meta)


def check_index_out(out: Path) -> None:
    """`out` may be written: absent, empty, or a feature index we wrote (only our files)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file; pick a folder for the feature index")
    names = {p.name for p in out.iterdir()}
    if names and not (_is_our_index(out) and names <= INDEX_FILES | OWN_EXTRAS):
        other = sorted(names - INDEX_FILES - OWN_EXTRAS) or sorted(names)
        raise ValueError(
            f"{out} is not empty and is not a feature index we wrote ({', '.join(other[:3])}); "
            "pick an empty or new --out (nothing was changed)"
        )


def write_feature_index(out_dir, meta, arrays, stream, recon, vocab) -> FeatureIndex:
    """Write the index into a temp folder beside `out_dir`, then swap it in: a crash leaves the
    old index (or none), and only a folder `check_index_out` accepts is ever replaced."""
    out = Path(out_dir)
    check_index_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    aside = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        save_tensors({k: v.contiguous() for k, v in arrays.items()}, tmp / "features.safetensors")
        save_tensors({k: v.contiguous() for k, v in stream.items()}, tmp / "stream.safetensors")
        (tmp / "recon.json").write_text(json.dumps(recon, indent=1, allow_nan=True))
        (tmp / "vocab.json").write_text(json.dumps({str(k): v for k, v in vocab.items()}))
        (tmp / "index.json").write_text(json.dumps(meta, indent=2))
        tmp.chmod(0o755)
        if out.exists():
            os.replace(out, aside)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
    return load_feature_index(out)


class FeatureIndex:
    """Read-only view of a feature index directory; `feature(i)` gives one latent's card data."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_absolute() and not self.path.is_dir():
            # a relative path read from elsewhere (a notebook's kernel runs in notebooks/): the
            # index may well exist, relative to another folder
            raise FileNotFoundError(
                f"{self.path} does not exist relative to the current folder {Path.cwd()}: "
                "give the index folder's absolute path"
            )
        if not (self.path / "index.json").exists():
            raise FileNotFoundError(
                f"no feature index at {self.path} (index.json missing); run `interp-bench analyze`"
            )
        self.meta = json.loads((self.path / "index.json").read_text())
        self.arrays = load_file(str(self.path / "features.safetensors"))
        self.recon = json.loads((self.path / "recon.json").read_text())
        self.vocab = {
            int(k): v for k, v in json.loads((self.path / "vocab.json").read_text()).items()
        }
        self._stream: dict[str, Tensor] | None = None

    @property
    def n_features(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def window(self) -> int:
        return int(self.meta["analysis"]["window"])

    @property
    def density(self) -> Tensor:
        return self.arrays["density"]

    @property
    def stream(self) -> dict[str, Tensor]:
        """Per-token arrays (tokens, seq, pos, sq_err, rel_err), loaded on first use."""
        if self._stream is None:
            self._stream = load_file(str(self.path / "stream.safetensors"))
        return self._stream

    def token_str(self, i: int) -> str:
        return self.vocab.get(int(i), f"<{int(i)}>")

    def _example_list(self, prefix: str, sel: tuple) -> list[dict]:
        idx = self.arrays[f"{prefix}_index"][sel]
        acts = self.arrays[f"{prefix}_acts"][sel]
        toks = self.arrays[f"{prefix}_tokens"][sel]
        ctx = self.arrays[f"{prefix}_ctx_acts"][sel].float()
        direct = prefix == "top" and "top_next_effect" in self.arrays
        if direct:
            mult = self.arrays["top_direct_mult"][sel].tolist()
            nxt = self.arrays["top_next_ids"][sel].tolist()
            eff = self.arrays["top_next_effect"][sel].tolist()
        out = []
        for k, (g, a, t, c) in enumerate(zip(idx.tolist(), acts.tolist(), toks, ctx, strict=True)):
            if g < 0:
                continue
            keep = t >= 0
            ex = {
                "index": g,
                "act": a,
                "token_ids": t[keep].tolist(),
                "tokens": [self.token_str(i) for i in t[keep].tolist()],
                "acts": c[keep].nan_to_num(0.0).tolist(),
                "center": int(keep[: self.window].sum()),
            }
            if direct:  # effect on the next token's logit; act / norm scale at this token
                ex |= {"next_id": nxt[k], "next_effect": eff[k], "direct_mult": mult[k]}
            out.append(ex)
        return out

    def feature(self, i: int) -> dict:
        """Everything a feature card shows for latent `i`."""
        if not 0 <= i < self.n_features:
            raise ValueError(f"latent {i} out of range 0..{self.n_features - 1}")
        a = self.arrays
        counts = a["hist_counts"][i]
        edges = self.meta["hist_edges"]
        nz = counts.nonzero().flatten().tolist()
        lo, hi = (nz[0], nz[-1] + 1) if nz else (0, 0)
        card = {
            "id": i,
            "density": float(a["density"][i]),
            "fire_count": int(a["fire_count"][i]),
            "mean_act": float(a["mean_act"][i]),
            "max_act": float(a["max_act"][i]),
            "hist": {"edges": edges[lo : hi + 1], "counts": counts[lo:hi].tolist()},
            "top": self._example_list("top", (i,)),
            "quantiles": [
                {
                    "lo": float(a["quantile_edges"][i, b]),
                    "hi": float(a["quantile_edges"][i, b + 1]),
                    "examples": self._example_list("quantile", (i, b)),
                }
                for b in range(a["quantile_edges"].shape[1] - 1)
            ],
            "promoted": [],
            "suppressed": [],
            # nearest latents by decoder cosine (indexes written before this field have none)
            "neighbours": [
                (int(j), float(c))
                for j, c in zip(
                    a["neighbour_ids"][i].tolist() if "neighbour_ids" in a else [],
                    a["neighbour_cos"][i].tolist() if "neighbour_cos" in a else [],
                    strict=True,
                )
            ],
        }
        if "logit_pos_ids" in a:
            for key, name in (("pos", "promoted"), ("neg", "suppressed")):
                ids, vals = a[f"logit_{key}_ids"][i].tolist(), a[f"logit_{key}_vals"][i].tolist()
                card[name] = [(self.token_str(t), v) for t, v in zip(ids, vals, strict=True)]
        return card

    def search_token(self, text: str) -> list[int]:
        """Latents whose top examples activate on a token equal to `text` (stripped, any case).

        Ordered by how many of their top examples are that token, most first.
        """
        want = text.strip().lower()
        ids = [i for i, s in self.vocab.items() if s.strip().lower() == want]
        if not ids or not want:
            return []
        center = self.arrays["top_tokens"][:, :, self.window].long()
        hits = torch.isin(center, torch.tensor(ids)).sum(1)
        order = torch.argsort(hits, descending=True, stable=True)
        return [int(i) for i in order if hits[i] > 0]

    def by_density(self, descending: bool = True) -> list[int]:
        return torch.argsort(self.density, descending=descending, stable=True).tolist()


def load_feature_index(path: str | Path) -> FeatureIndex:
    return FeatureIndex(path)
