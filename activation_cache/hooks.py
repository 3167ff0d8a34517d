"""Named hook points and one-forward capture.

A hook is written `L<layer>.<kind>` (e.g. `L15.resid_post`). It maps onto a transformer-lens
name that exists in `model.hook_dict`, so the same short names work on `HookedTransformer` and on
a `TransformerBridge` in compatibility mode. `mlp_in` is what the MLP actually reads (the output of
the second norm, after its weight): a transcoder maps from it, and splicing one in is only exact if
its input is exactly that tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

KINDS = ("resid_pre", "resid_post", "mlp_in", "mlp_out", "attn_out", "z")

# Candidate transformer-lens names per kind, first present wins. The bridge exposes the norm's
# final output as `ln2.hook_out` (its `ln2.hook_normalized` can be before the weight);
# HookedTransformer has no `ln2.hook_out` and its `ln2.hook_normalized` is after weight and bias.
# Models without a second norm feed the MLP `hook_mlp_in` directly.
_CANDIDATES = {
    "resid_pre": ("blocks.{L}.hook_resid_pre",),
    "resid_post": ("blocks.{L}.hook_resid_post",),
    "mlp_in": ("blocks.{L}.ln2.hook_out", "blocks.{L}.ln2.hook_normalized"),
    "mlp_out": ("blocks.{L}.hook_mlp_out",),
    # attention: its output (after W_O, summed over heads) and the per-head values before W_O
    # (`z`, [.., n_heads, d_head], stored flattened to n_heads * d_head as SAELens does)
    "attn_out": ("blocks.{L}.hook_attn_out",),
    "z": ("blocks.{L}.attn.hook_z",),
}

_SHORT = re.compile(r"^L(\d+)\.([a-z_]+)$")


@dataclass(frozen=True)
class HookSpec:
    layer: int
    kind: str
    short: str  # "L15.resid_post"
    tl_name: str  # "blocks.15.hook_resid_post"


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def hook_width(model, spec: HookSpec) -> int:
    """Width of the stored activation: n_heads * d_head for `z`, else d_model."""
    if spec.kind == "z":
        return int(model.cfg.n_heads) * int(model.cfg.d_head)
    return int(model.cfg.d_model)


def flat(act: torch.Tensor) -> torch.Tensor:
    """[.., n_heads, d_head] -> [.., n_heads * d_head] for `z`; other hooks pass unchanged."""
    return act.flatten(-2) if act.ndim == 4 else act


def like(value: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """`value` ([.., d] or a scalar) in the shape and dtype of the hook's own `act`."""
    value = value.to(act.dtype)
    if act.ndim == 4 and value.ndim >= 1:
        value = value.reshape(*value.shape[:-1], *act.shape[-2:])
    return value


def _tl_name(model, layer: int, kind: str) -> str:
    names = model.hook_dict
    for pattern in _CANDIDATES[kind]:
        name = pattern.format(L=layer)
        if name in names:
            _check_folded(model, kind, name)
            return name
    if kind == "mlp_in" and getattr(model.cfg, "normalization_type", "LN") is None:
        name = f"blocks.{layer}.hook_mlp_in"
        if name in names:
            return name
    raise ValueError(
        f"this model has no hook for {kind} at layer {layer} "
        f"(looked for {', '.join(p.format(L=layer) for p in _CANDIDATES[kind])})"
    )


def _check_folded(model, kind: str, name: str) -> None:
    """An unfolded LN/RMS norm applies its weight after `hook_normalized`, so that hook is not
    what the MLP reads; folding moves the weight into the MLP and makes it exact."""
    norm = getattr(model.cfg, "normalization_type", None)
    if kind == "mlp_in" and name.endswith("ln2.hook_normalized") and norm in ("LN", "RMS"):
        raise ValueError(
            f"mlp_in on a model with unfolded {norm} norms is not what the MLP reads; load it "
            "with HookedTransformer.from_pretrained(..., fold_ln=True) (load_model does) or call "
            "model.process_weights_(fold_ln=True) first"
        )


def hooked_transformer_name(short: str) -> str:
    """The HookedTransformer name of a short hook name, without a model at hand (what a saved
    dictionary's cfg.json records for SAELens, which loads HookedTransformer models); HT's name is
    the last candidate of each kind. Anything else is returned unchanged."""
    m = _SHORT.match(short)
    if m is None or m.group(2) not in _CANDIDATES:
        return short
    return _CANDIDATES[m.group(2)][-1].format(L=m.group(1))


def resolve_hooks(model, hooks: list[str] | str) -> list[HookSpec]:
    """Parse `L8.resid_post`-style names (a list or a comma-separated string) for this model."""
    if isinstance(hooks, str):
        hooks = [h for h in (s.strip() for s in hooks.split(",")) if h]
    if not hooks:
        raise ValueError("no hooks given: pass e.g. --hooks L15.resid_post,L15.mlp_out")
    n = n_layers(model)
    valid = f"valid: L<layer>.<kind> with layer 0..{n - 1} and kind one of {', '.join(KINDS)}"
    specs: list[HookSpec] = []
    for raw in hooks:
        m = _SHORT.match(raw)
        if m is None or m.group(2) not in KINDS:
            raise ValueError(f"unknown hook {raw!r}; {valid}")
        layer, kind = int(m.group(1)), m.group(2)
        if layer >= n:
            raise ValueError(
                f"hook {raw!r}: layer {layer} out of range for a {n}-layer model; {valid}"
            )
        short = f"L{layer}.{kind}"
        if any(s.short == short for s in specs):
            raise ValueError(f"hook {raw!r} given twice")
        specs.append(HookSpec(layer, kind, short, _tl_name(model, layer, kind)))
    return specs


def stop_layer(specs: list[HookSpec]) -> int:
    """Blocks to run: every requested hook fires inside block `max_layer`."""
    return max(s.layer for s in specs) + 1


@contextmanager
def capturing(model, specs: list[HookSpec]) -> Iterator[Callable[[torch.Tensor], dict]]:
    """Register the hooks once and yield `run(tokens) -> {short: [b, s, d]}`.

    Registering hooks on a bridge costs tens of milliseconds, so a caching loop registers
    them once for all its batches. Hooks are keyed by closure, not by `hook.name`, because the
    bridge's compatibility names are aliases of other hook points.
    """
    out: dict[str, torch.Tensor] = {}

    def saver(short: str):
        def fn(act: torch.Tensor, hook) -> torch.Tensor:
            out[short] = flat(act)
            return act

        return fn

    stop = stop_layer(specs)

    def run(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        out.clear()
        with torch.inference_mode():
            model(tokens, stop_at_layer=stop)
        missing = [s.short for s in specs if s.short not in out]
        if missing:
            raise RuntimeError(f"hooks did not fire: {missing}")
        return dict(out)

    with model.hooks(fwd_hooks=[(s.tl_name, saver(s.short)) for s in specs]):
        yield run


def capture(model, tokens: torch.Tensor, specs: list[HookSpec]) -> dict[str, torch.Tensor]:
    """One forward over `tokens` [b, s], stopped after the last needed block:
    `{short: [b, s, d]}` for every spec."""
    with capturing(model, specs) as run:
        return run(tokens)
