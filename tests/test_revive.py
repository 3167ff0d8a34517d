"""Dead TopK latents: what each ``DictionaryConfig.revive`` remedy does to a latent that is
negative on every token (the transcoders' dead latents)."""

import pytest
import torch

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary

D, N, K, B = 16, 64, 4, 256


def _dead_transcoder(revive: str, decode: str) -> tuple[SparseDictionary, torch.Tensor]:
    torch.manual_seed(0)
    cfg = DictionaryConfig(
        d_in=D, d_sae=N, d_out=D, k=K, hook_in="a", hook_out="b", revive=revive, decode=decode
    )
    d = SparseDictionary(cfg)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[:8] = True
    with torch.no_grad():
        d.b_enc[dead] = -100.0  # negative on every token: never chosen, ReLU'd AuxK is 0
    return d, dead


@pytest.mark.parametrize("decode", ["sparse", "dense"])
@pytest.mark.parametrize("revive", ["none", "recenter", "fire", "linear"])
def test_dead_latents_get_a_gradient_only_with_a_remedy(revive, decode):
    d, dead = _dead_transcoder(revive, decode)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    b_before = d.b_enc.detach().clone()
    for _ in range(2):  # the dense path sees a recentred bias from the next step on
        d.zero_grad()
        out = d.loss(x, y, dead_mask=dead)
        out.loss.backward()
    grad = d.W_enc_t.grad[dead].abs().sum(1)
    if revive == "none":
        assert torch.equal(d.b_enc.detach(), b_before)
        assert (grad == 0).all()
    else:
        assert (grad > 0).sum() >= 4  # AuxK picks the top dead latents per token
        assert out.aux > 0
    if revive == "recenter":
        lifted = d.b_enc.detach()[dead]
        assert (lifted > -100).all()
        # Lifted to the edge: each dead latent is positive on about k/d_sae of the batch.
        pre = d.pre_acts(x)[:, dead]
        share = (pre > 0).float().mean(0)
        assert (share > 0).all() and (share <= 2 * K / N + 1 / B).all()
        assert torch.equal(d.b_enc.detach()[~dead], b_before[~dead])  # live latents untouched


def test_revive_defaults_to_recenter_for_transcoders_only():
    tc = DictionaryConfig(d_in=D, d_sae=N, d_out=D, hook_in="a", hook_out="b")
    sae = DictionaryConfig(d_in=D, d_sae=N, hook_in="a")
    assert tc.resolved_revive == "recenter" and sae.resolved_revive == "none"
    assert DictionaryConfig(d_in=D, d_sae=N, d_out=D, hook_in="a", hook_out="b",
                            revive="none").resolved_revive == "none"  # fmt: skip
    assert DictionaryConfig(d_in=D, d_sae=N, revive="recenter").resolved_revive == "recenter"
    with pytest.raises(ValueError, match="revive must be one of"):
        DictionaryConfig(d_in=D, d_sae=N, revive="resurrect")
