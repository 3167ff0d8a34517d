"""Spliced loss: how much of the model's next-token loss survives a dictionary in the forward pass.

For every dictionary we run the model with its output spliced in at its hook (an SAE replaces the
activation at `hook_in` with its reconstruction; a transcoder replaces the MLP's output at
`hook_out` with its prediction from `hook_in`) and compare the next-token cross-entropy with the
clean model and with the hook zero- and mean-ablated. `CE recovered` puts the spliced loss on the
scale ablation (0) .. clean (1). Splicing `recon + (x - recon)` must give back the clean loss: a
check that the splice itself is exact.

Several dictionaries share one pass over the text: the clean forward runs once per batch, caching
every hook activation the dictionaries read plus the residual stream entering each spliced block;
each variant then re-runs only from that block (`start_at_layer`) where the model supports it
(`HookedTransformer`; `TransformerBridge` does not), else from the embedding.

Position 0 (BOS) is left clean in every variant, since dictionaries are trained without it, and its
prediction is left out of the statistics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from activation_cache.hooks import HookSpec, flat, like, resolve_hooks
from interp_bench.dictionaries.evaluate import QualityMeter


def hook_point(model, short: str) -> HookSpec:
    """The transformer-lens hook behind one short name ("L1.mlp_in"); ValueError if unknown."""
    return resolve_hooks(model, [short])[0]


def supports_start_at_layer(model) -> bool:
    """Only `HookedTransformer` can resume a forward pass from a cached residual stream."""
    from transformer_lens import HookedTransformer

    return isinstance(model, HookedTransformer)


@dataclass
class SpliceResult:
    """Per-dictionary spliced-loss numbers on held-out text, in mean nats per predicted token.

    `ce_*`: next-token cross-entropy clean, with the dictionary spliced in, with the splice hook
    zero- or mean-ablated, and with the reconstruction error added back (== clean up to float
    rounding). `ce_recovered`: (zero - spliced) / (zero - clean); `_vs_mean` uses mean ablation.
    `kl_*`: KL(clean || variant) of the next-token distributions. `l0`, `fvu`: latents active per
    token and fraction of variance unexplained at the splice hook, same tokens.
    """

    name: str
    hook_in: str
    hook_out: str | None
    splice_hook: str
    n_tokens: int
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_mean: float
    ce_error_added: float | None
    ce_recovered: float
    ce_recovered_vs_mean: float
    kl_spliced: float
    kl_zero: float
    kl_mean: float
    kl_error_added: float | None
    l0: float
    fvu: float
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_totals(
        cls,
        totals: Mapping[str, _Stats],
        clean_ce: float,
        n_tokens: int,
        *,
        name: str,
        hook_in: str,
        hook_out: str | None,
        splice_hook: str,
        l0: float,
        fvu: float,
        extra: dict | None = None,
    ) -> SpliceResult:
        """From summed CE and KL over `n_tokens` predicted tokens: `totals` of the variants
        "spliced", "zero", "mean" and, when the exactness check ran, "error_added"; `clean_ce`
        of the clean forward. The one place the means and recovered fractions are computed."""
        ce = {k: s.ce / n_tokens for k, s in totals.items()}
        kl = {k: s.kl / n_tokens for k, s in totals.items()}
        ce_clean = clean_ce / n_tokens
        return cls(
            name=name,
            hook_in=hook_in,
            hook_out=hook_out,
            splice_hook=splice_hook,
            n_tokens=n_tokens,
            ce_clean=ce_clean,
            ce_spliced=ce["spliced"],
            ce_zero=ce["zero"],
            ce_mean=ce["mean"],
            ce_error_added=ce.get("error_added"),
            ce_recovered=_recovered(ce["zero"], ce["spliced"], ce_clean),
            ce_recovered_vs_mean=_recovered(ce["mean"], ce["spliced"], ce_clean),
            kl_spliced=kl["spliced"],
            kl_zero=kl["zero"],
            kl_mean=kl["mean"],
            kl_error_added=kl.get("error_added"),
            l0=l0,
            fvu=fvu,
            extra=extra or {},
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Stats:
    """Running sums over predicted tokens for one variant."""

    ce: float = 0.0
    kl: float = 0.0

    def add(self, logits: Tensor, ref: _Reference) -> None:
        logp = torch.log_softmax(logits[:, 1:-1].float(), dim=-1)
        self.ce -= float(logp.gather(-1, ref.targets[..., None]).sum())
        self.kl += float((ref.p * (ref.logp - logp)).sum())


class _Reference:
    """One batch's clean forward: tokens, cached hook activations, next-token distributions."""

    def __init__(self, batch: Tensor, store: dict, share_prefix: bool, logits: Tensor) -> None:
        self.batch, self.store, self.share_prefix = batch, store, share_prefix
        self.targets = batch[:, 2:]  # predicted from positions 1..ctx-2 (BOS's prediction left out)
        self.logp = torch.log_softmax(logits[:, 1:-1].float(), dim=-1)
        self.p = self.logp.exp()


def _variant(model, ref: _Reference, point: HookSpec, value: Tensor) -> Tensor:
    """Logits with the activation at `point` replaced by `value` everywhere but BOS."""
    x = ref.store[point.short]
    value = value.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
    value[:, 0] = x[:, 0]
    fwd = [(point.tl_name, _replace(value))]
    if ref.share_prefix:
        resid = ref.store[f"resid@{point.layer}"]
        return model.run_with_hooks(resid, fwd_hooks=fwd, start_at_layer=point.layer)
    return model.run_with_hooks(ref.batch, fwd_hooks=fwd)


def _reconstruct(d, x: Tensor) -> Tensor:
    """The dictionary's output for raw activations `x`, in the dictionary's dtype."""
    return d.forward(x.to(d.W_dec.dtype))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _dictionary_list(dictionaries) -> list[tuple[str, object]]:
    if isinstance(dictionaries, Mapping):
        return list(dictionaries.items())
    out = []
    for i, d in enumerate(dictionaries):
        kind = "transcoder" if d.cfg.hook_out else "sae"
        out.append((f"{i}:{kind}@{d.cfg.hook_in}", d))
    return out


def _check_dims(model, name: str, d, x_in: Tensor, x_out: Tensor) -> None:
    d_in, d_out = d.W_enc.shape[0], d.W_dec.shape[1]
    if x_in.shape[-1] != d_in or x_out.shape[-1] != d_out:
        raise ValueError(
            f"dictionary {name} expects d_in={d_in}, d_out={d_out} but the model's hooks have "
            f"{x_in.shape[-1]} and {x_out.shape[-1]}: use a dictionary trained on this model"
        )


@torch.inference_mode()
def ablation_means(
    model, tokens: Tensor, shorts: Sequence[str], batch_size: int = 8, progress: bool = False
) -> dict:
    """Mean activation over all non-BOS positions at each hook: a cheap pass up to the last hook."""
    points = [hook_point(model, s) for s in shorts]
    stop = max(p.layer for p in points) + 1
    sums = {p.short: None for p in points}
    count = 0
    for start in _token_bar(tokens, batch_size, progress, "splice: ablation means"):
        batch = tokens[start : start + batch_size].to(_device(model))
        store = {}
        hooks = [(p.tl_name, _store(store, p.short)) for p in points]
        model.run_with_hooks(batch, fwd_hooks=hooks, stop_at_layer=stop)
        for short, act in store.items():
            s = act[:, 1:].double().sum(dim=(0, 1))
            sums[short] = s if sums[short] is None else sums[short] + s
        count += batch.shape[0] * (batch.shape[1] - 1)
    return {short: (s / count).float() for short, s in sums.items()}


def _token_bar(tokens: Tensor, batch_size: int, progress: bool, desc: str) -> Iterator[int]:
    """Batch start rows; with `progress`, a tqdm bar that counts tokens (a bar counting batches
    sits at 0/1 for minutes on a small run) and gives its ETA."""
    starts = range(0, len(tokens), batch_size)
    if not progress:
        yield from starts
        return
    from tqdm.auto import tqdm

    total = tokens.numel()
    with tqdm(total=total, desc=desc, unit="tok", unit_scale=total >= 10_000) as bar:
        for start in starts:
            yield start
            bar.update(tokens[start : start + batch_size].numel())


def _store(store: dict, key: str):
    def fn(act, hook):
        store[key] = flat(act.detach())

    return fn


def _replace(value: Tensor):
    def fn(act, hook):
        return like(value, act)

    return fn


@torch.inference_mode()
def spliced_loss(
    model,
    dictionaries,
    tokens: Tensor,
    *,
    batch_size: int = 8,
    share_prefix: bool | None = None,
    means: dict[str, Tensor] | None = None,
    error_added: bool = True,
    progress: bool = False,
) -> list[SpliceResult]:
    """Spliced, ablated and clean next-token loss of every dictionary in one pass over `tokens`.

    `dictionaries`: a list, or a mapping name -> dictionary. `tokens`: `[n_seq, ctx]` int64 with
    BOS first. `share_prefix`: re-run each variant from the spliced block on instead of from the
    embedding (default: when the model supports it). `means`: precomputed mean activations per
    short hook name for mean ablation (default: a first pass over `tokens`). `error_added`: run
    the exactness check (one forward per dictionary; its fields are None when off).
    """
    named = _dictionary_list(dictionaries)
    if not named:
        raise ValueError("no dictionaries given: pass at least one --dictionary")
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 3:
        raise ValueError(
            f"need tokens of shape [n_seq >= 1, ctx >= 3], got {tuple(tokens.shape)}: "
            "give more held-out text"
        )
    if share_prefix is None:
        share_prefix = supports_start_at_layer(model)
    if share_prefix and not supports_start_at_layer(model):
        raise ValueError(
            f"{type(model).__name__} cannot start a forward at a layer: use share_prefix=False"
        )

    # Hooks each dictionary reads (in), splices (out), and the block where its variants resume.
    plan = []
    for name, d in named:
        p_in = hook_point(model, d.cfg.hook_in)
        p_out = hook_point(model, d.cfg.hook_out) if d.cfg.hook_out else p_in
        plan.append((name, d, p_in, p_out))
    points = {p.short: p for _, _, p_in, p_out in plan for p in (p_in, p_out)}
    splice_points = {p_out.short: p_out for *_, p_out in plan}
    if means is None:
        means = ablation_means(model, tokens, list(splice_points), batch_size, progress)
    missing = set(splice_points) - set(means)
    if missing:
        raise ValueError(f"means lack hooks {sorted(missing)}: compute them on the same model")

    clean = _Stats()
    per_dict = {name: {"spliced": _Stats(), "error_added": _Stats()} for name, *_ in plan}
    per_hook = {short: {"zero": _Stats(), "mean": _Stats()} for short in splice_points}
    recon_stats = {name: QualityMeter(d) for name, d, *_ in plan}
    n_pred = 0
    t0 = time.perf_counter()

    for start in _token_bar(tokens, batch_size, progress, "splice: clean, ablated, spliced"):
        batch = tokens[start : start + batch_size].to(_device(model))
        store: dict[str, Tensor] = {}
        hooks = [(p.tl_name, _store(store, short)) for short, p in points.items()]
        resume = {p.layer for *_, p in plan} if share_prefix else set()
        hooks += [
            (hook_point(model, f"L{layer}.resid_pre").tl_name, _store(store, f"resid@{layer}"))
            for layer in resume
        ]
        logits = model.run_with_hooks(batch, fwd_hooks=hooks)
        ref = _Reference(batch, store, share_prefix, logits)
        clean.ce -= float(ref.logp.gather(-1, ref.targets[..., None]).sum())
        n_pred += ref.targets.numel()

        for short, p_out in splice_points.items():
            per_hook[short]["zero"].add(_variant(model, ref, p_out, torch.zeros(())), ref)
            per_hook[short]["mean"].add(_variant(model, ref, p_out, means[short]), ref)
        for name, d, p_in, p_out in plan:
            x_in, x_out = store[p_in.short], store[p_out.short]
            _check_dims(model, name, d, x_in, x_out)
            recon = _reconstruct(d, x_in).to(x_out.dtype)
            recon_stats[name].add(x_in[:, 1:], x_out[:, 1:], recon[:, 1:])  # BOS is never spliced
            per_dict[name]["spliced"].add(_variant(model, ref, p_out, recon), ref)
            if error_added:
                exact = recon + (x_out - recon)
                per_dict[name]["error_added"].add(_variant(model, ref, p_out, exact), ref)

    seconds = time.perf_counter() - t0
    quality = {name: meter.result() for name, meter in recon_stats.items()}
    results = []
    for name, d, _, p_out in plan:
        totals = {**per_hook[p_out.short], "spliced": per_dict[name]["spliced"]}
        if error_added:
            totals["error_added"] = per_dict[name]["error_added"]
        results.append(
            SpliceResult.from_totals(
                totals,
                clean.ce,
                n_pred,
                name=name,
                hook_in=d.cfg.hook_in,
                hook_out=d.cfg.hook_out,
                splice_hook=p_out.short,
                l0=quality[name].l0,
                fvu=quality[name].fvu,
                extra={"seconds": seconds, "share_prefix": share_prefix},
            )
        )
    return results


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    """(ablated - spliced) / (ablated - clean): 1 for a perfect splice, 0 for an ablation."""
    gap = ablated - clean
    return (ablated - spliced) / gap if gap != 0 else float("nan")


def format_table(results: Sequence[SpliceResult]) -> str:
    """A fixed-width table of the headline numbers, one row per dictionary."""
    head = (
        f"{'dictionary':<32} {'hook':<14} {'CE clean':>9} {'spliced':>9} {'zero':>9} "
        f"{'mean':>9} {'rec(0)':>7} {'rec(mu)':>7} {'KL':>8} {'err+':>9} {'L0':>7} {'FVU':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        exact = f"{r.ce_error_added:9.4f}" if r.ce_error_added is not None else f"{'-':>9}"
        lines.append(
            f"{r.name[:32]:<32} {r.splice_hook:<14} {r.ce_clean:9.4f} {r.ce_spliced:9.4f} "
            f"{r.ce_zero:9.4f} {r.ce_mean:9.4f} {r.ce_recovered:7.3f} "
            f"{r.ce_recovered_vs_mean:7.3f} {r.kl_spliced:8.4f} {exact} "
            f"{r.l0:7.1f} {r.fvu:7.4f}"
        )
    return "\n".join(lines)
