"""Joint spliced loss: every MLP that a cross-layer transcoder (CLT) or a set of per-layer
transcoders covers is replaced at once, in one forward (circuit-tracer's "replacement model" CE).

A CLT's layer-l latents write into the MLP output of l and of every later layer, so its CE loss
recovered only means something with all of its MLPs replaced together. In the spliced forward,
layer L's latents are encoded from the MLP input *of that forward* (earlier replacements
propagate) and layer L's MLP output becomes

    sum_{l <= L} f_l @ decoder(l, L) + b_dec(L) + skip(L, mlp_in_L)

through the replacement model's `TranscoderSet` questions (`circuits/replacement.py`), which a
CLT (`circuits/crosslayer.py`) and per-layer transcoders both answer: one code path for both,
and per-layer transcoders spliced jointly are the fair comparison. Layers the dictionaries do
not cover keep their own MLP. As in `analysis/splice.py`, BOS stays clean and its prediction is
left out; the zero and mean ablations replace every covered MLP output at once.

Per-layer FVU and L0 are measured in the spliced forward: the replacement's output against what
the model's own MLP computes from the same (spliced) input, latents of the same layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from activation_cache.hooks import HookSpec, flat, like
from interp_bench.analysis.joint_pairs import check_pairs
from interp_bench.analysis.splice import (
    SpliceResult,
    _device,
    _Reference,
    _Stats,
    _token_bar,
    ablation_means,
    hook_point,
)

Write = Callable[[int, Tensor, Tensor], Tensor]  # (layer, mlp_in, model's mlp_out) -> new mlp_out


def _is_crosslayer(d) -> bool:
    return hasattr(d.cfg, "hooks_in")  # a CLT config lists one hook pair per layer


def _pairs(d) -> list[tuple[str, str | None]]:
    """(hook_in, hook_out) of every layer a dictionary replaces."""
    cfg = d.cfg
    if _is_crosslayer(d):
        return list(zip(cfg.hooks_in, cfg.hooks_out, strict=True))
    return [(cfg.hook_in, cfg.hook_out)]


def joint_set(model, dictionaries: Sequence):
    """The dictionaries as one replacement (`TranscoderSet` or `CrossLayerSet`), after checking
    that they make sense spliced jointly; a one-line ValueError naming the fix otherwise."""
    from interp_bench.circuits.replacement import transcoder_set

    dictionaries = list(dictionaries)
    if not dictionaries:
        raise ValueError("no dictionaries given: pass one CLT or per-layer transcoders")
    if len(dictionaries) > 1 and any(_is_crosslayer(d) for d in dictionaries):
        raise ValueError(
            "a CLT is spliced jointly on its own: pass it as the only --dictionary, not with "
            "other dictionaries"
        )
    pairs = [pair for d in dictionaries for pair in _pairs(d)]

    def resolve(hook: str) -> tuple[str, int]:
        point = hook_point(model, hook)
        return point.kind, point.layer

    check_pairs(pairs, resolve)
    return transcoder_set(model, dictionaries)


def _span(layers: Sequence[int], kind: str) -> str:
    """Layers as a layer-list spec (`L0-2.mlp_out`, `L0.mlp_out,L3.mlp_out`)."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ",".join(f"L{r[0]}.{kind}" if len(r) == 1 else f"L{r[0]}-{r[-1]}.{kind}" for r in runs)


class _LayerMeter:
    """Running sums for one layer's FVU (replacement vs the MLP's own output, same input) and
    L0, over non-BOS positions."""

    def __init__(self) -> None:
        self.n, self.sse, self.sq, self.l0 = 0, 0.0, 0.0, 0.0
        self.sum: Tensor | None = None

    def add(self, y: Tensor, recon: Tensor, latents: Tensor) -> None:
        y = y[:, 1:].reshape(-1, y.shape[-1]).double()
        recon = recon[:, 1:].reshape(y.shape).double()
        self.sse += float((recon - y).pow(2).sum())
        self.sq += float(y.pow(2).sum())
        s = y.sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.n += len(y)
        self.l0 += float((latents[:, 1:] > 0).sum())

    def fvu(self) -> float:
        var = self.sq - float(self.sum.pow(2).sum()) / self.n
        return self.sse / max(var, 1e-30)


class _Replacement:
    """One spliced forward's state: each covered layer's latents, as the forward reaches it."""

    def __init__(self, tset, meters: dict[int, _LayerMeter] | None) -> None:
        self.tset, self.meters = tset, meters
        self.latents: dict[int, Tensor] = {}

    def __call__(self, layer: int, x: Tensor, y: Tensor) -> Tensor:
        """The replacement's MLP output at `layer` from its input `x` in this forward."""
        ts = self.tset
        f = self.latents[layer] = ts.encode(layer, x)
        out = None
        for source, latents in self.latents.items():
            dec = ts.decoder(source, layer)
            if dec is not None:
                part = latents.to(dec.dtype) @ dec
                out = part if out is None else out + part
        out = out + ts.b_dec(layer)
        skip = ts.skip(layer, x)
        if skip is not None:
            out = out + skip
        if self.meters is not None:
            self.meters[layer].add(y, out, f)
        for source in [s for s in self.latents if max(ts.targets(s)) <= layer]:
            del self.latents[source]  # written everywhere it writes: per-layer sets keep one
        return out


def _zero(layer: int, x: Tensor, y: Tensor) -> Tensor:
    return torch.zeros(())


def _constant(values: dict[int, Tensor]) -> Write:
    return lambda layer, x, y: values[layer]


def _error_added(recon: _Replacement) -> Write:
    """The replacement plus its error: the model's own MLP output up to float rounding."""

    def fn(layer: int, x: Tensor, y: Tensor) -> Tensor:
        r = recon(layer, x, y).to(y.dtype)
        return r + (y - r)

    return fn


def _forward(model, batch: Tensor, points: list[tuple[HookSpec, HookSpec]], write: Write):
    """Logits with every covered MLP output replaced by `write`, BOS left as the model has it."""
    inputs: dict[int, Tensor] = {}

    def take(layer: int):
        def fn(act, hook):
            inputs[layer] = flat(act)

        return fn

    def put(layer: int):
        def fn(act, hook):
            y = flat(act)
            value = write(layer, inputs[layer], y).to(device=y.device, dtype=y.dtype)
            value = value.expand_as(y).clone()
            value[:, 0] = y[:, 0]
            return like(value, act)

        return fn

    hooks = []
    for p_in, p_out in points:
        hooks += [(p_in.tl_name, take(p_in.layer)), (p_out.tl_name, put(p_out.layer))]
    return model.run_with_hooks(batch, fwd_hooks=hooks)


@torch.inference_mode()
def joint_spliced_loss(
    model,
    dictionaries,
    tokens: Tensor,
    *,
    name: str = "joint",
    batch_size: int = 8,
    means: dict[str, Tensor] | None = None,
    error_added: bool = True,
    progress: bool = False,
) -> SpliceResult:
    """Clean, jointly spliced, zero- and mean-ablated next-token loss of one CLT or of per-layer
    transcoders (a list of dictionaries, or a `TranscoderSet` / `CrossLayerSet`), in one pass.

    Every variant runs from the embedding (a CLT usually starts at layer 0, so resuming saves
    little). `means`: mean MLP output per short hook name (default: a first pass over `tokens`).
    `error_added`: also splice `recon + (mlp_out - recon)` at every layer at once, which must
    give back the clean loss. `l0` and `fvu` of the result are means over layers; the per-layer
    values are in `extra`.
    """
    tset = dictionaries if hasattr(dictionaries, "decoder") else joint_set(model, dictionaries)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 3:
        raise ValueError(
            f"need tokens of shape [n_seq >= 1, ctx >= 3], got {tuple(tokens.shape)}: "
            "give more held-out text"
        )
    layers = tset.layers
    points = [
        (hook_point(model, f"L{i}.mlp_in"), hook_point(model, f"L{i}.mlp_out")) for i in layers
    ]
    if means is None:
        means = ablation_means(model, tokens, [p.short for _, p in points], batch_size, progress)
    mean_of = {p.layer: means[p.short] for _, p in points if p.short in means}
    if len(mean_of) != len(points):
        raise ValueError("means lack some mlp_out hooks: compute them on the same model")

    variants = ("spliced", "zero", "mean") + (("error_added",) if error_added else ())
    stats = {k: _Stats() for k in variants}
    meters = {layer: _LayerMeter() for layer in layers}
    clean_ce, n_pred = 0.0, 0
    t0 = time.perf_counter()
    for start in _token_bar(tokens, batch_size, progress, "splice: joint"):
        batch = tokens[start : start + batch_size].to(_device(model))
        ref = _Reference(batch, {}, False, model(batch))
        clean_ce -= float(ref.logp.gather(-1, ref.targets[..., None]).sum())
        n_pred += ref.targets.numel()
        stats["spliced"].add(_forward(model, batch, points, _Replacement(tset, meters)), ref)
        stats["zero"].add(_forward(model, batch, points, _zero), ref)
        stats["mean"].add(_forward(model, batch, points, _constant(mean_of)), ref)
        if error_added:
            exact = _error_added(_Replacement(tset, None))
            stats["error_added"].add(_forward(model, batch, points, exact), ref)

    fvus = [meters[layer].fvu() for layer in layers]
    l0s = [meters[layer].l0 / meters[layer].n for layer in layers]
    return SpliceResult.from_totals(
        stats,
        clean_ce,
        n_pred,
        name=name,
        hook_in=_span(layers, "mlp_in"),
        hook_out=_span(layers, "mlp_out"),
        splice_hook=_span(layers, "mlp_out"),
        l0=sum(l0s) / len(l0s),
        fvu=sum(fvus) / len(fvus),
        extra={
            "joint": True,
            "layers": list(layers),
            "fvu_per_layer": fvus,
            "l0_per_layer": l0s,
            "seconds": time.perf_counter() - t0,
            "share_prefix": False,
        },
    )
