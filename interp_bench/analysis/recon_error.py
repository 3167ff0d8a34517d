"""Per-token reconstruction error, collected in the analysis pass, and what it says.

Mean FVU hides where a dictionary fails. Keeping the error of every token (two floats each) lets
us ask which tokens and contexts are reconstructed worst, whether error grows with position, and
whether rare tokens are reconstructed worse than common ones (bucketed by their frequency in the
analysed tokens, our stand-in for corpus frequency).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ReconStats:
    """Accumulates squared error and error normalised by ||target||^2 for every token."""

    def __init__(self) -> None:
        self._sq: list[Tensor] = []
        self._rel: list[Tensor] = []
        self.sum_sq = 0.0
        self.sum_norm = 0.0

    def update(self, recon: Tensor, target: Tensor, keep: Tensor) -> None:
        """`keep` marks tokens that count (BOS is usually excluded); the others get NaN."""
        sq = (recon.float() - target.float()).pow(2).sum(-1)
        norm = target.float().pow(2).sum(-1)
        rel = sq / norm.clamp(min=1e-12)
        self.sum_sq += float(sq[keep].double().sum())
        self.sum_norm += float(norm[keep].double().sum())
        nan = torch.tensor(float("nan"))
        self._sq.append(torch.where(keep, sq, nan))
        self._rel.append(torch.where(keep, rel, nan))

    @property
    def nmse(self) -> float:
        """Sum of squared errors over sum of ||target||^2 (FVU without centring)."""
        return self.sum_sq / self.sum_norm if self.sum_norm else float("nan")

    def arrays(self) -> dict[str, Tensor]:
        if not self._sq:
            return {"sq_err": torch.zeros(0), "rel_err": torch.zeros(0)}
        return {"sq_err": torch.cat(self._sq), "rel_err": torch.cat(self._rel)}


def context_window(tokens: Tensor, seq: Tensor, centers: Tensor, window: int) -> Tensor:
    """Token ids `[len(centers), 2*window+1]` around each global index, -1 outside its sequence."""
    n = tokens.numel()
    offs = torch.arange(-window, window + 1)
    idx = centers.long()[:, None] + offs
    safe = idx.clamp(0, max(n - 1, 0))
    valid = (idx >= 0) & (idx < n) & (seq[safe] == seq[centers.long()][:, None])
    return torch.where(valid, tokens[safe].long(), torch.full_like(idx, -1))


def recon_summary(
    sq_err: Tensor,
    rel_err: Tensor,
    tokens: Tensor,
    seq: Tensor,
    pos: Tensor,
    *,
    n_worst: int = 32,
    window: int = 10,
    nmse: float | None = None,
) -> dict:
    """Distribution, worst tokens with contexts, error by position and by token frequency."""
    ok = ~rel_err.isnan()
    rel, sq = rel_err[ok].double(), sq_err[ok].double()
    if rel.numel() == 0:
        return {"n_tokens": 0}
    qs = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)
    log_rel = rel.clamp(min=1e-8).log10()
    lo, hi = float(log_rel.min()), float(log_rel.max()) + 1e-9
    counts = torch.histc(log_rel, bins=40, min=lo, max=hi)
    edges = torch.linspace(lo, hi, 41)

    worst = rel_err.nan_to_num(-1.0).topk(min(n_worst, int(ok.sum()))).indices
    ctx = context_window(tokens, seq, worst, window)

    p = pos[ok].long()
    n_pos = int(p.max()) + 1
    pos_count = torch.bincount(p, minlength=n_pos)
    pos_sum = torch.zeros(n_pos, dtype=torch.float64).index_add_(0, p, rel)

    # Frequency buckets: tokens whose count in the analysed stream falls in [4^b, 4^(b+1)).
    t = tokens[ok].long()
    freq = torch.bincount(t)[t]
    bucket = (freq.double().log2() / 2).floor().long()
    n_b = int(bucket.max()) + 1
    b_count = torch.bincount(bucket, minlength=n_b)
    b_sum = torch.zeros(n_b, dtype=torch.float64).index_add_(0, bucket, rel)
    return {
        "n_tokens": int(ok.sum()),
        "mean_sq_err": float(sq.mean()),
        "mean_rel_err": float(rel.mean()),
        "nmse": nmse,
        "rel_err_quantiles": {
            f"q{int(q * 100)}": float(v) for q, v in zip(qs, rel.quantile(qs), strict=True)
        },
        "log10_rel_err_edges": [round(float(e), 4) for e in edges],
        "log10_rel_err_counts": [int(c) for c in counts],
        "by_position": {
            "pos": list(range(n_pos)),
            "mean_rel_err": [
                float(s / c) if c else None for s, c in zip(pos_sum, pos_count, strict=True)
            ],
            "count": [int(c) for c in pos_count],
        },
        "by_frequency": {
            "min_count": [4**b for b in range(n_b)],
            "mean_rel_err": [
                float(s / c) if c else None for s, c in zip(b_sum, b_count, strict=True)
            ],
            "count": [int(c) for c in b_count],
        },
        "worst": [
            {
                "index": int(g),
                "token": int(tokens[g]),
                "seq": int(seq[g]),
                "pos": int(pos[g]),
                "sq_err": float(sq_err[g]),
                "rel_err": float(rel_err[g]),
                "context": [int(c) for c in row],
            }
            for g, row in zip(worst, ctx, strict=True)
        ],
    }
