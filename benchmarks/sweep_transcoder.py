"""The main job's transcoder (mlp_in -> mlp_out, TopK) under a few DictionaryConfig settings.

TopK transcoders on SmolLM2 leave many latents that never fire (half of them in the demo with a
random encoder). This retrains the demo's transcoder, with the demo's training settings
(`interp_bench.commands.pipeline.demo_train_config`), on the activations a demo run cached, once per
setting, and reports held-out FVU, L0 and the never-firing fraction on the eval split.

    interp-bench demo --out runs/demo                                   # caches the activations
    python -m benchmarks.sweep_transcoder --run runs/demo               # default settings, ~4 min
    python -m benchmarks.sweep_transcoder --run runs/demo '{"encoder_init": "random"}' ...

Prints a table and writes benchmarks/out/sweep_transcoder.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from activation_cache.reader import ActivationReader, hook_stats
from activation_cache.shards import read_manifest
from benchmarks.common import OUT, machine_info, print_table, write_json
from interp_bench.commands.pipeline import DemoConfig, demo_train_config
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import evaluate
from interp_bench.training.trainer import Trainer

DEFAULT_SETTINGS = [{"encoder_init": "random"}, {"encoder_init": "standardized"}]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", help="DictionaryConfig overrides as JSON")
    p.add_argument("--run", default="runs/demo", help="a demo run folder (its acts/ are read)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(OUT / "sweep_transcoder.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    settings = [json.loads(a) for a in args.settings] or DEFAULT_SETTINGS
    acts = Path(args.run) / "acts"
    demo = DemoConfig(**json.loads((Path(args.run) / "demo_cfg.json").read_text()))
    manifest = read_manifest(acts / "train")
    widths = {h["short"]: h["d"] for h in manifest.hooks if h["kind"] in ("mlp_in", "mlp_out")}
    if len(widths) != 2:
        p.error(f"{acts / 'train'} has no mlp_in / mlp_out pair: {[*widths]}")
    hook_in, hook_out = sorted(widths)
    hooks, d = [hook_in, hook_out], widths[hook_in]
    stats = {h: hook_stats(acts / "train", h) for h in hooks}
    train_cfg = demo_train_config(demo, manifest.n_sequences)
    train_cfg.checkpoint_every = 0
    n_eval = read_manifest(acts / "eval").n_tokens
    rows = []
    for overrides in settings:
        cfg = DictionaryConfig(
            d_in=d, d_sae=demo.expansion * d, arch="topk", k=demo.k, hook_in=hook_in,
            hook_out=hook_out, d_out=d, **overrides,
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer = Trainer([cfg], train_cfg, stats=stats)
        reader = ActivationReader(acts / "train", hooks, demo.batch_size, seed=demo.seed)
        dicts = trainer.fit(reader)
        eval_reader = ActivationReader(acts / "eval", hooks, demo.batch_size, shuffle=False)
        metrics = evaluate(dicts, eval_reader, max_tokens=n_eval)[0].to_dict()
        rows.append({"overrides": overrides, **metrics, "seconds": time.perf_counter() - t0})
    print(
        f"\n{hook_in} -> {hook_out}, d_sae {demo.expansion * d}, k {demo.k}, "
        f"{train_cfg.schedule().total_steps} steps x {train_cfg.batch_size} tokens"
    )
    print_table(
        [("overrides", ""), ("FVU", ".4f"), ("L0", ".1f"), ("dead%", ".2f"), ("s", ".0f")],
        [[json.dumps(r["overrides"]), r["fvu"], r["l0"], 100 * r["dead_frac"], r["seconds"]]
         for r in rows],
    )  # fmt: skip
    write_json(args.out, {"machine": machine, "run": args.run, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
