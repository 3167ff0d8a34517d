"""A peer's training step on its own, against the same step beside our trainer.

Our Trainer sets a process-wide glibc option when it is built (`interp_bench.training.allocator`:
freed memory stays in the process), so every lock-step benchmark (bench_train, bench_transcoder,
quality_grid) steps the peers under it too. sparsify gains most: its encoder backward allocates a
``[batch, k, d_in]`` tensor (151 MB at batch 2048) that glibc otherwise maps and faults in afresh
every step. This times each step in a process of its own, the processes alternating round by
round: sparsify as it runs alone (glibc's defaults), sparsify under our setting (as in lock-step),
and ours (which always has it). Read the lock-step ratios against the first.

    python -m benchmarks.peer_alone           # SAE and transcoder, 576 -> 8x, k 32, B 2048
    python -m benchmarks.peer_alone --rounds 2 --steps 10  # quick

Gaussian inputs, no dead latents (sparsify's defaults never run AuxK). Prints a table and writes
benchmarks/out/peer_alone.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

from benchmarks.common import OUT, machine_info, print_table, write_json

RUNNERS = ("sparsify alone", "sparsify + our allocator", "ours")


def make_step(kind: str, runner: str, args: argparse.Namespace):
    """One training step of ``runner`` on a fixed batch (``kind``: sae or transcoder)."""
    d_sae, hooks = args.d_in * args.expansion, ("L0.mlp_in", "L0.mlp_out")
    x = torch.randn(args.batch, args.d_in)
    batch = {hooks[0]: x, hooks[1]: torch.randn_like(x) * 0.5 + 0.1} if kind == "transcoder" else x
    if runner == "ours":
        from interp_bench.config import DictionaryConfig, TrainConfig
        from interp_bench.training.trainer import Trainer

        io = {"hook_in": "x"}
        if kind == "transcoder":
            io = {"hook_in": hooks[0], "hook_out": hooks[1], "d_out": args.d_in}
        cfg = DictionaryConfig(args.d_in, d_sae, k=args.k, **io)
        tc = TrainConfig(batch_size=args.batch, tokens=args.batch * 10**4, checkpoint_every=0)
        trainer = Trainer([cfg], tc, device="cpu")
        data = batch if kind == "transcoder" else {"x": x}
        return lambda: trainer.step(data)
    if runner == "sparsify + our allocator":
        from interp_bench.training.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("our allocator setting needs Linux with glibc")
    if kind == "transcoder":
        from benchmarks.bench_transcoder import Sparsify

        spec = SimpleNamespace(expansion=args.expansion, k=args.k, batch_size=args.batch, seed=0)
        peer = Sparsify(args.d_in, spec, hook_in=hooks[0], hook_out=hooks[1])
        return lambda: peer.step(batch)
    from benchmarks.peers import SparsifyPeer

    sae = SparsifyPeer(args.d_in, d_sae, k=args.k, batch_size=args.batch)
    return lambda: sae.step(x)


def child(args: argparse.Namespace) -> None:
    """Time one runner's steps in this process; print the median as one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kind, runner = args.child.split(":", 1)
    step = make_step(kind, runner, args)
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"ms": 1e3 * statistics.median(times[args.warmup :])}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--kinds", default="sae,transcoder")
    p.add_argument("--rounds", type=int, default=3, help="processes per runner, alternating")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(OUT / "peer_alone.json"))
    args = p.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"sae", "transcoder"}:
        p.error(f"--kinds takes sae,transcoder; got {args.kinds!r}")
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    passed = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in
              ("d_in", "expansion", "k", "batch", "steps", "warmup", "threads")]  # fmt: skip
    ms: dict[tuple[str, str], list[float]] = {(k, r): [] for k in kinds for r in RUNNERS}
    for _ in range(args.rounds):
        for kind, runner in ms:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.peer_alone",
                *passed,
                f"--child={kind}:{runner}",
            ]
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            ms[(kind, runner)].append(json.loads(run.stdout.strip().splitlines()[-1])["ms"])
    rows = []
    for (kind, runner), values in ms.items():
        t = statistics.median(values)
        ours = statistics.median(ms[(kind, "ours")])
        rows.append({
            "kind": kind, "runner": runner, "ms_per_step": round(t, 1),
            "tokens_per_s": round(args.batch / t * 1e3), "ours_speedup": round(t / ours, 2),
            "all_ms": [round(v, 1) for v in values],
        })  # fmt: skip
    print(
        f"one training step, d_in {args.d_in}, {args.expansion}x, k {args.k}, batch {args.batch}, "
        f"{args.threads} threads; median over {args.rounds} processes of {args.steps} steps each"
    )
    print_table(
        [("kind", ""), ("runner", ""), ("ms/step", ".1f"), ("tok/s", ",.0f"), ("ours x", ".2f")],
        [[r["kind"], r["runner"], r["ms_per_step"], r["tokens_per_s"], r["ours_speedup"]]
         for r in rows],
    )  # fmt: skip
    write_json(args.out, {"benchmark": "peer_alone", "args": vars(args), "machine": machine,
                          "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
