"""SparseDictionary: every architecture learns a planted sparse dictionary; normalisation folding,
init and input validation."""

from __future__ import annotations

import pytest
import torch

from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import SparseDictionary
from interp_bench.dictionaries.dictionary import geometric_median

D_IN, N_FEAT, D_SAE = 64, 256, 512


def planted(d_out: int | None = None, seed: int = 1234):
    """Sparse codes over N_FEAT unit directions in D_IN dims (about 5 active per token), scaled to
    mean norm sqrt(d) like the trainer's normalisation. Returns the true dictionaries and a
    sampler of (x, target). The seed differs from the model's init seed: with the same seed the
    global RNG would draw the planted directions as the initial decoder rows."""
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(N_FEAT, D_IN, generator=g), dim=1)
    Do = torch.nn.functional.normalize(torch.randn(N_FEAT, d_out or 1, generator=g), dim=1)

    def sample(b: int):
        f = (torch.rand(b, N_FEAT, generator=g) < 5 / N_FEAT) * (torch.rand(b, N_FEAT) + 0.5)
        x = f @ D
        x = x * D_IN**0.5 / x.norm(dim=1).mean()
        if d_out is None:
            return x, None
        y = f @ Do
        return x, y * d_out**0.5 / y.norm(dim=1).mean()

    return D, (Do if d_out else None), sample


def train_planted(cfg: DictionaryConfig, steps: int = 250, lr: float = 3e-3):
    torch.manual_seed(0)
    D, Do, sample = planted(cfg.d_out)
    m = SparseDictionary(cfg)
    m.init_from_data(*sample(2048))
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    last_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    for s in range(steps):
        x, y = sample(512)
        out = m.loss(x, y, dead_mask=(s - last_fired) > 50, warmup=4 * s / steps)
        opt.zero_grad()
        out.loss.backward()
        m.post_backward()
        opt.step()
        m.post_step()
        last_fired[out.fire_counts > 0] = s
    x, y = sample(4096)
    target = x if y is None else y
    with torch.no_grad():
        fvu = ((m(x) - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()).item()
        l0 = (m.encode(x) > 0).float().sum(-1).mean().item()
    truth = D if Do is None else Do
    return m, fvu, l0, recovered(truth, m.W_dec)


def recovered(truth: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Fraction of true directions whose best-matching decoder row has cosine > 0.9."""
    W = torch.nn.functional.normalize(W_dec.detach(), dim=1)
    return (truth @ W.T).max(1).values.gt(0.9).float().mean().item()


def test_recovery_metric_is_not_trivial():
    D, _, _ = planted()
    torch.manual_seed(0)
    assert recovered(D, SparseDictionary(DictionaryConfig(D_IN, D_SAE)).W_dec) < 0.05


# Thresholds sit below what each architecture reached on this problem (topk fvu 0.14 / recovery
# 1.0 and batchtopk 0.22 / 0.68 at 800 steps; jumprelu 0.24 / 0.92 and relu-L1 0.32 / 0.99 at 1600
# steps, with sparsity coefficients that bring L0 near the true ~5); a fresh dictionary recovers
# none of the planted directions. JumpReLU and ReLU+L1 need the longer run: at 800 steps they
# recovered 0.58 and 0.40. ReLU+KL reconstructs well but recovers no directions here (dense, L0
# ~100), so it is checked for reconstruction and sparsity only.
@pytest.mark.long
@pytest.mark.parametrize(
    "arch,extra,steps,max_fvu,l0_range,min_rec",
    [
        ("topk", {"k": 8}, 800, 0.2, (7.5, 8.0), 0.9),
        ("batchtopk", {"k": 8}, 800, 0.3, (4, 12), 0.5),
        ("jumprelu", {"l0_coefficient": 3.0}, 1600, 0.3, (2, 8), 0.8),
        ("relu", {"l1_coefficient": 3.0}, 1600, 0.4, (3, 30), 0.9),
        ("relu", {"sparsity": "kl", "kl_target": 0.01}, 800, 0.2, (3, 200), 0.0),
    ],
)
def test_sae_learns_planted_features(arch, extra, steps, max_fvu, l0_range, min_rec):
    cfg = DictionaryConfig(D_IN, D_SAE, arch=arch, **extra)
    _, fvu, l0, rec = train_planted(cfg, steps=steps)
    assert fvu < max_fvu
    assert l0_range[0] <= l0 <= l0_range[1]
    assert rec >= min_rec


@pytest.mark.long
def test_transcoder_learns_planted_map():
    cfg = DictionaryConfig(D_IN, D_SAE, arch="topk", k=8, d_out=48, hook_out="L0.mlp_out")
    _, fvu, l0, rec = train_planted(cfg, steps=300)
    assert fvu < 0.5 and l0 <= 8
    assert rec > 0.5


@pytest.mark.long
def test_skip_transcoder_beats_best_linear_map():
    _, _, sample = planted(48)
    x, y = sample(4096)
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
    lin = torch.cat([x, torch.ones(len(x), 1)], 1) @ sol
    lin_fvu = ((lin - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()
    cfg = DictionaryConfig(D_IN, D_SAE, arch="topk", k=8, d_out=48, hook_out="o", skip=True)
    _, fvu, _, _ = train_planted(cfg, steps=300)
    assert fvu < 0.7 * lin_fvu


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("transcoder", [False, True])
def test_fold_scale_makes_weights_act_on_raw_activations(arch, transcoder):
    torch.manual_seed(1)
    d_out = 24 if transcoder else None
    cfg = DictionaryConfig(32, 128, arch=arch, k=8, d_out=d_out, skip=transcoder)
    m = SparseDictionary(cfg, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if arch == "batchtopk":
        m.act.topk_threshold.fill_(0.3)
    x = 7.0 * torch.randn(200, 32, dtype=torch.float64) + 3.0
    s_in, s_out = 0.13, (0.4 if transcoder else 0.13)
    with torch.no_grad():
        latents = m.encode(x * s_in)
        out = m(x * s_in) / s_out
        m.fold_scale(s_in, s_out)
        assert torch.allclose(m.encode(x), latents, atol=1e-9)
        assert torch.allclose(m(x), out, atol=1e-9)
    assert m.folded_scales == (s_in, s_out)


def test_fold_scale_rejects_different_scales_for_sae():
    with pytest.raises(ValueError, match="in_scale must equal out_scale"):
        SparseDictionary(DictionaryConfig(8, 16, k=4)).fold_scale(2.0, 3.0)


def test_wrong_width_names_expected_size():
    m = SparseDictionary(DictionaryConfig(32, 64, hook_in="L3.resid_post"))
    for call in (m.encode, m.forward, m.loss):
        with pytest.raises(ValueError, match="expects 32"):
            call(torch.randn(4, 31))
    t = SparseDictionary(DictionaryConfig(32, 64, d_out=16, hook_out="L3.mlp_out"))
    with pytest.raises(ValueError, match="expects 16"):
        t.loss(torch.randn(4, 32), torch.randn(4, 32))
    with pytest.raises(ValueError, match="needs a target"):
        t.loss(torch.randn(4, 32))


def test_config_validation_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        DictionaryConfig(8, 16, arch="gated")
    with pytest.raises(ValueError, match="k must be"):
        DictionaryConfig(8, 16, k=17)
    cfg = DictionaryConfig(8, 16, arch="jumprelu", k=4, hook_in="L1.mlp_in", hook_out="L1.mlp_out")
    assert DictionaryConfig.from_json(cfg.to_json()) == cfg
    tc = TrainConfig(lr=1e-3, tokens=1000)
    tc.to_json(tmp_path / "t.json")
    assert TrainConfig.from_json(tmp_path / "t.json") == tc
    assert cfg.is_transcoder and cfg.name == "L1.mlp_in-to-L1.mlp_out-jumprelu-16"


def test_init_from_data_and_geometric_median():
    torch.manual_seed(0)
    x = torch.randn(500, 8) + 2.0
    x[:5] += 1000.0  # a few huge outliers (BOS-like) drag the mean, not the median
    m = SparseDictionary(DictionaryConfig(8, 16, k=4))
    m.init_from_data(x, method="median")
    assert (m.b_dec - 2.0).abs().max() < 0.3
    med = geometric_median(x)
    assert (x - med).norm(dim=1).sum() <= (x - med - 0.05).norm(dim=1).sum()
    m.init_from_data(x, method="mean")
    assert torch.allclose(m.b_dec, x.mean(0))
    t = SparseDictionary(DictionaryConfig(8, 16, k=4, d_out=4, hook_out="o"))
    y = torch.randn(500, 4) - 1.0
    t.init_from_data(x, y)
    assert torch.allclose(t.b_dec, y.mean(0))


def test_decoder_constraints():
    torch.manual_seed(0)
    m = SparseDictionary(DictionaryConfig(16, 32, arch="topk", k=4))
    assert torch.allclose(m.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    m.loss(torch.randn(64, 16)).loss.backward()
    m.post_backward()
    assert (m.W_dec.grad * m.W_dec).sum(1).abs().max() < 1e-5
    with torch.no_grad():
        m.W_dec.mul_(3.0)
    m.post_step()
    assert torch.allclose(m.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    relu = SparseDictionary(DictionaryConfig(16, 32, arch="relu"))
    assert not relu.unit_decoder  # L1 is weighted by decoder norms instead


def test_loss_output_fields():
    torch.manual_seed(0)
    m = SparseDictionary(DictionaryConfig(16, 64, arch="topk", k=4))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:40] = True
    out = m.loss(torch.randn(128, 16), dead_mask=dead)
    assert out.aux.item() > 0 and out.sparsity.item() == 0
    assert out.l0.item() == pytest.approx(4.0, abs=0.5)
    assert out.fire_counts.dtype == torch.long and out.fire_counts.shape == (64,)
    assert out.fvu > 0
    assert torch.isclose(out.loss, out.mse + m.cfg.auxk_alpha * out.aux)


def test_evaluate_streams_like_one_batch():
    from interp_bench.dictionaries.evaluate import OUTLIER_NORM, evaluate

    torch.manual_seed(0)
    m = SparseDictionary(DictionaryConfig(16, 64, arch="topk", k=4, hook_in="L0.resid_post"))
    with torch.no_grad():
        m.W_dec[:10] = 0  # latents 0..9 decode to nothing; kill them in the encoder too
        m.W_enc[:, :10] = 0
        m.b_enc[:10] = -100.0
    x = torch.randn(300, 16)
    x[7] *= 50  # one massive-activation token: fvu counts it, fvu_typical leaves it out
    batches = ({"L0.resid_post": x[i : i + 64]} for i in range(0, 300, 64))
    [stats] = evaluate([m], batches, max_tokens=290)
    x = x[:290]
    with torch.no_grad():
        err = (m(x) - x).double().pow(2).sum(-1)
        f = m.encode(x)
    x64 = x.double()
    keep = x64.norm(dim=-1) <= OUTLIER_NORM * x64[:64].norm(dim=-1).median()
    assert stats.fvu == pytest.approx((err.sum() / (x64 - x64.mean(0)).pow(2).sum()).item(), 1e-5)
    typ = x64[keep]
    want = (err[keep].sum() / (typ - typ.mean(0)).pow(2).sum()).item()
    assert stats.fvu_typical == pytest.approx(want, rel=1e-5) and stats.outlier_tokens == 1
    assert stats.l0 == pytest.approx((f > 0).sum(-1).double().mean().item())
    assert stats.tokens == 290 and stats.dead_frac >= 10 / 64


def test_standardized_encoder_init_equalises_latents():
    """A transcoder's encoder starts with every latent's pre-activation at mean 0, variance 1 on
    the init batch, however anisotropic the input."""
    torch.manual_seed(0)
    cfg = DictionaryConfig(16, 64, arch="topk", k=4, d_out=8, hook_out="L0.mlp_out")
    assert cfg.resolved_encoder_init == "standardized"
    m = SparseDictionary(cfg)
    x = torch.randn(4000, 16) * torch.logspace(-2, 1, 16) + 3.0  # scales differ 1000x
    m.init_from_data(x, torch.randn(4000, 8))
    pre = m.pre_acts(x)
    torch.testing.assert_close(pre.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(pre.std(0), torch.ones(64), atol=1e-4, rtol=0)
    sae = DictionaryConfig(16, 64, arch="topk", k=4)
    assert sae.resolved_encoder_init == "tied"
    with pytest.raises(ValueError, match="encoder_init='tied' needs d_out == d_in"):
        DictionaryConfig(16, 64, d_out=8, hook_out="o", encoder_init="tied")


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_fitted_decoder_rows_point_along_their_tokens_targets(arch):
    """decoder_init='fit': each row is the unit vector of sum_t f_tj (y_t - b_dec) over the init
    batch, f the per-token top k of the (standardised) pre-activations; latents chosen on no
    token keep the random row they were built with."""
    torch.manual_seed(0)
    cfg = DictionaryConfig(
        16, 256, arch=arch, k=2, d_out=8, hook_out="L0.mlp_out", decoder_init="fit"
    )
    m = SparseDictionary(cfg)
    random_rows = m.W_dec.detach().clone()
    x = torch.randn(40, 16) * torch.logspace(-1, 1, 16)
    y = torch.randn(40, 8) + 2.0
    m.init_from_data(x, y)
    pre = m.pre_acts(x)
    expected = random_rows.clone()
    chosen = set()
    for t in range(len(x)):
        chosen.update(pre[t].topk(2).indices.tolist())
    for j in range(256):
        if j in chosen:
            acc = torch.zeros(8)
            for t in range(len(x)):
                if j in pre[t].topk(2).indices.tolist():
                    acc += pre[t, j].relu() * (y[t] - m.b_dec)
            expected[j] = acc / acc.norm()
    assert 0 < len(chosen) < 256  # both kinds of latent are checked
    torch.testing.assert_close(m.W_dec.detach(), expected, atol=1e-5, rtol=1e-5)


def test_fitted_decoder_rows_agree_with_their_tokens_targets_random_ones_do_not():
    """The point of fitting: every latent's first contribution to its tokens' outputs points
    along their centred targets (sum_t f_tj <W_dec_j, y_t - b_dec> > 0), where a random row's
    does for about half of the latents and pushes the rest down from the first step."""
    torch.manual_seed(0)
    x = torch.randn(2048, 32)
    y = torch.tanh(x @ torch.randn(32, 16))  # an MLP-like map into another space
    agree = {}
    for init in ("random", "fit"):
        torch.manual_seed(1)
        cfg = DictionaryConfig(32, 256, k=8, d_out=16, hook_out="o", decoder_init=init)
        m = SparseDictionary(cfg)
        m.init_from_data(x, y)
        pre = m.pre_acts(x)
        top = pre.topk(8, dim=1)
        f = torch.zeros_like(pre).scatter_(1, top.indices, top.values.relu())
        fired = (f > 0).any(0)
        score = (f * ((y - m.b_dec) @ m.W_dec.T)).sum(0)  # [d_sae]
        agree[init] = (score[fired] > 0).float().mean().item()
    assert agree["fit"] == 1.0
    assert 0.3 < agree["random"] < 0.7


def test_fitted_decoder_needs_k_sparse_latents():
    assert DictionaryConfig(16, 64, d_out=8, hook_out="o").resolved_decoder_init == "fit"
    assert DictionaryConfig(16, 64).resolved_decoder_init == "random"  # an SAE starts tied
    btk = DictionaryConfig(16, 64, arch="batchtopk", d_out=8, hook_out="o")
    assert btk.resolved_decoder_init == "random"  # not measured there
    with pytest.raises(ValueError, match="decoder_init='fit' needs topk or batchtopk"):
        DictionaryConfig(16, 64, arch="relu", d_out=8, hook_out="o", decoder_init="fit")
    with pytest.raises(ValueError, match="decoder_init must be auto, random or fit"):
        DictionaryConfig(16, 64, decoder_init="tied")


@pytest.mark.parametrize("stride", [0, -4])
def test_auxk_stride_below_one_is_refused(stride):
    with pytest.raises(ValueError, match="auxk_stride must be at least 1"):
        DictionaryConfig(16, 96, auxk_stride=stride)
