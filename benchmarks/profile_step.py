"""Where one TopK training step's time goes: torch profiler over our Trainer's step.

bench_train says how fast the step is against the peers; this says which ops to work on next.
Same shapes as bench_train (d_in 576, d_sae 4608, k 32, batch 4096), Gaussian activations.

    python -m benchmarks.profile_step [--steps 10] [--threads 2]

Prints the ops by self CPU time and writes benchmarks/out/profile_step.json (ms per step).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import OUT, machine_info, write_json
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.training.trainer import Trainer

HOOK = "L15.resid_post"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    x = torch.randn(args.batch_size, 576) + 1.0
    cfg = DictionaryConfig(d_in=576, d_sae=4608, arch="topk", k=32, hook_in=HOOK)
    # The settings TrainConfig had as fixed defaults when the recorded profiles were taken.
    tc = TrainConfig(
        batch_size=args.batch_size, tokens=10**9, checkpoint_every=0, warmup_steps=100,
        sparsity_warmup_steps=1000, dead_tokens=10_000_000,
    )  # fmt: skip
    trainer = Trainer([cfg], tc, device="cpu")
    for _ in range(3):  # warm up allocator and kernels
        trainer.step({HOOK: x})
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.step({HOOK: x})
    step_ms = (time.perf_counter() - t0) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            trainer.step({HOOK: x})
    events = prof.key_averages(group_by_input_shape=True)
    print(f"step {step_ms:.1f} ms unprofiled ({args.batch_size / step_ms * 1e3:,.0f} tok/s)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=32))
    rows = sorted(
        (
            {
                "op": e.key,
                "shapes": str(e.input_shapes),
                "ms_per_step": e.self_cpu_time_total / 1e3 / args.steps,
            }
            for e in events
        ),
        key=lambda r: -r["ms_per_step"],
    )[:30]
    write_json(OUT / "profile_step.json", {"machine": machine, "step_ms": step_ms, "ops": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
