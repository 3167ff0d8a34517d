"""Activation functions of sparse dictionaries, one small class each behind one interface.

Every activation maps encoder pre-activations ``pre [B, d_sae]`` to latents and says how much
sparsity costs. The dictionary owns the parameters (``W_dec``, ``log_threshold``,
``topk_threshold``) and passes itself in, so an activation holds only hyper-parameters.

- ``train(pre, d)``: latents used in the training forward. Dense ``[B, d_sae]`` except for
  :class:`TopK`, which returns ``(values [B, k], indices [B, k])`` for the sparse decode.
- ``infer(pre, d)``: dense latents at inference (``SparseDictionary.encode``).
- ``sparsity_loss(pre, acts, d)``: the penalty *before* the trainer's ``sparsity_scale``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries.dictionary import SparseDictionary


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


class ReLUL1:
    """ReLU latents with an L1 penalty weighted by decoder row norms (Anthropic, April 2024).

    ``sparsity="kl"`` swaps the L1 for the classic sparse-autoencoder penalty
    sum_j KL(rho || rho_hat_j) toward a target firing rate rho. The firing probability must lie
    in (0, 1) and be differentiable, so rho_hat_j is the batch mean of tanh(f_j): it counts a
    latent as "on" once its activation is well above 1 (inputs are normalised to mean norm
    sqrt(d_in), so a unit activation is a typical feature size), and near zero it behaves like
    L1, which is what pushes small activations to exactly 0. The KL penalty does not look at
    decoder norms, so the dictionary keeps decoder rows at unit norm for it.
    """

    sparse = False

    def __init__(self, cfg: DictionaryConfig) -> None:
        self.kind = cfg.sparsity
        self.l1_coefficient = cfg.l1_coefficient
        self.kl_target = cfg.kl_target
        self.kl_coefficient = cfg.kl_coefficient

    @property
    def unit_decoder(self) -> bool:
        return self.kind == "kl"

    def train(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        return torch.relu(pre)

    def infer(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        return torch.relu(pre)

    def sparsity_loss(self, pre: Tensor, acts: Tensor, d: SparseDictionary) -> Tensor:
        if self.kind == "kl":
            return self.kl_coefficient * kl_sparsity(acts, self.kl_target)
        return self.l1_coefficient * (acts * d.W_dec.norm(dim=1)).sum(-1).mean()


def kl_sparsity(acts: Tensor, rho: float) -> Tensor:
    """sum_j KL(rho || rho_hat_j), rho_hat_j = mean_b tanh(acts[b, j]) clamped into (0, 1)."""
    rho_hat = torch.tanh(acts).mean(0).clamp(1e-6, 1 - 1e-6)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


class TopK:
    """Keep the k largest pre-activations per token (ReLU'd); Gao et al. 2024.

    Training returns ``(values, indices)`` so the dictionary can decode through the k active
    latents only (see ``interp_bench.dictionaries.topk``). No sparsity penalty; dead latents are
    revived by the AuxK loss, which the dictionary computes because it needs the decoder.
    """

    sparse = True
    unit_decoder = True

    def __init__(self, cfg: DictionaryConfig) -> None:
        self.k = cfg.k

    def train(self, pre: Tensor, d: SparseDictionary) -> tuple[Tensor, Tensor]:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return values.relu(), indices

    def infer(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def sparsity_loss(self, pre: Tensor, acts: Any, d: SparseDictionary) -> Tensor:
        return pre.new_zeros(())


class BatchTopK:
    """Keep the k * B largest (ReLU'd) pre-activations over the whole batch (Bussmann et al.
    2024), so tokens get a variable number of latents averaging k.

    Batch-level selection cannot be used on single tokens, so training also tracks a global
    threshold, an EMA of the smallest activation that survived the batch top-k; inference is
    JumpReLU with that threshold. This is also how it is saved for SAELens (as ``jumprelu``).
    """

    sparse = False
    unit_decoder = True

    def __init__(self, cfg: DictionaryConfig) -> None:
        self.k = cfg.k
        self.ema = cfg.threshold_ema

    def select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """The k * B largest pre-activations: ``(values ReLU'd, indices into pre.flatten())``."""
        flat = pre.reshape(-1)
        n = min(self.k * pre.shape[:-1].numel(), flat.numel())
        values, indices = flat.topk(n, sorted=False)
        return values.relu(), indices

    @torch.no_grad()
    def update_threshold(self, values: Tensor, d: SparseDictionary) -> None:
        """EMA of the smallest positive activation that survived the batch top-k."""
        positive = values[values > 0]
        if positive.numel():
            m = positive.min().to(d.topk_threshold.dtype)
            d.topk_threshold.mul_(self.ema).add_((1 - self.ema) * m)

    def train(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        values, indices = self.select(pre)
        self.update_threshold(values.detach(), d)
        flat = torch.zeros_like(pre).reshape(-1).scatter(0, indices, values)
        return flat.reshape(pre.shape)

    def infer(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        return pre.relu() * (pre > d.topk_threshold.to(pre.dtype)).to(pre.dtype)

    def sparsity_loss(self, pre: Tensor, acts: Tensor, d: SparseDictionary) -> Tensor:
        return pre.new_zeros(())


class JumpReLU:
    """Per-latent thresholds trained by straight-through estimators, L0 penalty (Rajamanoharan
    et al. 2024). Thresholds are stored as ``log_threshold`` so they stay positive."""

    sparse = False
    unit_decoder = False

    def __init__(self, cfg: DictionaryConfig) -> None:
        self.bandwidth = cfg.jumprelu_bandwidth
        self.l0_coefficient = cfg.l0_coefficient

    def train(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        return JumpReLUFn.apply(pre.relu(), d.log_threshold.exp(), self.bandwidth)

    def infer(self, pre: Tensor, d: SparseDictionary) -> Tensor:
        return pre.relu() * (pre > d.log_threshold.exp()).to(pre.dtype)

    def sparsity_loss(self, pre: Tensor, acts: Tensor, d: SparseDictionary) -> Tensor:
        l0 = StepFn.apply(pre, d.log_threshold.exp(), self.bandwidth).sum(-1).mean()
        return self.l0_coefficient * l0


def make_activation(cfg: DictionaryConfig) -> ReLUL1 | TopK | BatchTopK | JumpReLU:
    return {"relu": ReLUL1, "topk": TopK, "batchtopk": BatchTopK, "jumprelu": JumpReLU}[cfg.arch](
        cfg
    )
