"""Transcoders (L15 mlp_in -> mlp_out, TopK k=32, 8x): ours against eai-sparsify's transcoder mode.

Every trainer gets the same cached batches of the embedded SmolLM2 in the same order, in
lock-step (`benchmarks.lockstep`: the order rotates every step; only the step itself is timed),
so load from other processes hits each trainer alike. Rows: sparsify (`transcode=True`, its
defaults, stepped as its `Trainer.fit` hook steps a transcoder), our trainer under each dead-latent
remedy (`DictionaryConfig.revive`) and dead-window length, and the skip transcoder of both.

Quality on held-out activations (the eval split, same evaluator for every row:
`interp_bench.dictionaries.evaluate`): FVU of mlp_out, L0, never-firing fraction; and CE loss
recovered with the transcoder spliced in for the MLP (`interp_bench.analysis.splice`). `neg%`:
of the never-firing latents, the share negative on every held-out token (the notes' diagnosis).
Sparsify's transcoders are copied into our `SparseDictionary` (the same function: TopK of the
pre-activations, ReLU'd; its schedule-free average swapped in, as it saves) so both go through one
evaluator.

    python -m benchmarks.bench_transcoder            # caches L15 once (~5 min), then ~10 min
    python -m benchmarks.bench_transcoder --quick    # 8 steps per row, smoke run

Prints a table and writes benchmarks/out/bench_transcoder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.lockstep import train_lockstep
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import SparseDictionary
from interp_bench.dictionaries.evaluate import EvalStats
from interp_bench.training.trainer import Trainer

OUT = Path(__file__).resolve().parent / "out"
LAYER = 15
HOOK_IN, HOOK_OUT = f"L{LAYER}.mlp_in", f"L{LAYER}.mlp_out"
HOOKS = [HOOK_IN, HOOK_OUT]

# Our rows: (label, DictionaryConfig overrides, TrainConfig overrides). The "window" row sets the
# dead window to the main job's (a quarter of the run) instead of TrainConfig's 10%.
OURS = [
    ("ours revive=none", {"revive": "none"}, {}),
    ("ours revive=linear", {"revive": "linear"}, {}),
    ("ours revive=recenter", {"revive": "recenter"}, {}),
    ("ours revive=fire", {"revive": "fire"}, {}),
    ("ours revive=recenter window/4", {"revive": "recenter"}, {"window": 4}),
    ("ours skip (default)", {"skip": True}, {}),
    ("ours revive=recenter lr x4", {"revive": "recenter"}, {"lr_scale": 4}),
    ("ours revive=recenter auxk_k=64", {"revive": "recenter", "auxk_k": 64}, {}),
]


# ---- trainers ---------------------------------------------------------------------------------


class Ours:
    """Our Trainer with one transcoder; defaults except what the row overrides."""

    def __init__(self, d: int, args, dict_over: dict, train_over: dict) -> None:
        cfg = DictionaryConfig(
            d_in=d, d_sae=args.expansion * d, d_out=d, arch="topk", k=args.k,
            hook_in=HOOK_IN, hook_out=HOOK_OUT, **dict_over,
        )  # fmt: skip
        tc = TrainConfig(batch_size=args.batch_size, tokens=args.tokens, checkpoint_every=0)
        if "lr_scale" in train_over:
            # x the base (width-rule) rate, as the row was first recorded: the transcoder
            # default has since raised it (short_run_boost).
            base = tc.auto_lr(cfg.d_sae, True) / tc.short_run_boost(True)
            tc.lr = base * train_over["lr_scale"]
        if "window" in train_over:
            tc.dead_tokens = args.tokens // train_over["window"]
        self.trainer = Trainer([cfg], tc, device="cpu")
        self.config = {"dictionary": cfg.to_dict(), "train": tc.to_dict()}

    def step(self, batch: dict[str, Tensor]) -> None:
        self.trainer.step(batch)

    def dictionary(self) -> SparseDictionary:
        return self.trainer.folded()[0].eval()


class Sparsify:
    """eai-sparsify's `SparseCoder(transcode=True)` stepped as `sparsify.Trainer.fit`'s forward
    hook steps a transcoder, with its defaults (signum + schedule-free, lr 5e-3/sqrt(n/2^14),
    loss_fn="fvu", auxk_alpha=0, no decoder normalisation for transcoders):

    - step 0: encoder bias = -mean(inputs) @ W_enc^T (centred pre-activations), b_dec =
      mean(outputs); W_dec starts at zero (its transcoder init);
    - every step: loss = fvu + auxk_alpha * auxk + multi_topk_fvu / 8 against the batch's total
      variance, backward, optimiser step + zero_grad, tokens-since-fired bookkeeping.
    """

    def __init__(
        self, d: int, args, skip: bool = False, hook_in: str = HOOK_IN, hook_out: str = HOOK_OUT
    ) -> None:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.config import SparseCoderConfig, TrainConfig
        from sparsify.sign_sgd import SignSGD
        from sparsify.sparse_coder import SparseCoder

        n = args.expansion * d
        sae_cfg = SparseCoderConfig(
            expansion_factor=args.expansion, num_latents=n, k=args.k, transcode=True,
            skip_connection=skip,
        )  # fmt: skip
        cfg = TrainConfig(sae=sae_cfg, batch_size=args.batch_size, log_to_wandb=False)
        if cfg.optimizer != "signum" or cfg.loss_fn != "fvu" or cfg.auxk_alpha != 0:
            raise RuntimeError("sparsify's defaults changed; update benchmarks/bench_transcoder")
        torch.manual_seed(args.seed)
        self.cfg, self.d, self.skip = cfg, d, skip
        self.hook_in, self.hook_out = hook_in, hook_out
        self.sae = SparseCoder(d, sae_cfg, "cpu", dtype=torch.float32)
        lr = cfg.lr or 5e-3 / (n / 2**14) ** 0.5
        self.opt = ScheduleFreeWrapper(SignSGD([dict(params=self.sae.parameters(), lr=lr)]), 0.95)
        self.opt.train()
        self.since_fired = torch.zeros(n, dtype=torch.long)
        self.step_idx = 0
        self.config = {"sae": sae_cfg.to_dict(), "lr": lr, "optimizer": cfg.optimizer}

    def step(self, batch: dict[str, Tensor]) -> None:
        sae, cfg = self.sae, self.cfg
        x, y = batch[self.hook_in], batch[self.hook_out]
        if self.step_idx == 0:
            sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = y.mean(0)
        total_variance = (y - y.mean(0)).pow(2).sum()
        out = sae(x=x, y=y, dead_mask=None, total_variance=total_variance)
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.latent_indices.flatten().unique()] = 0
        self.step_idx += 1

    @torch.no_grad()
    def dictionary(self) -> SparseDictionary:
        """The same function as our SparseDictionary (schedule-free average, as sparsify saves)."""
        self.opt.eval()
        try:
            sae = self.sae
            cfg = DictionaryConfig(
                d_in=self.d, d_sae=sae.num_latents, d_out=self.d, arch="topk", k=sae.cfg.k,
                hook_in=self.hook_in, hook_out=self.hook_out, skip=self.skip, decode="dense",
            )  # fmt: skip
            d = SparseDictionary(cfg)
            d.W_enc_t.copy_(sae.encoder.weight)
            d.b_enc.copy_(sae.encoder.bias)
            d.W_dec.copy_(sae.W_dec)
            d.b_dec.copy_(sae.b_dec)
            if self.skip:
                d.W_skip.copy_(sae.W_skip.T)
        finally:
            self.opt.train()
        return d.eval()


# ---- data -------------------------------------------------------------------------------------


def ensure_cache(root: Path, train_seqs: int, eval_seqs: int) -> None:
    """L15 mlp_in / mlp_out of the embedded model on Shakespeare, cached once."""
    from activation_cache.cache import cache_activations
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model
    from activation_cache.shards import read_manifest

    def complete(p: Path) -> bool:
        return (p / "manifest.json").exists() and read_manifest(p).complete

    if complete(root / "train") and complete(root / "eval"):
        return
    print(f"caching {HOOKS} of smollm2-135m into {root} (one time)", flush=True)
    model = load_model("smollm2-135m", device="cpu")
    splits = load_corpus(CorpusConfig(source="shakespeare", context_len=128), model.tokenizer)
    for name, toks in (("eval", splits.eval[:eval_seqs]), ("train", splits.train[:train_seqs])):
        cache_activations(
            model, toks, HOOKS, root / name, dtype="float16", batch_size=16, shard_tokens=16384,
            meta={"corpus_fingerprint": splits.fingerprint, "split": name}, progress=False,
        )  # fmt: skip


def train_batches(root: Path, batch_size: int, seed: int):
    from activation_cache.reader import ActivationReader

    reader = ActivationReader(
        root / "train", HOOKS, batch_size, seed=seed, drop_last=True, prefetch=False
    )
    epoch = 0
    while True:
        yield from reader.batches(epoch, 0)
        epoch += 1


def eval_batches(root: Path) -> list[dict[str, Tensor]]:
    from activation_cache.reader import ActivationReader

    return list(ActivationReader(root / "eval", HOOKS, 4096, shuffle=False, prefetch=False))


# ---- main -------------------------------------------------------------------------------------


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    root = Path(args.acts_dir)
    if not args.partial_cache:
        ensure_cache(root, args.train_seqs, args.eval_seqs)
    ev = eval_batches(root)
    d = ev[0][HOOK_IN].shape[1]
    rows = [(label, lambda o=o, t=t: Ours(d, args, o, t)) for label, o, t in OURS]
    rows += [
        ("sparsify", lambda: Sparsify(d, args)),
        ("sparsify skip", lambda: Sparsify(d, args, skip=True)),
    ]
    rows = [r for r in rows if not args.only or r[0] in args.only.split(";")]
    trainers = {label: make() for label, make in rows}
    steps = args.tokens // args.batch_size
    load: list[float] = []

    def progress(done: int, seconds: dict[str, float]) -> None:
        if done % max(1, steps // 8) == 0:
            load.append(os.getloadavg()[0])
            print(f"step {done}/{steps} load {load[-1]:.1f}", flush=True)

    dicts: dict[str, SparseDictionary] = {}

    def keep(evaluated: dict[str, SparseDictionary], stats: dict[str, EvalStats]) -> None:
        dicts.update(evaluated)  # copies of the weights (ours folded, sparsify's average)

    batches = train_batches(root, args.batch_size, args.seed)
    trained = train_lockstep(
        trainers, batches, steps, ev, HOOK_IN, typical_norm=None, after_step=progress,
        after_eval=keep,
    )  # fmt: skip
    from activation_cache.reader import ActivationReader

    available = ActivationReader(root / "train", HOOKS, args.batch_size, prefetch=False).n_tokens
    eval_tokens = next(iter(trained.stats.values())).tokens
    result = {"rows": {}, "config": vars(args), "load": [trained.load[0], *load], "steps": steps,
              "train_tokens_available": available, "eval_tokens": eval_tokens}  # fmt: skip
    for n, t in trainers.items():
        result["rows"][n] = {
            "tokens_per_s": steps * args.batch_size / trained.seconds[n],
            **trained.stats[n].to_dict(),
            "dead_never_positive": never_positive(dicts[n], ev, trained.stats[n].density),
            "config": t.config,
        }
    if args.splice_seqs:
        ce = splice(dicts, args.splice_seqs)
        for n, r in ce.items():
            result["rows"][n].update(r)
    result["load"].append(os.getloadavg()[0])
    return result


@torch.no_grad()
def never_positive(d: SparseDictionary, ev: list[dict[str, Tensor]], density: Tensor) -> float:
    """Of the latents that never fire on the held-out tokens, the share whose pre-activation is
    negative on every one of them (why they died: ReLU'd AuxK gives those no gradient)."""
    dead = density == 0
    if not dead.any():
        return 0.0
    top = torch.full((int(dead.sum()),), -torch.inf)
    for b in ev:
        top = torch.maximum(top, d.pre_acts(b[HOOK_IN])[:, dead].amax(0))
    return (top <= 0).float().mean().item()


def splice(dicts: dict[str, SparseDictionary], n_seqs: int) -> dict[str, dict]:
    """CE loss recovered with each transcoder spliced in for the L15 MLP (held-out text)."""
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model
    from interp_bench.analysis.splice import spliced_loss

    model = load_model("smollm2-135m", device="cpu")
    splits = load_corpus(CorpusConfig(source="shakespeare", context_len=128), model.tokenizer)
    # Sequences after the ones cached for eval, so the splice text is unseen by every trainer.
    tokens = splits.eval[-n_seqs:]
    out = spliced_loss(model, dicts, tokens, batch_size=8, error_added=False)
    return {
        r.name: {"ce_recovered": r.ce_recovered, "ce_clean": r.ce_clean,
                 "ce_spliced": r.ce_spliced, "splice_tokens": r.n_tokens}
        for r in out
    }  # fmt: skip


def print_table(result: dict) -> None:
    load = result["load"]
    print(
        f"\n{HOOK_IN} -> {HOOK_OUT}, {result['steps']} steps x {result['config']['batch_size']} "
        f"tokens, {result['config']['threads']} thread(s), load {min(load):.1f}..{max(load):.1f}"
    )
    head = f"{'trainer':32}{'tok/s':>8}{'FVU':>8}{'FVU typ':>8}{'L0':>7}{'dead%':>7}{'neg%':>6}"
    head += f"{'CE rec':>8}"
    print(head + "\n" + "-" * len(head))
    for n, r in result["rows"].items():
        ce = r.get("ce_recovered")
        print(
            f"{n:32}{r['tokens_per_s']:>8,.0f}{r['fvu']:>8.4f}{r['fvu_typical']:>8.4f}"
            f"{r['l0']:>7.1f}{100 * r['dead_frac']:>7.2f}{100 * r['dead_never_positive']:>6.0f}"
            f"{'' if ce is None else f'{ce:8.4f}'}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=49_152)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-seqs", type=int, default=512, help="sequences of 128 to cache")
    p.add_argument("--eval-seqs", type=int, default=96)
    p.add_argument("--splice-seqs", type=int, default=8, help="0 skips the CE pass")
    p.add_argument("--only", default="", help="row labels to run, ';'-separated")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--partial-cache",
        action="store_true",
        help="train on the shards cached so far instead of finishing an interrupted cache",
    )
    p.add_argument("--acts-dir", default=str(OUT / "acts_L15_mlp"))
    p.add_argument("--out", default=str(OUT / "bench_transcoder.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.splice_seqs = 8 * args.batch_size, 0
    result = run(args)
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["command"] = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
