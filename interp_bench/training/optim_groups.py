"""How a dictionary's parameters are grouped in its optimiser: the shared learning rate, and
one group per parameter an activation trains at its own multiple of it (JumpReLU's thresholds);
and loading an optimiser state saved under another grouping."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from interp_bench.dictionaries.activations import Activation


def param_groups(module: nn.Module, lr: float, steps: int) -> list[dict[str, Any]]:
    """Optimiser parameter groups of a dictionary for a run of ``steps`` at ``lr``: its
    parameters at the shared learning rate, then one group per parameter name its activations
    scale (``lr_scale``, which the trainer applies). The groups do not depend on the values, so
    the trainer can refresh them once the run's length is known. Every parameter keeps its
    place in ``parameters()`` order (activations are registered last), so one-group optimiser
    states line up."""
    scaled = {
        id(getattr(act, name)): (name, scale)
        for act in module.modules()
        if isinstance(act, Activation)
        for name, scale in act.lr_scales(lr, steps).items()
    }
    groups: dict[str, dict[str, Any]] = {"": {"params": [], "lr_scale": 1.0}}
    for p in module.parameters():
        name, scale = scaled.get(id(p), ("", 1.0))
        groups.setdefault(name, {"params": [], "lr_scale": scale})["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state`` into ``opt``, regrouped as ``opt`` groups its parameters when only the
    grouping differs (a checkpoint from before an activation's ``lr_scales`` split its
    thresholds into a group of their own): the parameters keep their order either way."""
    saved = state["param_groups"]
    ids = [i for g in saved for i in g["params"]]
    sizes = [len(g["params"]) for g in opt.param_groups]
    if [len(g["params"]) for g in saved] != sizes and len(ids) == sum(sizes):
        bounds = itertools.pairwise(itertools.accumulate(sizes, initial=0))
        groups = [
            {**saved[0], "lr_scale": g.get("lr_scale", 1.0), "params": ids[a:b]}
            for g, (a, b) in zip(opt.param_groups, bounds, strict=True)
        ]
        state = {**state, "param_groups": groups}
    opt.load_state_dict(state)
