"""Every layer at once: layer-list hook specs, batches straight from a model's forward, and
per-layer transcoders trained in one pass equal to the same transcoders trained one at a time."""

import pytest
import torch

from activation_cache.layer_lists import expand_layers
from activation_cache.model_batches import ModelBatches
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.training.trainer import Trainer

CTX = 9  # 8 tokens per sequence after BOS


def test_expand_layers_forms_and_errors():
    assert expand_layers("all.mlp_in", 3) == ["L0.mlp_in", "L1.mlp_in", "L2.mlp_in"]
    assert expand_layers("L1-2.mlp_out,L0.mlp_out", 3) == ["L1.mlp_out", "L2.mlp_out", "L0.mlp_out"]
    present = ["L2.mlp_in", "L0.mlp_in", "L1.mlp_out"]
    assert expand_layers("all.mlp_in", 3, present) == ["L0.mlp_in", "L2.mlp_in"]
    for bad, match in [("L3.mlp_in", "out of range"), ("L2-1.mlp_in", "empty"),
                       ("layer1.mlp_in", "cannot read"), ("L0.mlp_in,L0-1.mlp_in", "twice"),
                       ("all.resid_post", "no resid_post")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            expand_layers(bad, 3, present if bad.startswith("all") else None)


def _tokens(n_seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, vocab, (n_seq, CTX), generator=g)
    t[:, 0] = 0
    return t


def test_model_batches_match_the_forward_and_resume_exactly(tiny_model):
    from activation_cache.hooks import capture, resolve_hooks

    tokens = _tokens(12, 500)
    src = ModelBatches(tiny_model, tokens, ["L0.mlp_in", "L1.mlp_out"], 4 * (CTX - 1), seed=3)
    assert len(src) == 3 and src.batch_size == 32
    first = list(src.batches(1))
    # Resuming at batch 2 of epoch 1 gives exactly what the full epoch gave there.
    assert torch.equal(next(src.batches(1, 2))["L1.mlp_out"], first[2]["L1.mlp_out"])
    # Different epochs, different orders; each batch is the hooks of its sequences, BOS left out.
    assert not torch.equal(next(src.batches(0))["L0.mlp_in"], first[0]["L0.mlp_in"])
    seqs = tokens[src.order(1)[:4]]
    ref = capture(tiny_model, seqs, resolve_hooks(tiny_model, ["L0.mlp_in"]))["L0.mlp_in"]
    torch.testing.assert_close(first[0]["L0.mlp_in"], ref[:, 1:].reshape(-1, ref.shape[-1]))
    with pytest.raises(ValueError, match="less than one sequence"):
        ModelBatches(tiny_model, tokens, ["L0.mlp_in"], CTX - 2)


def _cfgs(model) -> list[DictionaryConfig]:
    d = model.cfg.d_model
    return [
        DictionaryConfig(d_in=d, d_sae=4 * d, d_out=d, k=8, hook_in=f"L{i}.mlp_in",
                         hook_out=f"L{i}.mlp_out")
        for i in range(model.cfg.n_layers)
    ]  # fmt: skip


def test_all_layers_in_one_pass_equal_one_at_a_time(tiny_model):
    """The streaming source feeds every layer's transcoder from one forward; each one ends
    exactly where it would have trained alone on the same batches (same data, same seed, its
    own optimiser and dead-latent counters)."""
    tokens = _tokens(16, 500)
    cfgs = _cfgs(tiny_model)
    hooks = [h for c in cfgs for h in (c.hook_in, c.hook_out)]
    tc = TrainConfig(batch_size=4 * (CTX - 1), tokens=12 * 4 * (CTX - 1), checkpoint_every=0,
                     log_every=1, dead_tokens=64)  # fmt: skip
    src = ModelBatches(tiny_model, tokens, hooks, tc.batch_size, seed=1)
    together = Trainer(cfgs, tc, device="cpu").fit(src)  # 3 epochs of 4 batches
    for cfg, joint in zip(cfgs, together, strict=True):
        alone_src = ModelBatches(tiny_model, tokens, [cfg.hook_in, cfg.hook_out], tc.batch_size,
                                 seed=1)  # fmt: skip
        alone = Trainer([cfg], tc, device="cpu").fit(alone_src)[0]
        for name, p in joint.state_dict().items():
            torch.testing.assert_close(alone.state_dict()[name], p, rtol=0, atol=0, msg=name)
    # And they did train: each layer's transcoder differs from its initialisation.
    torch.manual_seed(tc.seed)
    from interp_bench.dictionaries import SparseDictionary

    init = SparseDictionary(cfgs[0])
    assert not torch.allclose(init.W_dec, together[0].W_dec)


def test_streaming_resume_continues_exactly(tiny_model, tmp_path):
    """Killed after a checkpoint and restarted, a streaming run ends with the same weights as an
    uninterrupted one (batches are located by (epoch, batch index), not replayed)."""
    tokens = _tokens(16, 500)
    cfgs = _cfgs(tiny_model)
    hooks = [h for c in cfgs for h in (c.hook_in, c.hook_out)]
    common = dict(batch_size=4 * (CTX - 1), checkpoint_every=3, log_every=1, dead_tokens=64)
    full_tokens = 10 * common["batch_size"]
    src = ModelBatches(tiny_model, tokens, hooks, common["batch_size"], seed=2)
    ref = Trainer(cfgs, TrainConfig(tokens=full_tokens, **common), device="cpu",
                  out_dir=tmp_path / "ref").fit(src)  # fmt: skip

    class Killed(Exception):
        pass

    class Dies:
        """The same source, dying in the middle of the 8th batch (after the step-6 checkpoint)."""

        def __init__(self):
            self.n = 0

        def batches(self, epoch, start):
            for b in src.batches(epoch, start):
                self.n += 1
                if self.n == 8:
                    raise Killed
                yield b

    tc = TrainConfig(tokens=full_tokens, **common)
    with pytest.raises(Killed):
        Trainer(cfgs, tc, device="cpu", out_dir=tmp_path / "run").fit(Dies())
    resumed = Trainer(cfgs, tc, device="cpu", out_dir=tmp_path / "run")
    out = resumed.fit(src)
    for a, b in zip(ref, out, strict=True):
        for name, p in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[name], p, rtol=0, atol=0, msg=name)


def test_train_cli_all_layers_from_a_cache(tiny_model, tmp_path, capsys):
    """`interp-bench train --hook-in all.mlp_in --hook-out all.mlp_out` trains one transcoder per
    cached layer in one pass; mismatched lists fail with one line before any training."""
    from activation_cache.cache import cache_activations
    from interp_bench.cli import main

    hooks = ["L0.mlp_in", "L0.mlp_out", "L1.mlp_in", "L1.mlp_out"]
    cache = tmp_path / "acts"
    cache_activations(tiny_model, _tokens(16, 500), hooks, cache, shard_tokens=64, progress=False)
    out = tmp_path / "runs"
    common = ["train", "--activations", str(cache), "--out", str(out), "--tokens", "256",
              "--batch-size", "32", "--k", "8", "--expansion", "2", "--device", "cpu"]  # fmt: skip
    assert main([*common, "--hook-in", "all.mlp_in", "--hook-out", "all.mlp_out"]) == 0
    made = sorted(p.name for p in out.iterdir())
    assert made == ["L0.mlp_in-to-L0.mlp_out-topk-128-k8", "L1.mlp_in-to-L1.mlp_out-topk-128-k8"]
    assert all((out / m / "sae_weights.safetensors").exists() for m in made)
    assert main([*common, "--hook-in", "L0-1.mlp_in", "--hook-out", "L1.mlp_out"]) == 2
    assert "one target per input" in capsys.readouterr().err


def test_train_help_renders(capsys):
    """Every flag's help (generated from config docstrings, some with a % in them) formats."""
    from interp_bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--revive" in text and "all.mlp_in" in text and "--model" in text
