"""Interventions on a graph's features, in the real model.

A feature at (layer, position) is clamped to a value, or scaled by a factor of its activation on
the prompt, through `analysis/steering.py`'s clamp (the transcoder's error term is kept, so a
clamp to the feature's own value is an exact no-op). A CLT feature's change lands on the MLP
output of its layer and of every later layer it writes to. We report the new top next-token logits
and a greedy generation next to the clean ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from interp_bench.analysis.steering import Steer, generate, steering_hooks
from interp_bench.circuits.replacement import TranscoderSet

MODES = ("clamp", "scale")


@dataclass
class Intervention:
    """Clamp feature `feature` of layer `layer`'s transcoder at prompt position `pos` to
    `value`, or (`mode="scale"`) multiply its activation there by `value`."""

    layer: int
    pos: int
    feature: int
    value: float
    mode: str = "clamp"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown intervention mode {self.mode!r}: use one of {MODES}")


@dataclass
class InterventionResult:
    interventions: list[dict]
    clean_top: list[tuple[str, float]]  # (token, probability) at the last position
    top: list[tuple[str, float]]
    clean_generation: str
    generation: str
    kl: float  # KL(clean || intervened) of the last position's next-token distribution
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def intervention_hooks(
    model, transcoders: TranscoderSet, tokens: Tensor, interventions: Sequence[Intervention]
) -> list:
    """Forward hooks applying every intervention (steering clamps at single positions)."""
    from activation_cache.hooks import capture, resolve_hooks

    crosslayer = not isinstance(transcoders, TranscoderSet)  # a CLT: `CrossLayerSet`
    hooks = []
    for iv in interventions:
        if iv.layer not in transcoders.layers:
            raise ValueError(f"no transcoder at layer {iv.layer}: layers {transcoders.layers}")
        d = transcoders.clt if crosslayer else transcoders.dictionaries[iv.layer]
        if not 0 <= iv.pos < tokens.shape[-1]:
            raise ValueError(f"position {iv.pos} outside the prompt (0..{tokens.shape[-1] - 1})")
        value = iv.value
        if iv.mode == "scale":
            spec = resolve_hooks(model, [f"L{iv.layer}.mlp_in"])
            x = capture(model, tokens.reshape(1, -1), spec)[spec[0].short][0, iv.pos]
            with torch.no_grad():
                value = iv.value * float(transcoders.encode(iv.layer, x)[iv.feature])
        steer = Steer(iv.feature, "clamp", value, 1.0, (iv.pos,))
        layer = iv.layer if crosslayer else None  # a CLT feature writes into every later layer
        hooks += steering_hooks(model, d, [steer], skip_first=False, layer=layer)
    return hooks


def _top(tokenizer, logp: Tensor, n: int) -> list[tuple[str, float]]:
    vals, ids = logp.exp().topk(n)
    return [(tokenizer.decode([i]), float(v)) for i, v in zip(ids.tolist(), vals, strict=True)]


@torch.inference_mode()
def intervene(
    model,
    transcoders: TranscoderSet,
    tokens: Tensor,
    interventions: Sequence[Intervention],
    *,
    top: int = 5,
    max_new_tokens: int = 12,
) -> InterventionResult:
    """New top logits and greedy generation with the interventions, next to the clean ones."""
    if not interventions:
        raise ValueError("no interventions given")
    tokens = tokens.reshape(1, -1).to(next(model.parameters()).device)
    hooks = intervention_hooks(model, transcoders, tokens, interventions)
    clean = torch.log_softmax(model(tokens)[0, -1].float(), -1)
    new = torch.log_softmax(model.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1].float(), -1)
    n = tokens.shape[1]
    gen_clean = generate(model, tokens, max_new_tokens=max_new_tokens)[0, n:]
    gen_new = generate(model, tokens, hooks=hooks, max_new_tokens=max_new_tokens)[0, n:]
    tok = model.tokenizer
    return InterventionResult(
        interventions=[asdict(iv) for iv in interventions],
        clean_top=_top(tok, clean, top),
        top=_top(tok, new, top),
        clean_generation=tok.decode(gen_clean.tolist()),
        generation=tok.decode(gen_new.tolist()),
        kl=float((clean.exp() * (clean - new)).sum()),
    )
