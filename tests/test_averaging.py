"""TrainConfig.weight_average: the trainer evaluates and saves an EMA of its iterates."""

from __future__ import annotations

import copy

import pytest
import torch

from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import load_dictionary
from interp_bench.dictionaries.crosslayer import CrossLayerConfig
from interp_bench.training import averaging
from interp_bench.training.trainer import Trainer
from tests.test_trainer import (
    HOOK,
    Crash,
    CrashAfter,
    assert_same,
    planted,
    relu_cfg,
    tcfg,
    topk_cfg,
    weights,
)


def kl_cfg() -> DictionaryConfig:
    """ReLU latents with a unit-norm decoder: renormalising the average is exact for them."""
    return relu_cfg(sparsity="kl", kl_target=0.05, kl_coefficient=0.1)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def raw_average(t: Trainer, i: int = 0):
    """The average's weights as they are (no renormalisation), on raw activations."""
    d = copy.deepcopy(t.dicts[i])
    d.load_state_dict(t.averages[i])
    return d.fold_hook_scales(t.scales)


def test_average_is_the_hand_computed_ema_of_the_iterates():
    steps, fraction = 12, 0.25
    t = Trainer([topk_cfg()], tcfg(tokens=128 * steps, weight_average=fraction))
    iterates = []  # the weights each optimiser step starts from: w_0 .. w_{T-1}
    opt = t.optims[0]
    real_step = opt.step

    def step_and_record(*args, **kw):
        iterates.append(snapshot(t.dicts[0]))
        return real_step(*args, **kw)

    opt.step = step_and_record
    for batch in planted(steps):
        t.step(batch)
    iterates.append(snapshot(t.dicts[0]))  # w_T
    assert len(iterates) == steps + 1

    decay = 1 - 1 / (fraction * steps)
    expected = iterates[0]
    for w in iterates[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in w}
    assert_same([expected], [t.averages[0]], atol=1e-6)
    # The average is not the last iterate, and what folded() returns is the average.
    assert (t.averages[0]["W_enc_t"] - iterates[-1]["W_enc_t"]).abs().max() > 1e-3
    x = planted(1, seed=5)[0][HOOK]
    with torch.no_grad():
        last = copy.deepcopy(t.dicts[0]).fold_hook_scales(t.scales)(x)
        folded = t.folded()[0](x)
        assert (folded - raw_average(t)(x)).abs().mean() < 0.1 * (folded - last).abs().mean()


def test_weight_average_leaves_training_bit_identical():
    """The average only reads the iterates: the iterates are those of a run without it, and
    weight_average=0 keeps no average (folded() is the last iterate, as before)."""
    data = planted(10)
    cfgs = [topk_cfg(), relu_cfg()]
    plain = Trainer(cfgs, tcfg(tokens=128 * 10))
    averaged = Trainer(cfgs, tcfg(tokens=128 * 10, weight_average=0.3))
    for b in data:
        plain.step(b)
        averaged.step(b)
    assert plain.averages is None
    assert_same(weights(plain.dicts), weights(averaged.dicts), atol=0)
    last = [copy.deepcopy(d).fold_hook_scales(plain.scales) for d in plain.dicts]
    assert_same(weights(last), weights(plain.folded()), atol=0)


def test_resume_with_averaging_equals_an_uninterrupted_run(tmp_path):
    data = planted(12)
    cfgs = [topk_cfg(), kl_cfg()]
    tc = tcfg(tokens=128 * 30, checkpoint_every=7, weight_average=0.25)
    straight_t = Trainer(cfgs, tc, out_dir=tmp_path / "a")
    straight = straight_t.fit(data)
    with pytest.raises(Crash):
        Trainer(cfgs, tc, out_dir=tmp_path / "b").fit(CrashAfter(data, 25))
    resumed_t = Trainer(cfgs, tc, out_dir=tmp_path / "b")
    assert resumed_t.resume() and resumed_t.step_idx == 21
    resumed_t = Trainer(cfgs, tc, out_dir=tmp_path / "b")
    resumed = resumed_t.fit(data)
    assert resumed_t.step_idx == 30
    assert_same(straight_t.averages, resumed_t.averages)
    assert_same(weights(straight), weights(resumed))
    # The saved files hold the average, not the last iterate.
    last = [copy.deepcopy(d).fold_hook_scales(resumed_t.scales) for d in resumed_t.dicts]
    for name, avg, final in zip(resumed_t.names, resumed, last, strict=True):
        saved = load_dictionary(tmp_path / "b" / name)
        torch.testing.assert_close(saved.W_dec, avg.W_dec)
        assert (saved.W_dec - final.W_dec).abs().max() > 1e-4


def test_folded_average_computes_the_averaged_function_with_unit_rows():
    """ReLU latents (KL, unit decoder): folding the rows' norms into the encoder is exact, and
    the folded decoder rows have the norm the last iterate's have (1 / input scale)."""
    data = planted(16)
    t = Trainer([kl_cfg()], tcfg(tokens=128 * 16, weight_average=0.5))
    for b in data:
        t.step(b)
    norms = t.averages[0]["W_dec"].norm(dim=1)
    assert norms.min() < 0.999  # the average's rows are shorter: renormalising matters
    (d,) = t.folded()
    scale = t.scales[HOOK]
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.full((64,), 1 / scale))
    x = planted(2, seed=7)[0][HOOK]
    with torch.no_grad():
        torch.testing.assert_close(d(x), raw_average(t)(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
def test_fold_decoder_norms_keeps_threshold_latents_exact(arch):
    """Per-latent rescale into the encoder side: exact for ReLU and per-latent thresholds; for
    BatchTopK's shared threshold exact when the norms are equal."""
    torch.manual_seed(0)
    d = DictionaryConfig(d_in=16, d_sae=32, arch=arch, k=4, hook_in=HOOK).build()
    with torch.no_grad():
        d.b_enc.normal_()
        d.act.load_threshold(torch.rand(32) + 0.1)
        c = torch.rand(32) + 0.2 if arch != "batchtopk" else torch.full((32,), 0.7)
        d.W_dec.mul_(c[:, None])
    x = torch.randn(50, 16) * 3
    with torch.no_grad():
        before = d(x)
        d.fold_decoder_norms()
        torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(32))
        torch.testing.assert_close(d(x), before, atol=1e-5, rtol=1e-5)


def test_clt_average_is_kept_generically_and_folds_unit_rows(tmp_path):
    ins, outs = ("L0.mlp_in", "L1.mlp_in"), ("L0.mlp_out", "L1.mlp_out")
    cfg = CrossLayerConfig(d_in=16, d_sae=32, k=4, hooks_in=ins, hooks_out=outs)
    g = torch.Generator().manual_seed(0)
    data = [{h: torch.randn(64, 16, generator=g) * 2 for h in ins + outs} for _ in range(8)]
    tc = TrainConfig(
        batch_size=64, tokens=64 * 8, checkpoint_every=3, device="cpu", weight_average=0.5
    )
    t = Trainer([cfg], tc, out_dir=tmp_path)
    (clt,) = t.fit(data)
    assert set(t.averages[0]) == set(t.dicts[0].state_dict())
    for i, h in enumerate(outs):
        rows = clt.W_dec[i].view(32, 2 - i, 16) * torch.tensor(
            [t.scales[o] for o in outs[i:]]
        ).view(1, -1, 1)
        torch.testing.assert_close(rows.flatten(1).norm(dim=1), torch.ones(32), msg=h)
    state = torch.load(next((tmp_path / t.names[0] / "checkpoint").glob("step_*/state.pt")))
    assert_same([state["average"]], t.averages)


def test_weight_average_range_is_checked():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="weight_average must be in"):
            TrainConfig(weight_average=bad)
    assert averaging.ema_decay(0.25, 48) == pytest.approx(1 - 1 / 12)
    assert averaging.ema_decay(0.25, 2) == 0.0  # shorter than one step: the last iterate
