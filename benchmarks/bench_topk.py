"""TopK dictionary training step (forward + backward, no optimizer): our sparse path vs our dense
path vs EleutherAI sparsify's SparseCoder on the same batch, and a plain matmul of the encoder's
shape as the floor (the one product no TopK implementation can skip).

Timings on a shared machine are noisy, so variants are interleaved round by round and the
median per variant is reported; compare ratios within one run.

    python -m benchmarks.bench_topk                      # d_in 576, d_sae 4608, k 32, B 4096
    python -m benchmarks.bench_topk --batch 1024 --rounds 3   # quick
    python -m benchmarks.bench_topk --threads 1 --batchtopk --dead-fraction 0.3
    python -m benchmarks.bench_topk --transcoder  # mlp_in -> mlp_out: sparsify's transcode mode

With ``--transcoder`` every dictionary reads x and predicts a different target y of the same
width (no b_dec subtracted from the input, no decoder normalisation in sparsify's transcode mode,
AuxK off as in its defaults unless ``--dead-fraction``), which is what bench_transcoder steps.

Rows named part_* time one kernel of the sparse step next to the plain torch op it replaces.

``--allocator keep`` gives every variant the glibc setting our Trainer makes on construction
(``interp_bench.training.allocator``: freed memory stays in the process). It is process-wide, so
every lock-step benchmark (bench_train, bench_transcoder, quality_grid) runs the peers under it
too, and sparsify gains most: its encoder backward allocates a ``[batch, k, d_in]`` tensor (302 MB
at batch 4096) that glibc otherwise maps and faults in afresh every step. The default, ``glibc``,
is how sparsify runs on its own; run both to see the two ratios (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import OUT, machine_info, print_table, write_json
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary
from interp_bench.dictionaries.topk import TopKLayout, topk_rows
from interp_bench.training.allocator import keep_freed_memory


def make_variants(args, x: torch.Tensor, dead: torch.Tensor | None):
    variants = {}
    archs = ["topk", "batchtopk"] if args.batchtopk else ["topk"]
    # A transcoder's target: another hook of the same width (its own statistics).
    y = torch.randn_like(x) * 0.5 + 0.1 if args.transcoder else None
    io = {"hook_in": "L0.mlp_in", "hook_out": "L0.mlp_out"} if args.transcoder else {}
    for arch in archs:
        for mode in ("sparse", "dense"):
            cfg = DictionaryConfig(args.d_in, args.d_sae, arch=arch, k=args.k, decode=mode, **io)
            m = SparseDictionary(cfg)

            def step(m=m):
                m.zero_grad(set_to_none=True)
                m.loss(x, y, dead_mask=dead).loss.backward()

            prefix = "interp_bench" if arch == "topk" else "interp_bench_batchtopk"
            variants[f"{prefix}_{mode}"] = step

    W = torch.randn(args.d_in, args.d_sae) / args.d_in**0.5
    b = torch.zeros(args.d_sae)
    variants["encoder_matmul_only"] = lambda: torch.addmm(b, x, W)
    variants.update(kernel_variants(args, x, W, b))

    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        print("sparsify not installed: skipping the peer")
        return variants
    sc_cfg = SparseCoderConfig(num_latents=args.d_sae, k=args.k, transcode=args.transcoder)
    sc = SparseCoder(args.d_in, sc_cfg)

    def sparsify_step():
        sc.zero_grad(set_to_none=True)
        out = sc(x, y, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32).backward()

    variants["sparsify_SparseCoder"] = sparsify_step
    return variants


def kernel_variants(args, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor):
    """Two kernels of the sparse step against the plain torch op they replace: choosing the
    latents (``topk_rows`` vs ``torch.topk`` on the bf16 selection product) and the weight
    gradient ``S^T @ dense`` (embedding-bag vs a CSR sparse-dense product)."""
    pre = torch.addmm(b, x, W).to(torch.bfloat16)
    layout = TopKLayout(topk_rows(pre, args.k)[1], args.d_sae)
    values = torch.randn(args.batch, args.k)
    csr_t = layout.csr(values).t().to_sparse_csr()  # torch's own transpose, outside the timing
    return {
        "part_select_torch_topk": lambda: pre.topk(args.k, dim=-1, sorted=False),
        "part_select_topk_rows": lambda: topk_rows(pre, args.k),
        "part_grad_W_csr_matmul": lambda: csr_t @ x,
        "part_grad_W_embedding_bag": lambda: layout.t_matmul(values, x),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dead-fraction", type=float, default=0.0, help="AuxK on this many latents")
    p.add_argument("--batchtopk", action="store_true", help="also time BatchTopK sparse/dense")
    p.add_argument("--transcoder", action="store_true", help="transcoders (x -> another y)")
    p.add_argument(
        "--allocator", choices=("glibc", "keep"), default="glibc",
        help="glibc: as a peer runs on its own; keep: our Trainer's setting, for every variant",
    )  # fmt: skip
    p.add_argument("--out", default=str(OUT / "bench_topk.json"))
    args = p.parse_args()
    if args.allocator == "keep" and not keep_freed_memory():
        p.error("--allocator keep needs Linux with glibc")
    torch.set_num_threads(args.threads)
    machine = machine_info()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in)
    dead = None
    if args.dead_fraction > 0:
        dead = torch.rand(args.d_sae) < args.dead_fraction
    variants = make_variants(args, x, dead)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    flop = 2 * args.batch * args.d_in * args.d_sae
    med = {n: statistics.median(t) for n, t in times.items()}
    ours = med["interp_bench_sparse"]
    rows = []
    kind = "transcoder" if args.transcoder else "SAE"
    print(
        f"TopK {kind} step fwd+bwd, d_in={args.d_in} d_sae={args.d_sae} k={args.k} B={args.batch} "
        f"threads={args.threads} dead={args.dead_fraction} allocator={args.allocator} "
        f"(median of {args.rounds})"
    )
    for name, t in med.items():
        row = {
            "variant": name,
            "ms_per_step": round(t * 1e3, 2),
            "encoder_gflops_per_s": round(flop / t / 1e9, 2),
            "time_vs_interp_bench_sparse": round(t / ours, 3),
            "all_ms": [round(v * 1e3, 2) for v in times[name]],
        }
        rows.append(row)
    print_table(
        [("variant", ""), ("ms/step", ".1f"), ("enc-GFLOP/s", ".1f"), ("x sparse time", ".2f")],
        [[r["variant"], r["ms_per_step"], r["encoder_gflops_per_s"],
          r["time_vs_interp_bench_sparse"]] for r in rows],
    )  # fmt: skip
    result = {"benchmark": "bench_topk", "args": vars(args), "machine": machine, "rows": rows}
    if "sparsify_SparseCoder" in med:
        result["speedup_vs_sparsify"] = round(med["sparsify_SparseCoder"] / ours, 3)
        print(f"speed-up of interp_bench sparse over sparsify: {result['speedup_vs_sparsify']}x")
        # The encoder product is the one op both must run: the best any TopK step can do.
        floor = med["sparsify_SparseCoder"] / med["encoder_matmul_only"]
        result["sparsify_over_floor"] = round(floor, 3)
        print(f"sparsify's step / the encoder product alone (the most any speed-up can be): "
              f"{floor:.2f}x")  # fmt: skip
    result["speedup_vs_dense"] = round(med["interp_bench_dense"] / ours, 3)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
