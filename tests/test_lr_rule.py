"""The default learning rate's rule (TrainConfig.auto_lr): width scaling times a boost for short
runs, chosen on the quality grid (issue 10, benchmarks/RESULTS.md)."""

import argparse

import pytest
import torch

from interp_bench.commands.train import add_arguments
from interp_bench.config import (
    FITTED_BOOST,
    FITTED_TAPER,
    LR_FULL_STEPS,
    LR_FULL_WIDTH,
    LR_MAX_BOOST,
    TRANSCODER_BOOST,
    DictionaryConfig,
    TrainConfig,
)
from interp_bench.dictionaries.crosslayer import CrossLayerConfig
from interp_bench.training.trainer import Trainer

BATCH = 4096


def lr(steps: int, d_sae: int = 4608, transcoder: bool = False, **kw) -> float:
    return TrainConfig(batch_size=BATCH, tokens=steps * BATCH, **kw).auto_lr(d_sae, transcoder)


def base(d_sae: int) -> float:
    return 1e-3 / (d_sae / 2**14) ** 0.5


def test_long_runs_keep_the_width_rule():
    for steps in (LR_FULL_STEPS, 2 * LR_FULL_STEPS, 100_000):
        assert lr(steps) == pytest.approx(base(4608))
        assert lr(steps, d_sae=4 * 4608) == pytest.approx(base(4608) / 2)


def test_short_runs_learn_faster_up_to_the_cap():
    # bench_train's budget (786,432 tokens = 192 steps of 4096) keeps the base rate; a quarter
    # of it (the grid's 200k cells) doubles it; nothing goes past the cap.
    assert lr(LR_FULL_STEPS // 4) == pytest.approx(2 * base(4608))
    assert lr(LR_FULL_STEPS // 2) == pytest.approx(2**0.5 * base(4608))
    assert lr(1) == pytest.approx(LR_MAX_BOOST * base(4608))
    rates = [lr(s) for s in range(1, 400)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_rule_counts_steps_not_tokens():
    # The same tokens in batches 4x smaller are 4x the steps: no boost needed.
    tc = TrainConfig(batch_size=BATCH // 4, tokens=LR_FULL_STEPS // 4 * BATCH)
    assert tc.auto_lr(4608) == pytest.approx(base(4608))


def test_topk_transcoders_get_three_times_an_sae_run_of_their_length_then_two():
    # Fitted decoder rows (the TopK transcoder default; RESULTS.md, issue 13): 3x the SAE's
    # factor up to 390 steps (6x at a quarter of 192 steps and below, 48-100 measured; 3x at
    # 192-390), 2x from 1,000 steps on (measured at 1,000), log-linear between.
    assert (FITTED_BOOST, TRANSCODER_BOOST, FITTED_TAPER) == (3, 2, (390, 1000))
    for steps in (LR_FULL_STEPS, 390):
        assert lr(steps, transcoder=True) == pytest.approx(3 * base(4608))
    for steps in (1000, 100_000):
        assert lr(steps, transcoder=True) == pytest.approx(2 * base(4608))
    assert lr(624, transcoder=True) == pytest.approx(2.5 * base(4608), rel=1e-3)  # sqrt(390k)
    for steps in (1, 48, LR_FULL_STEPS // 4):
        assert lr(steps, transcoder=True) == pytest.approx(6 * base(4608))
    assert lr(100, transcoder=True) == pytest.approx(3 * (192 / 100) ** 0.5 * base(4608))
    rates = [lr(s, transcoder=True) for s in range(1, 1200)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_random_rows_keep_twice_an_sae_run_of_their_length():
    # Random decoder rows (decoder_init="random", and CLTs by default): 2x from 192 steps on,
    # 4x at a quarter of 192 and below, as measured before fitted rows.
    def lr_random(steps: int) -> float:
        tc = TrainConfig(batch_size=BATCH, tokens=steps * BATCH)
        return tc.auto_lr(4608, True, fitted=False)

    for steps in (LR_FULL_STEPS, 390, 624, 100_000):
        assert lr_random(steps) == pytest.approx(2 * base(4608))
    for steps in (1, 48):
        assert lr_random(steps) == pytest.approx(4 * base(4608))
    assert lr_random(100) == pytest.approx(2 * (192 / 100) ** 0.5 * base(4608))


def test_trainer_gives_each_transcoder_the_rate_of_its_decoder_start():
    tc = TrainConfig(batch_size=BATCH, tokens=48 * BATCH, checkpoint_every=0)
    io = {"d_out": 32, "hook_in": "a", "hook_out": "b"}
    fit = DictionaryConfig(d_in=32, d_sae=64, **io)
    random_rows = DictionaryConfig(d_in=32, d_sae=64, decoder_init="random", **io)
    ins, outs = ("L0.mlp_in", "L1.mlp_in"), ("L0.mlp_out", "L1.mlp_out")
    clt = CrossLayerConfig(d_in=32, d_sae=64, hooks_in=ins, hooks_out=outs)
    assert clt.resolved_decoder_init == "random"
    t = Trainer([fit, random_rows, clt], tc, device="cpu")
    assert t.lrs == [
        pytest.approx(6 * base(64)),
        pytest.approx(4 * base(64)),
        pytest.approx(4 * base(64)),
    ]


def test_transcoder_boost_ignores_width():
    # The width part was measured on SAEs only: a 32x transcoder gets the 8x factor.
    tc = TrainConfig(batch_size=BATCH, tokens=100 * BATCH)
    wide, narrow = (tc.short_run_boost(True, "topk", width=w) for w in (32, 8))
    assert wide == narrow == pytest.approx(FITTED_BOOST * (192 / 100) ** 0.5)


def test_unmeasured_transcoders_keep_the_base_rate():
    tc = TrainConfig(batch_size=BATCH, tokens=48 * BATCH)
    for arch in ("batchtopk", "jumprelu", "relu"):
        assert tc.auto_lr(4608, True, arch) == pytest.approx(base(4608))


def test_explicit_lr_wins_over_the_rule():
    assert lr(10, lr=5e-4) == 5e-4 and lr(10, lr=5e-4, transcoder=True) == 5e-4


def test_trainer_uses_the_rule():
    cfgs = [
        DictionaryConfig(d_in=16, d_sae=64, k=4, hook_in="L0.resid_post"),
        DictionaryConfig(
            d_in=16, d_sae=64, k=4, hook_in="L0.mlp_in", hook_out="L0.mlp_out", d_out=16
        ),
    ]
    tc = TrainConfig(batch_size=128, tokens=128 * 12, checkpoint_every=0)
    t = Trainer(cfgs, tc, device="cpu")
    assert t.lrs == [pytest.approx(tc.auto_lr(64)), pytest.approx(tc.auto_lr(64, True))]
    assert t.lrs[0] == pytest.approx(LR_MAX_BOOST * base(64))
    assert t.lrs[1] == pytest.approx(FITTED_BOOST * LR_MAX_BOOST * base(64))


def test_help_states_the_rule():
    p = argparse.ArgumentParser()
    add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "sqrt(d_sae / 2**14)" in text and "192 steps" in text and "width / 8" in text


def test_boost_is_for_topk_saes_only():
    """The grid measured TopK SAEs; JumpReLU and ReLU keep the base rate on short runs."""
    tc = TrainConfig(batch_size=BATCH, tokens=48 * BATCH)
    base = 1e-3 / (4608 / 2**14) ** 0.5
    assert tc.auto_lr(4608, arch="batchtopk") == pytest.approx(2 * base)
    for arch in ("jumprelu", "relu"):
        assert tc.auto_lr(4608, arch=arch) == pytest.approx(base)


def test_boost_counts_the_steps_the_run_takes():
    """Under torchrun each rank's batch_size is its share; the rule must see the global steps."""
    tc = TrainConfig(batch_size=BATCH, tokens=48 * BATCH)
    assert tc.auto_lr(4608, steps=192) == pytest.approx(1e-3 / (4608 / 2**14) ** 0.5)
    assert tc.auto_lr(4608, steps=48) == pytest.approx(tc.auto_lr(4608))


def test_trainer_boosts_a_crosslayer_transcoder_like_a_transcoder_with_random_rows():
    ins, outs = ("L0.mlp_in", "L1.mlp_in"), ("L0.mlp_out", "L1.mlp_out")
    clt = CrossLayerConfig(d_in=16, d_sae=64, k=4, hooks_in=ins, hooks_out=outs)
    tc = TrainConfig(batch_size=128, tokens=128 * 12, checkpoint_every=0)
    t = Trainer([clt], tc, device="cpu")
    assert t.lrs == [pytest.approx(TRANSCODER_BOOST * LR_MAX_BOOST * base(64))]
    x = {h: torch.randn(128, 16) for h in ins + outs}
    t.step(x)  # the first step recomputes the rule with the real step count
    assert t.lrs == [pytest.approx(TRANSCODER_BOOST * LR_MAX_BOOST * base(64))]


def wide_lr(steps: int, width: int, d_in: int = 576) -> float:
    tc = TrainConfig(batch_size=BATCH, tokens=steps * BATCH)
    return tc.auto_lr(width * d_in, d_in=d_in)


def test_short_wide_runs_learn_as_fast_as_8x_ones():
    # Each latent of a 4x wider dictionary is updated 4x less often, so below the 8x run's
    # full length the wider one keeps the 8x rate instead of dropping by 1/sqrt(4).
    for steps in (1, 12, 48, 100, LR_FULL_STEPS - 1):
        assert wide_lr(steps, 32) == pytest.approx(wide_lr(steps, LR_FULL_WIDTH))
        assert wide_lr(steps, 16) == pytest.approx(wide_lr(steps, LR_FULL_WIDTH))


def test_wide_runs_reach_the_width_rule_when_long_enough():
    for width in (16, 32, 64):
        full = LR_FULL_STEPS * width // LR_FULL_WIDTH
        for steps in (full, 3 * full):
            assert wide_lr(steps, width) == pytest.approx(base(width * 576))
        # In between, the rate falls from the 8x rate to Gao's, never below it.
        rates = [wide_lr(s, width) for s in range(LR_FULL_STEPS, full + 1, 7)]
        assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
        assert base(width * 576) <= min(rates) and max(rates) <= wide_lr(1, LR_FULL_WIDTH)


def test_narrow_widths_and_transcoders_ignore_width():
    for steps in (12, 100, 1000):
        assert wide_lr(steps, 4) == pytest.approx(lr(steps, d_sae=4 * 576))
        tc = TrainConfig(batch_size=BATCH, tokens=steps * BATCH)
        assert tc.auto_lr(32 * 576, True, d_in=576) == pytest.approx(tc.auto_lr(32 * 576, True))


def test_trainer_passes_the_width():
    cfg = DictionaryConfig(d_in=16, d_sae=16 * 32, k=4, hook_in="L0.resid_post")
    tc = TrainConfig(batch_size=128, tokens=128 * 12, checkpoint_every=0)
    t = Trainer([cfg], tc, device="cpu")
    # 12 steps: the 8x rate at its cap, not the 32x rule's half of it.
    assert t.lrs[0] == pytest.approx(LR_MAX_BOOST * base(16 * LR_FULL_WIDTH))
    t.step({"L0.resid_post": torch.randn(128, 16)})  # recomputed with the real step count
    assert t.lrs[0] == pytest.approx(LR_MAX_BOOST * base(16 * LR_FULL_WIDTH))
