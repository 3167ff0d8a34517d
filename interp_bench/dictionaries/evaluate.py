"""Held-out quality of a dictionary: fraction of variance unexplained, L0, dead and dense latents.

Everything streams over batches (sums in float64), so held-out sets of any size fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


def fvu(recon: Tensor, target: Tensor) -> float:
    """Squared error over the target's total variance around its (batch) mean."""
    target = target.reshape(-1, target.shape[-1]).double()
    err = (recon.reshape(target.shape).double() - target).pow(2).sum()
    return (err / (target - target.mean(0)).pow(2).sum().clamp_min(1e-30)).item()


def l0(latents: Tensor) -> float:
    """Mean number of non-zero latents per token."""
    return (latents != 0).sum(-1).double().mean().item()


def dead_fraction(density: Tensor) -> float:
    """Fraction of latents that never fired (``density`` = firing frequency per latent)."""
    return (density == 0).double().mean().item()


def dense_fraction(density: Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of tokens."""
    return (density > threshold).double().mean().item()


@dataclass
class EvalStats:
    n_tokens: int
    fvu: float
    mse: float  # squared error summed over d_out, mean over tokens
    l0: float
    dead_fraction: float
    dense_fraction: float
    density: Tensor  # [d_sae] firing frequency

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if k != "density"}


@torch.no_grad()
def evaluate(
    d,
    batches: Iterable[dict[str, Tensor] | Tensor | tuple[Tensor, Tensor]],
    *,
    max_tokens: int | None = None,
    dense_threshold: float = 0.1,
) -> EvalStats:
    """Run held-out batches through dictionary ``d`` (a SparseDictionary acting on raw
    activations). A batch is a reader dict (keys ``d.cfg.hook_in`` / ``hook_out``), a tensor x
    (SAE) or an ``(x, target)`` pair."""
    dev = d.W_enc.device
    n, sse, l0_sum = 0, 0.0, 0.0
    y_sum = y_sq = None
    fires = torch.zeros(d.d_sae, dtype=torch.float64, device=dev)
    for batch in batches:
        if isinstance(batch, dict):
            x = batch[d.cfg.hook_in]
            y = batch[d.cfg.hook_out] if d.cfg.hook_out else x
        elif isinstance(batch, (tuple, list)):
            x, y = batch
        else:
            x = y = batch
        if max_tokens is not None:
            x, y = x[: max_tokens - n], y[: max_tokens - n]
        x = x.to(dev, torch.float32).reshape(-1, d.d_in)
        y = y.to(dev, torch.float64).reshape(-1, d.d_out)
        if len(x) == 0:
            break
        f = d.encode(x)
        recon = d.decode(f)
        if d.W_skip is not None:
            recon = recon + x @ d.W_skip
        active = f > 0
        sse += (recon.double() - y).pow(2).sum().item()
        l0_sum += active.sum().item()
        fires += active.sum(0).double()
        y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
        y_sq = y.pow(2).sum() if y_sq is None else y_sq + y.pow(2).sum()
        n += len(x)
        if max_tokens is not None and n >= max_tokens:
            break
    if n == 0:
        raise ValueError("no held-out tokens to evaluate on; check the eval split / max_tokens")
    total_var = (y_sq - y_sum.pow(2).sum() / n).item()
    density = (fires / n).float().cpu()
    return EvalStats(
        n_tokens=n,
        fvu=sse / max(total_var, 1e-30),
        mse=sse / n,
        l0=l0_sum / n,
        dead_fraction=dead_fraction(density),
        dense_fraction=dense_fraction(density, dense_threshold),
        density=density,
    )
