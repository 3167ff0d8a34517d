"""Planted data for the analysis tests: ReLU dictionaries with known weights and a ragged
sequential stream."""

import torch

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary


def relu_dictionary(W_enc, b_enc, W_dec, hook_in, hook_out=None) -> SparseDictionary:
    """A real ReLU `SparseDictionary` with the given weights and b_dec = 0 (so the SAE's
    subtraction of b_dec before encoding changes nothing): relu(x @ W_enc + b_enc) @ W_dec."""
    (d_in, d_sae), d_out = W_enc.shape, W_dec.shape[1]
    cfg = DictionaryConfig(
        d_in=d_in, d_sae=d_sae, d_out=d_out, arch="relu", hook_in=hook_in, hook_out=hook_out
    )
    d = SparseDictionary(cfg)
    with torch.no_grad():
        d.W_enc.copy_(W_enc)
        d.b_enc.copy_(b_enc)
        d.W_dec.copy_(W_dec)
        d.b_dec.zero_()
    return d


def stand_in_dictionary(d_in=16, d_sae=24, seed=0, hook_in="L0.resid_post", bias=None):
    """A ReLU SAE with known random weights; by default its encoder biases run from common to
    rare latents (some never fire)."""
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    b_enc = torch.linspace(-1.0, -7.0, d_sae) if bias is None else torch.full((d_sae,), bias)
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_sae**0.5
    return relu_dictionary(W_enc, b_enc, W_dec, hook_in)


def planted_stream(n_seq=30, d=16, seed=1, hook="L0.resid_post", vocab=50):
    """Sequences of ragged lengths (3..25), flattened in order, BOS (pos 0) with a large norm."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 26, (n_seq,), generator=g)
    seq = torch.arange(n_seq).repeat_interleave(lens)
    pos = torch.cat([torch.arange(int(n)) for n in lens]).int()
    n = int(lens.sum())
    x = torch.randn(n, d, generator=g) * 2.0
    x[pos == 0] *= 10.0
    tokens = torch.randint(0, vocab, (n,), generator=g).int()
    tokens[pos == 0] = vocab  # a BOS id
    return {hook: x, "tokens": tokens, "seq": seq, "pos": pos}


def batches(full, sizes_seed=2, max_size=37):
    """Cut a flat stream into random-size batches that straddle sequence boundaries."""
    g = torch.Generator().manual_seed(sizes_seed)
    n = full["seq"].numel()
    start = 0
    while start < n:
        size = int(torch.randint(1, max_size, (1,), generator=g))
        yield {k: v[start : start + size] for k, v in full.items()}
        start += size
