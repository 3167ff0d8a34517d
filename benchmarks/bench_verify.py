"""What checking a shard's sha256 before its first read costs, on a shard of the default size.

A default shard (65536 tokens, three SmolLM2-135M hooks of width 576, float16) is ~217 MiB. The
reader hashes it once per process (streamed, 4 MiB blocks) before reading it; this times that
hash against the reader's own read of the same shard (every hook, `read_into`), both from the
page cache, and prints one JSON line. Medians of `--repeats` runs.

    python -m benchmarks.bench_verify
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from activation_cache.shards import ShardView, sha256_file, shard_name, write_shard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--hooks", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"L15.h{i}": torch.randn(args.tokens, args.d, generator=g).half() for i in range(args.hooks)
    }
    tensors |= {
        "tokens": torch.zeros(args.tokens, dtype=torch.int32),
        "seq": torch.arange(args.tokens, dtype=torch.int64) // 128,
        "pos": (torch.arange(args.tokens) % 128).int(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / shard_name(0)
        sha, size = write_shard(path, tensors)
        view = ShardView(path)  # no sha given: read_into does not hash
        bufs = {k: torch.empty_like(v) for k, v in tensors.items() if k.startswith("L15")}
        hash_s, read_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            assert sha256_file(path) == sha
            hash_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for k, b in bufs.items():
                view.read_into(k, b)
            read_s.append(time.perf_counter() - t0)
    h, r = statistics.median(hash_s), statistics.median(read_s)
    print(
        json.dumps(
            {
                "shard_mib": round(size / 2**20, 1),
                "sha256_s": round(h, 3),
                "sha256_gib_s": round(size / 2**30 / h, 2),
                "read_hooks_s": round(r, 3),
                "hash_over_read": round(h / r, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
