"""Cross-layer transcoders (CLT): each layer's encoder reads that layer's MLP input, and its
latents write into the MLP output of that layer and of every later one (Ameisen et al. 2025).

For L layers (position i of ``cfg.hooks_in`` / ``cfg.hooks_out``):

    f_i     = activation_i(x_i @ W_enc_i + b_enc_i)             # x_i: MLP input of layer i
    recon_j = sum_{i <= j} f_i @ W_dec_i[:, j - i] + b_dec_j    # MLP output of layer j

``W_dec_i`` is one ``[d_sae, (L - i) * d_out]`` matrix (circuit-tracer's ``[d_sae, L - i, d_out]``
flattened), so layer i's active latents decode into every later layer in one sparse product
(the TopK embedding-bag kernels of ``topk.py``): L products, not L(L+1)/2.

Training: the sum over output layers of each layer's MSE (on inputs and targets the trainer
normalised per hook, as for a transcoder), plus AuxK per TopK layer (dead latents of layer i
predict the residual of output layer i through their own-layer decoder block), plus the
JumpReLU L0 penalty where that is the activation. Unit-norm decoders (TopK) normalise a latent's
whole decoder row, all target layers together, so a latent may put its weight in any of them.
The cross-layer blocks start at zero: an untrained CLT is L per-layer transcoders, and a 1-layer
CLT is exactly a transcoder (``tests/test_crosslayer.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from interp_bench.config import DictionaryConfig, _check, _JsonMixin
from interp_bench.dictionaries import auxk
from interp_bench.dictionaries.activations import _topk_stats, make_activation
from interp_bench.dictionaries.auxk import AuxTerms
from interp_bench.dictionaries.dictionary import (
    ForwardOutput,
    SparseDictionary,
    fitted_rows,
    geometric_median,
)
from interp_bench.dictionaries.evaluate import EvalStats, QualityMeter, batch_fvu
from interp_bench.dictionaries.topk import (
    TopKLayout,
    dense_decode,
    gather_pre,
    sparse_decode,
    topk_rows,
)

CLT_ARCHS = ("topk", "jumprelu")
# Default width budget: weights + gradients + two Adam moments = 16 bytes per parameter, so
# 2**27 parameters (134M) hold about 2.1 GiB of training state, what a shared 2-core laptop can
# give. SmolLM2-135M (30 layers, d 576): 448 latents per layer, 127.8M parameters, 2.0 GiB.
PARAM_BUDGET = 2**27


def default_width(
    n_layers: int, d_in: int, d_out: int, expansion: int = 8, budget: int = PARAM_BUDGET
) -> int:
    """Latents per layer: ``expansion * d_in``, or less (a multiple of 64) when that would put
    the CLT's parameters over ``budget``; the decoders grow with L(L+1)/2."""
    per_latent = n_layers * (d_in + 1) + n_layers * (n_layers + 1) // 2 * d_out
    fits = budget // per_latent // 64 * 64
    return max(64, min(expansion * d_in, fits))


def n_parameters(n_layers: int, d_in: int, d_sae: int, d_out: int) -> int:
    """Parameters of a CLT (JumpReLU adds ``n_layers * d_sae`` thresholds)."""
    pairs = n_layers * (n_layers + 1) // 2
    return n_layers * d_sae * (d_in + 1) + pairs * d_sae * d_out + n_layers * d_out


@dataclass
class CrossLayerConfig(_JsonMixin):
    """Shape and sparsity of one cross-layer transcoder (``hooks_in[i]`` -> ``hooks_out[j]``,
    j >= i). Settings shared with ``DictionaryConfig`` mean the same there."""

    is_transcoder: ClassVar[bool] = True  # what the trainer's lr rule asks of every config
    d_in: int
    """input width of every layer (d_model)"""
    d_sae: int
    """latents per layer"""
    hooks_in: tuple[str, ...]
    """input hook of each layer, in layer order, e.g. L0.mlp_in, L1.mlp_in"""
    hooks_out: tuple[str, ...]
    """target hook of each layer, e.g. L0.mlp_out, L1.mlp_out"""
    arch: str = "topk"
    """activation: topk (+AuxK) or jumprelu (L0)"""
    d_out: int | None = None
    """output width (None: d_in)"""
    model_name: str = ""
    """the model the activations came from"""
    k: int = 32
    """topk: active latents per token per layer"""
    layer_k: tuple[int, ...] | None = None
    """topk: per-layer k (one per layer), overriding k"""
    auxk_alpha: float = 1 / 32
    auxk_k: int | None = None
    auxk_stride: int = 4
    revive: str = "auto"
    encoder_init: str = "standardized"
    """standardized or random (see DictionaryConfig.encoder_init)"""
    decoder_init: str = "auto"
    """random or fit (topk): fit starts each layer's rows into its own layer fitted (see
    DictionaryConfig.decoder_init); auto = random: on bench_clt (layers 0-3 and 12-15, 60
    steps) fitted rows cut never-firing latents 1.7-3.9x but cost 1.4-4.4% mean FVU at either
    rate (RESULTS.md, "Transcoder decoders fitted at the start")"""
    decode: str = "auto"
    select: str = "auto"
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.1
    jumprelu_init_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(
            self.arch in CLT_ARCHS,
            f"a cross-layer transcoder uses {' or '.join(CLT_ARCHS)} latents, not {self.arch!r}",
        )
        self.hooks_in, self.hooks_out = tuple(self.hooks_in), tuple(self.hooks_out)
        _check(
            len(self.hooks_in) == len(self.hooks_out) > 0,
            f"a CLT needs one target hook per input hook, got {len(self.hooks_in)} inputs and "
            f"{len(self.hooks_out)} targets",
        )
        _check(
            len(set(self.hooks_in)) == len(self.hooks_in)
            and len(set(self.hooks_out)) == len(self.hooks_out),
            "a CLT's hooks must be distinct (one per layer)",
        )
        if self.layer_k is not None:
            self.layer_k = tuple(int(k) for k in self.layer_k)
            _check(
                len(self.layer_k) == self.n_layers,
                f"layer_k gives {len(self.layer_k)} values for {self.n_layers} layers",
            )
        _check(self.encoder_init in ("standardized", "random"), "encoder_init: standardized/random")
        for i in range(self.n_layers):
            self.layer_config(i)  # each layer's settings checked by DictionaryConfig

    def to_dict(self) -> dict:
        """Tuples as lists, as they read back from JSON (resume compares the two)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in super().to_dict().items()}

    @property
    def n_layers(self) -> int:
        return len(self.hooks_in)

    @property
    def out_dim(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def ks(self) -> tuple[int, ...]:
        return self.layer_k or (self.k,) * self.n_layers

    @property
    def n_latents(self) -> int:
        """Latents of all layers together (the trainer's dead-latent counters)."""
        return self.n_layers * self.d_sae

    @property
    def hooks(self) -> list[str]:
        return [*self.hooks_in, *self.hooks_out]

    def io(self, table: dict):
        """(inputs, targets) from a batch keyed by hook: one list per side, in layer order."""
        return [table[h] for h in self.hooks_in], [table[h] for h in self.hooks_out]

    def dim(self, hook: str) -> int:
        """Width of one of ``hooks`` (the trainer scales it to mean norm sqrt(width))."""
        return self.d_in if hook in self.hooks_in else self.out_dim

    def build(self) -> CrossLayerTranscoder:
        """A fresh ``CrossLayerTranscoder`` of this shape (what the trainer trains)."""
        return CrossLayerTranscoder(self)

    @property
    def name(self) -> str:
        """Folder-friendly name, e.g. 'clt-L0-29.mlp_in-to-mlp_out-topk-448'."""
        first, last = self.hooks_in[0], self.hooks_in[-1]
        span = first if first == last else f"{first.split('.')[0]}-{last[1:]}"
        return f"clt-{span}-to-{self.hooks_out[0].split('.')[-1]}-{self.arch}-{self.d_sae}"

    @property
    def resolved_decoder_init(self) -> str:
        return "random" if self.decoder_init == "auto" else self.decoder_init

    def layer_config(self, i: int) -> DictionaryConfig:
        """Layer i as a transcoder config: what its activation and AuxK read."""
        return DictionaryConfig(
            d_in=self.d_in, d_sae=self.d_sae, arch=self.arch, d_out=self.out_dim,
            hook_in=self.hooks_in[i], hook_out=self.hooks_out[i], model_name=self.model_name,
            k=self.ks[i], encoder_init=self.encoder_init, decoder_init=self.resolved_decoder_init,
            auxk_alpha=self.auxk_alpha, auxk_k=self.auxk_k, auxk_stride=self.auxk_stride,
            revive=self.revive, decode=self.decode, select=self.select,
            l0_coefficient=self.l0_coefficient, jumprelu_bandwidth=self.jumprelu_bandwidth,
            jumprelu_init_threshold=self.jumprelu_init_threshold,
        )  # fmt: skip

    @classmethod
    def from_layers(
        cls, cfgs: list[DictionaryConfig], d_sae: int, layer_k: tuple[int, ...] | None = None
    ) -> CrossLayerConfig:
        """One CLT over per-layer transcoder configs (the train command's hook pairs)."""
        c = cfgs[0]
        if c.skip or c.matryoshka:
            raise ValueError("--clt does not support --skip or --matryoshka; drop them")
        return cls(
            d_in=c.d_in, d_sae=d_sae, hooks_in=tuple(x.hook_in for x in cfgs),
            hooks_out=tuple(x.hook_out for x in cfgs), arch=c.arch, d_out=c.d_out,
            model_name=c.model_name, k=c.k, layer_k=layer_k, auxk_alpha=c.auxk_alpha,
            auxk_k=c.auxk_k, auxk_stride=c.auxk_stride, revive=c.revive, decode=c.decode,
            select=c.select,
            encoder_init="random" if c.encoder_init == "random" else "standardized",
            decoder_init=c.decoder_init,
            l0_coefficient=c.l0_coefficient, jumprelu_bandwidth=c.jumprelu_bandwidth,
            jumprelu_init_threshold=c.jumprelu_init_threshold,
        )  # fmt: skip


class LayerView:
    """One layer of a CLT seen as a transcoder's encoder: what ``SparseDictionary``'s AuxK and
    selection code and the evaluator's ``QualityMeter`` read (its own latents only)."""

    is_transcoder = True
    W_skip = None
    auxk_choice = SparseDictionary.auxk_choice
    selection_pre = SparseDictionary.selection_pre

    def __init__(self, clt: CrossLayerTranscoder, i: int) -> None:
        self.clt, self.i = clt, i
        self.cfg = clt.layer_cfgs[i]
        self.d_in, self.d_sae, self.d_out = clt.d_in, clt.d_sae, clt.d_out

    @property
    def W_enc(self) -> Tensor:
        return self.clt.W_enc_t[self.i].t()

    @property
    def b_enc(self) -> Tensor:
        return self.clt.b_enc[self.i]

    def encode(self, x: Tensor) -> Tensor:
        return self.clt.encode_layer(self.i, x)


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder (see the module docstring). Inputs and outputs are lists, one
    ``[..., d]`` tensor per layer in ``cfg.hooks_in`` / ``cfg.hooks_out`` order."""

    def __init__(
        self,
        cfg: CrossLayerConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_cfgs = [cfg.layer_config(i) for i in range(cfg.n_layers)]
        n, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.out_dim
        kw = {"device": device, "dtype": dtype}
        enc, dec = [], []
        for i in range(n):  # drawn in SparseDictionary's order, so layer 0 starts as it would
            W_dec = torch.randn(d_sae, d_out, **kw)
            W_dec /= W_dec.norm(dim=1, keepdim=True)
            W_enc = torch.randn(d_in, d_sae, **kw)
            W_enc /= W_enc.norm(dim=0, keepdim=True)
            full = torch.zeros(d_sae, (n - i) * d_out, **kw)
            full[:, :d_out] = W_dec
            enc.append(nn.Parameter(W_enc.t().contiguous()))
            dec.append(nn.Parameter(full))
        self.W_enc_t = nn.ParameterList(enc)  # [d_sae, d_in] per layer, latent-major
        self.b_enc = nn.ParameterList(torch.zeros(d_sae, **kw) for _ in range(n))
        self.W_dec = nn.ParameterList(dec)  # [d_sae, (n - i) * d_out] per source layer
        self.b_dec = nn.Parameter(torch.zeros(n, d_out, **kw))
        self.acts = nn.ModuleList(make_activation(c) for c in self.layer_cfgs).to(**kw)
        self.folded_scales: tuple[list[float], list[float]] = ([1.0] * n, [1.0] * n)

    # ----------------------------------------------------------------- shape
    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.out_dim

    @property
    def unit_decoder(self) -> bool:
        return bool(self.acts[0].unit_decoder)

    def layer(self, i: int) -> LayerView:
        return LayerView(self, i)

    def decoder(self, source: int, target: int) -> Tensor:
        """``[d_sae, d_out]`` block from layer ``source``'s latents into layer ``target``."""
        if not 0 <= source <= target < self.n_layers:
            raise ValueError(f"no decoder from layer {source} into layer {target}")
        j = target - source
        return self.W_dec[source][:, j * self.d_out : (j + 1) * self.d_out]

    def threshold(self, i: int) -> Tensor | None:
        return self.acts[i].threshold

    def _lists(self, xs, width: int, what: str) -> list[Tensor]:
        xs = list(xs)
        if len(xs) != self.n_layers:
            raise ValueError(f"{what}: got {len(xs)} tensors for a {self.n_layers}-layer CLT")
        for x, hook in zip(xs, self.cfg.hooks_in, strict=True):
            if x.shape[-1] != width:
                raise ValueError(
                    f"{what} for {hook} has width {x.shape[-1]} but this CLT expects {width}; "
                    "pass activations from the hooks it was trained on"
                )
        return xs

    # ----------------------------------------------------------------- inference
    def pre_acts(self, i: int, x: Tensor) -> Tensor:
        W = self.W_enc_t[i]
        return x.to(W.dtype) @ W.t() + self.b_enc[i]

    def encode_layer(self, i: int, x: Tensor) -> Tensor:
        """Dense latents ``[..., d_sae]`` of layer ``i`` from its MLP input."""
        return self.acts[i].infer(self.pre_acts(i, x))

    def encode(self, xs) -> list[Tensor]:
        return [self.encode_layer(i, x) for i, x in enumerate(self._lists(xs, self.d_in, "input"))]

    def decode(self, fs) -> list[Tensor]:
        """Reconstruction of every output layer from dense latents of every layer."""
        fs = list(fs)
        parts = [(f.to(self.W_dec[i].dtype) @ self.W_dec[i]) for i, f in enumerate(fs)]
        return self._sum(parts, fs[0].shape[:-1])

    def forward(self, xs) -> list[Tensor]:
        """Prediction of every output hook, ``[..., d_out]`` each (TopK decodes sparsely)."""
        xs = self._lists(xs, self.d_in, "input")
        parts = []
        for i, x in enumerate(xs):
            pre = self.pre_acts(i, x).reshape(-1, self.d_sae)
            act = self.acts[i]
            if act.sparse(self.d_sae):
                values, idx = topk_rows(pre, self.cfg.ks[i])
                parts.append(sparse_decode(values.relu(), idx, self.W_dec[i]))
            else:
                parts.append(act.infer(pre) @ self.W_dec[i])
        return self._sum(parts, xs[0].shape[:-1])

    def _sum(self, parts: list[Tensor], shape) -> list[Tensor]:
        """``parts[i]`` ``[B, (n - i) * d_out]`` summed into each output layer, plus b_dec."""
        n, d = self.n_layers, self.d_out
        b = shape.numel()
        recon = parts[0].new_zeros(b, n, d)
        for i, part in enumerate(parts):
            recon[:, i:] += part.reshape(b, n - i, d)
        recon = recon + self.b_dec
        return [recon[:, j].reshape(*shape, d) for j in range(n)]

    # ----------------------------------------------------------------- training
    def _train_layer(self, i: int, x: Tensor, dead: Tensor | None):
        """Layer i's training forward: (decoded ``[B, (n - i) * d_out]``, penalty, l0, fire
        counts, AuxK terms or None)."""
        act, view, W_dec = self.acts[i], self.layer(i), self.W_dec[i]
        if not act.auxk:  # JumpReLU: dense latents through autograd
            pre = torch.addmm(view.b_enc, x, view.W_enc)
            acts = act.train_acts(pre)
            active = acts > 0
            penalty = act.penalty(pre, acts, W_dec)
            return acts @ W_dec, penalty, active.sum(-1).float().mean(), active.sum(0), None
        k = self.cfg.ks[i]
        aux = None
        if act.sparse(self.d_sae):  # as TopK._sparse: only the chosen latents after the encoder
            sae_in = x.detach()
            pre = view.selection_pre(sae_in)
            idx = topk_rows(pre, k)[1]
            layout = TopKLayout(idx, self.d_sae)
            choice = view.auxk_choice(pre, dead)
            W_enc_t, W_self = view.W_enc.t(), self.decoder(i, i)
            aux, aux_idx = auxk.route(
                choice, sae_in, None, W_enc_t, view.b_enc, W_self, act.aux_values
            )
            both = idx if aux_idx is None else torch.cat([idx, aux_idx], 1)
            enc = layout if aux_idx is None else TopKLayout(both, self.d_sae)
            raw = gather_pre(x, None, view.W_enc, view.b_enc, pre, enc, sae_in)
            vals = raw[:, :k].relu()
            decoded = sparse_decode(vals, idx, W_dec, layout)
        else:  # dense reference path (as TopK._dense)
            pre = torch.addmm(view.b_enc, x, view.W_enc)
            idx = pre.detach().topk(k, dim=-1, sorted=False).indices
            choice = view.auxk_choice(pre, dead)
            aux_idx = None if choice is None else choice.indices
            raw = pre.gather(1, idx if aux_idx is None else torch.cat([idx, aux_idx], 1))
            vals = raw[:, :k].relu()
            decoded = dense_decode(vals, idx, W_dec)
        if aux_idx is not None:
            aux = AuxTerms(act.aux_values(raw[:, k:]), aux_idx, choice.scale, choice.stride)
        penalty, l0, counts = _topk_stats(vals, idx, self.d_sae)
        return decoded, penalty, l0, counts, aux

    def loss(
        self, xs, ys, *, dead_mask: Tensor | None = None, warmup: float = 1.0
    ) -> ForwardOutput:
        """Training loss on one batch: ``xs`` / ``ys`` one ``[B, d]`` tensor per layer.
        ``dead_mask`` (bool ``[n_layers * d_sae]``, layer-major) enables AuxK."""
        xs = self._lists(xs, self.d_in, "input")
        ys = self._lists(ys, self.d_out, "target")
        dtype = self.b_dec.dtype
        xs = [x.reshape(-1, self.d_in).to(dtype) for x in xs]
        ys = [y.reshape(-1, self.d_out).to(dtype) for y in ys]
        parts, auxes, counts = [], [], []
        penalty = l0 = xs[0].new_zeros(())
        for i, x in enumerate(xs):
            dead = None
            if dead_mask is not None and self.acts[i].auxk:
                dead = dead_mask[i * self.d_sae : (i + 1) * self.d_sae]
            decoded, pen, l0_i, count, aux = self._train_layer(i, x, dead)
            parts.append(decoded)
            penalty, l0 = penalty + pen, l0 + l0_i
            counts.append(count)
            auxes.append(aux)
        recon = self._sum(parts, xs[0].shape[:-1])
        errs = [y - r for y, r in zip(ys, recon, strict=True)]
        mses = [e.pow(2).sum(-1).mean() for e in errs]
        mse = torch.stack(mses).sum()
        aux_loss = mse.new_zeros(())
        for i, aux in enumerate(auxes):
            if aux is not None:
                aux_loss = aux_loss + aux.loss(self.decoder(i, i), errs[i])
        sparsity = self.acts[0].coefficient(warmup) * penalty
        loss = mse + self.cfg.auxk_alpha * aux_loss + sparsity
        fvu = torch.stack([batch_fvu(m.detach(), y) for m, y in zip(mses, ys, strict=True)])
        return ForwardOutput(loss, mse, aux_loss, sparsity, l0, torch.cat(counts), fvu.mean())

    # ----------------------------------------------------------------- constraints and init
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        for W in self.W_dec:
            W.div_(W.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def fold_decoder_norms(self) -> CrossLayerTranscoder:
        """``SparseDictionary.fold_decoder_norms`` per source layer (a row spans every target)."""
        for i, W in enumerate(self.W_dec):
            c = W.norm(dim=1).clamp_min(1e-12)
            W.div_(c[:, None])
            self.W_enc_t[i].mul_(c[:, None])
            self.b_enc[i].mul_(c)
            self.acts[i].scale_threshold(c)
        return self

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        for W in self.W_dec:
            if W.grad is None:
                continue
            along = torch.linalg.vecdot(W.grad, W).unsqueeze(1)
            along /= torch.linalg.vector_norm(W, dim=1, keepdim=True).square().clamp_min(1e-24)
            W.grad.addcmul_(along, W, value=-1)

    def post_backward(self) -> None:
        if self.unit_decoder:
            self.remove_parallel_grad()

    def post_step(self) -> None:
        if self.unit_decoder:
            self.normalize_decoder()

    @torch.no_grad()
    def init_from_data(self, xs, ys, method: str = "mean") -> None:
        """b_dec of each output layer from its targets' mean (or geometric median); each
        encoder standardised on its inputs and, with ``decoder_init="fit"``, each layer's own
        decoder block fitted (as ``SparseDictionary.init_from_data``)."""
        xs = self._lists(xs, self.d_in, "input")
        ys = self._lists(ys, self.d_out, "target")
        for j, y in enumerate(ys):
            y = y.reshape(-1, self.d_out).to(self.b_dec.dtype)
            if method == "mean":
                self.b_dec[j].copy_(y.mean(0))
            elif method == "median":
                self.b_dec[j].copy_(geometric_median(y))
            elif method != "zero":
                raise ValueError(f"init method must be mean, median or zero, got {method!r}")
        if self.cfg.encoder_init == "standardized":
            for i, x in enumerate(xs):
                W_enc = self.W_enc_t[i].t()
                pre = x.reshape(-1, self.d_in).to(W_enc.dtype) @ W_enc
                std = pre.std(0).clamp_min(1e-6)
                W_enc.div_(std)
                self.b_enc[i].copy_(-pre.mean(0) / std)
        for i, (x, y, c) in enumerate(zip(xs, ys, self.layer_cfgs, strict=True)):
            if c.resolved_decoder_init == "fit":  # rows into later layers start at zero
                x = x.reshape(-1, self.d_in)
                y = y.reshape(-1, self.d_out).to(self.b_dec.dtype)
                rows, chosen = fitted_rows(self.pre_acts(i, x), y - self.b_dec[i], c.k)
                own = self.decoder(i, i)
                own[chosen] = rows[chosen].to(own.dtype)

    @torch.no_grad()
    def fold_scale(self, in_scales, out_scales) -> CrossLayerTranscoder:
        """Fold the trainer's per-hook normalisation into the weights (one scale per layer's
        input and output): afterwards raw activations in, raw targets out, same latents."""
        n, d = self.n_layers, self.d_out
        s_in, s_out = list(in_scales), list(out_scales)
        t = torch.tensor(s_out, dtype=self.b_dec.dtype, device=self.b_dec.device)
        for i in range(n):
            self.W_enc_t[i].mul_(s_in[i])
            self.W_dec[i].view(self.d_sae, n - i, d).div_(t[i:, None])
        self.b_dec.div_(t[:, None])
        a, b = self.folded_scales
        self.folded_scales = (
            [x * y for x, y in zip(a, s_in, strict=True)],
            [x * y for x, y in zip(b, s_out, strict=True)],
        )
        return self

    def fold_hook_scales(self, scales: Mapping[str, float]) -> CrossLayerTranscoder:
        """``fold_scale`` with the trainer's scale per hook (1 for a hook it left as is)."""
        return self.fold_scale(
            [scales.get(h, 1.0) for h in self.cfg.hooks_in],
            [scales.get(h, 1.0) for h in self.cfg.hooks_out],
        )


@torch.no_grad()
def evaluate_crosslayer(
    clt: CrossLayerTranscoder,
    batches: Iterable[dict[str, Tensor]],
    *,
    max_tokens: int | None = None,
) -> list[EvalStats]:
    """Held-out quality per output layer (``cfg.hooks_out`` order), on one pass: FVU of that
    layer's reconstruction (every earlier layer's latents included); L0, dead and dense of the
    latents of the same layer."""
    meters = [QualityMeter(clt.layer(i)) for i in range(clt.n_layers)]
    seen = 0
    for batch in batches:
        n = next(iter(batch.values())).shape[0]
        take = n if max_tokens is None else min(n, max_tokens - seen)
        if take <= 0:
            break
        xs = [batch[h][:take].to(clt.b_dec.device) for h in clt.cfg.hooks_in]
        ys = [batch[h][:take] for h in clt.cfg.hooks_out]
        recon = clt(xs)
        for m, x, y, r in zip(meters, xs, ys, recon, strict=True):
            m.add(x, y, recon=r)
        seen += take
    if seen == 0:
        raise ValueError("the held-out activations yielded no batches; check the eval cache")
    return [m.result() for m in meters]
