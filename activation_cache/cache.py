"""Resumable activation caching: token sequences in, safetensors shards + manifest out.

The cache dir is the unit of resumption. Shards cover whole sequences, in order; after each shard
the manifest is rewritten (temp + rename), so a run killed at any moment, SIGKILL included,
restarts after the last listed shard: a half-written temp file or a shard renamed just before the
kill is simply written again. The manifest's `config` records what determines the contents (model,
hooks, dtype, the exact tokens); a run with a different config refuses to touch the folder.
Batch size and device only change speed, so they may differ between a run and its resumption.

Only files this cache provably wrote are ever removed or replaced: temp files carry the config's
`cache_tag` in their name and shards carry it in their header, so a resumed run deletes exactly
its own leftovers. A folder without a manifest must be empty. An advisory lock (`LOCK`, holding
the owner's pid) makes a second run on the same folder fail at once instead of racing.
Under torchrun (`distributed.py`) the same rules hold; there a folder without a manifest may also
hold a killed run's shards and `rank_*.json` progress files of the same config, and only rank 0
holds the lock (every rank of the job writes into the folder).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .hooks import capturing, hook_width, resolve_hooks
from .shards import (
    MANIFEST,
    STORAGE_DTYPES,
    Manifest,
    ShardError,
    ShardInfo,
    cache_tag,
    read_manifest,
    shard_name,
    shard_tag,
    write_manifest,
    write_shard,
)

LOCK = ".interp-bench.lock"
_SHARD = re.compile(r"^shard_(\d{5,9})\.safetensors$")
_RANK = re.compile(r"^rank_\d{5}\.json$")  # progress of a multi-process run (distributed.py)


def tokens_fingerprint(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def _model_name(model) -> str:
    from .models import model_id

    return model_id(model)


def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check_resumable(out_dir: Path, old: Manifest, config: dict) -> None:
    if old.config != config:
        diff = sorted(
            k for k in set(old.config) | set(config) if old.config.get(k) != config.get(k)
        )
        detail = "; ".join(f"{k}: {old.config.get(k)!r} -> {config.get(k)!r}" for k in diff[:4])
        raise ValueError(
            f"{out_dir} holds a cache made with different arguments ({detail}); "
            "rerun with the original arguments to resume, or pick a new --out"
        )
    for s in old.shards:
        path = out_dir / s.file
        if not path.exists() or path.stat().st_size != s.bytes:
            raise ShardError(
                f"{path}: listed in the manifest but missing or the wrong size; "
                f"run `interp-bench inspect {out_dir}`, then delete the folder and re-cache"
            )


def _ours(path: Path, tag: str) -> bool:
    """Whether `path` provably came from a run of this very cache: a temp file named with its tag,
    a shard whose header carries it, or a multi-process run's progress file (`rank_*.json`, a
    manifest of that rank's shards) recording the same config."""
    if path.name.endswith(".tmp"):
        return f".{tag}." in path.name and path.is_file()
    if _SHARD.match(path.name):
        return shard_tag(path) == tag
    if _RANK.match(path.name):
        try:
            old = Manifest.from_json(path.read_text())
        except (OSError, ValueError, TypeError, KeyError):
            return False
        return cache_tag(old.config) == tag
    return False


def _discard_strays(out_dir: Path, n_done: int, tag: str, keep: set[str] | None = None) -> None:
    """Remove what a killed run of this very cache left behind: temp files named with its tag
    and shards past the manifest (or, `keep` given, not in it) whose header carries its tag. An
    unlisted shard name without our tag is someone else's file: refuse rather than overwrite it
    later."""
    for path in out_dir.iterdir():
        if path.name.endswith(".tmp"):
            if _ours(path, tag):
                path.unlink()
            continue
        m = _SHARD.match(path.name)
        if m is None:
            continue
        if (path.name in keep) if keep is not None else int(m.group(1)) < n_done:
            continue
        if shard_tag(path) != tag:
            raise ValueError(
                f"{path} is not listed in the manifest and was not written by this cache; "
                "move it out of the folder, then rerun"
            )
        path.unlink()


def _refuse_foreign(out_dir: Path, tag: str) -> None:
    """A folder without a manifest may hold only our lock and this cache's own files (temp files,
    and the shards and progress files of a killed multi-process run)."""
    if (out_dir / MANIFEST).exists():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK and not _ours(p, tag))
    if foreign:
        raise ValueError(
            f"{out_dir} is not empty and holds no cache manifest ({', '.join(foreign[:3])}); "
            "pick an empty or new --out (nothing was changed)"
        )


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the cache folder; fail at once, naming the holder."""
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(
                f"{out_dir} is being written by another process (pid {holder}); wait for it "
                "to finish or stop it, or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiter)


def plan_cache(
    model, tokens: torch.Tensor, hooks: list[str] | str, dtype: str, shard_tokens: int, meta
) -> tuple[list, Manifest]:
    """Check the arguments; return the hook specs and the manifest of the cache not yet begun
    (its `config` is what a resumed run must match). Shared with `distributed.py`."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(
            f"dtype {dtype!r} not supported; choose one of {', '.join(STORAGE_DTYPES)}"
        )
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(
            f"tokens must be a non-empty [n_seq, context_len] tensor, got {tuple(tokens.shape)}"
        )
    if shard_tokens < 1:
        raise ValueError("batch_size and shard_tokens must be positive")
    meta = dict(meta or {})
    specs = resolve_hooks(model, hooks)
    n_seq, ctx = tokens.shape
    seqs_per_shard = max(1, shard_tokens // ctx)
    width = {s.short: hook_width(model, s) for s in specs}
    model_name = meta.pop("model", None) or _model_name(model)
    tokenizer = str(meta.pop("tokenizer", ""))
    fingerprint = str(meta.pop("corpus_fingerprint", ""))
    config = {
        "model": model_name,
        "hooks": [s.short for s in specs],
        "dtype": dtype,
        "context_len": ctx,
        "n_sequences": n_seq,
        "seqs_per_shard": seqs_per_shard,
        "tokens_sha256": tokens_fingerprint(tokens),
        "corpus_fingerprint": fingerprint,
        **meta,
    }
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and ctx > n_ctx:
        raise ValueError(
            f"context length {ctx} is longer than the model's n_ctx {n_ctx}; "
            f"use --context-len {n_ctx} or less"
        )
    fresh = Manifest(
        model=model_name,
        hooks=[
            {
                "short": s.short,
                "tl_name": s.tl_name,
                "layer": s.layer,
                "kind": s.kind,
                "d": width[s.short],
            }
            for s in specs
        ],
        dtype=dtype,
        context_len=ctx,
        n_sequences=n_seq,
        seqs_per_shard=seqs_per_shard,
        tokenizer=tokenizer,
        corpus_fingerprint=fingerprint,
        config=config,
    )
    return specs, fresh


def prepare_dir(out_dir: Path, fresh: Manifest) -> None:
    """Create --out, or refuse a file in the way or a folder of other files (before the lock
    file is created in it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; pick another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(out_dir, cache_tag(fresh.config))


def open_cache(out_dir: Path, fresh: Manifest) -> Manifest:
    """In a locked folder: its manifest when it holds a cache of the same config (complete or
    not), else `fresh`; refuses a different config or a folder of other files."""
    if (out_dir / MANIFEST).exists():
        manifest = read_manifest(out_dir)
        _check_resumable(out_dir, manifest, fresh.config)
        if manifest.complete:
            print(
                f"{out_dir}: cache already complete ({manifest.n_tokens:,} tokens), nothing to do"
            )
        return manifest
    _refuse_foreign(out_dir, cache_tag(fresh.config))
    return fresh


def write_indexed_shard(
    capture,
    tokens: torch.Tensor,
    index: int,
    manifest: Manifest,
    out_dir: Path,
    batch_size: int,
    device,
    bar,
) -> ShardInfo:
    """Run the model over shard `index`'s sequences and write the shard (not yet listed)."""
    n_seq, ctx = tokens.shape
    width = {h["short"]: int(h["d"]) for h in manifest.hooks}
    st_dtype = STORAGE_DTYPES[manifest.dtype]
    sps = manifest.seqs_per_shard
    s0, s1 = index * sps, min((index + 1) * sps, n_seq)
    n = (s1 - s0) * ctx
    bufs = {short: torch.empty(n, d, dtype=st_dtype) for short, d in width.items()}
    for b0 in range(s0, s1, batch_size):
        b1 = min(b0 + batch_size, s1)
        acts = capture(tokens[b0:b1].to(device))
        rows = slice((b0 - s0) * ctx, (b1 - s0) * ctx)
        for short, act in acts.items():
            d = width[short]
            if act.shape[-1] != d:
                raise ValueError(f"hook {short} has width {act.shape[-1]}, expected {d}")
            bufs[short][rows].copy_(act.reshape(-1, d))
        bar.update((b1 - b0) * ctx)
    bufs["tokens"] = tokens[s0:s1].reshape(-1).to(torch.int32)
    bufs["seq"] = torch.arange(s0, s1, dtype=torch.int64).repeat_interleave(ctx)
    bufs["pos"] = torch.arange(ctx, dtype=torch.int32).repeat(s1 - s0)
    name = shard_name(index)
    sha, size = write_shard(out_dir / name, bufs, cache_tag(manifest.config))
    return ShardInfo(name, n, s0, s1, sha, size)


def cache_activations(
    model,
    tokens: torch.Tensor,
    hooks: list[str] | str,
    out_dir: str | Path,
    *,
    dtype: str = "float16",
    batch_size: int = 8,
    shard_tokens: int = 65536,
    meta: dict | None = None,
    progress: bool = True,
) -> Manifest:
    """Cache `hooks` for every position of `tokens` [n_seq, ctx] (BOS first) into `out_dir`.

    `meta` is recorded in the manifest: `model` (default `model_id(model)`), `tokenizer` and
    `corpus_fingerprint` go to their own fields, anything else (e.g. `split`) into `config`.
    Everything in `config` (meta, hooks, dtype, the tokens' hash, ...) must match to resume.
    Under torchrun (several ranks), or on a folder a multi-process run left unfinished, each
    rank writes its own share of the shards instead (`distributed.cache_sharded`).
    """
    from . import distributed

    if batch_size < 1:
        raise ValueError("batch_size and shard_tokens must be positive")
    if distributed.world() > 1 or distributed.has_rank_files(out_dir):
        return distributed.cache_sharded(
            model, tokens, hooks, out_dir, dtype=dtype, batch_size=batch_size,
            shard_tokens=shard_tokens, meta=meta, progress=progress,
        )  # fmt: skip
    specs, fresh = plan_cache(model, tokens, hooks, dtype, shard_tokens, meta)
    out_dir = Path(out_dir)
    prepare_dir(out_dir, fresh)
    with locked(out_dir):
        return _fill(model, tokens, specs, out_dir, fresh, batch_size, progress)


def _fill(model, tokens, specs, out_dir: Path, fresh: Manifest, batch_size: int, progress: bool):
    """Resume or start the cache in a locked folder."""
    manifest = open_cache(out_dir, fresh)
    if manifest.complete:
        return manifest
    n_seq, ctx = tokens.shape
    _discard_strays(out_dir, len(manifest.shards), cache_tag(fresh.config))
    write_manifest(out_dir, manifest)

    device = _model_device(model)
    n_shards = -(-n_seq // manifest.seqs_per_shard)
    bar = tqdm(
        total=n_seq * ctx,
        initial=manifest.n_tokens,
        unit="tok",
        unit_scale=True,
        desc=f"caching {out_dir.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, capturing(model, specs) as capture:
        for index in range(len(manifest.shards), n_shards):
            info = write_indexed_shard(
                capture, tokens, index, manifest, out_dir, batch_size, device, bar
            )
            manifest.shards.append(info)
            write_manifest(out_dir, manifest)
    manifest.complete = True
    write_manifest(out_dir, manifest)
    return manifest
