"""Matryoshka decoding: the reconstruction of every prefix of the latent list in one decode.

A Matryoshka dictionary (Bussmann et al. 2025; Nabeshima 2024) is trained so that latents
``0..m-1`` reconstruct the input on their own, for each prefix size m in ``cfg.matryoshka``
(the last is d_sae): the loss is the sum of the prefixes' squared errors. Early latents must
then carry general features, and later ones cannot absorb them.

Prefix m's reconstruction is ``b_dec + sum of v_j W_dec[j] over active j < m``. The prefixes
nest, so with bands ``[m_{i-1}, m_i)`` each prefix is a cumulative sum of band partial decodes.
On the sparse path the active latents are regrouped into one bag per (token, band) and decoded
by the same embedding-bag kernel as plain TopK (``SparseDecode``): one decode of the k active
latents per token plus an O(B * bands * d) cumulative sum, never a dense product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from interp_bench.dictionaries.topk import SparseDecode, TopKLayout, single_thread


def bands(cols: Tensor, prefixes: tuple[int, ...]) -> Tensor:
    """Band of each latent id: i such that m_{i-1} <= col < m_i."""
    bounds = torch.tensor(prefixes[:-1], dtype=cols.dtype, device=cols.device)
    return torch.bucketize(cols, bounds, right=True)


def sparse_prefix_decode(
    values: Tensor,
    rows: Tensor,
    cols: Tensor,
    n_rows: int,
    W_dec: Tensor,
    prefixes: tuple[int, ...],
) -> Tensor:
    """``[n_rows, len(prefixes), d_out]``: prefix reconstructions (no b_dec) of the active
    latents given as entries (``values``, ``rows``, ``cols``), each ``[nnz]``, differentiable
    in ``values`` and ``W_dec``."""
    n_bands, d_sae = len(prefixes), W_dec.shape[0]
    with torch.no_grad(), single_thread():
        bag = rows * n_bands + bands(cols, prefixes)
        flat = bag * d_sae + cols
        order = flat.argsort()
    layout = TopKLayout.from_flat(flat, n_rows * n_bands, d_sae)  # sorts flat the same way
    partial = SparseDecode.apply(values.reshape(-1)[order], layout, W_dec)
    return partial.view(n_rows, n_bands, -1).cumsum(1)


def topk_prefix_decode(
    values: Tensor, indices: Tensor, W_dec: Tensor, prefixes: tuple[int, ...]
) -> Tensor:
    """:func:`sparse_prefix_decode` for k latents per row (``values``/``indices`` ``[B, k]``)."""
    b, k = indices.shape
    rows = torch.arange(b, device=indices.device).repeat_interleave(k)
    return sparse_prefix_decode(values.reshape(-1), rows, indices.reshape(-1), b, W_dec, prefixes)


def dense_prefix_decode(acts: Tensor, W_dec: Tensor, prefixes: tuple[int, ...]) -> Tensor:
    """Reference path: ``[B, M, d_out]`` from dense latents ``[B, d_sae]``, one product per band
    (together the size of one full decode)."""
    starts = (0, *prefixes[:-1])
    parts = [acts[:, a:b] @ W_dec[a:b] for a, b in zip(starts, prefixes, strict=True)]
    return torch.stack(parts, 1).cumsum(1)


@torch.no_grad()
def prefix_mse(d, x: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-prefix squared error (summed over d_out, mean over tokens) of a dictionary's
    inference latents, each prefix decoding alone: ``[len(prefixes)]``. For evaluation and
    tests; training gets the same numbers from its own forward."""
    prefixes = d.cfg.matryoshka or (d.d_sae,)
    target = x if target is None else target
    f = d.encode(x)
    out = []
    for m in prefixes:
        recon = f[:, :m] @ d.W_dec[:m] + d.b_dec
        if d.W_skip is not None:
            recon = recon + x @ d.W_skip
        out.append((target - recon).pow(2).sum(-1).mean())
    return torch.stack(out)


def matryoshka_loss(prefixes: Tensor, target: Tensor, skip: Tensor | None = None) -> Tensor:
    """Sum over prefixes of the squared error (summed over d_out, mean over tokens) of
    ``prefixes [B, M, d_out]`` (plus the transcoder's skip term) against ``target [B, d_out]``."""
    pred = prefixes if skip is None else prefixes + skip.unsqueeze(1)
    return (target.unsqueeze(1) - pred).pow(2).sum(-1).mean(0).sum()
