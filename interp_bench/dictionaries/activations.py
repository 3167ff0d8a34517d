"""Activation functions of sparse dictionaries: one small ``nn.Module`` each behind one interface.

An activation turns encoder pre-activations ``pre [B, d_sae]`` into latents. Each one owns what
is particular to it, so :class:`~interp_bench.dictionaries.dictionary.SparseDictionary` never
asks which architecture it holds:

- its parameters (JumpReLU's ``log_threshold``, BatchTopK's inference ``topk_threshold``) and
  the learning-rate multipliers they train at (``lr_scales``; the trainer's optimiser groups
  them, interp_bench/training/optim_groups.py);
- ``infer(pre)``: dense latents at inference, and ``threshold`` for the saved file;
- ``train_forward(d, x, dead_mask)``: the training forward, returning :class:`Encoded`. TopK and
  BatchTopK decode through the active latents only (``interp_bench.dictionaries.topk``);
- its sparsity penalty and coefficient, warmed up over the first steps (``coefficient``), as
  SAELens's ``get_coefficients``; whether it keeps unit-norm decoder rows; whether AuxK revives
  its dead latents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import auxk
from interp_bench.dictionaries.auxk import AuxTerms
from interp_bench.dictionaries.matryoshka import (
    dense_prefix_decode,
    sparse_prefix_decode,
    topk_prefix_decode,
)
from interp_bench.dictionaries.topk import (
    SparseDecode,
    TopKLayout,
    choose_sparse,
    dense_decode,
    gather_pre,
    single_thread,
    sparse_decode,
    topk_rows,
)

if TYPE_CHECKING:
    from interp_bench.dictionaries.dictionary import SparseDictionary


class Encoded(NamedTuple):
    """What a training forward hands back to the dictionary's loss."""

    recon: Tensor  # [B, d_out] reconstruction without the skip term, b_dec included
    penalty: Tensor  # sparsity penalty before its coefficient (0 for TopK / BatchTopK)
    l0: Tensor  # mean active latents per token (scalar)
    fire_counts: Tensor  # long [d_sae]: tokens of the batch each latent fired on
    aux: AuxTerms | None  # AuxK terms, or None when no latent is dead
    # Matryoshka: [B, len(prefixes), d_out] reconstructions of each latent prefix (b_dec
    # included; the last is ``recon``), else None
    prefixes: Tensor | None = None


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1[|u| < 1/2] used by the JumpReLU straight-through estimators."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """z * H(z - theta) with the STE of Rajamanoharan et al. 2024 (eq. 11).

    d/dz = H(z - theta) (the true derivative away from the jump);
    d/dtheta = -(theta / eps) * K((z - theta) / eps).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = (z > theta).to(z.dtype) * grad
        grad_theta = -(theta / eps) * rectangle((z - theta) / eps) * grad
        return grad_z, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


class StepFn(torch.autograd.Function):
    """H(z - theta) with the STE of Rajamanoharan et al. 2024 (eq. 12), for the L0 penalty.

    d/dz = 0 (the pre-activations get no gradient from L0, as in the paper);
    d/dtheta = -(1 / eps) * K((z - theta) / eps).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * rectangle((z - theta) / eps) * grad
        return None, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


class Activation(nn.Module):
    """The interface every activation implements (see the module docstring)."""

    unit_decoder = True  # training keeps decoder rows at unit norm
    auxk = False  # AuxK revives dead latents
    sparse_capable = False  # can decode through the active latents only

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def threshold(self) -> Tensor | None:
        """Per-latent inference threshold ``[d_sae]`` for the saved file, or None."""
        return None

    def load_threshold(self, threshold: Tensor) -> None:
        """Restore the inference threshold from a saved file (no-op where there is none)."""

    def scale_threshold(self, scale: Tensor) -> None:
        """Each latent's pre-activation was multiplied by ``scale [d_sae]`` (> 0): move its
        threshold with it, so the same latents fire."""
        if self.threshold is not None:
            self.load_threshold(self.threshold * scale)

    def coefficient(self, warmup: float) -> float:
        """Sparsity coefficient at warm-up progress ``warmup`` (0 -> 1 over the warm-up)."""
        return 0.0

    def lr_scales(self, lr: float, steps: int) -> dict[str, float]:
        """Multipliers of the shared learning rate ``lr`` for some of its parameters (by name),
        in a run of ``steps`` optimiser steps."""
        return {}

    def plan(self, steps: int) -> None:
        """Fit settings that depend on the run's length to a run of ``steps`` optimiser steps
        (the trainer calls it once the length is known)."""

    def sparse(self, d_sae: int) -> bool:
        """Whether training (and TopK inference) decode through the active latents only."""
        return self.sparse_capable and choose_sparse(self.cfg.k, d_sae, self.cfg.decode)

    def infer(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_infer(self, pre: Tensor, W_dec: Tensor) -> Tensor:
        """``infer(pre) @ W_dec`` (b_dec not added); TopK overrides it with a sparse decode."""
        return self.infer(pre) @ W_dec

    def train_forward(self, d: SparseDictionary, x: Tensor, dead_mask: Tensor | None) -> Encoded:
        """Dense reference path: latents ``[B, d_sae]`` through autograd."""
        pre = torch.addmm(d.b_enc, d.sae_in(x), d.W_enc)
        acts = self.train_acts(pre)
        prefixes = None
        if self.cfg.matryoshka:
            prefixes = dense_prefix_decode(acts, d.W_dec, self.cfg.matryoshka) + d.b_dec
            recon = prefixes[:, -1]
        else:
            recon = acts @ d.W_dec + d.b_dec
        active = acts > 0
        aux = None
        choice = d.auxk_choice(pre, dead_mask) if self.auxk else None
        if choice is not None:
            idx = choice.indices
            aux = AuxTerms(self.aux_values(pre.gather(1, idx)), idx, choice.scale, choice.stride)
        penalty = self.penalty(pre, acts, d.W_dec)
        return Encoded(recon, penalty, active.sum(-1).float().mean(), active.sum(0), aux, prefixes)

    def aux_values(self, pre: Tensor) -> Tensor:
        """AuxK's latent values from the chosen dead latents' pre-activations: ReLU'd, or as
        they are with ``revive="linear"`` (so latents negative everywhere still get a gradient)."""
        return pre if self.cfg.resolved_revive == "linear" else pre.relu()

    def train_acts(self, pre: Tensor) -> Tensor:
        """Dense latents of the training forward (with STEs where needed)."""
        return self.infer(pre)

    def penalty(self, pre: Tensor, acts: Tensor, W_dec: Tensor) -> Tensor:
        """Sparsity penalty before the coefficient."""
        return pre.new_zeros(())


class ReLU(Activation):
    """ReLU latents with an L1 penalty weighted by decoder row norms (Anthropic, April 2024).

    ``sparsity="kl"`` swaps the L1 for the classic sparse-autoencoder penalty
    sum_j KL(rho || rho_hat_j) toward a target firing rate rho. The firing probability must lie
    in (0, 1) and be differentiable, so rho_hat_j is the batch mean of tanh(f_j): it counts a
    latent as "on" once its activation is well above 1 (inputs are normalised to mean norm
    sqrt(d_in), so a unit activation is a typical feature size), and near zero it behaves like
    L1, which is what pushes small activations to exactly 0. The KL penalty does not look at
    decoder norms, so the dictionary keeps decoder rows at unit norm for it.
    """

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        self.unit_decoder = cfg.sparsity == "kl"

    def coefficient(self, warmup: float) -> float:
        base = self.cfg.kl_coefficient if self.cfg.sparsity == "kl" else self.cfg.l1_coefficient
        return base * min(1.0, warmup)

    def infer(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def penalty(self, pre: Tensor, acts: Tensor, W_dec: Tensor) -> Tensor:
        if self.cfg.sparsity == "kl":
            return kl_sparsity(acts, self.cfg.kl_target)
        return (acts * W_dec.norm(dim=1)).sum(-1).mean()


def kl_sparsity(acts: Tensor, rho: float) -> Tensor:
    """sum_j KL(rho || rho_hat_j), rho_hat_j = mean_b tanh(acts[b, j]) clamped into (0, 1)."""
    rho_hat = torch.tanh(acts).mean(0).clamp(1e-6, 1 - 1e-6)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


class TopK(Activation):
    """Keep the k largest pre-activations per token (ReLU'd); Gao et al. 2024. No penalty;
    dead latents are revived by AuxK. Training decodes through the k active latents only."""

    auxk = True
    sparse_capable = True

    def infer(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def decode_infer(self, pre: Tensor, W_dec: Tensor) -> Tensor:
        if not self.sparse(pre.shape[-1]):
            return super().decode_infer(pre, W_dec)
        values, indices = topk_rows(pre.reshape(-1, pre.shape[-1]), self.cfg.k)
        return sparse_decode(values.relu(), indices, W_dec).view(*pre.shape[:-1], -1)

    def train_forward(self, d: SparseDictionary, x: Tensor, dead_mask: Tensor | None) -> Encoded:
        if d.sparse_decode:
            return self._sparse(d, x, dead_mask)
        return self._dense(d, x, dead_mask)

    def _sparse(self, d: SparseDictionary, x: Tensor, dead_mask: Tensor | None) -> Encoded:
        """Hot path: the encoder matmul runs outside autograd; everything after it touches
        only the k chosen (and AuxK) latents."""
        k = self.cfg.k
        sae_in = d.sae_in(x).detach()
        pre = d.selection_pre(sae_in)
        idx = topk_rows(pre, k)[1]
        layout = TopKLayout(idx, d.d_sae)
        choice = d.auxk_choice(pre, dead_mask)
        aux, aux_idx = auxk.route(
            choice, sae_in, d.b_shift, d.W_enc_t, d.b_enc, d.W_dec, self.aux_values
        )
        # One backward for TopK and sparse AuxK latents: their gradients share the encoder product.
        enc_layout = (
            layout if aux_idx is None else TopKLayout(torch.cat([idx, aux_idx], 1), d.d_sae)
        )
        raw = gather_pre(x, d.b_shift, d.W_enc, d.b_enc, pre, enc_layout, sae_in)
        vals = raw[:, :k].relu()
        prefixes = None
        if self.cfg.matryoshka:
            prefixes = topk_prefix_decode(vals, idx, d.W_dec, self.cfg.matryoshka) + d.b_dec
            recon = prefixes[:, -1]
        else:
            recon = sparse_decode(vals, idx, d.W_dec, layout) + d.b_dec
        if aux_idx is not None:
            aux = AuxTerms(self.aux_values(raw[:, k:]), aux_idx, choice.scale, choice.stride)
        return Encoded(recon, *_topk_stats(vals, idx, d.d_sae), aux, prefixes)

    def _dense(self, d: SparseDictionary, x: Tensor, dead_mask: Tensor | None) -> Encoded:
        """Reference path (autograd through dense products), also the fallback for large k."""
        k = self.cfg.k
        pre = torch.addmm(d.b_enc, d.sae_in(x), d.W_enc)
        idx = pre.detach().topk(k, dim=-1, sorted=False).indices
        choice = d.auxk_choice(pre, dead_mask)
        aux_idx = None if choice is None else choice.indices
        all_idx = idx if aux_idx is None else torch.cat([idx, aux_idx], 1)
        raw = pre.gather(1, all_idx)
        vals = raw[:, :k].relu()
        prefixes = None
        if self.cfg.matryoshka:
            dense = vals.new_zeros(len(x), d.d_sae).scatter_add(1, idx, vals)
            prefixes = dense_prefix_decode(dense, d.W_dec, self.cfg.matryoshka) + d.b_dec
            recon = prefixes[:, -1]
        else:
            recon = dense_decode(vals, idx, d.W_dec) + d.b_dec
        aux = None
        if choice is not None:
            aux = AuxTerms(self.aux_values(raw[:, k:]), aux_idx, choice.scale, choice.stride)
        return Encoded(recon, *_topk_stats(vals, idx, d.d_sae), aux, prefixes)


@torch.no_grad()
def _topk_stats(vals: Tensor, idx: Tensor, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
    """(penalty 0, l0, fire counts) of a TopK batch."""
    with single_thread():  # O(B * k) bookkeeping
        active = vals > 0
        counts = torch.bincount(idx[active], minlength=d_sae)
        return vals.new_zeros(()), active.sum(-1).float().mean(), counts


def threshold_decay(steps: int) -> float:
    """BatchTopK's threshold EMA decay for a run of ``steps``: a window of 10% of the run, from 1
    to 100 steps, so the inference threshold forgets the early batches of a short run and
    averages over 100 in a long one (the Bussmann et al. 0.99)."""
    return 1 - 1 / min(100.0, max(1.0, steps / 10))


class BatchTopK(Activation):
    """Keep the k * B largest (ReLU'd) pre-activations over the whole batch (Bussmann et al.
    2024), so tokens get a variable number of latents averaging k.

    Batch-level selection cannot be used on single tokens, so training also tracks a global
    threshold, an EMA of the smallest activation that survived the batch top-k; inference is
    JumpReLU with that threshold. This is also how it is saved for SAELens (as ``jumprelu``).
    """

    auxk = True
    sparse_capable = True

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("topk_threshold", torch.zeros(()))
        # Total weight of the batches averaged so far (1 - ema^t): the bias correction.
        self.register_buffer("threshold_weight", torch.zeros(()))
        # Until `plan` sees the run's length: the long-run window.
        self.ema = cfg.threshold_ema if cfg.threshold_ema is not None else threshold_decay(1000)

    def plan(self, steps: int) -> None:
        if self.cfg.threshold_ema is None:
            self.ema = threshold_decay(steps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A state saved before the bias correction holds a finished threshold: weight 1.
        state_dict.setdefault(prefix + "threshold_weight", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def threshold(self) -> Tensor:
        return self.topk_threshold.expand(self.cfg.d_sae)

    def load_threshold(self, threshold: Tensor) -> None:
        with torch.no_grad():
            self.topk_threshold.copy_(threshold.reshape(-1)[0])
            self.threshold_weight.fill_(1.0)

    def scale_threshold(self, scale: Tensor) -> None:
        """One threshold for all latents: scaled by the median scale (exact when all are equal)."""
        with torch.no_grad():
            self.topk_threshold.mul_(scale.median().to(self.topk_threshold.dtype))

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """The k * B largest pre-activations: ``(values ReLU'd, indices into pre.flatten())``."""
        flat = pre.reshape(-1)
        n = min(self.cfg.k * pre.shape[:-1].numel(), flat.numel())
        values, indices = flat.topk(n, sorted=False)
        return values.relu(), indices

    @torch.no_grad()
    def update_threshold(self, values: Tensor) -> None:
        """Bias-corrected EMA (as Adam's moments) of the smallest positive activation that
        survived the batch top-k: every batch so far weighs ema^age, normalised by the total
        weight. Without the correction the EMA starts from 0 and is still 0.99^t short after
        t steps (37% at 100), so a short run fires several times k latents at inference
        (frontier, issue 10: L0 ~100 at k 32 after 100 steps)."""
        positive = values[values > 0]
        if positive.numel():
            m = positive.min().to(self.topk_threshold.dtype)
            ema = self.ema
            before = ema * self.threshold_weight
            weight = before + (1 - ema)
            self.topk_threshold.mul_(before).add_((1 - ema) * m).div_(weight)
            self.threshold_weight.copy_(weight)

    def infer(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.topk_threshold.to(pre.dtype)).to(pre.dtype)

    def train_acts(self, pre: Tensor) -> Tensor:
        values, indices = self.select(pre)
        self.update_threshold(values.detach())
        flat = torch.zeros_like(pre).reshape(-1).scatter(0, indices, values)
        return flat.reshape(pre.shape)

    def train_forward(self, d: SparseDictionary, x: Tensor, dead_mask: Tensor | None) -> Encoded:
        if not d.sparse_decode:
            return super().train_forward(d, x, dead_mask)
        # Through the active latents only: a variable number per token, as CSR.
        sae_in = d.sae_in(x).detach()
        pre = d.selection_pre(sae_in)
        with torch.no_grad():
            _, flat_idx = self.select(pre)
        layout = TopKLayout.from_flat(flat_idx, len(x), d.d_sae)
        args = (x, d.b_shift, d.W_enc, d.b_enc, pre)
        vals = gather_pre(*args, layout, sae_in).relu()  # [nnz], row-major
        self.update_threshold(vals.detach())
        prefixes = None
        if self.cfg.matryoshka:
            rows = torch.div(layout.flat, d.d_sae, rounding_mode="floor")
            prefixes = sparse_prefix_decode(
                vals, rows, layout.col, len(x), d.W_dec, self.cfg.matryoshka
            )
            prefixes = prefixes + d.b_dec
            recon = prefixes[:, -1]
        else:
            recon = SparseDecode.apply(vals, layout, d.W_dec) + d.b_dec
        active = vals > 0
        counts = torch.bincount(layout.col[active], minlength=d.d_sae)
        l0 = active.sum().float() / len(x)
        choice = d.auxk_choice(pre, dead_mask)
        aux, aux_idx = auxk.route(
            choice, sae_in, d.b_shift, d.W_enc_t, d.b_enc, d.W_dec, self.aux_values
        )
        if aux_idx is not None:
            aux_vals = self.aux_values(gather_pre(*args, TopKLayout(aux_idx, d.d_sae), sae_in))
            aux = AuxTerms(aux_vals, aux_idx, choice.scale, choice.stride)
        return Encoded(recon, recon.new_zeros(()), l0, counts, aux, prefixes)


# Log-space distance the default JumpReLU threshold learning rate lets a threshold travel in a
# run (jumprelu_threshold_lr None): e^4 = 55x its start.
THRESHOLD_TRAVEL = 4.0


class JumpReLU(Activation):
    """Per-latent thresholds trained by straight-through estimators, L0 penalty (Rajamanoharan
    et al. 2024). Thresholds are stored as ``log_threshold`` so they stay positive."""

    unit_decoder = False

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold)
        self.log_threshold = nn.Parameter(init.log())

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def load_threshold(self, threshold: Tensor) -> None:
        with torch.no_grad():
            self.log_threshold.copy_(threshold.log())

    def coefficient(self, warmup: float) -> float:
        return self.cfg.l0_coefficient * min(1.0, warmup)

    def lr_scales(self, lr: float, steps: int) -> dict[str, float]:
        """``jumprelu_threshold_lr``, or (None) enough for Adam, whose steps are about the lr
        whatever the gradient, to move a threshold by a factor e^THRESHOLD_TRAVEL over the run."""
        scale = self.cfg.jumprelu_threshold_lr
        if scale is None:
            scale = max(1.0, THRESHOLD_TRAVEL / max(lr * steps, 1e-12))
        return {"log_threshold": scale}

    def infer(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.log_threshold.exp()).to(pre.dtype)

    def train_acts(self, pre: Tensor) -> Tensor:
        return JumpReLUFn.apply(pre.relu(), self.log_threshold.exp(), self.cfg.jumprelu_bandwidth)

    def penalty(self, pre: Tensor, acts: Tensor, W_dec: Tensor) -> Tensor:
        theta = self.log_threshold.exp()
        return StepFn.apply(pre, theta, self.cfg.jumprelu_bandwidth).sum(-1).mean()


ACTIVATIONS: dict[str, type[Activation]] = {
    "relu": ReLU,
    "topk": TopK,
    "batchtopk": BatchTopK,
    "jumprelu": JumpReLU,
}


def make_activation(cfg: DictionaryConfig) -> Activation:
    return ACTIVATIONS[cfg.arch](cfg)
