"""AuxK (Gao et al. 2024, App. B.1): each token's top k_aux dead latents reconstruct the main
path's error, so dead latents get a gradient. Two ways to compute that reconstruction, the same
function: through the sparse kernels (k_aux latents per token: costs what the main path costs
for k, ten times over at k_aux = d/2 = 288 vs k = 32), or as dense products over the dead latents
only (cost in proportion to how many are dead). The dense one is cheaper while at most
``DENSE_AUX_MAX`` x k_aux latents are dead: `benchmarks/bench_auxk.py` (machine B, 2 threads,
d 576, d_sae 4608, B 4096) has the sparse path's step at 350-470 ms whatever the count, the dense
one 0.71-0.77x of it at 0.8-1.6 k_aux dead, 0.92-0.95x at 3.2, 0.97-1.02x at 4.0, 1.10x at 4.8.

AuxK reads every ``cfg.auxk_stride``-th token of a batch (the loss is a mean over them): the
dense path's products shrink with the stride, the sparse path still gathers every row and uses
those."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from interp_bench.dictionaries.topk import sparse_decode

DENSE_AUX_MAX = 3.5


class AuxChoice(NamedTuple):
    """The dead latents ``[n_dead]``, their pre-activations from the selection product
    (``[B, n_dead]``, no gradient; revived ones already lifted), each token's top k_aux of them
    as positions in ``dead`` (``[B, k_aux]``), the loss scale (dead fraction of k_aux, at most
    1), and the stride of the rows AuxK reads."""

    dead: Tensor
    pre: Tensor
    local: Tensor
    scale: float
    stride: int

    @property
    def indices(self) -> Tensor:
        """The chosen latents' indices ``[B, k_aux]``."""
        return self.dead[self.local]


class AuxTerms(NamedTuple):
    """AuxK inputs: values and indices ``[B, k_aux]`` of the chosen dead latents, the loss scale
    and the stride of the rows AuxK reads; or, from the dense path, their reconstruction
    ``recon`` of those rows already decoded."""

    values: Tensor | None
    indices: Tensor | None
    scale: float
    stride: int
    recon: Tensor | None = None

    def decode(self, W_dec: Tensor) -> Tensor:
        """The chosen dead latents' reconstruction of the rows read ``[B / stride, d_out]``."""
        if self.recon is not None:
            return self.recon
        s = self.stride
        return sparse_decode(self.values[::s].contiguous(), self.indices[::s].contiguous(), W_dec)

    def loss(self, W_dec: Tensor, err: Tensor) -> Tensor:
        """AuxK's loss: the squared distance of the reconstruction from the main path's error
        ``err [B, d_out]`` (no gradient) on the rows read, times the scale."""
        e_hat = self.decode(W_dec)
        return self.scale * (e_hat - err[:: self.stride].detach()).pow(2).sum(-1).mean()


class DeadPre(torch.autograd.Function):
    """The dead latents' pre-activations ``(x - b_shift) @ W^T + b`` with ``W``/``b`` their rows of
    W_enc_t/b_enc, taken from the selection product (recomputed only when that was in a lower
    precision), so the dense path runs no second encoder product. Backward as GatherPre's, dense:
    grad_W = G^T sae_in, grad_b = column sums of G, grad_b_shift = -W^T grad_b."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, sae_in: Tensor, W: Tensor, b: Tensor, b_shift):
        ctx.save_for_backward(sae_in, W)
        if pre.dtype != W.dtype:
            return torch.addmm(b, sae_in, W.t())
        return pre.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        sae_in, W = ctx.saved_tensors
        grad_b = grad.sum(0)
        grad_shift = -(W.t() @ grad_b) if ctx.needs_input_grad[4] else None
        return None, None, grad.t() @ sae_in, grad_b, grad_shift


def dense_aux(
    choice: AuxChoice,
    sae_in: Tensor,
    b_shift: Tensor | None,
    W_enc_t: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    values: Callable[[Tensor], Tensor],
) -> AuxTerms:
    """AuxK through dense products over the dead latents: ``values`` (ReLU or linear) of each
    token's chosen ones, decoded by the dead latents' decoder rows. Gradients reach W_enc, b_enc,
    W_dec and b_shift as the sparse path's do."""
    dead, s = choice.dead, choice.stride
    W, b = W_enc_t.index_select(0, dead), b_enc.index_select(0, dead)
    pre = DeadPre.apply(choice.pre[::s], sae_in[::s], W, b, b_shift)
    chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, choice.local[::s], True)
    lat = torch.where(chosen, values(pre), 0.0)
    return AuxTerms(None, None, choice.scale, s, lat @ W_dec.index_select(0, dead))


def route(
    choice: AuxChoice | None,
    sae_in: Tensor,
    b_shift: Tensor | None,
    W_enc_t: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    values: Callable[[Tensor], Tensor],
) -> tuple[AuxTerms | None, Tensor | None]:
    """Where a sparse path's AuxK goes: ``(terms, None)`` computed densely while the dead
    latents over the stride are at most DENSE_AUX_MAX x k_aux, else ``(None,
    indices)`` for the caller's sparse kernels (which share the main path's encoder backward);
    ``(None, None)`` with none dead."""
    if choice is None:
        return None, None
    if choice.dead.numel() / choice.stride <= DENSE_AUX_MAX * choice.local.shape[1]:
        return dense_aux(choice, sae_in, b_shift, W_enc_t, b_enc, W_dec, values), None
    return None, choice.indices
