"""Fitted against random decoder rows for a TopK transcoder on the test suite's planted data
(`tests/test_trainer.py`'s `planted`: 48 features read through one set of directions and
written through another, d 16, 64 latents, k 4, batches of 128): held-out FVU and dead latents
after 60 and 240 steps, at lr 1e-2 and at the default rule. A small, fast workload where fitting
does not always win (RESULTS.md, "Transcoder decoders fitted at the start")."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import OUT, machine_info, print_table, write_json
from interp_bench.config import DictionaryConfig
from interp_bench.training.trainer import Trainer
from tests.test_trainer import HOOK, HOOK_OUT, D, fvu_raw, planted, tcfg


def run_one(steps: int, init: str, lr: float | None) -> dict:
    cfg = DictionaryConfig(d_in=D, d_sae=64, d_out=D, arch="topk", k=4, hook_in=HOOK,
                           hook_out=HOOK_OUT, decoder_init=init)  # fmt: skip
    trainer = Trainer([cfg], tcfg(lr=lr, grad_clip=1.0, tokens=128 * steps))
    (d,) = trainer.fit(planted(steps))
    return {
        "steps": steps, "decoder_init": init, "lr": trainer.lrs[0],
        "fvu": fvu_raw(d, planted(4, seed=1), HOOK, HOOK_OUT),
        "dead": (trainer.since_fired[0] >= 128 * 10).float().mean().item(),
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT / "planted_fit.json"))
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    machine = machine_info()
    rows = [run_one(s, init, lr) for s in (60, 240) for lr in (1e-2, None)
            for init in ("random", "fit")]  # fmt: skip
    print_table(
        [("steps", "d"), ("decoder", ""), ("lr", ".4g"), ("held-out FVU", ".4f"), ("dead", ".3f")],
        [[r["steps"], r["decoder_init"], r["lr"], r["fvu"], r["dead"]] for r in rows],
    )
    write_json(args.out, {"machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
