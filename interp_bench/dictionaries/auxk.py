"""AuxK (Gao et al. 2024, App. B.1): each token's top k_aux dead latents reconstruct the main
path's error, so dead latents get a gradient. Two ways to compute that reconstruction, the same
function: through the sparse kernels (k_aux latents per token: costs what the main path costs
for k, ten times over at k_aux = d/2 = 288 vs k = 32), or as dense products over the dead latents
only (cost in proportion to how many are dead). The dense one is cheaper while at most
``DENSE_AUX_MAX`` x k_aux latents are dead: `benchmarks/bench_auxk.py` (machine B, 2 threads,
d 576, d_sae 4608, B 4096) has the sparse path's step at 350-470 ms whatever the count, the dense
one 0.71-0.77x of it at 0.8-1.6 k_aux dead, 0.92-0.95x at 3.2, 0.97-1.02x at 4.0, 1.10x at 4.8."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from interp_bench.dictionaries.topk import sparse_decode

DENSE_AUX_MAX = 3.5


class AuxChoice(NamedTuple):
    """The dead latents ``[n_dead]``, each token's top k_aux of them as positions in ``dead``
    (``[B, k_aux]``), and the loss scale (dead fraction of k_aux, at most 1)."""

    dead: Tensor
    local: Tensor
    scale: float

    @property
    def indices(self) -> Tensor:
        """The chosen latents' indices ``[B, k_aux]``."""
        return self.dead[self.local]

    @property
    def dense_pays(self) -> bool:
        return self.dead.numel() <= DENSE_AUX_MAX * self.local.shape[1]


class AuxTerms(NamedTuple):
    """AuxK inputs: values and indices ``[B, k_aux]`` of the chosen dead latents and the loss
    scale; or, from the dense path, their reconstruction ``recon`` already decoded."""

    values: Tensor | None
    indices: Tensor | None
    scale: float
    recon: Tensor | None = None

    def decode(self, W_dec: Tensor) -> Tensor:
        """The chosen dead latents' reconstruction ``[B, d_out]`` (no bias)."""
        if self.recon is not None:
            return self.recon
        return sparse_decode(self.values, self.indices, W_dec)


def dense_aux(
    choice: AuxChoice,
    sae_in: Tensor,
    b_shift: Tensor | None,
    W_enc_t: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    values: Callable[[Tensor], Tensor],
) -> AuxTerms:
    """AuxK through dense products over the dead latents: their pre-activations from the
    detached encoder input ``sae_in`` (= x - b_shift), ``values`` of the chosen ones (ReLU or
    linear), decoded by the dead latents' decoder rows. Gradients reach W_enc, b_enc, W_dec and
    b_shift as the sparse path's do (b_shift's as -W_enc @ grad_b_enc, never a [B, d] product)."""
    dead = choice.dead
    W = W_enc_t.index_select(0, dead)
    b = b_enc.index_select(0, dead)
    if b_shift is not None:
        # 0 in value (sae_in already has it); gives b_shift its gradient -W^T g, and W none.
        shift = W.detach() @ b_shift
        b = b - (shift - shift.detach())
    pre = torch.addmm(b, sae_in, W.t())
    chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, choice.local, True)
    lat = torch.where(chosen, values(pre), 0.0)
    return AuxTerms(None, None, choice.scale, lat @ W_dec.index_select(0, dead))
