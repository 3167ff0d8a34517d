"""Each latent's nearest latents by decoder direction: the first place to look for splits,
duplicates and feature families (SAELens users find this in Neuronpedia's "similar features")."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def nearest_latents(W_dec: Tensor, n: int = 8, chunk: int = 2048) -> dict[str, Tensor]:
    """`{"neighbour_ids": [d_sae, n] int32, "neighbour_cos": [d_sae, n] float16}`: the n other
    latents whose decoder rows have the highest cosine with each latent's, most similar first.

    Computed in row chunks, so 16k latents need 16k x `chunk` floats at a time, not 16k^2."""
    d_sae = W_dec.shape[0]
    n = min(n, d_sae - 1)
    unit = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=1)
    ids = torch.empty(d_sae, max(n, 0), dtype=torch.int32)
    cos = torch.empty(d_sae, max(n, 0), dtype=torch.float16)
    if n <= 0:
        return {"neighbour_ids": ids, "neighbour_cos": cos}
    for start in range(0, d_sae, chunk):
        rows = unit[start : start + chunk]
        sims = rows @ unit.T
        own = torch.arange(start, start + rows.shape[0])
        sims[torch.arange(rows.shape[0]), own] = float("-inf")  # not its own neighbour
        top = sims.topk(n, dim=1)
        ids[start : start + rows.shape[0]] = top.indices.int()
        cos[start : start + rows.shape[0]] = top.values.half()
    return {"neighbour_ids": ids, "neighbour_cos": cos}
