"""Planted data for the analysis tests: a stand-in dictionary and a ragged sequential stream."""

import torch

from interp_bench.config import DictionaryConfig


class StandInDictionary(torch.nn.Module):
    """A ReLU SAE with known random weights and the `SparseDictionary` methods analysis uses."""

    def __init__(self, d_in=16, d_sae=24, seed=0, hook_in="L0.resid_post", bias=None):
        super().__init__()
        self.cfg = DictionaryConfig(d_in=d_in, d_sae=d_sae, arch="relu", hook_in=hook_in)
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
        # by default thresholds from common to rare (some latents never fire)
        self.b_enc = (
            torch.linspace(-1.0, -7.0, d_sae) if bias is None else torch.full((d_sae,), bias)
        )
        self.W_dec = torch.randn(d_sae, d_in, generator=g) / d_sae**0.5
        self.b_dec = torch.zeros(d_in)

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec

    def forward(self, x):
        return self.decode(self.encode(x))


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
