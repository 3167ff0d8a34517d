"""Which latents a held-out set scores as never firing, and what they did in training.

Trains our default dictionary on one quality-grid cell (its cache, its batches), records every
latent's last firing step, then scores the held-out tokens: of the latents that never fire there,
how many never fired in training, when the others last did, how many the trainer counted dead
(its window) at the end, and how far below each token's k-th largest pre-activation they stay.
This is what showed the never-firing latents of the deep transcoders to be rare, not dead
(RESULTS.md, "Never-firing latents are mostly rare, not dead").

    python -m benchmarks.rare_latents --hook "L15.mlp_in>L15.mlp_out" --steps 390

Needs the grid's cache (`benchmarks.quality_grid` writes it under the same --acts-dir); prints
a table, writes JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import OUT, machine_info, machine_line, print_table, write_json
from benchmarks.quality_grid import Ours, load_eval, split_hook, train_batches

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def quantiles(t: torch.Tensor) -> list[float]:
    return [] if t.numel() == 0 else torch.quantile(t.float(), torch.tensor(QUANTILES)).tolist()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hook", default="L15.mlp_in>L15.mlp_out", help="a grid hook or in>out")
    p.add_argument("--steps", type=int, default=390)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--acts-dir", default=str(OUT / "grid_acts"), help="quality_grid's --acts-dir")
    p.add_argument("--model-folder", default="smollm2-135m-ctx128",
                   help="quality_grid's model-and-context folder under --acts-dir")  # fmt: skip
    p.add_argument("--train", default="train-1474560", help="train split folder name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT / "rare_latents.json"))
    args = p.parse_args(argv)
    for name in ("steps", "width", "k", "batch_size", "eval_tokens", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    hooks = split_hook(args.hook)
    root = Path(args.acts_dir) / args.model_folder
    found = root.iterdir() if root.is_dir() else []
    folders = [f for f in found if set(hooks) <= set(f.name.split("+"))]
    if not folders:
        p.error(f"no cache of {', '.join(hooks)} under {root}; run benchmarks.quality_grid first")
    base = folders[0]
    held = load_eval(base / "eval", hooks, args.eval_tokens)
    d_in = held[hooks[0]].shape[1]
    ours = Ours(args.hook, d_in, d_in * args.width, args.k, args.batch_size,
                args.steps * args.batch_size, args.seed)  # fmt: skip
    trainer, n = ours.trainer, d_in * args.width
    last_fire = torch.full((n,), -1)
    batches = train_batches(base / args.train, hooks, args.batch_size, args.seed)
    for step in range(args.steps):
        ours.step(next(batches))
        last_fire[trainer.since_fired[0] == 0] = step
    window = trainer.schedule.dead_window(trainer.cfgs[0])
    dead_in_training = trainer.since_fired[0] >= window
    d = ours.dictionary()
    with torch.no_grad():
        pre = d.pre_acts(held[hooks[0]])
        top = pre.topk(args.k, dim=1)
        fired = torch.zeros(n, dtype=torch.bool)
        fired[top.indices[top.values > 0]] = True
        margin = (pre - top.values[:, -1:]).max(0).values  # best token's margin to the k-th
    never = ~fired
    row = {
        "hook": args.hook, "steps": args.steps, "d_sae": n, "window_tokens": window,
        "never_fire_held_out": int(never.sum()),
        "never_fired_in_training": int((never & (last_fire < 0)).sum()),
        "dead_in_training_at_end": int(dead_in_training.sum()),
        "never_fire_last_step_q": quantiles(last_fire[never & (last_fire >= 0)]),
        "never_fire_margin_q": quantiles(margin[never]),
        "alive_margin_q": quantiles(margin[fired]),
        "never_fire_b_enc_median": d.b_enc[never].median().item() if never.any() else None,
        "alive_b_enc_median": d.b_enc[fired].median().item(),
    }  # fmt: skip
    machine = machine_info()
    print(f"{args.hook}, {args.steps} steps of {args.batch_size}, d_sae {n}, k {args.k}; "
          f"dead window {window:,} tokens; {machine_line(machine)}")  # fmt: skip
    print_table(
        [("never fire (held-out)", "d"), ("of them never in training", "d"),
         ("dead at the end (window)", "d"), ("their last step: min / median / max", "s"),
         ("their margin to k-th: median", ".3f"), ("alive margin: median", ".3f")],
        [[row["never_fire_held_out"], row["never_fired_in_training"],
          row["dead_in_training_at_end"],
          " / ".join(f"{q:.0f}" for q in row["never_fire_last_step_q"][::2]) or "-",
          (row["never_fire_margin_q"] or [0, 0, float("nan")])[2], row["alive_margin_q"][2]]],
    )  # fmt: skip
    write_json(args.out, {"benchmark": "rare_latents", "args": vars(args), "machine": machine,
                          "rows": [row]})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
