"""Held-out quality of dictionaries: FVU (all tokens and typical tokens), L0, dead and dense
latents. The one evaluator: the trainer, the main job, the splice pass and the benchmarks use it.

Everything streams (sums in float64), so held-out sets of any size fit in memory, and several
dictionaries are measured on one pass over the batches.

``fvu_typical`` leaves out the few massive-activation tokens (target norm above
``OUTLIER_NORM`` x the median): in SmolLM2's residual stream five such tokens in 32k hold most of
the variance, so ``fvu`` mostly measures them and ``fvu_typical`` says how ordinary tokens fare.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

DENSE_FRACTION = 0.1  # a latent firing on more than 10% of tokens counts as dense
OUTLIER_NORM = 10.0  # a token above this many times the median norm is a massive activation


def batch_fvu(mse: Tensor, target: Tensor) -> Tensor:
    """FVU of one training batch: mean summed squared error over the batch's own variance."""
    with torch.no_grad():
        var = (target - target.mean(0)).pow(2).sum(-1).mean()
        return mse / var.clamp_min(1e-12)


@dataclass
class EvalStats:
    """Held-out quality of one dictionary (raw activations in, raw targets out)."""

    tokens: int
    fvu: float
    fvu_typical: float  # without tokens above OUTLIER_NORM x the median target norm
    outlier_tokens: int
    mse: float  # squared error summed over d_out, mean over tokens
    l0: float
    dead_frac: float  # never fired on these tokens
    dense_frac: float  # fired on more than DENSE_FRACTION of them
    density: Tensor  # [d_sae] firing frequency

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "density"}


class QualityMeter:
    """Streaming sums for one dictionary; ``add`` a batch, read ``result()``."""

    def __init__(self, d, typical_norm: float | None = None) -> None:
        self.d = d
        self.typical_norm = typical_norm  # None: 10x the median of the first batch's norms
        self.n = self.n_typ = 0
        self.sse = self.sse_typ = self.sq = self.sq_typ = self.l0 = 0.0
        self.sum: Tensor | None = None
        self.sum_typ: Tensor | None = None
        self.fires = torch.zeros(d.d_sae, dtype=torch.float64, device=d.W_enc.device)

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, recon: Tensor | None = None) -> None:
        """One batch: inputs ``x [n, d_in]``, targets ``y [n, d_out]``, and the dictionary's
        output when the caller already has it (the splice pass)."""
        d = self.d
        x = x.reshape(-1, d.d_in).to(d.W_enc.device, d.W_enc.dtype)
        y = y.reshape(-1, d.d_out).to(d.W_enc.device, torch.float64)
        f = d.encode(x)
        if recon is None:
            recon = d.decode(f)
            if d.W_skip is not None:
                recon = recon + x @ d.W_skip
        err = (recon.reshape(y.shape).double() - y).pow(2).sum(-1)
        norms = y.norm(dim=-1)
        if self.typical_norm is None:
            self.typical_norm = OUTLIER_NORM * norms.median().item()
        keep = norms <= self.typical_norm
        active = f > 0
        self.fires += active.sum(0).double()
        self.l0 += active.sum().item()
        self.sse += err.sum().item()
        self.sse_typ += err[keep].sum().item()
        self.sq += y.pow(2).sum().item()
        self.sq_typ += y[keep].pow(2).sum().item()
        s, s_typ = y.sum(0), y[keep].sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sum_typ = s_typ if self.sum_typ is None else self.sum_typ + s_typ
        self.n += len(y)
        self.n_typ += int(keep.sum())

    def result(self) -> EvalStats:
        if self.n == 0:
            raise ValueError("no held-out tokens to evaluate on; check the eval split / max_tokens")
        var = self.sq - self.sum.pow(2).sum().item() / self.n
        var_typ = self.sq_typ - self.sum_typ.pow(2).sum().item() / max(self.n_typ, 1)
        density = (self.fires / self.n).float().cpu()
        return EvalStats(
            tokens=self.n,
            fvu=self.sse / max(var, 1e-30),
            fvu_typical=self.sse_typ / max(var_typ, 1e-30),
            outlier_tokens=self.n - self.n_typ,
            mse=self.sse / self.n,
            l0=self.l0 / self.n,
            dead_frac=(density == 0).float().mean().item(),
            dense_frac=(density > DENSE_FRACTION).float().mean().item(),
            density=density,
        )


@torch.no_grad()
def evaluate(
    dicts: list,
    batches: Iterable[dict[str, Tensor]],
    *,
    max_tokens: int | None = None,
    typical_norm: float | None = None,
) -> list[EvalStats]:
    """Quality of each dictionary on held-out ``batches`` (reader dicts keyed by hook name; each
    dictionary reads ``cfg.hook_in`` and predicts ``cfg.hook_out``, itself for an SAE), on at
    most ``max_tokens`` tokens, in one pass."""
    meters = [QualityMeter(d, typical_norm) for d in dicts]
    seen = 0
    for batch in batches:
        n = next(iter(batch.values())).shape[0]
        take = n if max_tokens is None else min(n, max_tokens - seen)
        if take <= 0:
            break
        for m in meters:
            cfg = m.d.cfg
            x = batch[cfg.hook_in][:take]
            m.add(x, batch[cfg.hook_out][:take] if cfg.hook_out else x)
        seen += take
    if seen == 0:
        raise ValueError("the held-out activations yielded no batches; check the eval cache")
    return [m.result() for m in meters]
