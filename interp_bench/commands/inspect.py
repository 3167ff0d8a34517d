"""`interp-bench inspect DIR`: summarise an activation cache and verify every shard's sha256."""

from __future__ import annotations

import argparse

HELP = "Summarise an activation cache and verify its shard checksums (non-zero exit if corrupt)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="cache dir written by `interp-bench cache`")
    p.add_argument(
        "--no-verify", action="store_true", help="check file sizes only, skip the sha256 pass"
    )


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


def resume_hint(manifest, out) -> str:
    """How to finish an incomplete cache: the command that made it, which resumes."""
    from pathlib import Path

    out = Path(out).resolve()
    m, c = manifest, manifest.config
    if "corpus" not in c:  # written by the demo (acts/<split> inside a run folder)
        run = out.parent.parent if out.parent.name == "acts" else out
        return (
            f"to finish it, rerun the demo that made it (it resumes): interp-bench demo --out {run}"
        )
    cmd = [
        "interp-bench cache",
        f"--model {m.model}",
        f"--hooks {','.join(h['short'] for h in m.hooks)}",
        f"--corpus {c['corpus']}",
        f"--split {c.get('split', 'train')}",
        f"--context-len {m.context_len}",
        f"--dtype {m.dtype}",
        f"--tokens {m.n_tokens_planned}",
        f"--shard-tokens {m.seqs_per_shard * m.context_len}",
        f"--out {out}",
    ]
    return "to finish it, run again (it resumes): " + " ".join(cmd)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from activation_cache.shards import read_manifest, verify

    out = Path(args.dir)
    manifest = read_manifest(out)
    print("\n".join(summary(manifest)))
    if args.no_verify:
        problems = []
        for s in manifest.shards:
            path = out / s.file
            size = path.stat().st_size if path.exists() else -1
            if size != s.bytes:
                problems.append(f"{s.file}: {size} bytes on disk, manifest says {s.bytes}")
    else:
        problems = verify(out)
    if problems:
        print(f"CORRUPT: {len(problems)} of {len(manifest.shards)} shards fail verification")
        for line in problems:
            print(f"  {out / line}")
        print("delete the cache dir and run `interp-bench cache` again")
        return 1
    what = "sizes" if args.no_verify else "sha256"
    print(f"ok: {len(manifest.shards)} shards pass ({what} checked)")
    if not manifest.complete:
        print(resume_hint(manifest, out))
    return 0
