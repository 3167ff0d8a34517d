"""Sparse TopK hot path: decode and back-propagate through the k active latents only.

With k << d_sae the dense route wastes two products of the encoder's size: the decode
``[B, d_sae] @ [d_sae, d_out]`` and, in backward, the encoder weight gradient
``x^T @ grad_pre`` with a ``grad_pre`` that is almost all zeros. Here both are sparse:

- :class:`GatherPre` reads the chosen pre-activations ``pre[b, idx[b, j]]`` (``pre`` itself is
  computed without autograd) and back-propagates into ``W_enc``/``b_enc``/``x`` only at the
  chosen latents, as a sparse ``[B, d_sae]`` matrix with k entries per row times a dense one.
- :class:`SparseDecode` is ``F.embedding_bag`` (fused gather + weighted sum, no ``[B, k, d]``
  intermediate) forward; backward gets the value gradients as a sampled dense-dense product
  (SDDMM) and the decoder gradient as S^T @ grad_out, again an embedding-bag.
- :func:`topk_rows` chooses the latents: torch.topk, with the row first narrowed to the few
  column groups that can hold its top k.

So after the encoder's forward matmul every remaining op costs O(B * k * d), not O(B * d_sae * d).
``benchmarks/bench_topk.py`` measures this against the dense path and sparsify.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the O(B * k) index bookkeeping (sorts, counts, scans) on one thread: each op takes
    about a millisecond, and an OpenMP team on a busy machine can stall far longer than that
    waiting for a descheduled worker. The O(B * k * d) products stay multi-threaded."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class TopKLayout:
    """Sparse structure of one batch's chosen latents, built once per step and shared by the
    backward passes that need it. Two shapes:

    - ``TopKLayout(indices [B, k], n_cols)``: k latents per row (TopK, AuxK); values ``[B, k]``.
    - ``TopKLayout.from_flat(flat_indices, B, n_cols)``: any number per row (BatchTopK), given as
      indices into the flattened ``[B, n_cols]``; values ``[nnz]`` in row-major order.

    With ``S`` the ``[B, n_cols]`` sparse matrix holding values ``v``: ``matmul(v, M)`` is
    ``S @ M`` and ``t_matmul(v, M)`` is ``S^T @ M``, both as ``F.embedding_bag`` (a weighted sum
    of gathered rows per bag): no sparse tensor to build, and no slower than torch's CSR product
    (``benchmarks/bench_topk.py``, part_* rows). ``S^T`` needs the entries ordered by latent: one
    int32 stable sort (a radix sort on CPU) done once here. Duplicate columns in a row (AuxK
    indices next to TopK ones) are summed, as the chain rule wants.
    """

    def __init__(self, indices: Tensor, n_cols: int) -> None:
        b, k = indices.shape
        self.indices: Tensor | None = indices
        self.n_rows, self.n_cols = b, n_cols
        self.col = indices.reshape(-1)
        self.crow = torch.arange(0, b * k + 1, k, device=indices.device, dtype=torch.int64)
        self._rows: Tensor | None = None  # row of each entry; only built for variable rows
        self._order: Tensor | None = None

    @classmethod
    def from_flat(cls, flat_indices: Tensor, n_rows: int, n_cols: int) -> TopKLayout:
        self = cls.__new__(cls)
        self.indices, self.n_rows, self.n_cols = None, n_rows, n_cols
        with single_thread():
            self.flat = flat = flat_indices.sort().values
            self._rows = torch.div(flat, n_cols, rounding_mode="floor")
            self.col = flat - self._rows * n_cols
            self.crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=flat.device)
            torch.cumsum(torch.bincount(self._rows, minlength=n_rows), 0, out=self.crow[1:])
        self._order = None
        return self

    def gather(self, pre: Tensor) -> Tensor:
        """The entries of a dense ``[B, n_cols]`` tensor at this layout's positions."""
        if self.indices is not None:
            return pre.gather(1, self.indices)
        return pre.reshape(-1)[self.flat]

    def _transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._order is None:
            with single_thread():
                self._build_transpose()
        return self._order, self._crow_t, self._col_t

    def _build_transpose(self) -> None:
        self._order = self.col.to(torch.int32).sort(stable=True).indices
        counts = torch.bincount(self.col, minlength=self.n_cols)
        self._crow_t = torch.zeros(self.n_cols + 1, dtype=torch.int64, device=self.col.device)
        torch.cumsum(counts, 0, out=self._crow_t[1:])
        if self._rows is None:
            k = self.indices.shape[1]
            self._col_t = torch.div(self._order, k, rounding_mode="floor")
        else:
            self._col_t = self._rows[self._order]

    def exact(self, sae_in: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
        """``(sae_in @ W_enc + b_enc)`` at this layout's positions, computed only there (SDDMM):
        exact values when the dense product was taken in lower precision to choose them."""
        pattern = self.csr(b_enc[self.col])
        out = torch.sparse.sampled_addmm(pattern, sae_in, W_enc).values()
        return out if self.indices is None else out.view_as(self.indices)

    def csr(self, values: Tensor) -> Tensor:
        return _csr(self.crow, self.col, values.reshape(-1), self.n_rows, self.n_cols)

    def matmul(self, values: Tensor, dense: Tensor) -> Tensor:
        """``S @ dense`` for ``dense [n_cols, d]``: row b sums its entries' rows of ``dense``."""
        return _bag_sum(self.col, dense, self.crow, values.reshape(-1))

    def t_matmul(self, values: Tensor, dense: Tensor) -> Tensor:
        """``S^T @ dense`` for ``dense [B, d]``: latent j sums the rows of the tokens it is
        active on, weighted by its values (empty for latents active nowhere)."""
        order, crow_t, col_t = self._transpose()
        with single_thread():
            values = values.reshape(-1)[order]
        return _bag_sum(col_t, dense, crow_t, values)


def _bag_sum(rows: Tensor, dense: Tensor, crow: Tensor, weights: Tensor) -> Tensor:
    """``out[i] = sum_{e in crow[i]:crow[i+1]} weights[e] * dense[rows[e]]``."""
    return F.embedding_bag(
        rows, dense.contiguous(), crow[:-1], per_sample_weights=weights, mode="sum"
    )


def _csr(crow: Tensor, col: Tensor, values: Tensor, n_rows: int, n_cols: int) -> Tensor:
    with warnings.catch_warnings():  # CSR is "beta" in torch and says so; these ops are stable
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, (n_rows, n_cols), check_invariants=False)


class GatherPre(torch.autograd.Function):
    """``pre.gather(1, idx)`` where ``pre = (x - b_shift) @ W_enc + b_enc`` was computed
    outside autograd (``layout`` holds ``idx``); if ``pre`` is in a lower precision than
    ``W_enc`` (it only chose the latents), the chosen entries are recomputed exactly.

    Backward with ``G`` the gradient scattered to ``[B, d_sae]`` (as CSR, never dense):
    grad_W_enc = (G^T (x - b_shift))^T, grad_b_enc = column sums of G,
    grad_b_shift = -W_enc @ grad_b_enc (the SAE's b_dec, without a [B, d_in] gradient),
    grad_x = G W_enc^T only when x itself requires grad.
    """

    @staticmethod
    def forward(
        ctx: Any,
        sae_in: Tensor,
        x: Tensor,
        b_shift: Tensor | None,
        W_enc: Tensor,
        b_enc: Tensor,
        pre: Tensor,
        layout: TopKLayout,
    ) -> Tensor:
        ctx.save_for_backward(sae_in, W_enc)
        ctx.layout = layout
        if pre.dtype != W_enc.dtype:  # chosen in low precision: recompute the chosen values
            return layout.exact(sae_in, W_enc, b_enc)
        return layout.gather(pre)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        sae_in, W_enc = ctx.saved_tensors
        layout: TopKLayout = ctx.layout
        grad = grad.contiguous().to(W_enc.dtype)
        need_x, need_shift, need_W, need_b = (ctx.needs_input_grad[i] for i in (1, 2, 3, 4))
        grad_x = grad_shift = grad_W = grad_b = None
        if need_b or need_shift:
            grad_b = torch.zeros(layout.n_cols, dtype=grad.dtype, device=grad.device)
            with single_thread():
                grad_b.index_add_(0, layout.col, grad.reshape(-1))
            if need_shift:
                grad_shift = -(W_enc @ grad_b)
        if need_W:  # [d_sae, d_in], transposed: the layout W_enc is stored in
            grad_W = layout.t_matmul(grad, sae_in).t()
        if need_x:
            grad_x = layout.matmul(grad, W_enc.t())
        return None, grad_x, grad_shift, grad_W, grad_b if need_b else None, None, None


def gather_pre(
    x: Tensor,
    b_shift: Tensor | None,
    W_enc: Tensor,
    b_enc: Tensor,
    pre: Tensor,
    layout: TopKLayout,
    sae_in: Tensor | None = None,
) -> Tensor:
    """Differentiable ``pre[b, idx[b, j]]`` with the sparse encoder backward (see GatherPre).
    ``sae_in`` (= x - b_shift, without grad) can be passed when the caller already has it."""
    if sae_in is None:
        sae_in = x if b_shift is None else x - b_shift.detach()
    return GatherPre.apply(sae_in.detach(), x, b_shift, W_enc, b_enc, pre, layout)


class SparseDecode(torch.autograd.Function):
    """``sum_j values[b, j] * W_dec[idx[b, j]]`` (no bias) with a sparse backward."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, layout: TopKLayout, W_dec: Tensor) -> Tensor:
        values = values.to(W_dec.dtype)
        ctx.save_for_backward(values, W_dec)
        ctx.layout = layout
        return layout.matmul(values, W_dec)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        values, W_dec = ctx.saved_tensors
        layout: TopKLayout = ctx.layout
        grad_out = grad_out.contiguous().to(W_dec.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            # SDDMM: (grad_out @ W_dec^T) sampled at the active latents only.
            pattern = layout.csr(torch.ones_like(values))
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.t(), beta=0.0)
            grad_values = grad_values.values().view_as(values)
        if ctx.needs_input_grad[2]:
            grad_W = layout.t_matmul(values, grad_out)
        return grad_values, None, grad_W


def sparse_decode(
    values: Tensor, indices: Tensor, W_dec: Tensor, layout: TopKLayout | None = None
) -> Tensor:
    """Decode ``[..., k]`` values at ``[..., k]`` latent indices into ``[..., d_out]``.
    Pass ``layout`` (of the same indices) to share its sort with the encoder's backward."""
    shape = values.shape[:-1]
    k = values.shape[-1]
    if layout is None:
        layout = TopKLayout(indices.reshape(-1, k), W_dec.shape[0])
    out = SparseDecode.apply(values.reshape(-1, k), layout, W_dec)
    return out.reshape(*shape, W_dec.shape[1])


def dense_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Reference path: scatter to ``[B, d_sae]`` and do the full matmul."""
    dense = values.new_zeros(*values.shape[:-1], W_dec.shape[0]).scatter_add(-1, indices, values)
    return dense @ W_dec


def topk_rows(pre: Tensor, k: int, group: int = 4) -> tuple[Tensor, Tensor]:
    """``pre.topk(k, dim=-1, sorted=False)`` of a 2-D tensor, exact, about 1.2x faster on CPU
    (``benchmarks/bench_topk.py``, part_select rows).

    Split each row's columns into interleaved groups ``{c, c + G, c + 2G, ...}`` (G = n / group)
    and take each group's max (an elementwise max over ``group`` contiguous slices, which
    vectorises well). The row's top k lie in the k groups with the largest maxima: an entry in any
    other group is beaten by k group maxima. So the top k of those ``k * group`` candidates are
    the row's top k; the group maxima's own top k is found the same way while it is large.
    """
    b, n = pre.shape
    if n % group or n // group < 8 * k:
        return pre.topk(k, dim=-1, sorted=False)
    g = n // group
    groups = pre.view(b, group, g)
    _, best = topk_rows(groups.amax(1), k, group)  # [b, k] group ids
    cand = groups.gather(2, best.unsqueeze(1).expand(b, group, k)).view(b, group * k)
    values, j = cand.topk(k, dim=-1, sorted=False)  # j = slice * k + position in best
    return values, best.gather(1, j % k) + (j // k) * g


def select_in_bf16(mode: str, device: torch.device) -> bool:
    """Whether to take the selection product in bf16 (see ``DictionaryConfig.select``)."""
    if mode != "auto":
        return mode == "bf16"
    return device.type == "cpu" and _cpu_has_amx()


@functools.cache
def _cpu_has_amx() -> bool:
    """AMX tiles make bf16 products about 4x faster than fp32 on this CPU (asked once)."""
    return bool(torch.cpu._is_amx_tile_supported())


def choose_sparse(k: int, d_sae: int, mode: str = "auto") -> bool:
    """The sparse path wins once k is a small fraction of d_sae (measured crossover ~1/8)."""
    if mode == "sparse":
        return True
    if mode == "dense":
        return False
    return k * 8 <= d_sae
