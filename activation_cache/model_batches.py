"""Training batches straight from a model's forward, for when a cache of every layer would not fit
on disk: one forward per batch feeds every hook (so every dictionary), nothing is stored.

Same contract as :class:`activation_cache.reader.ActivationReader` for the trainer: iterating
yields ``{short hook name: Tensor[B, d]}`` (all hooks of the same tokens), and
``batches(epoch, start_batch)`` starts anywhere without running the skipped forwards. The order is
a seeded permutation of the sequences per (seed, epoch), so a resumed run reads exactly the batches
the uninterrupted run would have read.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from activation_cache.hooks import capturing, resolve_hooks


class ModelBatches:
    """Batches of ``batch_size // (ctx - 1)`` whole sequences (BOS positions left out, as the
    cache reader does): ``batch_size`` tokens per batch when it is a multiple of ``ctx - 1``."""

    def __init__(
        self,
        model,
        tokens: Tensor,
        hooks: list[str] | str,
        batch_size: int,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        forward_batch: int = 32,
    ) -> None:
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be [n_seq, ctx >= 2], got {tuple(tokens.shape)}")
        self.model = model
        self.tokens = tokens
        self.specs = resolve_hooks(model, hooks)
        self.hooks = [s.short for s in self.specs]
        per_seq = tokens.shape[1] - 1
        self.seqs_per_batch = batch_size // per_seq
        if self.seqs_per_batch < 1:
            raise ValueError(
                f"--batch-size {batch_size} is less than one sequence ({per_seq} tokens after "
                f"BOS); use at least {per_seq}"
            )
        self.batch_size = self.seqs_per_batch * per_seq
        self.seed = seed
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.forward_batch = forward_batch
        self.n_batches = tokens.shape[0] // self.seqs_per_batch
        if self.n_batches == 0:
            raise ValueError(
                f"{tokens.shape[0]} sequences make no batch of {self.seqs_per_batch}; "
                "lower --batch-size or use a larger corpus"
            )
        self.n_tokens = self.n_batches * self.batch_size

    def __len__(self) -> int:
        return self.n_batches

    def order(self, epoch: int) -> Tensor:
        """The sequence order of one epoch: a permutation fixed by (seed, epoch)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.tokens.shape[0], generator=g)

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, Tensor]]:
        order = self.order(epoch)
        s = self.seqs_per_batch
        with capturing(self.model, self.specs) as run:
            for b in range(start_batch, self.n_batches):
                seqs = self.tokens[order[b * s : (b + 1) * s]]
                parts: dict[str, list[Tensor]] = {h: [] for h in self.hooks}
                for c in range(0, s, self.forward_batch):  # bounded forward memory
                    acts = run(seqs[c : c + self.forward_batch].to(_device(self.model)))
                    for h in self.hooks:
                        parts[h].append(acts[h][:, 1:])
                yield {
                    h: torch.cat(p).reshape(-1, p[0].shape[-1]).to(self.device, self.dtype).clone()
                    for h, p in parts.items()
                }

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.batches(0, 0)


def _device(model) -> torch.device:
    return next(model.parameters()).device
