"""Caching and reading throughput, each against its own floor, measured in the same run.

1. Caching: tokens/s of `cache_activations` for one hook (default L15.resid_post) on the embedded
   SmolLM2-135M against a plain `inference_mode` forward stopped at the same layer over the same
   batches. Runs alternate (plain, cache, cache, plain, ...) to cancel drift on a shared machine;
   the ratio of medians is the number that matters (target >= 0.9).
2. Reading: activation vectors/s and GB/s of the shuffled `ActivationReader` (paired hooks, as a
   transcoder reads them) and of its sequential mode, against reading the same shard files raw
   with `np.fromfile`; files are in the page cache for both.
3. `--nproc N`: `interp-bench cache` under `torchrun --standalone --nproc_per_node N` against
   one process, same tokens and threads in total (one process gets --threads, each rank
   --threads / N), runs alternated: tokens/s of the caching itself (the time the CLI prints,
   model load excluded) and of the whole command, and the speed-up.

    python -m benchmarks.bench_cache            # default sizes
    python -m benchmarks.bench_cache --quick    # smaller, a couple of minutes on 2 busy cores
    python -m benchmarks.bench_cache --nproc 2 --skip-caching --skip-reading   # ranks vs one
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from activation_cache.cache import cache_activations
from activation_cache.hooks import resolve_hooks, stop_layer
from activation_cache.reader import ActivationReader
from activation_cache.shards import Manifest, ShardInfo, shard_name, write_manifest, write_shard
from benchmarks.common import (
    OUT,
    corpus_tokens,
    machine_info,
    machine_line,
    print_table,
    write_json,
)


def bench_caching(args) -> dict:
    from activation_cache.models import default_device, load_model

    device = args.device or default_device()
    model = load_model("smollm2-135m", device=device)
    specs = resolve_hooks(model, [args.hook])
    n_seq = args.cache_tokens // args.context_len
    tokens, source = corpus_tokens(model, n_seq, args.context_len, "train")
    stop = stop_layer(specs)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def plain() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b0 in range(0, n_seq, args.batch_size):
                model(tokens[b0 : b0 + args.batch_size].to(device), stop_at_layer=stop)
        sync()
        return tokens.numel() / (time.perf_counter() - t0)

    def cached(out: Path) -> float:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        cache_activations(
            model, tokens, [args.hook], out, dtype="float16", batch_size=args.batch_size,
            progress=False,
        )  # fmt: skip
        sync()
        return tokens.numel() / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out = Path(tmp) / "acts"
        plain()  # warm-up: allocator, kernels, page cache for weights
        rates: dict[str, list[float]] = {"plain": [], "cache": []}
        for rep in range(args.reps):
            order = ("plain", "cache") if rep % 2 == 0 else ("cache", "plain")
            for kind in order:
                rates[kind].append(plain() if kind == "plain" else cached(out))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "model": "smollm2-135m",
        "device": device,
        "hook": args.hook,
        "stop_at_layer": stop,
        "tokens_per_pass": tokens.numel(),
        "batch_size": args.batch_size,
        "context_len": args.context_len,
        "token_source": source,
        "reps": args.reps,
        "plain_tok_s": rates["plain"],
        "cache_tok_s": rates["cache"],
        "plain_tok_s_median": med["plain"],
        "cache_tok_s_median": med["cache"],
        "ratio": med["cache"] / med["plain"],
        # each cache run against the plain run next to it: robust to slow drifts in load
        "ratio_pairs_median": statistics.median(
            c / p for c, p in zip(rates["cache"], rates["plain"], strict=True)
        ),
    }


def synthetic_cache(out: Path, n_tokens: int, shard_tokens: int, d: int, ctx: int) -> Manifest:
    """Random fp16 activations for two hooks in the real shard format (no model needed)."""
    hooks = ["L15.mlp_in", "L15.mlp_out"]
    seqs_per_shard = shard_tokens // ctx
    n_seq = n_tokens // ctx
    manifest = Manifest(
        model="synthetic",
        hooks=[
            {"short": h, "tl_name": h, "layer": 15, "kind": h.split(".")[1], "d": d} for h in hooks
        ],
        dtype="float16",
        context_len=ctx,
        n_sequences=n_seq,
        seqs_per_shard=seqs_per_shard,
        complete=True,
    )
    g = torch.Generator().manual_seed(0)
    for i, s0 in enumerate(range(0, n_seq, seqs_per_shard)):
        s1 = min(s0 + seqs_per_shard, n_seq)
        n = (s1 - s0) * ctx
        t = {h: torch.randn(n, d, generator=g).half() for h in hooks}
        t["tokens"] = torch.zeros(n, dtype=torch.int32)
        t["seq"] = torch.arange(s0, s1).repeat_interleave(ctx)
        t["pos"] = torch.arange(ctx, dtype=torch.int32).repeat(s1 - s0)
        sha, size = write_shard(out / shard_name(i), t)
        manifest.shards.append(ShardInfo(shard_name(i), n, s0, s1, sha, size))
    write_manifest(out, manifest)
    return manifest


def bench_reading(args) -> dict:
    d, ctx = 576, args.context_len
    results: dict = {"d": d, "hooks": 2, "stored_dtype": "float16", "batch_size": args.read_batch}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out = Path(tmp)
        manifest = synthetic_cache(out, args.read_tokens, args.shard_tokens, d, ctx)
        files = [out / s.file for s in manifest.shards]
        file_bytes = sum(f.stat().st_size for f in files)
        results |= {"tokens": manifest.n_tokens, "shards": len(files), "file_bytes": file_bytes}

        def raw() -> tuple[float, float]:
            t0 = time.perf_counter()
            total = sum(np.fromfile(f, dtype=np.uint8).size for f in files)
            dt = time.perf_counter() - t0
            return manifest.n_tokens / dt, total / dt / 1e9

        def read(shuffle: bool, dtype: torch.dtype) -> tuple[float, float]:
            r = ActivationReader(
                out, ["L15.mlp_in", "L15.mlp_out"], args.read_batch, shuffle=shuffle,
                buffer_tokens=args.buffer_tokens, dtype=dtype, seed=0,
            )  # fmt: skip
            t0 = time.perf_counter()
            rows = 0
            for batch in r.epoch(0):
                rows += batch["L15.mlp_in"].shape[0]
            dt = time.perf_counter() - t0
            return rows / dt, rows * 2 * d * 2 / dt / 1e9  # stored (fp16) bytes of both hooks

        raw()  # warm the page cache
        cases = {
            "raw": raw,
            "shuffled": lambda: read(True, torch.float32),
            "shuffled_fp16": lambda: read(True, torch.float16),
            "sequential": lambda: read(False, torch.float32),
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        for rep in range(args.reps):
            kinds = list(cases)
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                runs[kind].append(cases[kind]())
    for kind, vals in runs.items():
        results[f"{kind}_vec_s"] = statistics.median(v[0] for v in vals)
        results[f"{kind}_GB_s"] = statistics.median(v[1] for v in vals)
    for kind in cases:
        results[f"{kind}_vs_raw"] = results[f"{kind}_GB_s"] / results["raw_GB_s"]
    return results


def _cache_cli(args, out: Path, nproc: int, threads: int) -> tuple[float, float]:
    """(seconds the CLI reports for caching, wall seconds of the whole command)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    cli = ["-m", "interp_bench.cli", "cache", "--model", "smollm2-135m", "--hooks", args.hook,
           "--tokens", str(args.nproc_tokens), "--context-len", str(args.context_len),
           "--batch-size", str(args.batch_size * args.context_len),  # the CLI counts tokens
           "--shard-tokens", str(args.nproc_shard_tokens),
           "--out", str(out), "--device", args.device or "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(root)}  # fmt: skip
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    run = [sys.executable]
    if nproc > 1:
        run += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    done = subprocess.run([*run, *cli], env=env, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t0
    found = re.findall(r"MiB \(([0-9.]+) s\)", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"caching with {nproc} process(es) failed:\n{done.stderr[-2000:]}")
    return float(found[-1]), wall


def bench_nproc(args) -> dict:
    """One process (all threads, and one thread) against `--nproc` ranks of
    threads / nproc each, on the same tokens, alternated to cancel drift. The speed-up is
    against the faster single-process setting."""
    setups = {  # label: (processes, threads per process)
        "one": (1, args.threads),
        "one_1thread": (1, 1),
        "ranks": (args.nproc, max(1, args.threads // args.nproc)),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in setups}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out = Path(tmp) / "acts"
        _cache_cli(args, out, 1, args.threads)  # warm-up: corpus, converted model, page cache
        for rep in range(args.reps):
            for label in list(setups) if rep % 2 == 0 else list(setups)[::-1]:
                runs[label].append(_cache_cli(args, out, *setups[label]))
    res: dict = {"tokens": args.nproc_tokens, "nproc": args.nproc, "threads_total": args.threads,
                 "shard_tokens": args.nproc_shard_tokens, "hook": args.hook}  # fmt: skip
    for label, got in runs.items():
        res[f"{label}_cache_s"] = [r[0] for r in got]
        res[f"{label}_wall_s"] = [r[1] for r in got]
        res[f"{label}_tok_s"] = args.nproc_tokens / statistics.median(r[0] for r in got)
        res[f"{label}_wall_tok_s"] = args.nproc_tokens / statistics.median(r[1] for r in got)
    best = max(("one", "one_1thread"), key=lambda k: res[f"{k}_tok_s"])
    res["speedup"] = res["ranks_tok_s"] / res[f"{best}_tok_s"]
    res["speedup_wall"] = res["ranks_wall_tok_s"] / max(
        res["one_wall_tok_s"], res["one_1thread_wall_tok_s"]
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for CI and busy machines")
    p.add_argument("--hook", default="L15.resid_post")
    p.add_argument("--cache-tokens", type=int, help="tokens per caching pass (default 4096)")
    p.add_argument("--read-tokens", type=int, help="tokens in the read benchmark (default 262144)")
    p.add_argument("--context-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    p.add_argument("--read-batch", type=int, default=4096, help="activation vectors per batch")
    p.add_argument("--buffer-tokens", type=int, default=1 << 18)
    p.add_argument("--shard-tokens", type=int, default=65536)
    p.add_argument("--reps", type=int, help="alternating repetitions (default 5, quick 3)")
    p.add_argument("--device", help="default: cuda when present")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tmp", help="folder for temporary caches (default: system temp)")
    p.add_argument("--skip-caching", action="store_true")
    p.add_argument("--skip-reading", action="store_true")
    p.add_argument("--nproc", type=int, help="also time torchrun with this many ranks vs one")
    p.add_argument("--nproc-tokens", type=int, default=16384, help="tokens for --nproc runs")
    p.add_argument("--nproc-shard-tokens", type=int, default=2048)
    args = p.parse_args()
    args.cache_tokens = args.cache_tokens or (1024 if args.quick else 4096)
    args.read_tokens = args.read_tokens or (65536 if args.quick else 262144)
    args.reps = args.reps or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)

    result = {"machine": machine_info()}
    if not args.skip_caching:
        result["caching"] = bench_caching(args)
    if not args.skip_reading:
        result["reading"] = bench_reading(args)
    if args.nproc:
        result["nproc"] = bench_nproc(args)
    result["machine"]["loadavg_end"] = os.getloadavg()

    print(f"\n{result['machine']['command']}\n{machine_line(result['machine'])}")
    if "caching" in result:
        c = result["caching"]
        print(f"\ncaching {c['hook']} on {c['model']} ({c['device']}), {c['tokens_per_pass']} "
              f"tokens/pass x {c['reps']} reps, {c['token_source']}")  # fmt: skip
        print_table(
            [("", ""), ("tok/s (median)", ".0f"), ("runs", "")],
            [[name, c[f"{k}_tok_s_median"], " ".join(f"{v:.0f}" for v in c[f"{k}_tok_s"])]
             for k, name in (("plain", "plain forward, stopped"), ("cache", "cache_activations"))],
        )  # fmt: skip
        print(f"ratio cache / plain {c['ratio']:.3f} (target >= 0.9); "
              f"median of paired ratios {c['ratio_pairs_median']:.3f}")  # fmt: skip
    if "reading" in result:
        r = result["reading"]
        print(f"\nreading {r['tokens']:,} tokens x {r['hooks']} hooks (d {r['d']}, fp16 on disk, "
              f"batches of {r['batch_size']}), {r['shards']} shards, "
              f"{r['file_bytes'] / 1e6:.0f} MB")  # fmt: skip
        cases = (
            ("raw", "np.fromfile, whole files"),
            ("shuffled", "reader shuffled, fp32 out"),
            ("shuffled_fp16", "reader shuffled, fp16 out"),
            ("sequential", "reader in order, fp32 out"),
        )
        print_table(
            [("(GB/s of fp16 data read)", ""), ("vectors/s", ",.0f"), ("GB/s", ".2f"),
             ("vs raw", ".2f")],
            [[name, r[f"{k}_vec_s"], r[f"{k}_GB_s"], r[f"{k}_vs_raw"]] for k, name in cases],
        )  # fmt: skip
    if "nproc" in result:
        n = result["nproc"]
        print(f"\ncaching {n['tokens']:,} tokens ({n['hook']}, smollm2-135m, shards of "
              f"{n['shard_tokens']}), {n['threads_total']} threads in all, "
              f"{args.reps} runs each")  # fmt: skip
        print(f"{'':30}{'caching tok/s':>14}{'whole command tok/s':>22}")
        for label, name in (("one", f"one process, {args.threads} threads"),
                            ("one_1thread", "one process, 1 thread")):  # fmt: skip
            print(f"{name:30}{n[f'{label}_tok_s']:>14.0f}{n[f'{label}_wall_tok_s']:>22.0f}")
        print(f"{'torchrun, ' + str(n['nproc']) + ' ranks':30}{n['ranks_tok_s']:>14.0f}"
              f"{n['ranks_wall_tok_s']:>22.0f}")  # fmt: skip
        print(f"{'speed-up vs the faster one':30}{n['speedup']:>14.2f}{n['speedup_wall']:>22.2f}")
    write_json(OUT / "bench_cache.json", result)


if __name__ == "__main__":
    main()
