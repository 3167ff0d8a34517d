"""Training throughput and quality: our trainer against SAELens and EleutherAI sparsify.

Every trainer is fed the same activation batches in the same order, in lock-step
(`benchmarks.lockstep`, shared with bench_transcoder, quality_grid and frontier): for each batch
each trainer takes one step (the order rotates every step) and only the step itself is timed, so
load from other processes on a shared machine hits every trainer alike. A plain matmul of the
encoder's shape is timed in the same rotation, as the machine's reference speed.

Rows: TopK (ours vs SAELens vs sparsify), JumpReLU and ReLU+L1 (ours vs SAELens; sparsify has
neither). Quality is measured afterwards on held-out activations (the eval split): FVU, L0 and the
fraction of latents that never fire on those tokens.

    python -m benchmarks.bench_train              # caches L15.resid_post once, ~10 min on 2 cores
    python -m benchmarks.bench_train --quick      # ~1 min smoke run
    python -m benchmarks.bench_train --synthetic  # no model: synthetic activations

Prints a table and writes benchmarks/out/bench_train.json.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import OUT, machine_info, machine_line, print_table, write_json
from benchmarks.lockstep import PeerSAE, eval_dictionary, train_lockstep
from benchmarks.peers import ARCHS, SAELensPeer, SparsifyPeer
from interp_bench.dictionaries import SparseDictionary, evaluate
from interp_bench.dictionaries.evaluate import OUTLIER_NORM, EvalStats

HOOK = "L15.resid_post"
CACHE_EVAL_TOKENS = 32768  # held-out tokens cached once (BOS rows are skipped when read)


# ---- trainers behind one interface ----------------------------------------------------------


class OursAdapter:
    """Our Trainer with one dictionary; TrainConfig defaults except the run-length settings."""

    name = "ours"

    def __init__(
        self,
        arch: str,
        d_in: int,
        d_sae: int,
        *,
        k: int,
        batch_size: int,
        tokens: int,
        overrides: dict | None = None,
    ):
        """``overrides``: TrainConfig fields set after the pinned ones (sweep_train uses it)."""
        from interp_bench.config import DictionaryConfig, TrainConfig
        from interp_bench.training.trainer import Trainer

        cfg = DictionaryConfig(d_in=d_in, d_sae=d_sae, arch=arch, k=k, hook_in=HOOK)
        train_cfg = TrainConfig(batch_size=batch_size, tokens=tokens, checkpoint_every=0)
        # Pinned, not TrainConfig's run-length rule, so the recorded results stay comparable:
        # warm-ups of lr 100 and sparsity 1000 steps capped at 10% of the run, and a 10M-token
        # dead window (longer than any run here: AuxK never fires).
        steps = train_cfg.schedule().total_steps
        train_cfg.warmup_steps = min(100, steps // 10)
        train_cfg.sparsity_warmup_steps = min(1000, steps // 10)
        train_cfg.dead_tokens = 10_000_000
        for key, value in (overrides or {}).items():
            if not hasattr(train_cfg, key):
                raise ValueError(f"TrainConfig has no field {key!r}")
            setattr(train_cfg, key, value)
        self.trainer = Trainer([cfg], train_cfg, device="cpu")
        self.config = {"dictionary": cfg.to_dict(), "train": train_cfg.to_dict()}

    def step(self, batch: dict[str, Tensor]) -> None:
        self.trainer.step({HOOK: batch[HOOK]})

    def dictionary(self) -> SparseDictionary:
        """A copy acting on raw activations (input scale folded in), as it would be saved."""
        return self.trainer.folded()[0].eval()


class MatmulProbe:
    """The encoder's matmul alone (B x d_in @ d_in x d_sae): the machine's reference speed."""

    name = "matmul"

    def __init__(self, d_in: int, d_sae: int):
        self.w = torch.randn(d_in, d_sae) / math.sqrt(d_in)

    def step(self, batch: dict[str, Tensor]) -> None:
        batch[HOOK] @ self.w


def make_trainer(who: str, arch: str, d_in: int, d_sae: int, args, tokens: int):
    if who == "ours":
        return OursAdapter(arch, d_in, d_sae, k=args.k, batch_size=args.batch_size, tokens=tokens)
    if who == "sae_lens":
        peer = SAELensPeer(
            arch, d_in, d_sae, k=args.k, batch_size=args.batch_size, total_tokens=tokens
        )
        return PeerSAE(peer, HOOK)
    if who == "sparsify":
        return PeerSAE(SparsifyPeer(d_in, d_sae, k=args.k, batch_size=args.batch_size), HOOK)
    raise ValueError(who)


ROW_TRAINERS = {"topk": ("ours", "sae_lens", "sparsify"), "jumprelu": ("ours", "sae_lens"),
                "relu": ("ours", "sae_lens")}  # fmt: skip


# ---- data -------------------------------------------------------------------------------------


@dataclass
class Data:
    """Train batches (re-iterable, same order every call) and held-out eval activations."""

    d_in: int
    train: Callable[[], Iterator[Tensor]]
    eval: Tensor
    source: str
    train_tokens_available: int
    info: dict = field(default_factory=dict)


def synthetic_data(d_in: int, batch_size: int, eval_tokens: int, seed: int = 0) -> Data:
    """Sparse sums of random unit directions plus a mean offset and noise (like a residual)."""
    g = torch.Generator().manual_seed(seed)
    n_feat, active = 4 * d_in, 16
    feats = torch.randn(n_feat, d_in, generator=g)
    feats /= feats.norm(dim=-1, keepdim=True)
    offset = 2.0 * torch.randn(d_in, generator=g)

    def batch(gen: torch.Generator, n: int) -> Tensor:
        idx = torch.randint(0, n_feat, (n, active), generator=gen)
        mag = torch.rand(n, active, generator=gen) * 3
        x = torch.zeros(n, n_feat).scatter_add_(1, idx, mag) @ feats
        return x + offset + 0.1 * torch.randn(n, d_in, generator=gen)

    def train() -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(seed + 1)
        while True:
            yield batch(gen, batch_size)

    ev = batch(torch.Generator().manual_seed(seed + 2), eval_tokens)
    return Data(d_in, train, ev, "synthetic", -1)


def cached_data(args) -> Data:
    """L15.resid_post of the embedded model on Shakespeare, cached once under benchmarks/out."""
    from activation_cache.reader import ActivationReader

    root = Path(args.acts_dir)
    if not args.partial_cache and not all(_complete(root / s) for s in ("train", "eval")):
        cache_shakespeare(root, args.cache_tokens, CACHE_EVAL_TOKENS)

    def reader() -> ActivationReader:
        # No prefetch thread: reads happen between timed steps, never during one.
        return ActivationReader(
            root / "train", [HOOK], args.batch_size, seed=args.seed, drop_last=True, prefetch=False
        )

    def train() -> Iterator[Tensor]:
        r = reader()
        epoch = 0
        while True:
            got = False
            for b in r.batches(epoch, 0):
                got = True
                yield b[HOOK]
            if not got:
                raise ValueError(f"{root / 'train'} yielded no batches of {args.batch_size}")
            epoch += 1

    ev_reader = ActivationReader(root / "eval", [HOOK], 4096, shuffle=False, prefetch=False)
    chunks, n = [], 0
    for b in ev_reader:
        chunks.append(b[HOOK])
        n += b[HOOK].shape[0]
        if n >= args.eval_tokens:
            break
    ev = torch.cat(chunks)[: args.eval_tokens]
    return Data(ev.shape[1], train, ev, str(root), reader().n_tokens)


def _complete(cache: Path) -> bool:
    from activation_cache.shards import read_manifest

    return (cache / "manifest.json").exists() and read_manifest(cache).complete


def cache_shakespeare(root: Path, train_tokens: int, eval_tokens: int) -> None:
    """Run the embedded model over Shakespeare once; write train and eval caches."""
    from activation_cache.cache import cache_activations
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model

    print(f"caching {HOOK} of smollm2-135m on Shakespeare into {root} (one time)", flush=True)
    model = load_model("smollm2-135m", device="cpu")
    splits = load_corpus(CorpusConfig(source="shakespeare", context_len=128), model.tokenizer)
    ctx = splits.train.shape[1]
    n_train = max(1, train_tokens // ctx)
    n_eval = max(1, eval_tokens // ctx)
    for name, toks in (("eval", splits.eval[:n_eval]), ("train", splits.train[:n_train])):
        cache_activations(
            model, toks, [HOOK], root / name, dtype="float16", batch_size=16,
            shard_tokens=16384, meta={"corpus_fingerprint": splits.fingerprint, "split": name},
        )  # fmt: skip


# ---- measuring --------------------------------------------------------------------------------


def train_row(trainers: dict, data: Data, steps: int, batch_size: int, log_every: int) -> dict:
    """Step every trainer on each batch in lock-step (`benchmarks.lockstep`: the order rotates
    so none always runs first), then measure each dictionary on the held-out set; the matmul
    probe is only timed."""
    names = list(trainers)
    step_times: dict[str, list[float]] = {n: [] for n in names}
    before = dict.fromkeys(names, 0.0)
    wall = {"s": 0.0}

    def after_step(done: int, seconds: dict[str, float]) -> None:
        for n in names:
            step_times[n].append(seconds[n] - before[n])
            before[n] = seconds[n]
        wall["s"] = time.perf_counter() - t_row
        if log_every and (done % log_every == 0 or done == steps):
            rate = "  ".join(f"{n} {done * batch_size / seconds[n]:,.0f} tok/s" for n in names)
            print(f"  step {done}/{steps}  {rate}", flush=True)

    typical_norm = massive_activations(data.eval)["typical_norm"]
    probes = [n for n, t in trainers.items() if isinstance(t, MatmulProbe)]
    batches = ({HOOK: x} for x in data.train())
    t_row = time.perf_counter()
    trained = train_lockstep(
        trainers, batches, steps, eval_batches(data.eval, [HOOK]), HOOK,
        typical_norm=typical_norm, after_step=after_step, timed_only=probes,
    )  # fmt: skip
    return {
        "seconds": trained.seconds,
        "median_step_s": {n: sorted(t)[len(t) // 2] for n, t in step_times.items()},
        "wall_s": wall["s"],
        "quality": {n: row_stats(s) for n, s in trained.stats.items()},
    }


@torch.no_grad()
def massive_activations(x_eval: Tensor) -> dict:
    """The held-out set's massive-activation tokens (norm above OUTLIER_NORM x the median over
    the whole set) and how much of its variance they carry: the facts behind ``fvu_typical``."""
    x64 = x_eval.double()
    norms = x64.norm(dim=1)
    typical_norm = OUTLIER_NORM * norms.median().item()
    big = norms > typical_norm
    dev = (x64 - x64.mean(0)).pow(2).sum(1)
    return {
        "typical_norm": typical_norm,
        "outlier_tokens": int(big.sum()),
        "outlier_variance_share": (dev[big].sum() / dev.sum()).item(),
        "max_norm_over_median": (norms.max() / norms.median()).item(),
    }


def eval_batches(x_eval: Tensor, hooks, batch_size: int = 4096) -> Iterator[dict[str, Tensor]]:
    """``x_eval`` in batches, under every hook in ``hooks`` (each dictionary reads its own)."""
    for s in range(0, len(x_eval), batch_size):
        yield dict.fromkeys(hooks, x_eval[s : s + batch_size])


def row_stats(s: EvalStats) -> dict:
    """The held-out fields a row reports."""
    keys = ("fvu", "fvu_typical", "outlier_tokens", "l0", "dead_frac")
    return {**{k: getattr(s, k) for k in keys}, "eval_tokens": s.tokens}


def held_out(dicts: list, x_eval: Tensor, batch_size: int = 4096) -> list[dict]:
    """Each dictionary's quality on ``x_eval`` (every one reads it as its ``cfg.hook_in``), one
    pass, by `interp_bench.dictionaries.evaluate`; the typical-token threshold is taken over the
    whole held-out set, not its first batch, so ``fvu_typical`` does not depend on batching."""
    batches = eval_batches(x_eval, {d.cfg.hook_in for d in dicts}, batch_size)
    stats = evaluate(dicts, batches, typical_norm=massive_activations(x_eval)["typical_norm"])
    return [row_stats(s) for s in stats]


def quality(trainers: dict, x_eval: Tensor) -> dict[str, dict]:
    """Held-out quality of every trainer's dictionary (ours and peers alike), in one pass."""
    with ExitStack() as stack:
        dicts = [stack.enter_context(eval_dictionary(t, HOOK)) for t in trainers.values()]
        return dict(zip(trainers, held_out(dicts, x_eval), strict=True))


def flops_per_step(arch: str, b: int, d_in: int, d_sae: int, k: int) -> int:
    """The algorithm's minimum: dense archs 5 matmuls of B x d_in x d_sae (encoder forward and
    weight grad, decoder forward, weight grad and input grad); TopK the encoder forward plus
    four k-sparse ones (decode, its two grads, the encoder's weight grad on the k active rows)."""
    if arch == "topk":
        return 2 * b * d_in * d_sae + 8 * b * k * d_in
    return 10 * b * d_in * d_sae


# ---- main -------------------------------------------------------------------------------------


def parse_args(
    argv=None, parser: argparse.ArgumentParser | None = None, name: str = "bench_train"
) -> argparse.Namespace:
    """bench_train's options, added to ``parser`` by the benchmarks that train on its data
    (``name`` names their JSON)."""
    p = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=786_432, help="training tokens, TopK row")
    p.add_argument(
        "--dense-tokens",
        type=int,
        default=None,
        help="training tokens for the JumpReLU and ReLU rows (default: a quarter of --tokens)",
    )
    p.add_argument("--archs", default="topk,jumprelu,relu", help="rows to run, comma separated")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny run (~1 min): 10 steps per row")
    p.add_argument("--synthetic", action="store_true", help="synthetic activations, no model")
    p.add_argument("--acts-dir", default=str(OUT / "acts_L15"))
    p.add_argument(
        "--cache-tokens", type=int, default=131_072, help="train tokens to cache (first run)"
    )
    p.add_argument(
        "--partial-cache",
        action="store_true",
        help="use the shards cached so far instead of finishing an interrupted cache",
    )
    p.add_argument("--out", default=str(OUT / f"{name}.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.tokens = 10 * args.batch_size
        args.eval_tokens = min(args.eval_tokens, 16384)
    if args.dense_tokens is None:
        args.dense_tokens = args.tokens if args.quick else args.tokens // 4
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        p.error(f"--archs takes a comma list of {', '.join(ARCHS)}; got {args.archs!r}")
    args.archs = archs
    return args


def load_data(args: argparse.Namespace) -> Data:
    if args.synthetic:
        return synthetic_data(576, args.batch_size, args.eval_tokens, args.seed)
    return cached_data(args)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    info = machine_info()
    data = load_data(args)
    d_in = data.d_in
    d_sae = args.expansion * d_in
    result = {
        "machine": info,
        "config": {
            "data": data.source,
            "hook": HOOK,
            "d_in": d_in,
            "d_sae": d_sae,
            "k": args.k,
            "batch_size": args.batch_size,
            "eval_tokens": int(data.eval.shape[0]),
            "train_tokens_available": data.train_tokens_available,
            "seed": args.seed,
            "quick": args.quick,
        },
        "rows": [],
    }
    for arch in args.archs:
        tokens = args.tokens if arch == "topk" else args.dense_tokens
        steps = max(1, tokens // args.batch_size)
        tokens = steps * args.batch_size
        print(f"\n[{arch}] {steps} steps x {args.batch_size} tokens, d_sae {d_sae}", flush=True)
        trainers = {w: make_trainer(w, arch, d_in, d_sae, args, tokens) for w in ROW_TRAINERS[arch]}
        trainers["matmul"] = MatmulProbe(d_in, d_sae)
        timing = train_row(trainers, data, steps, args.batch_size, log_every=max(1, steps // 5))
        mm = timing["median_step_s"]["matmul"]
        mm_gflops = 2 * args.batch_size * d_in * d_sae / mm / 1e9
        flops = flops_per_step(arch, args.batch_size, d_in, d_sae, args.k)
        epochs = tokens / data.train_tokens_available if data.train_tokens_available > 0 else None
        row = {"arch": arch, "tokens": tokens, "steps": steps, "epochs": epochs,
               "wall_s": timing["wall_s"], "matmul_gflops": mm_gflops, "trainers": {}}  # fmt: skip
        for who, ev in timing["quality"].items():
            t = trainers[who].peer if isinstance(trainers[who], PeerSAE) else trainers[who]
            secs = timing["seconds"][who]
            row["trainers"][who] = {
                "tokens_per_s": tokens / secs,
                "train_s": secs,
                "median_step_s": timing["median_step_s"][who],
                "achieved_gflops": flops * steps / secs / 1e9,
                **ev,
                "config": getattr(t, "config", {}),
            }
        ours = row["trainers"].get("ours", {}).get("tokens_per_s", math.nan)
        for r in row["trainers"].values():
            r["ours_speedup"] = ours / r["tokens_per_s"]
        row["flops_per_step"] = flops
        row["targets"] = (
            targets(row) if "ours" in row["trainers"] and len(row["trainers"]) > 1 else []
        )
        result["rows"].append(row)
        del trainers
    info["loadavg_end"] = os.getloadavg()
    return result


def targets(row: dict) -> list[str]:
    """The issue's targets, checked against what was measured (never assumed)."""
    tr = row["trainers"]
    peers = {w: r for w, r in tr.items() if w != "ours"}
    ours = tr["ours"]
    fastest = max(peers, key=lambda w: peers[w]["tokens_per_s"])
    speed = ours["tokens_per_s"] / peers[fastest]["tokens_per_s"]
    best = min(peers, key=lambda w: peers[w]["fvu"])
    lines = [
        f"speed: ours {speed:.2f}x the fastest peer ({fastest})"
        + (
            "; target >= 2x: " + ("met" if speed >= 2 else "NOT met")
            if row["arch"] == "topk"
            else " (the issue sets the 2x target for TopK only)"
        ),
        f"quality: ours FVU {ours['fvu']:.4f} at L0 {ours['l0']:.1f}, best peer {best} FVU "
        f"{peers[best]['fvu']:.4f} at L0 {peers[best]['l0']:.1f}; ours dead {ours['dead_frac']:.2%}"
        + (
            "; target (FVU <= best peer, dead < 1%): "
            + (
                "met"
                if ours["fvu"] <= peers[best]["fvu"] and ours["dead_frac"] < 0.01
                else "NOT met"
            )
            if row["arch"] == "topk"
            else "; L0 not matched across trainers (each uses its own sparsity default)"
        ),
    ]
    return lines


TABLE = [
    ("arch", ""),
    ("trainer", ""),
    ("tokens", ","),
    ("tok/s", ",.0f"),
    ("ours x", ".2f"),
    ("GFLOP/s", ".1f"),
    ("FVU", ".4f"),
    ("FVU typ", ".4f"),
    ("L0", ".1f"),
    ("dead%", ".2f"),
]


def print_result(result: dict) -> None:
    print(f"\n{machine_line(result['machine'])}; data {result['config']['data']}")
    rows = []
    for row in result["rows"]:
        for who, r in row["trainers"].items():
            rows.append(
                [row["arch"], who, row["tokens"], r["tokens_per_s"], r["ours_speedup"],
                 r["achieved_gflops"], r["fvu"], r["fvu_typical"], r["l0"], 100 * r["dead_frac"]]
            )  # fmt: skip
        rows.append([row["arch"], "matmul", None, None, None, row["matmul_gflops"], *[None] * 4])
    print_table(TABLE, rows)
    print("matmul: plain B x d_in @ d_in x d_sae, timed in the same rotation")
    for row in result["rows"]:
        for line in row["targets"]:
            print(f"[{row['arch']}] {line}")


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_result(result)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
