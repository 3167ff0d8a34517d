"""Cross-layer transcoders through the trainer and `interp-bench train --clt`: exact resume after
a kill (streaming from the model), the CLI from a cache with a held-out evaluation per layer,
and one-line errors for what a CLT cannot be."""

from __future__ import annotations

import json

import pytest
import torch

from activation_cache.model_batches import ModelBatches
from interp_bench.config import TrainConfig
from interp_bench.dictionaries import load_dictionary
from interp_bench.dictionaries.crosslayer import CrossLayerConfig, CrossLayerTranscoder
from interp_bench.training.trainer import Trainer

CTX = 9


def _tokens(n_seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, vocab, (n_seq, CTX), generator=g)
    t[:, 0] = 0
    return t


def test_clt_resume_continues_exactly(tiny_model, tmp_path):
    """Killed after a checkpoint and restarted, a streaming CLT run ends with the weights (and
    dead-latent counters) of an uninterrupted one; AuxK is on (small dead window)."""
    n, d = tiny_model.cfg.n_layers, tiny_model.cfg.d_model
    ins, outs = tuple(f"L{i}.mlp_in" for i in range(n)), tuple(f"L{i}.mlp_out" for i in range(n))
    cfg = CrossLayerConfig(d_in=d, d_sae=4 * d, k=8, hooks_in=ins, hooks_out=outs)
    tokens = _tokens(16, 500)
    common = dict(batch_size=4 * (CTX - 1), checkpoint_every=3, log_every=1, dead_tokens=64)
    tc = TrainConfig(tokens=10 * common["batch_size"], **common)
    src = ModelBatches(tiny_model, tokens, cfg.hooks, tc.batch_size, seed=2)
    ref_trainer = Trainer([cfg], tc, device="cpu", out_dir=tmp_path / "ref")
    ref = ref_trainer.fit(src)[0]
    assert ref_trainer.since_fired[0].max() >= 64  # dead latents existed: AuxK was exercised

    class Killed(Exception):
        pass

    class Dies:
        def __init__(self):
            self.n = 0

        def batches(self, epoch, start):
            for b in src.batches(epoch, start):
                self.n += 1
                if self.n == 8:  # after the step-6 checkpoint
                    raise Killed
                yield b

    with pytest.raises(Killed):
        Trainer([cfg], tc, device="cpu", out_dir=tmp_path / "run").fit(Dies())
    resumed = Trainer([cfg], tc, device="cpu", out_dir=tmp_path / "run")
    out = resumed.fit(src)[0]
    assert resumed.step_idx == 10
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(out.state_dict()[name], p, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(resumed.since_fired[0], ref_trainer.since_fired[0])
    # The saved folder is the CLT layout, raw activations in.
    run = tmp_path / "run" / resumed.names[0]
    loaded = load_dictionary(run)
    assert isinstance(loaded, CrossLayerTranscoder)
    xs = [torch.randn(3, d) for _ in range(n)]
    with torch.no_grad():
        for a, b in zip(loaded(xs), out(xs), strict=True):
            torch.testing.assert_close(a, b)


def test_train_cli_clt_from_a_cache(tiny_model, tmp_path, capsys):
    from activation_cache.cache import cache_activations
    from interp_bench.cli import main

    hooks = ["L0.mlp_in", "L0.mlp_out", "L1.mlp_in", "L1.mlp_out"]
    cache = tmp_path / "acts"
    cache_activations(tiny_model, _tokens(16, 500), hooks, cache, shard_tokens=64, progress=False)
    out = tmp_path / "runs"
    common = ["train", "--activations", str(cache), "--out", str(out), "--tokens", "256",
              "--batch-size", "32", "--expansion", "2", "--device", "cpu",
              "--hook-in", "all.mlp_in", "--hook-out", "all.mlp_out", "--clt"]  # fmt: skip
    args = [*common, "--layer-k", "4,8", "--eval-activations", str(cache), "--eval-tokens", "64"]
    assert main(args) == 0
    text = capsys.readouterr().out
    made = sorted(p.name for p in out.iterdir())
    assert made == ["clt-L0-1.mlp_in-to-mlp_out-topk-128-k32"]
    run = out / made[0]
    clt = load_dictionary(run)
    assert isinstance(clt, CrossLayerTranscoder) and clt.cfg.ks == (4, 8)
    assert clt.cfg.hooks_out == ("L0.mlp_out", "L1.mlp_out")
    ev = json.loads((run / "eval.json").read_text())
    assert sorted(ev["layers"]) == ["L0.mlp_out", "L1.mlp_out"]
    assert ev["layers"]["L0.mlp_out"]["tokens"] == 64
    assert ev["mean_fvu"] == pytest.approx(
        (ev["layers"]["L0.mlp_out"]["fvu"] + ev["layers"]["L1.mlp_out"]["fvu"]) / 2
    )
    assert ev["layers"]["L0.mlp_out"]["l0"] <= 4 and "mean (L0 sum)" in text
    # Resumed with the same arguments: nothing to train, same folder.
    assert main(args) == 0
    for bad, msg in [
        (["--arch", "relu"], "--clt supports --arch topk or jumprelu"),
        (["--layer-k", "4"], "one k per layer (2)"),
        (["--skip"], "--clt does not support --skip"),
    ]:
        assert main([*common, "--out", str(tmp_path / "bad"), *bad]) == 2
        assert msg in capsys.readouterr().err
    assert main([*common[:-1], "--out", str(tmp_path / "bad"), "--layer-k", "4,8"]) == 2
    assert "--layer-k applies to --clt" in capsys.readouterr().err
