"""Feature density in one streaming pass, and the two streams that pass reads from.

Density is what you look at first when judging a dictionary: dead latents (never fired) waste
capacity and dense ones (firing on more than 10% of tokens) are rarely interpretable. Counting
firings needs only the nonzero entries of each batch of latents, so it rides along with the
top-examples pass in `top_examples.analyze` at almost no extra cost.

The analysis pass reads dicts shaped like `ActivationReader` batches: one `[n, d]` tensor per hook
short name plus `tokens`, `seq`, `pos` (int tensors `[n]`), positions of each sequence in order.
`cache_stream` reads them from cached shards, `model_stream` makes them with a model forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from interp_bench.dictionaries.evaluate import DENSE_FRACTION

# Per-latent activation histograms use fixed log10-spaced bins so they can be accumulated in one
# pass without knowing each latent's range in advance: 8 bins per decade from 1e-4 to 1e4.
HIST_LOG10_LO, HIST_LOG10_HI, HIST_BINS = -4.0, 4.0, 64


def hist_edges() -> Tensor:
    """Bin edges (activation values) of the per-latent histograms; the end bins are open."""
    return torch.logspace(HIST_LOG10_LO, HIST_LOG10_HI, HIST_BINS + 1, dtype=torch.float64)


@dataclass
class DensityStats:
    """Per-latent firing counts, activation sums, maxima and log-binned activation histograms."""

    d_sae: int
    n_tokens: int = 0

    def __post_init__(self) -> None:
        self.fire_count = torch.zeros(self.d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(self.d_sae, dtype=torch.float64)
        self.max_act = torch.zeros(self.d_sae, dtype=torch.float32)
        self.hist = torch.zeros(self.d_sae * HIST_BINS, dtype=torch.int64)

    def update(self, n_tokens: int, cols: Tensor, vals: Tensor) -> None:
        """Add a batch given as its `n_tokens` and the (latent, value) of every firing entry."""
        self.n_tokens += n_tokens
        if cols.numel() == 0:
            return
        self.fire_count += torch.bincount(cols, minlength=self.d_sae)
        self.act_sum.index_add_(0, cols, vals.double())
        self.max_act.scatter_reduce_(0, cols, vals.float(), reduce="amax")
        step = (HIST_LOG10_HI - HIST_LOG10_LO) / HIST_BINS
        b = ((vals.float().log10() - HIST_LOG10_LO) / step).floor().clamp_(0, HIST_BINS - 1)
        self.hist += torch.bincount(cols * HIST_BINS + b.long(), minlength=self.hist.numel())

    @property
    def density(self) -> Tensor:
        """Fraction of tokens on which each latent fired."""
        return self.fire_count.double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> Tensor:
        """Mean activation over the tokens where the latent fired (0 for dead latents)."""
        return (self.act_sum / self.fire_count.clamp(min=1)).float()

    def histograms(self) -> Tensor:
        return self.hist.view(self.d_sae, HIST_BINS)


def density_summary(
    density: Tensor, n_tokens: int, dense_threshold: float = DENSE_FRACTION
) -> dict:
    """Counts of dead and dense latents and a log10-density histogram of the live ones."""
    alive = density > 0
    log_d = density[alive].double().log10()
    lo = min(-7.0, float(log_d.min()) if log_d.numel() else -7.0)
    edges = torch.linspace(lo, 0.0, 36, dtype=torch.float64)
    counts = torch.histc(log_d, bins=35, min=lo, max=0.0) if log_d.numel() else torch.zeros(35)
    return {
        "n_tokens": int(n_tokens),
        "d_sae": int(density.numel()),
        "dead": int((~alive).sum()),
        "dense": int((density > dense_threshold).sum()),
        "dense_threshold": dense_threshold,
        "median_density": float(density[alive].median()) if alive.any() else 0.0,
        "log10_density_edges": [round(float(e), 4) for e in edges],
        "log10_density_counts": [int(c) for c in counts],
    }


def whole_sequences(batches: Iterable[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Regroup a sequential stream so every chunk holds complete sequences.

    Context windows then never straddle two chunks, so a latent's activation on the tokens around
    a top example can be read from the chunk that holds the example.
    """
    carry: dict[str, Tensor] | None = None
    for batch in batches:
        if carry is not None:
            batch = {k: torch.cat([carry[k], v]) for k, v in batch.items()}
        seq = batch["seq"]
        last = seq[-1]
        cut = int((seq != last).nonzero()[-1]) + 1 if bool((seq != last).any()) else 0
        if cut:
            yield {k: v[:cut] for k, v in batch.items()}
        carry = {k: v[cut:] for k, v in batch.items()}
    if carry is not None and carry["seq"].numel():
        yield carry
