"""An exponential moving average of a dictionary's iterates (TrainConfig.weight_average).

A short run's last iterate is noisy on the few massive-activation tokens; an average of the
iterates is not (sparsify evaluates a schedule-free average of its own). The average covers the
module's whole state (parameters and buffers, e.g. BatchTopK's threshold), whatever its kind,
and every DDP rank keeps its own: they all hold the same weights, so no communication.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

Average = dict[str, torch.Tensor]


def ema_decay(fraction: float, total_steps: int) -> float:
    """Per-step decay of an average that remembers ``fraction`` of a ``total_steps`` run."""
    return 1.0 - 1.0 / max(1.0, fraction * total_steps)


@torch.no_grad()
def start_average(module: nn.Module) -> Average:
    """The average before any step: a copy of the module's state."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def update_average(average: Average, module: nn.Module, decay: float) -> None:
    """``average = decay * average + (1 - decay) * state``; a non-float entry takes the state's."""
    for k, v in module.state_dict().items():
        a = average[k]
        if a.is_floating_point():
            a.lerp_(v, 1.0 - decay)
        else:
            a.copy_(v)


@torch.no_grad()
def averaged_copy(module: nn.Module, average: Average) -> nn.Module:
    """A copy of ``module`` holding the average. Where training keeps decoder rows at unit norm,
    the average's rows (means of unit vectors, shorter) are renormalised by the module's own
    ``fold_decoder_norms``, which moves each row's norm into its latent's encoder side."""
    out = copy.deepcopy(module)
    out.load_state_dict(average)
    if out.unit_decoder:
        out.fold_decoder_norms()
    return out
