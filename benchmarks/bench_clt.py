"""Cross-layer transcoder vs per-layer transcoders on the same batches of a few SmolLM2 layers.

Both arms have the same latents per layer (so the same total), TopK with the same k per layer,
the default trainer settings, and get the same batches (mlp_in / mlp_out of every layer, one
forward of the embedded model per batch, kept in memory) in lock-step; only the training step
is timed. Held-out FVU per output layer on the eval split with the one evaluator
(`evaluate` for the transcoders, `evaluate_crosslayer` for the CLT: the same `QualityMeter`).

Then the joint spliced loss of each arm on `--splice-seqs` held-out sequences of the eval
split (`joint_spliced_loss`, as `interp-bench splice --joint` computes it): every covered MLP
replaced at once in one forward, by the trainer's folded dictionaries (input scale folded in,
what `train` saves and the CLI loads). Clean, spliced and zero-/mean-ablated CE, CE loss
recovered, KL(clean || spliced), and the error-added check (== clean) per arm; its FVU and L0
are measured in the spliced forward, so they differ from the held-out FVU above. Each arm runs
about 5.5 full forwards per splice batch of 8 sequences (clean, spliced, zero, mean,
error-added, and the mean pass up to the last layer): 102 s for both arms at `--splice-seqs 8`
on 1 thread at load 4 on 2 cores, so the default 32 adds a few minutes.

`--full-step` also times a few steps of the default CLT over all 30 layers of SmolLM2 (448
latents per layer, the `default_width` budget) on random batches, with the process's peak RSS:
what "trains on 2 CPU cores" costs.

    python -m benchmarks.bench_clt                 # L12-15, 4x, ~10 min on 2 busy cores
    python -m benchmarks.bench_clt --quick         # smoke run
    python -m benchmarks.bench_clt --splice-seqs 0 # no joint splice

Prints a table and writes benchmarks/out/bench_clt.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from collections.abc import Mapping

import torch

from benchmarks.common import OUT, machine_info, machine_line, print_table, write_json
from interp_bench.analysis.splice import SpliceResult, format_table
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries.crosslayer import (
    CrossLayerConfig,
    default_width,
    evaluate_crosslayer,
    n_parameters,
)
from interp_bench.dictionaries.evaluate import evaluate
from interp_bench.training.trainer import Trainer


def collect(model, tokens, hooks, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of every hook from the model's forward, kept in memory (fp16)."""
    from activation_cache.model_batches import ModelBatches

    src = ModelBatches(model, tokens, hooks, batch_size, seed=0, device="cpu")
    return [{h: v.half() for h, v in b.items()} for b in src.batches(0)]


def joint_splices(
    model, trainers: Mapping[str, Trainer], tokens: torch.Tensor, batch_size: int
) -> dict[str, SpliceResult]:
    """Each arm's joint spliced loss on `tokens` (`[n_seq, ctx]`, BOS first), from its trainer's
    folded dictionaries: the raw-activation weights `train` saves, not the scaled ones it trains."""
    from interp_bench.analysis.joint_splice import joint_spliced_loss

    return {
        name: joint_spliced_loss(model, [d.eval() for d in trainer.folded()], tokens,
                                 name=name, batch_size=batch_size)
        for name, trainer in trainers.items()
    }  # fmt: skip


def full_step(steps: int, batch_size: int) -> dict:
    """Seconds per step and peak RSS of the default 30-layer CLT of SmolLM2 (random data)."""
    n, d = 30, 576
    w = default_width(n, d, d)
    cfg = CrossLayerConfig(d_in=d, d_sae=w, hooks_in=tuple(f"L{i}.mlp_in" for i in range(n)),
                           hooks_out=tuple(f"L{i}.mlp_out" for i in range(n)))  # fmt: skip
    tc = TrainConfig(batch_size=batch_size, tokens=10**9, checkpoint_every=0)
    trainer = Trainer([cfg], tc, device="cpu")
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        batch = {h: torch.randn(batch_size, d, generator=g) for h in cfg.hooks}
        t0 = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - t0)
    return {
        "layers": n, "d_sae_per_layer": w, "parameters": n_parameters(n, d, w, d),
        "batch_size": batch_size, "steps": steps, "step_s": times,
        "tokens_per_s": batch_size / min(times[1:] or times),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # fmt: skip


def run(args) -> dict:
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model

    torch.set_num_threads(args.threads)
    machine = machine_info()
    layers = list(range(args.first, args.first + args.layers))
    ins = tuple(f"L{i}.mlp_in" for i in layers)
    outs = tuple(f"L{i}.mlp_out" for i in layers)
    hooks = [*ins, *outs]
    model = load_model("smollm2-135m", device="cpu")
    d = int(model.cfg.d_model)
    splits = load_corpus(CorpusConfig(source="shakespeare", context_len=128), model.tokenizer)
    t0 = time.perf_counter()
    train = collect(model, splits.train[: args.train_seqs], hooks, args.batch_size)
    held = collect(model, splits.eval[: args.eval_seqs], hooks, min(4064, args.eval_seqs * 127))
    print(f"collected {len(train)} train batches in {time.perf_counter() - t0:.0f} s", flush=True)

    w = args.expansion * d
    b = train[0][ins[0]].shape[0]
    tc = TrainConfig(batch_size=b, tokens=args.steps * b, checkpoint_every=0)
    per_layer = [DictionaryConfig(d_in=d, d_sae=w, d_out=d, k=args.k, hook_in=i, hook_out=o)
                 for i, o in zip(ins, outs, strict=True)]  # fmt: skip
    clt = CrossLayerConfig(d_in=d, d_sae=w, k=args.k, hooks_in=ins, hooks_out=outs)
    clt_tc, layer_tc = tc, tc
    if args.clt_lr_mult != 1:  # the CLT away from its default rate
        lr = tc.dictionary_lr(clt, args.steps) * args.clt_lr_mult
        clt_tc = dataclasses.replace(tc, lr=lr)
    if args.layer_lr_mult != 1:  # the per-layer transcoders away from theirs
        lr = tc.dictionary_lr(per_layer[0], args.steps) * args.layer_lr_mult
        layer_tc = dataclasses.replace(tc, lr=lr)
    arms = {
        "per-layer": Trainer(per_layer, layer_tc, device="cpu"),
        "clt": Trainer([clt], clt_tc, device="cpu"),
    }
    spent = dict.fromkeys(arms, 0.0)
    names = list(arms)
    for step in range(args.steps):
        batch = train[step % len(train)]
        for name in names[step % 2 :] + names[: step % 2]:  # alternate who goes first
            t0 = time.perf_counter()
            arms[name].step(batch)
            spent[name] += time.perf_counter() - t0
    tokens = args.steps * tc.batch_size
    result = {"args": vars(args), "machine": machine, "layers": layers, "d_sae_per_layer": w,
              "train_tokens": tokens, "arms": {}}  # fmt: skip
    plt = evaluate(arms["per-layer"].folded(), held)
    c = arms["clt"].folded()[0]
    cl = evaluate_crosslayer(c, held)
    for name, stats, params in (
        ("per-layer", plt, len(layers) * (w * (2 * d + 1) + d)),
        ("clt", cl, n_parameters(len(layers), d, w, d)),
    ):
        result["arms"][name] = {
            "tokens_per_s": tokens / spent[name], "step_s": spent[name] / args.steps,
            "parameters": params, "fvu": [s.fvu for s in stats],
            "fvu_typical": [s.fvu_typical for s in stats], "l0": [s.l0 for s in stats],
            "dead": [s.dead_frac for s in stats], "eval_tokens": stats[0].tokens,
        }  # fmt: skip
    if args.splice_seqs:
        t0 = time.perf_counter()
        spliced = joint_splices(model, arms, splits.eval[: args.splice_seqs], batch_size=8)
        for name, r in spliced.items():
            result["arms"][name]["splice"] = r.to_dict()
        print(f"joint splice of both arms in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.full_step:
        result["full_30_layers"] = full_step(args.full_step, args.batch_size)
    return result


def print_result(r: dict) -> None:
    layers = r["layers"]
    cols = [("arm", ""), ("tok/s", ",.0f"), ("params", ",.0f")]
    cols += [(f"FVU L{i}", ".4f") for i in layers] + [("FVU mean", ".4f"), ("L0 sum", ".1f")]
    cols += [("dead", ".3f")]
    rows = []
    for name, a in r["arms"].items():
        rows.append([name, a["tokens_per_s"], a["parameters"], *a["fvu"],
                     sum(a["fvu"]) / len(a["fvu"]), sum(a["l0"]), max(a["dead"])])  # fmt: skip
    print_table(cols, rows)
    spliced = [SpliceResult(**a["splice"]) for a in r["arms"].values() if "splice" in a]
    if spliced:
        print(f"\njoint splice (every covered MLP at once), {spliced[0].n_tokens:,} held-out "
              "predicted tokens; FVU and L0 in the spliced forward, mean over layers:")  # fmt: skip
        print(format_table(spliced))
    if "full_30_layers" in r:
        f = r["full_30_layers"]
        print(f"full SmolLM2 CLT: {f['layers']} layers x {f['d_sae_per_layer']} latents, "
              f"{f['parameters']:,} parameters, {f['tokens_per_s']:.0f} tok/s at batch "
              f"{f['batch_size']}, peak RSS {f['peak_rss_gib']:.2f} GiB")  # fmt: skip
    print(machine_line(r["machine"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--first", type=int, default=12, help="first layer")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--expansion", type=int, default=4, help="latents per layer / d_model")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=2032, help="16 sequences of 127 tokens")
    p.add_argument("--train-seqs", type=int, default=768)
    p.add_argument("--eval-seqs", type=int, default=64)
    p.add_argument("--splice-seqs", type=int, default=32, help="joint-splice sequences (0: off)")
    p.add_argument("--clt-lr-mult", type=float, default=1.0, help="x the CLT's default lr")
    p.add_argument(
        "--layer-lr-mult", type=float, default=1.0, help="x the per-layer transcoders' default lr"
    )
    p.add_argument("--full-step", type=int, default=3, help="steps of the 30-layer CLT (0: off)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.train_seqs, args.eval_seqs, args.full_step = 4, 64, 32, 2
        args.splice_seqs = min(args.splice_seqs, 8)
    if args.splice_seqs < 0:
        p.error(f"--splice-seqs must be >= 0 (0 skips the joint splice), got {args.splice_seqs}")
    if not (args.clt_lr_mult > 0 and args.layer_lr_mult > 0):
        p.error("--clt-lr-mult and --layer-lr-mult must be positive (1: the default rate)")
    r = run(args)
    print_result(r)
    write_json(OUT / "bench_clt.json", r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
