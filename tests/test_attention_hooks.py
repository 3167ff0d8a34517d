"""Attention hook points, cached, trained on, spliced and steered like the others: `attn_out`
(after W_O) and the per-head `z` (before W_O, stored flattened as SAELens does). The model has
n_heads * d_head != d_model, so a width taken from d_model would show."""

from __future__ import annotations

import pytest
import torch

from activation_cache.cache import cache_activations
from activation_cache.reader import ActivationReader
from activation_cache.shards import read_manifest
from interp_bench.analysis.splice import spliced_loss
from interp_bench.analysis.steering import Steer, steering_hooks
from interp_bench.commands.preflight import suggest_hook
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import SparseDictionary, load_dictionary
from interp_bench.training.trainer import Trainer


@pytest.fixture(scope="module")
def model(gpt2_tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=8, d_mlp=128, n_ctx=64,
        d_vocab=len(gpt2_tokenizer), act_fn="gelu_new", normalization_type="LNPre",
        default_prepend_bos=True, seed=0, device="cpu",
    )  # fmt: skip
    return HookedTransformer(cfg, tokenizer=gpt2_tokenizer).eval()


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 50000, (8, 16), generator=g)
    t[:, 0] = 50256
    return t


def test_cache_attention_hooks(model, tokens, tmp_path):
    m = cache_activations(model, tokens, ["L1.attn_out", "L1.z"], tmp_path, dtype="float32",
                          progress=False)  # fmt: skip
    assert {h["short"]: h["d"] for h in read_manifest(tmp_path).hooks} == {
        "L1.attn_out": 64,
        "L1.z": 32,
    }
    assert m.complete
    _, ref = model.run_with_cache(tokens)
    reader = ActivationReader(tmp_path, ["L1.attn_out", "L1.z"], 1000, shuffle=False)
    [batch] = list(reader)  # BOS positions are skipped
    z = ref["blocks.1.attn.hook_z"][:, 1:].reshape(-1, 32)
    out = ref["blocks.1.hook_attn_out"][:, 1:].reshape(-1, 64)
    torch.testing.assert_close(batch["L1.z"], z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["L1.attn_out"], out, rtol=1e-5, atol=1e-5)


def test_train_on_z_and_splice_it_back(model, tokens, tmp_path):
    cache_activations(model, tokens, ["L1.z"], tmp_path / "acts", progress=False)
    cfg = DictionaryConfig(d_in=32, d_sae=48, arch="topk", k=4, hook_in="L1.z", decode="dense")
    tc = TrainConfig(tokens=4 * 60, batch_size=60, warmup_steps=1, checkpoint_every=0,
                     sparsity_warmup_steps=0, log_every=1)  # fmt: skip
    reader = ActivationReader(tmp_path / "acts", ["L1.z"], 60, seed=0)
    trainer = Trainer([cfg], tc, out_dir=tmp_path / "dicts")
    trainer.fit(reader)
    sae = load_dictionary(tmp_path / "dicts" / trainer.names[0])
    assert sae.W_dec.shape == (48, 32)
    for share in (True, False):
        [r] = spliced_loss(model, {"z": sae}, tokens, batch_size=4, share_prefix=share)
        assert r.splice_hook == "L1.z" and r.fvu > 0
        # reconstruction + its error is the activation itself: the reshape round trip is exact
        assert r.ce_error_added == pytest.approx(r.ce_clean, abs=1e-5)
        assert r.ce_spliced != pytest.approx(r.ce_clean, abs=1e-6)


@pytest.mark.parametrize("hook", ["L1.z", "L1.attn_out"])
def test_steer_attention_hooks(model, tokens, hook):
    torch.manual_seed(0)
    d_in = 32 if hook == "L1.z" else 64
    sae = SparseDictionary(DictionaryConfig(d_in=d_in, d_sae=16, arch="topk", k=3, hook_in=hook))
    clean = model(tokens[:2])
    zero = model.run_with_hooks(
        tokens[:2], fwd_hooks=steering_hooks(model, sae, [Steer(2, "add", 0.0)])
    )
    torch.testing.assert_close(zero, clean)
    pushed = model.run_with_hooks(
        tokens[:2], fwd_hooks=steering_hooks(model, sae, [Steer(2, "add", 5.0)])
    )
    assert not torch.allclose(pushed, clean)


def test_transformer_lens_names_are_suggested():
    assert suggest_hook("blocks.3.attn.hook_z") == "L3.z"
    assert suggest_hook("blocks.3.hook_attn_out") == "L3.attn_out"
