"""How sensitive our TopK quality is to the training settings, on bench_train's data and budget.

bench_train compares trainers at their defaults; this sweep trains only ours, once per setting,
on the same cached SmolLM2 L15.resid_post batches (same order) and the same held-out tokens, so
the spread of FVU across nearby settings shows how much of a gap to a peer is noise.

    python -m benchmarks.sweep_train                       # the settings below, ~5 min on 2 cores
    python -m benchmarks.sweep_train '{"lr": 3e-3}' ...    # TrainConfig overrides as JSON
    python -m benchmarks.sweep_train --quick --synthetic   # smoke run (bench_train's options)

Prints a table and writes benchmarks/out/sweep_train.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks import bench_train as bt
from benchmarks.common import machine_info, print_table, write_json

# The evidence for TrainConfig's Adam betas (0.8, 0.95): each pair on three initialisation seeds,
# since one seed's all-token FVU moves by several percent with the initialisation alone.
DEFAULT_SETTINGS = [
    {"seed": seed, "adam_beta1": b1, "adam_beta2": b2}
    for b1, b2 in ((0.8, 0.95), (0.9, 0.99), (0.9, 0.999))
    for seed in (0, 1, 2)
]


def run_one(data: bt.Data, overrides: dict, steps: int, args) -> dict:
    ours = bt.OursAdapter(
        "topk",
        data.d_in,
        data.d_in * args.expansion,
        k=args.k,
        batch_size=args.batch_size,
        tokens=steps * args.batch_size,
        overrides=overrides,
    )
    batches = data.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        ours.step({bt.HOOK: next(batches)})
    seconds = time.perf_counter() - t0
    return {
        "overrides": overrides,
        "lr": ours.trainer.lrs[0],
        "tokens_per_s": steps * args.batch_size / seconds,
        **bt.quality({"ours": ours}, data.eval)["ours"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", help="TrainConfig overrides as JSON, one run each")
    args = bt.parse_args(argv, p, "sweep_train")
    settings = [json.loads(a) for a in args.settings] or DEFAULT_SETTINGS
    torch.set_num_threads(args.threads)
    machine = machine_info()
    data = bt.load_data(args)
    steps = args.tokens // args.batch_size
    rows = [run_one(data, s, steps, args) for s in settings]
    print(
        f"\nTopK k={args.k}, d_sae {data.d_in * args.expansion}, {steps} steps x "
        f"{args.batch_size} tokens, eval {data.eval.shape[0]:,} tokens"
    )
    print_table(
        [("overrides", ""), ("lr", ".2e"), ("FVU", ".4f"), ("FVU typ", ".4f"), ("dead%", ".2f"),
         ("tok/s", ",.0f")],
        [[json.dumps(r["overrides"]), r["lr"], r["fvu"], r["fvu_typical"], 100 * r["dead_frac"],
          r["tokens_per_s"]] for r in rows],
    )  # fmt: skip
    fvus = [r["fvu"] for r in rows]
    print(f"FVU spread: {min(fvus):.4f} .. {max(fvus):.4f}")
    write_json(args.out, {"machine": machine, "steps": steps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
