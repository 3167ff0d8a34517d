"""AuxK's two paths on one machine, one process: a TopK dictionary's training loss forward +
backward with AuxK through the sparse kernels against dense products over the dead latents only
(`interp_bench.dictionaries.auxk`), at several dead fractions. The two are interleaved round by
round, alternating which goes first (so load and warm caches hit both alike), by switching
``auxk.DENSE_AUX_MAX``; the row "dead 0" is the same
step twice (no AuxK) and shows the noise. Where the ratio crosses 1 is where ``DENSE_AUX_MAX``
belongs (in units of k_aux = d_out / 2 latents). A third column, dense products over every
``--stride``-th row of the batch (``DictionaryConfig.auxk_stride``, the default 4), shows what
reading fewer rows saves; the first two read every row.

    python -m benchmarks.bench_auxk                 # SAE, d 576, d_sae 4608, k 32, B 4096
    python -m benchmarks.bench_auxk --transcoder

Prints a table and writes benchmarks/out/bench_auxk.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import OUT, machine_info, print_table, write_json
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, auxk

# DENSE_AUX_MAX forcing each path, and AuxK's stride over the rows (None: --stride)
PATHS = {"sparse": (0.0, 1), "dense": (float("inf"), 1), "dense_stride": (float("inf"), None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dead", default="0,0.05,0.1,0.2,0.25,0.3,0.4", help="dead fractions")
    p.add_argument("--transcoder", action="store_true")
    p.add_argument("--stride", type=int, default=4, help="AuxK's stride for dense_stride")
    p.add_argument("--out", default=str(OUT / "bench_auxk.json"))
    args = p.parse_args()
    if args.stride < 1:
        p.error(f"--stride must be at least 1, got {args.stride}")
    torch.set_num_threads(args.threads)
    machine = machine_info()
    torch.manual_seed(0)
    io = {"hook_in": "L0.mlp_in", "hook_out": "L0.mlp_out", "d_out": args.d_in}
    cfg = DictionaryConfig(
        args.d_in, args.d_sae, k=args.k, **(io if args.transcoder else {"hook_in": "L0.x"})
    )
    m = SparseDictionary(cfg)
    x = torch.randn(args.batch, args.d_in)
    y = torch.randn(args.batch, args.d_in) if args.transcoder else None
    k_aux = cfg.auxk_k or m.d_out // 2

    def step(dead: torch.Tensor | None) -> float:
        for q in m.parameters():
            q.grad = None
        t0 = time.perf_counter()
        m.loss(x, y, dead_mask=dead).loss.backward()
        return time.perf_counter() - t0

    rows = []
    saved = auxk.DENSE_AUX_MAX
    try:
        for frac in (float(f) for f in args.dead.split(",")):
            n = int(frac * args.d_sae)
            dead = torch.zeros(args.d_sae, dtype=torch.bool)
            dead[torch.randperm(args.d_sae)[:n]] = True
            times: dict[str, list[float]] = {k: [] for k in PATHS}
            for r in range(args.rounds + 1):  # round 0 warms up
                order = list(PATHS.items())  # alternate which path goes first: no order bias
                for name, (limit, stride) in order if r % 2 else order[::-1]:
                    auxk.DENSE_AUX_MAX, m.cfg.auxk_stride = limit, stride or args.stride
                    t = step(dead if n else None)
                    if r:
                        times[name].append(t)
            s, d, q = (statistics.median(times[k]) * 1e3 for k in PATHS)
            rows.append({"dead_fraction": frac, "n_dead": n, "dead_per_k_aux": n / k_aux,
                         "sparse_ms": round(s, 1), "dense_ms": round(d, 1),
                         "dense_over_sparse": round(d / s, 3), "dense_stride_ms": round(q, 1),
                         "dense_stride_over_dense": round(q / d, 3)})  # fmt: skip
    finally:
        auxk.DENSE_AUX_MAX = saved
    print(f"AuxK paths, {'transcoder' if args.transcoder else 'SAE'} d_in {args.d_in} d_sae "
          f"{args.d_sae} k {args.k} k_aux {k_aux} B {args.batch}, median of {args.rounds}; "
          f"DENSE_AUX_MAX = {saved}")  # fmt: skip
    print_table(
        [("dead", ".2f"), ("n dead", "d"), ("/ k_aux", ".2f"), ("sparse ms", ".1f"),
         ("dense ms", ".1f"), ("dense/sparse", ".2f"), (f"stride {args.stride} ms", ".1f"),
         ("stride/dense", ".2f")],
        [[r["dead_fraction"], r["n_dead"], r["dead_per_k_aux"], r["sparse_ms"], r["dense_ms"],
          r["dense_over_sparse"], r["dense_stride_ms"], r["dense_stride_over_dense"]]
         for r in rows],
    )  # fmt: skip
    write_json(args.out, {"benchmark": "bench_auxk", "args": vars(args), "machine": machine,
                          "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
