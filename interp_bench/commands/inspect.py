"""`interp-bench inspect DIR`: summarise an activation cache and verify every shard.

Each shard's header is compared with its manifest entry (rows, hook widths, the sequence range
its `seq` column covers) and its sha256 checked; `--deep` also scans the activations for NaN/inf.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

HELP = "Summarise an activation cache and verify its shards (non-zero exit if corrupt)."
_SCAN_ROWS = 1 << 16  # rows per chunk of the --deep scan: bounded memory on any shard


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="cache dir written by `interp-bench cache`")
    p.add_argument(
        "--no-verify", action="store_true", help="check file sizes only, skip the sha256 pass"
    )
    p.add_argument("--deep", action="store_true", help="also scan activations for NaN/inf")


def summary(manifest) -> list[str]:
    m = manifest
    state = "complete" if m.complete else f"incomplete: {m.n_tokens / m.n_tokens_planned:.0%}"
    lines = [
        f"model       {m.model}",
        f"tokenizer   {m.tokenizer or '-'}",
        f"corpus      {m.config.get('corpus', '-')} (split {m.config.get('split', '-')}, "
        f"fingerprint {m.corpus_fingerprint[:16] or '-'})",
        f"dtype       {m.dtype}",
        f"context     {m.context_len} tokens (BOS first)",
        f"tokens      {m.n_tokens:,} of {m.n_tokens_planned:,} ({state})",
        f"shards      {len(m.shards)} ({m.seqs_per_shard} sequences each), "
        f"{m.total_bytes:,} bytes ({m.total_bytes / 2**20:.1f} MiB)",
        "hooks",
    ]
    for h in m.hooks:
        lines.append(f"  {h['short']:<18} d={h['d']:<6} {h['tl_name']}")
    return lines


def resume_command(manifest, out) -> str:
    """The command that finishes this cache (it resumes): the demo's, for a cache inside a demo
    run folder (RUN/acts/{train,eval}), else `interp-bench cache` with the same arguments."""
    out = Path(out)
    if out.parent.name == "acts" and out.name in ("train", "eval"):
        return shlex.join(["interp-bench", "demo", "--out", str(out.parent.parent.resolve())])
    c = manifest.config
    args = ["interp-bench", "cache", "--model", manifest.model, "--hooks", ",".join(c["hooks"])]
    if c.get("corpus"):
        args += ["--corpus", str(c["corpus"])]
    if c.get("split"):
        args += ["--split", str(c["split"])]
    args += ["--dtype", manifest.dtype, "--context-len", str(manifest.context_len)]
    args += ["--tokens", str(manifest.n_tokens_planned)]
    args += ["--shard-tokens", str(manifest.seqs_per_shard * manifest.context_len)]
    return shlex.join([*args, "--out", str(out)])


def shard_problems(out, manifest, *, sha: bool, deep: bool) -> list[str]:
    """One line per bad shard: missing, wrong size, header unlike the manifest, seq range,
    sha256, and (deep) non-finite activations."""
    import numpy as np
    import torch

    from activation_cache.shards import ShardError, ShardView, sha256_file, to_torch

    widths = {h["short"]: int(h["d"]) for h in manifest.hooks}
    problems: list[str] = []
    for s in manifest.shards:
        path = out / s.file
        size = path.stat().st_size if path.exists() else -1
        if size != s.bytes:
            what = "missing" if size < 0 else f"{size} bytes on disk, manifest says {s.bytes}"
            problems.append(f"{s.file}: {what}")
            continue
        try:
            view = ShardView(path)
            view.check(s, widths)
        except ShardError as err:
            problems.append(f"{s.file}: {str(err).removeprefix(str(path) + ': ')}")
            continue
        seq = view.array("seq")
        if len(seq) and (int(seq[0]) != s.seq_start or int(seq[-1]) != s.seq_end - 1):
            problems.append(
                f"{s.file}: holds sequences {int(seq[0])}..{int(seq[-1])}, manifest says "
                f"{s.seq_start}..{s.seq_end - 1} (shards swapped?)"
            )
            continue
        if sha and sha256_file(path) != s.sha256:
            problems.append(f"{s.file}: sha256 mismatch (corrupt)")
            continue
        if deep:
            for h in widths:
                arr = view.array(h)
                bad = 0
                for a in range(0, len(arr), _SCAN_ROWS):
                    x = to_torch(np.asarray(arr[a : a + _SCAN_ROWS]), view.dtype(h))
                    bad += int((~torch.isfinite(x)).any(1).sum())
                if bad:
                    problems.append(f"{s.file}: {h} has {bad} rows with NaN/inf")
    return problems


def run(args: argparse.Namespace) -> int:
    from activation_cache.shards import read_manifest

    out = Path(args.dir)
    manifest = read_manifest(out)
    print("\n".join(summary(manifest)))
    problems = shard_problems(out, manifest, sha=not args.no_verify, deep=args.deep)
    if problems:
        print(f"CORRUPT: {len(problems)} of {len(manifest.shards)} shards fail verification")
        for line in problems:
            print(f"  {out / line}")
        print("delete the cache dir and run `interp-bench cache` again")
        return 1
    what = ("sizes" if args.no_verify else "sha256") + (", NaN/inf" if args.deep else "")
    print(f"ok: {len(manifest.shards)} shards pass (headers, {what} checked)")
    if not manifest.complete:
        print(f"incomplete: finish it with `{resume_command(manifest, out)}` (it resumes)")
    return 0
