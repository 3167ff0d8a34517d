"""Dead TopK latents back into play (``DictionaryConfig.revive``).

A TopK latent that training pushes below the other latents' pre-activations on every token is
never chosen again, and AuxK reads ReLU'd pre-activations, so one that is also negative there gets
no gradient from anything: it is dead for good. ``recenter_dead`` lifts such latents' encoder bias
to the edge of firing (``revive="recenter"``) or into TopK's range (``revive="fire"``);
``benchmarks/bench_transcoder.py`` compares the remedies.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def recenter_dead(
    b_enc: Tensor, pre: Tensor, dead: Tensor, dead_pre: Tensor, share: float, level: float = 0.0
) -> Tensor:
    """Raise ``b_enc`` of the dead latents that are below ``level`` on all but ``share`` of the
    batch until each is above it on its top ``share``; returns their shifted pre-activations.

    A TopK latent that was pushed below zero everywhere is never chosen, and AuxK reads ReLU'd
    values, so nothing moves it again: it is dead for good (35% of the demo transcoder). Lifted
    to the edge of firing, AuxK trains it toward the residual until TopK picks it. ``pre`` is
    shifted in place when it is a plain tensor, so the values the sparse path gathers from it
    agree with the new bias; otherwise the shift shows from the next step."""
    n = dead_pre.shape[0]
    if n < 2:
        return dead_pre
    m = min(max(1, round(share * n)), n - 1)
    top = dead_pre.topk(m + 1, dim=0).values.float()
    # Midway between the m-th and (m+1)-th largest: exactly m tokens positive, whatever rounding.
    edge = (top[m - 1] + top[m]) / 2
    lift = torch.where(top[m - 1] <= level, level - edge, torch.zeros_like(edge))
    if not lift.any():
        return dead_pre
    b_enc.index_add_(0, dead, lift.to(b_enc.dtype))
    if not pre.requires_grad:
        pre.index_add_(1, dead, lift.to(pre.dtype).expand(pre.shape[0], -1))
    return dead_pre + lift.to(dead_pre.dtype)
