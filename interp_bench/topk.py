"""Sparse TopK hot path: decode and back-propagate through the k active latents only.

With k << d_sae the dense route wastes two products of the encoder's size: the decode
``[B, d_sae] @ [d_sae, d_out]`` and, in backward, the encoder weight gradient
``x^T @ grad_pre`` with a ``grad_pre`` that is almost all zeros. Here both are sparse:

- :class:`GatherPre` reads the chosen pre-activations ``pre[b, idx[b, j]]`` (``pre`` itself is
  computed without autograd) and back-propagates into ``W_enc``/``b_enc``/``x`` only at the
  chosen latents, as a CSR ``[B, d_sae]`` matrix with k entries per row times a dense matrix.
- :class:`SparseDecode` is ``F.embedding_bag`` (fused gather + weighted sum, no ``[B, k, d]``
  intermediate) forward; backward gets the value gradients as a sampled dense-dense product
  (SDDMM) and the decoder gradient as CSR^T @ grad_out.

So after the encoder's forward matmul every remaining op costs O(B * k * d), not O(B * d_sae * d).
``benchmarks/bench_topk.py`` measures this against the dense path and sparsify.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def topk_csr(indices: Tensor, values: Tensor, n_cols: int) -> Tensor:
    """A ``[B, n_cols]`` CSR matrix with ``values[b, j]`` at column ``indices[b, j]``.

    Rows hold exactly k entries, so the row pointer is an arange and nothing needs sorting.
    Duplicate columns within a row (possible for AuxK indices concatenated with TopK ones)
    are summed by the sparse kernels, which is what the chain rule wants.
    """
    b, k = indices.shape
    crow = torch.arange(0, b * k + 1, k, device=indices.device, dtype=torch.int64)
    with warnings.catch_warnings():  # CSR is "beta" in torch and says so; these ops are stable
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(
            crow, indices.reshape(-1), values.reshape(-1), (b, n_cols), check_invariants=False
        )


class GatherPre(torch.autograd.Function):
    """``pre.gather(1, idx)`` where ``pre = x @ W_enc + b_enc`` was computed outside autograd.

    Backward with ``G`` = the gradient scattered to ``[B, d_sae]`` (as CSR, never dense):
    grad_W_enc = x^T G, grad_b_enc = column sums of G, grad_x = G W_enc^T.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor):
        ctx.save_for_backward(x, W_enc, idx)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        x, W_enc, idx = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad = grad.contiguous().to(W_enc.dtype)
        G = topk_csr(idx, grad, d_sae)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (G @ W_enc.t().contiguous()).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = (G.t() @ x.to(W_enc.dtype)).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_W, grad_b, None, None


class SparseDecode(torch.autograd.Function):
    """``sum_j values[b, j] * W_dec[indices[b, j]]`` (no bias) with a sparse backward."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        values = values.to(W_dec.dtype)
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad_out = grad_out.contiguous().to(W_dec.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            # SDDMM: (grad_out @ W_dec^T) sampled at the active latents only.
            pattern = topk_csr(indices, torch.ones_like(values), W_dec.shape[0])
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.t(), beta=0.0)
            grad_values = grad_values.values().view_as(values)
        if ctx.needs_input_grad[2]:
            grad_W = topk_csr(indices, values, W_dec.shape[0]).t() @ grad_out
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Decode ``[..., k]`` values at ``[..., k]`` latent indices into ``[..., d_out]``."""
    shape = values.shape[:-1]
    k = values.shape[-1]
    out = SparseDecode.apply(values.reshape(-1, k), indices.reshape(-1, k), W_dec)
    return out.reshape(*shape, W_dec.shape[1])


def dense_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Reference path: scatter to ``[B, d_sae]`` and do the full matmul."""
    dense = values.new_zeros(*values.shape[:-1], W_dec.shape[0]).scatter(-1, indices, values)
    return dense @ W_dec


def choose_sparse(k: int, d_sae: int, mode: str = "auto") -> bool:
    """The sparse path wins once k is a small fraction of d_sae (measured crossover ~1/8)."""
    if mode == "sparse":
        return True
    if mode == "dense":
        return False
    return k * 8 <= d_sae
