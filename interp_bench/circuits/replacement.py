"""The local replacement model of one prompt.

Every MLP is replaced by its transcoder, and everything else that is non-linear is frozen at its
value in the clean forward of the prompt: attention patterns (`attn.hook_pattern`) and the
denominators of every LayerNorm/RMSNorm (`hook_scale`). What the transcoder gets wrong is added
back as an *error* term, a constant per (layer, position), so the replacement reproduces the
clean logits exactly while being linear in what flows through the residual stream:

    mlp_out[L, p] = sum_{l <= L} sum_f a_f(l, p) * W_dec[l -> L][f] + b_dec[L]
                    (+ mlp_in[L, p] @ W_skip[L])  + error[L, p]

Per-layer transcoders only decode into their own layer (`l == L`); a cross-layer transcoder
(CLT) decodes into every later layer, and plugs in by answering `TranscoderSet.decoder(l, L)`
for `l < L` too. Layers without a transcoder have no features: their whole MLP output is the
error node. Positions in `skip_positions` (BOS by default: transcoders are trained without it)
likewise keep their MLP output as error.

The forward runs through the model's own transformer-lens hooks, so the same code serves a
`HookedTransformer` and a `TransformerBridge` in compatibility mode: only hook names are used.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from activation_cache.hooks import resolve_hooks

# Input of the unembedding (after the final norm), first present wins.
_UNEMBED_IN = ("unembed.hook_in", "ln_final.hook_out", "ln_final.hook_normalized")


@dataclass
class TranscoderSet:
    """Transcoders by layer, behind the three questions the replacement model asks: which
    features fire at a layer, where a layer's features write (`decoder(source, target)`), and
    the decoder bias and skip term of each MLP output. Per-layer transcoders answer
    `decoder(l, L)` only for `l == L`; a CLT class with the same methods would answer for all
    `l <= L`."""

    dictionaries: dict[int, object]  # layer -> SparseDictionary (mlp_in -> mlp_out)

    @property
    def layers(self) -> list[int]:
        return sorted(self.dictionaries)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Latent activations `[seq, d_sae]` of the MLP input at `layer`."""
        d = self.dictionaries[layer]
        return d.encode(x.to(d.W_enc.dtype)).detach()

    def encoder(self, layer: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """(W_enc columns `[d_in, n]`, b_enc `[n]`) of the given latents."""
        d = self.dictionaries[layer]
        return d.W_enc[:, index].detach(), d.b_enc[index].detach()

    def targets(self, source: int) -> list[int]:
        """Layers the features of `source` write into."""
        return [source]

    def decoder(self, source: int, target: int) -> Tensor | None:
        """`W_dec [d_sae, d_out]` from `source`'s latents into `target`'s MLP output."""
        return self.dictionaries[source].W_dec.detach() if source == target else None

    def b_dec(self, layer: int) -> Tensor | None:
        d = self.dictionaries.get(layer)
        return None if d is None else d.b_dec.detach()

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        """The linear skip term `x @ W_skip` of the transcoder at `layer`, if it has one."""
        d = self.dictionaries.get(layer)
        if d is None or getattr(d, "W_skip", None) is None:
            return None
        return x.to(d.W_skip.dtype) @ d.W_skip.detach()


def transcoder_set(model, dictionaries) -> TranscoderSet:
    """Check that every dictionary is an `L<l>.mlp_in -> L<l>.mlp_out` transcoder of this model
    (one per layer) and index them by layer; ValueError naming the fix otherwise. A single
    cross-layer transcoder gives a `CrossLayerSet` (`circuits/crosslayer.py`) instead."""
    from interp_bench.dictionaries.crosslayer import CrossLayerTranscoder

    dictionaries = list(dictionaries)
    if any(isinstance(d, CrossLayerTranscoder) for d in dictionaries):
        if len(dictionaries) != 1:
            raise ValueError("attribution takes one CLT, or per-layer transcoders, not a mix")
        from interp_bench.circuits.crosslayer import crosslayer_set

        return crosslayer_set(model, dictionaries[0])
    by_layer: dict[int, object] = {}
    for d in dictionaries:
        hook_in, hook_out = d.cfg.hook_in, d.cfg.hook_out
        if not hook_out:
            raise ValueError(
                f"{hook_in} dictionary is an SAE: attribution needs transcoders "
                "(train with --hook-in L<l>.mlp_in --hook-out L<l>.mlp_out)"
            )
        spec_in, spec_out = resolve_hooks(model, [hook_in, hook_out])
        if (
            spec_in.kind != "mlp_in"
            or spec_out.kind != "mlp_out"
            or spec_in.layer != spec_out.layer
        ):
            raise ValueError(
                f"transcoder {hook_in} -> {hook_out} does not replace one MLP: attribution needs "
                "L<l>.mlp_in -> L<l>.mlp_out transcoders"
            )
        if spec_in.layer in by_layer:
            raise ValueError(f"two transcoders for layer {spec_in.layer}: keep one per layer")
        by_layer[spec_in.layer] = d
    if not by_layer:
        raise ValueError("no transcoders given")
    return TranscoderSet(by_layer)


@dataclass
class Features:
    """Active features of the prompt, one entry each (sorted by layer, position, latent)."""

    layer: Tensor  # long [n]
    pos: Tensor  # long [n]
    index: Tensor  # long [n]: latent id within its layer's transcoder
    act: Tensor  # float [n]: activation (= pre-activation for the active ones)

    def __len__(self) -> int:
        return int(self.layer.numel())

    def of_layer(self, layer: int) -> Tensor:
        """Positions in this list of the features at `layer`."""
        return (self.layer == layer).nonzero().flatten()


@dataclass
class Hooks:
    """transformer-lens names the replacement forward needs."""

    resid0: str
    mlp_in: list[str]
    mlp_out: list[str]
    scales: list[str]
    patterns: list[str]
    unembed_in: str


def model_hooks(model) -> Hooks:
    n = int(model.cfg.n_layers)
    specs = resolve_hooks(model, [f"L{i}.{k}" for i in range(n) for k in ("mlp_in", "mlp_out")])
    names = model.hook_dict
    unembed = next((h for h in _UNEMBED_IN if h in names), None)
    if unembed is None:
        raise ValueError(f"model has none of {_UNEMBED_IN}: cannot read the unembedding input")
    scales = sorted(h for h in names if h.endswith(".hook_scale") and not h.startswith("hook_"))
    patterns = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    missing = [h for h in patterns if h not in names]
    if missing:
        raise ValueError(f"model lacks attention pattern hooks {missing[:2]}: cannot freeze them")
    return Hooks(
        resid0="blocks.0.hook_resid_pre",
        mlp_in=[s.tl_name for s in specs if s.kind == "mlp_in"],
        mlp_out=[s.tl_name for s in specs if s.kind == "mlp_out"],
        scales=scales,
        patterns=patterns,
        unembed_in=unembed,
    )


@dataclass
class Replacement:
    """A prompt's frozen clean forward and everything the replacement model writes.

    `writes[L]` (`[seq, d]`) is what the replaced MLP at layer L writes besides its skip term:
    decoded features + b_dec + error. `recon[L]` is its feature part (features + b_dec)."""

    model: object
    transcoders: TranscoderSet
    hooks: Hooks
    tokens: Tensor  # [1, seq]
    frozen: dict[str, Tensor]  # hook name -> clean value (scales, patterns)
    resid0: Tensor  # [seq, d] embedding (token + position) entering block 0
    mlp_in: list[Tensor]  # per layer [seq, d_in]
    mlp_out: list[Tensor]  # per layer [seq, d_out], clean
    logits: Tensor  # [seq, vocab], clean
    features: Features
    recon: list[Tensor]  # per layer [seq, d_out]: decoded features + b_dec
    bias: list[Tensor]  # per layer [seq, d_out]: b_dec where features may fire, else 0
    error: list[Tensor]  # per layer [seq, d_out]
    skip_positions: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.mlp_out)

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def writes(self) -> list[Tensor]:
        return [r + e for r, e in zip(self.recon, self.error, strict=True)]

    def forward(
        self, resid0: Tensor | None = None, writes: list[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """Run the frozen replacement: `(logits [seq, vocab], mlp_in per layer, unembedding
        input [seq, d])`, differentiable in `resid0` and `writes` (defaults: the prompt's)."""
        resid0 = self.resid0 if resid0 is None else resid0
        writes = self.writes() if writes is None else writes
        captured: dict[str, Tensor] = {}
        h = self.hooks

        def const(name: str):
            value = self.frozen[name]
            return lambda act, hook: value

        def set_value(value: Tensor):
            return lambda act, hook: value.unsqueeze(0).to(act.dtype)

        def take_in(layer: int):
            def fn(act, hook):
                captured[f"in{layer}"] = act[0]
                return act.detach()  # the real MLP is bypassed: no gradient through it

            return fn

        def put_out(layer: int):
            def fn(act, hook):
                out = writes[layer]
                s = self.transcoders.skip(layer, captured[f"in{layer}"])
                if s is not None:
                    out = out + s
                return out.unsqueeze(0).to(act.dtype)

            return fn

        def take_final(act, hook):
            captured["final"] = act[0]

        fwd = [(n, const(n)) for n in (*h.scales, *h.patterns)]
        fwd.append((h.resid0, set_value(resid0)))
        fwd += [(n, take_in(i)) for i, n in enumerate(h.mlp_in)]
        fwd += [(n, put_out(i)) for i, n in enumerate(h.mlp_out)]
        fwd.append((h.unembed_in, take_final))
        with hooked(self.model, fwd):
            logits = self.model(self.tokens)[0]
        mlp_in = [captured[f"in{i}"] for i in range(self.n_layers)]
        return logits, mlp_in, captured["final"]


@contextmanager
def hooked(model, fwd_hooks: list[tuple[str, Callable]]) -> Iterator[None]:
    """Forward hooks `fn(act, hook) -> new act or None` added straight to the hook points: the
    bridge's `run_with_hooks` resolves aliases per hook, which costs more than the forward of a
    short prompt. Only the hooks added here are removed (they carry their own level)."""
    level = next(_LEVELS)
    points = []
    try:
        for name, fn in fwd_hooks:
            point = model.hook_dict[name]
            point.add_hook(fn, level=level)
            points.append(point)
        yield
    finally:
        for point in {id(p): p for p in points}.values():
            point.remove_hooks("fwd", level=level)


_LEVELS = itertools.count(1 << 20)


def unembedding(model) -> tuple[Tensor, Tensor]:
    """(W_U `[d, vocab]`, b_U `[vocab]`) of a transformer-lens model or bridge."""
    w = model.W_U
    b = getattr(model, "b_U", None)
    return w, (torch.zeros(w.shape[1], dtype=w.dtype, device=w.device) if b is None else b)


@torch.no_grad()
def build_replacement(
    model, transcoders: TranscoderSet, tokens: Tensor, *, skip_bos: bool = True
) -> Replacement:
    """Freeze the clean forward of `tokens` (`[1, seq]` or `[seq]`) and encode every layer's
    MLP input with its transcoder. `skip_bos`: no features at position 0 when it is BOS."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] < 1:
        raise ValueError(f"need one prompt of tokens [1, seq], got {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    h = model_hooks(model)
    n = int(model.cfg.n_layers)
    store: dict[str, Tensor] = {}

    def keep(name: str):
        def fn(act, hook):
            store[name] = act.detach().clone()

        return fn

    names = [*h.scales, *h.patterns, h.resid0, *h.mlp_in, *h.mlp_out]
    with hooked(model, [(n_, keep(n_)) for n_ in names]):
        logits = model(tokens)[0]

    bos = getattr(model.tokenizer, "bos_token_id", None)
    skip = (0,) if skip_bos and bos is not None and int(tokens[0, 0]) == bos else ()
    seq = tokens.shape[1]
    mask = torch.ones(seq, dtype=torch.bool, device=device)
    mask[list(skip)] = False

    mlp_in = [store[h.mlp_in[i]][0] for i in range(n)]
    mlp_out = [store[h.mlp_out[i]][0] for i in range(n)]
    layer_l, pos_l, idx_l, act_l = [], [], [], []
    acts_by_layer: dict[int, Tensor] = {}
    for layer in transcoders.layers:
        acts = transcoders.encode(layer, mlp_in[layer]) * mask[:, None]
        acts_by_layer[layer] = acts
        pos, idx = acts.nonzero(as_tuple=True)
        layer_l.append(torch.full_like(pos, layer))
        pos_l.append(pos)
        idx_l.append(idx)
        act_l.append(acts[pos, idx])
    features = Features(
        torch.cat(layer_l), torch.cat(pos_l), torch.cat(idx_l), torch.cat(act_l).float()
    )

    recon, bias, error = [], [], []
    for target in range(n):
        out = torch.zeros_like(mlp_out[target])
        for source, acts in acts_by_layer.items():
            w = (
                transcoders.decoder(source, target)
                if target in transcoders.targets(source)
                else None
            )
            if w is not None:
                out = out + (acts @ w).to(out.dtype)
        b = transcoders.b_dec(target)
        b = torch.zeros_like(out) if b is None else b.to(out.dtype).expand_as(out) * mask[:, None]
        s = transcoders.skip(target, mlp_in[target])
        s = torch.zeros_like(out) if s is None else s.to(out.dtype)
        recon.append(out + b)
        bias.append(b)
        error.append(mlp_out[target] - recon[-1] - s)
    return Replacement(
        model=model,
        transcoders=transcoders,
        hooks=h,
        tokens=tokens,
        frozen={k: store[k] for k in (*h.scales, *h.patterns)},
        resid0=store[h.resid0][0],
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        logits=logits,
        features=features,
        recon=recon,
        bias=bias,
        error=error,
        skip_positions=skip,
    )
