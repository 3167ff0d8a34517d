"""Quality as a surface: ours against sparsify and SAELens on a grid of TopK workloads.

A workload is (hook, width, k, token budget, seed). Every trainer of a cell is fed the same
batches, in lock-step, and measured on the same held-out tokens with the one evaluator
(``interp_bench.dictionaries.evaluate``): FVU on all tokens and on typical ones, L0, dead and
dense fractions, plus each trainer's step time. Each hook is cached once (the embedded SmolLM2
on Shakespeare) and reused by every budget, width and k.

The grid is a centre cell (k 32, 8x) varied one factor at a time by default: every hook at every
budget, then k and width at the middle hook and budget, and the seed spread on the smallest
budget. ``--design full`` takes the full product instead (many hours on 2 cores).

    python -m benchmarks.quality_grid                     # the default grid (~2 h on 2 cores)
    python -m benchmarks.quality_grid --hooks L9.resid_post --budgets 200k --ks 32 --widths 8
    python -m benchmarks.quality_grid --variant b9:adam_beta1=0.9  # ours with other settings too
    python -m benchmarks.quality_grid --hooks "L15.mlp_in>L15.mlp_out"  # a transcoder cell
    python -m benchmarks.quality_grid --small             # tiny random model, seconds (CI)

Prints a table and writes benchmarks/out/quality_grid.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from activation_cache.tiny_model import tiny_random_model
from benchmarks.common import machine_info
from benchmarks.lockstep import PeerSAE, train_lockstep
from benchmarks.peers import SAELensPeer, SparsifyPeer
from interp_bench.commands.counts import parse_count
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries.evaluate import OUTLIER_NORM

OUT = Path(__file__).resolve().parent / "out"
PEERS = ("sparsify", "sae_lens")
HOOKS = "L3.resid_post,L9.mlp_out,L15.resid_post,L21.mlp_out,L27.resid_post"
SMALL_HOOKS = "L0.resid_post,L1.mlp_out"


# ---- data ------------------------------------------------------------------------------------


def ensure_cache(model, tokens: Tensor, hooks: list[str], out: Path, fingerprint: str) -> Path:
    """Cache ``hooks`` over ``tokens`` into ``out`` in one pass of the model (resumes or skips)."""
    from activation_cache.cache import cache_activations

    cache_activations(
        model, tokens, hooks, out, dtype="float16", batch_size=16, shard_tokens=16384,
        meta={"corpus_fingerprint": fingerprint}, progress=False,
    )  # fmt: skip
    return out


def split_hook(spec: str) -> list[str]:
    """``L15.mlp_in>L15.mlp_out`` (a transcoder cell) -> both hooks; a plain hook -> itself."""
    return [h.strip() for h in spec.split(">")]


def load_eval(path: Path, hooks: list[str], n: int) -> dict[str, Tensor]:
    from activation_cache.reader import ActivationReader

    r = ActivationReader(path, hooks, 4096, shuffle=False, prefetch=False)
    chunks: dict[str, list[Tensor]] = {h: [] for h in hooks}
    got = 0
    for b in r:
        for h in hooks:
            chunks[h].append(b[h])
        got += len(b[hooks[0]])
        if got >= n:
            break
    return {h: torch.cat(c)[:n] for h, c in chunks.items()}


def train_batches(path: Path, hooks: list[str], batch_size: int, seed: int):
    """Shuffled batches of the cached train split, epoch after epoch (same order per seed)."""
    from activation_cache.reader import ActivationReader

    r = ActivationReader(path, hooks, batch_size, seed=seed, drop_last=True, prefetch=False)
    if r.n_tokens < batch_size:
        raise ValueError(
            f"{path} holds {r.n_tokens} tokens, fewer than one batch; lower --batch-size"
        )
    for epoch in itertools.count():
        yield from r.batches(epoch, 0)


class Workload:
    """The model and corpus behind the grid, with every hook of the grid cached in one pass."""

    def __init__(self, args: argparse.Namespace, model=None) -> None:
        from activation_cache.corpus import CorpusConfig, load_corpus
        from activation_cache.models import load_model

        if model is None:
            model = tiny_random_model() if args.small else load_model("smollm2-135m", device="cpu")
        self.model = model
        ctx = 32 if args.small else 128
        cap = args.cache_tokens + 4 * args.eval_tokens if args.small else None
        splits = load_corpus(
            CorpusConfig(source="shakespeare", context_len=ctx, max_tokens=cap), model.tokenizer
        )
        self.train_tokens = splits.train[: max(1, args.cache_tokens // ctx)]
        self.eval_tokens_ids = splits.eval[: max(1, -(-args.eval_tokens // (ctx - 1)))]
        self.fingerprint = splits.fingerprint
        name = "tiny" if args.small else "smollm2-135m"
        self.root = Path(args.acts_dir) / f"{name}-ctx{ctx}"
        self.train_name = f"train-{len(self.train_tokens) * ctx}"
        self.eval_n = args.eval_tokens
        self.base: Path | None = None

    def prepare(self, specs: list[str]) -> None:
        """Cache every hook the cells read, train and eval split, in one forward each."""
        hooks = sorted({h for s in specs for h in split_hook(s)})
        self.base = self.root / "+".join(hooks)
        for folder in sorted(self.root.glob("*")) if self.root.is_dir() else []:
            if set(hooks) <= set(folder.name.split("+")) and self._complete(folder):
                self.base = folder  # an earlier run cached these hooks with others
                return
        t0 = time.perf_counter()
        ensure_cache(self.model, self.eval_tokens_ids, hooks, self.base / "eval", self.fingerprint)
        train = self.base / self.train_name
        ensure_cache(self.model, self.train_tokens, hooks, train, self.fingerprint)
        dt = time.perf_counter() - t0
        if dt > 5:
            print(f"  cached {len(hooks)} hooks in {dt:.0f} s", flush=True)

    def _complete(self, folder: Path) -> bool:
        from activation_cache.shards import read_manifest

        parts = (folder / "eval", folder / self.train_name)
        return all((p / "manifest.json").exists() and read_manifest(p).complete for p in parts)

    def hook(self, spec: str) -> tuple[Path, dict[str, Tensor]]:
        """(train cache folder, held-out activations by hook) of a cell's hook spec."""
        if self.base is None:
            self.prepare([spec])
        x_eval = load_eval(self.base / "eval", split_hook(spec), self.eval_n)
        return self.base / self.train_name, x_eval


# ---- trainers --------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, dict, dict, float]:
    """``name:key=value,key=value`` -> (name, DictionaryConfig overrides, TrainConfig
    overrides, lr multiplier). ``lr_mult`` scales the default learning rate."""
    name, _, spec = text.partition(":")
    if not name or not spec:
        raise ValueError(f"--variant takes name:key=value[,key=value]; got {text!r}")
    d_fields = {f.name: f for f in dataclasses.fields(DictionaryConfig)}
    t_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    d_over, t_over, mult = {}, {}, 1.0
    for item in spec.split(","):
        key, _, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "lr_mult":
            mult = float(raw)
            continue
        if key not in d_fields and key not in t_fields:
            raise ValueError(f"--variant {name}: {key!r} is no DictionaryConfig/TrainConfig field")
        field = d_fields.get(key) or t_fields[key]
        # "none" is None only where the field takes None (revive="none" is a string value)
        value: object = None if raw.lower() == "none" and "None" in str(field.type) else raw
        if value is not None:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
            if raw.lower() in ("true", "false"):
                value = raw.lower() == "true"
        (d_over if key in d_fields else t_over)[key] = value
    return name, d_over, t_over, mult


class Ours:
    """Our Trainer with one dictionary (its defaults unless a variant overrides them); a hook
    spec ``in>out`` makes it a transcoder."""

    def __init__(self, hook, d_in, d_sae, k, batch_size, tokens, seed, variant=None) -> None:
        from interp_bench.training.trainer import Trainer

        _, d_over, t_over, mult = variant or ("", {}, {}, 1.0)
        hooks = split_hook(hook)
        io = {"hook_in": hooks[0]}
        if len(hooks) > 1:
            io.update(hook_out=hooks[1], d_out=d_in)
        cfg = DictionaryConfig(d_in=d_in, d_sae=d_sae, k=k, **io, **d_over)
        tc = TrainConfig(batch_size=batch_size, tokens=tokens, checkpoint_every=0, seed=seed)
        tc = dataclasses.replace(tc, **t_over)
        lr = tc.dictionary_lr(cfg)
        if mult != 1.0:
            tc.lr = lr = lr * mult
        self.hooks = hooks
        self.trainer = Trainer([cfg], tc, device="cpu")
        self.config = {"dictionary": cfg.to_dict(), "train": tc.to_dict(), "lr": lr}

    def step(self, batch: dict[str, Tensor]) -> None:
        self.trainer.step({h: batch[h] for h in self.hooks})

    def dictionary(self):
        return self.trainer.folded()[0].eval()


def sparsify_transcoder(hooks: list[str], d_in: int, d_sae: int, k: int, b: int, seed: int):
    """sparsify's transcoder mode, stepped as bench_transcoder steps it, on this cell's hooks."""
    from types import SimpleNamespace

    from benchmarks.bench_transcoder import Sparsify

    args = SimpleNamespace(expansion=d_sae // d_in, k=k, batch_size=b, seed=seed)
    return Sparsify(d_in, args, hook_in=hooks[0], hook_out=hooks[1])


def make_trainers(cell: dict, d_in: int, args, variants: list) -> dict:
    hook, d_sae, k, tokens, seed = (cell[n] for n in ("hook", "d_sae", "k", "tokens", "seed"))
    b = args.batch_size
    hooks = split_hook(hook)
    out: dict = {}
    if "ours" in args.trainers:
        out["ours"] = Ours(hook, d_in, d_sae, k, b, tokens, seed)
    for v in variants:
        out[f"ours[{v[0]}]"] = Ours(hook, d_in, d_sae, k, b, tokens, seed, v)
    if "sparsify" in args.trainers:
        out["sparsify"] = (
            sparsify_transcoder(hooks, d_in, d_sae, k, b, seed)
            if len(hooks) > 1
            else PeerSAE(SparsifyPeer(d_in, d_sae, k=k, batch_size=b, seed=seed), hook)
        )
    if "sae_lens" in args.trainers and len(hooks) == 1:
        peer = SAELensPeer("topk", d_in, d_sae, k=k, batch_size=b, total_tokens=tokens, seed=seed)
        out["sae_lens"] = PeerSAE(peer, hook)
    return out


# ---- one cell --------------------------------------------------------------------------------


def run_cell(cell: dict, train_dir: Path, x_eval: dict[str, Tensor], args, variants) -> dict:
    """Train every trainer on the same batches in lock-step (rotating order), then evaluate."""
    hooks = split_hook(cell["hook"])
    d_in = x_eval[hooks[0]].shape[1]
    trainers = make_trainers(cell, d_in, args, variants)
    steps = cell["tokens"] // args.batch_size

    def progress(done: int, seconds: dict[str, float]) -> None:
        if done % max(1, steps // 4) == 0 and done < steps:
            rates = "  ".join(f"{n} {done * args.batch_size / s:,.0f}" for n, s in seconds.items())
            print(f"    step {done}/{steps} tok/s: {rates}", flush=True)

    # One typical-token cut for every trainer: 10x the median norm of the target's held-out set.
    target = x_eval[hooks[-1]]
    typical_norm = OUTLIER_NORM * target.double().norm(dim=1).median().item()
    held_out = ({h: x_eval[h][s : s + 4096] for h in hooks} for s in range(0, len(target), 4096))
    batches = train_batches(train_dir, hooks, args.batch_size, cell["seed"])
    trained = train_lockstep(
        trainers, batches, steps, held_out, cell["hook"], typical_norm=typical_norm,
        after_step=progress,
    )  # fmt: skip
    result = {}
    for n, t in trainers.items():
        stats = trained.stats[n].to_dict()
        stats["tokens_per_s"] = steps * args.batch_size / max(trained.seconds[n], 1e-9)
        stats["config"] = getattr(t, "config", {})
        result[n] = stats
    return {**cell, "steps": steps, "load": trained.load, "trainers": result}


# ---- the grid --------------------------------------------------------------------------------


def plan(args) -> list[dict]:
    """Cells to run: the centre cell varied one factor at a time, or the full product."""
    hooks, budgets, ks, widths = args.hooks, args.budgets, args.ks, args.widths
    centre_k = 32 if 32 in ks else ks[len(ks) // 2]
    centre_w = 8 if 8 in widths else widths[0]
    mid_hook, mid_budget = hooks[len(hooks) // 2], budgets[len(budgets) // 2]
    if args.design == "full":
        base = list(itertools.product(hooks, widths, ks, budgets))
    else:
        base = [(h, centre_w, centre_k, b) for h in hooks for b in budgets]
        base += [(mid_hook, centre_w, k, mid_budget) for k in ks if k != centre_k]
        base += [(mid_hook, w, centre_k, mid_budget) for w in widths if w != centre_w]
    cells = []
    for h, w, k, b in base:
        seeds = [args.seed]
        if b == min(budgets) and (args.design == "full" or (w, k) == (centre_w, centre_k)):
            seeds += [args.seed + 1 + i for i in range(args.spread_seeds)]
        for s in seeds:
            cells.append({"hook": h, "width": w, "k": k, "tokens": b, "seed": s})
    return cells


def summarise(cells: list[dict]) -> list[dict]:
    """Per workload (seeds pooled): each trainer's mean FVU and spread, and the verdict of the
    issue's target: ours at or below the best peer within the seed spread, dead under 1%."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["hook"], c["width"], c["k"], c["tokens"]), []).append(c)
    out = []
    for key, cs in groups.items():
        row = {"hook": key[0], "width": key[1], "k": key[2], "tokens": key[3], "seeds": len(cs)}
        stats = {}
        for n in cs[0]["trainers"]:
            for metric in ("fvu", "fvu_typical", "dead_frac", "dense_frac", "tokens_per_s"):
                vals = [c["trainers"][n][metric] for c in cs]
                mean = sum(vals) / len(vals)
                sd = (
                    math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                    if len(vals) > 1
                    else 0.0
                )
                stats.setdefault(n, {})[metric] = mean
                stats[n][metric + "_sd"] = sd
        row["trainers"] = stats
        peers = [n for n in stats if n in PEERS]
        if "ours" in stats and peers:
            best = min(peers, key=lambda n: stats[n]["fvu"])
            o, p = stats["ours"], stats[best]
            spread = max(o["fvu_sd"], p["fvu_sd"])
            row["best_peer"] = best
            row["ours_over_best"] = o["fvu"] / p["fvu"]
            row["ours_over_best_typical"] = o["fvu_typical"] / stats[best]["fvu_typical"]
            row["met"] = o["fvu"] <= p["fvu"] + spread and o["dead_frac"] < 0.01
        out.append(row)
    return out


def print_table(result: dict) -> None:
    m = result["machine"]
    print(
        f"\nmachine: {m['cpu_count']} cpus ({m['cpu']}), torch {m['torch']}, {m['threads']} threads"
    )
    head = (
        f"{'hook':15}{'w':>3}{'k':>4}{'tokens':>10}{'seed':>5} {'trainer':16}{'FVU':>8}"
        f"{'FVU typ':>8}{'L0':>6}{'dead%':>7}{'dense%':>7}{'tok/s':>8}{'load':>6}"
    )
    print(head)
    print("-" * len(head))
    for c in result["cells"]:
        for n, r in c["trainers"].items():
            print(
                f"{c['hook']:15}{c['width']:>3}{c['k']:>4}{c['tokens']:>10,}{c['seed']:>5} "
                f"{n:16}{r['fvu']:>8.4f}{r['fvu_typical']:>8.4f}{r['l0']:>6.1f}"
                f"{100 * r['dead_frac']:>7.2f}{100 * r['dense_frac']:>7.2f}"
                f"{r['tokens_per_s']:>8,.0f}{c['load'][1]:>6.1f}"
            )
    print("\nper workload (seeds pooled): ours / best peer FVU (all, typical); target met?")
    for r in result["summary"]:
        if "best_peer" not in r:
            continue
        sd = r["trainers"]["ours"]["fvu_sd"]
        print(
            f"{r['hook']:15}{r['width']:>3}x k{r['k']:<3}{r['tokens']:>10,}  seeds {r['seeds']}  "
            f"{r['ours_over_best']:.3f} {r['ours_over_best_typical']:.3f} vs {r['best_peer']:9}"
            f" (ours sd {sd:.4f})  {'met' if r['met'] else 'NOT met'}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--hooks",
        help=f"comma list (default {HOOKS}; --small: {SMALL_HOOKS}); IN>OUT is a transcoder cell",
    )
    p.add_argument(
        "--cache-also", default="", help="more hooks to cache in the same pass, for later runs"
    )
    p.add_argument(
        "--budgets", help="training tokens per cell (default 200k,800k,2M; --small 2k,4k)"
    )
    p.add_argument("--ks", help="TopK k (default 16,32,64; --small 4,8)")
    p.add_argument("--widths", help="d_sae / d_in (default 8,32; --small 4)")
    p.add_argument("--trainers", default="ours,sparsify,sae_lens")
    p.add_argument("--variant", action="append", default=[], help="name:key=value,... (ours)")
    p.add_argument("--design", choices=("axes", "full"), default="axes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread-seeds", type=int, default=2, help="extra seeds at the least budget")
    p.add_argument("--batch-size", type=parse_count, default=4096)
    p.add_argument("--eval-tokens", type=parse_count, default=32768)
    p.add_argument("--cache-tokens", type=parse_count, default=None, help="train tokens cached")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--small", action="store_true", help="tiny random model, CI-sized (seconds)")
    p.add_argument("--acts-dir", default=str(OUT / "grid_acts"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    defaults = (
        (SMALL_HOOKS, "2k,4k", "4,8", "4")
        if args.small
        else (HOOKS, "200k,800k,2M", "16,32,64", "8,32")
    )
    for name, default in zip(("hooks", "budgets", "ks", "widths"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.small:
        args.batch_size = min(args.batch_size, 256)
        args.eval_tokens = min(args.eval_tokens, 1024)
        args.spread_seeds = min(args.spread_seeds, 1)
    args.hooks = [h.strip() for h in args.hooks.split(",") if h.strip()]
    args.cache_also = [h.strip() for h in args.cache_also.split(",") if h.strip()]
    try:
        args.budgets = [parse_count(b) for b in args.budgets.split(",")]
        args.ks = [int(k) for k in args.ks.split(",")]
        args.widths = [int(w) for w in args.widths.split(",")]
        args.variants = [parse_variant(v) for v in args.variant]
    except (ValueError, argparse.ArgumentTypeError) as e:
        p.error(str(e))
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    bad = [t for t in args.trainers if t not in ("ours", *PEERS)]
    if bad:
        p.error(f"--trainers takes ours,sparsify,sae_lens; got {bad}")
    if args.cache_tokens is None:
        args.cache_tokens = 2_000_000 if not args.small else 8192
    name = "quality_grid_small.json" if args.small else "quality_grid.json"
    args.out = Path(args.out or OUT / name)
    return args


def run(args: argparse.Namespace, model=None) -> dict:
    torch.set_num_threads(args.threads)
    result = {"machine": machine_info(), "args": {}, "cells": []}
    result["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    work = Workload(args, model)
    cells = plan(args)
    print(f"{len(cells)} cells; caches under {work.root}", flush=True)
    work.prepare(args.hooks + args.cache_also)
    for hook in dict.fromkeys(c["hook"] for c in cells):
        train_dir, x_eval = work.hook(hook)
        for cell in (c for c in cells if c["hook"] == hook):
            cell["d_sae"] = cell["width"] * x_eval[split_hook(hook)[0]].shape[1]
            t0 = time.perf_counter()
            done = run_cell(cell, train_dir, x_eval, args, args.variants)
            done["wall_s"] = time.perf_counter() - t0
            result["cells"].append(done)
            fvus = "  ".join(f"{n} {r['fvu']:.4f}" for n, r in done["trainers"].items())
            print(
                f"  {hook} {cell['width']}x k{cell['k']} {cell['tokens']:,} seed {cell['seed']}: "
                f"{fvus}  ({done['wall_s']:.0f} s, load {done['load'][1]:.1f})",
                flush=True,
            )
            # Written after every cell, so a long grid killed midway keeps what it measured.
            result["summary"] = summarise(result["cells"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["summary"] = summarise(result["cells"])
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
