"""Activation streams in stored order, with token positions: from a cache's shards or straight
from the model's forward. Analysis (feature index, reconstruction error) reads either one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from activation_cache.hooks import capture, resolve_hooks
from activation_cache.reader import ActivationReader


def cache_stream(
    cache: str | Path, hooks: list[str], batch_tokens: int = 4096
) -> Iterator[dict[str, Tensor]]:
    """Read cached shards in stored order (no shuffle, BOS kept) with token positions."""
    cache = Path(cache)
    if not (cache / "manifest.json").exists():
        raise FileNotFoundError(
            f"no activation cache at {cache} (manifest.json missing); "
            "run `interp-bench cache` first"
        )
    reader = ActivationReader(
        cache, hooks, batch_tokens, seed=0, shuffle=False, skip_bos=False, with_positions=True
    )
    yield from reader


def model_stream(
    model, tokens: Tensor, hooks: list[str], batch_seqs: int = 8
) -> Iterator[dict[str, Tensor]]:
    """Run the model over token sequences `[n_seq, ctx]` and yield the hooks' activations."""
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError(
            f"expected a non-empty [n_seq, ctx] token tensor, got {tuple(tokens.shape)}"
        )
    specs = resolve_hooks(model, hooks)
    n_seq, ctx = tokens.shape
    for start in range(0, n_seq, batch_seqs):
        batch = tokens[start : start + batch_seqs]
        acts = capture(model, batch, specs)
        b = batch.shape[0]
        out = {name: t.reshape(b * ctx, -1).float().cpu() for name, t in acts.items()}
        out["tokens"] = batch.reshape(-1).to(torch.int32).cpu()
        out["seq"] = torch.arange(start, start + b).repeat_interleave(ctx)
        out["pos"] = torch.arange(ctx, dtype=torch.int32).repeat(b)
        yield out
