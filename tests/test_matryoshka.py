"""Matryoshka TopK / BatchTopK: the prefix losses are the prefixes' own reconstruction errors,
the sparse path matches the dense one, planted features are recovered, and the prefix sizes
survive save / load and the CLI."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_dictionary import D_IN, D_SAE, planted, train_planted

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary
from interp_bench.dictionaries.matryoshka import prefix_mse

PREFIXES = (64, 192, D_SAE)


def _dictionary(arch: str, decode: str, **extra) -> tuple[SparseDictionary, torch.Tensor]:
    torch.manual_seed(0)
    cfg = DictionaryConfig(
        D_IN, D_SAE, arch=arch, k=8, matryoshka=PREFIXES, decode=decode, select="fp32", **extra
    )
    m = SparseDictionary(cfg)
    _, _, sample = planted()
    x, _ = sample(256)
    m.init_from_data(x)
    with torch.no_grad():  # away from the tied init, so the encoder and decoder differ
        m.W_dec.add_(0.3 * torch.randn_like(m.W_dec))
        m.normalize_decoder()
    return m, x


@pytest.mark.parametrize("decode", ["sparse", "dense"])
def test_topk_prefix_losses_are_each_prefix_alone(decode):
    m, x = _dictionary("topk", decode)
    out = m.loss(x)
    alone = prefix_mse(m, x)  # inference latents, each prefix decoded on its own
    assert len(alone) == len(PREFIXES)
    assert len(set(alone.tolist())) == len(PREFIXES)  # the prefixes really differ
    torch.testing.assert_close(out.loss, alone.sum())
    torch.testing.assert_close(out.mse, alone[-1])


def test_batchtopk_prefix_losses_follow_its_batch_selection():
    m, x = _dictionary("batchtopk", "sparse")
    out = m.loss(x)
    with torch.no_grad():
        pre = m.pre_acts(x)
        values, flat = m.act.select(pre)
        acts = torch.zeros_like(pre).reshape(-1).scatter(0, flat, values).reshape(pre.shape)
        want = [(x - acts[:, :p] @ m.W_dec[:p] - m.b_dec).pow(2).sum(-1).mean() for p in PREFIXES]
    torch.testing.assert_close(out.loss, torch.stack(want).sum())
    torch.testing.assert_close(out.mse, want[-1])


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_path_matches_dense_path(arch):
    grads = {}
    for decode in ("sparse", "dense"):
        m, x = _dictionary(arch, decode)
        out = m.loss(x)
        out.loss.backward()
        grads[decode] = (out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    torch.testing.assert_close(grads["sparse"][0], grads["dense"][0])
    for name, g in grads["dense"][1].items():
        torch.testing.assert_close(grads["sparse"][1][name], g, atol=1e-4, rtol=1e-4)


@pytest.mark.long
def test_matryoshka_learns_planted_features_and_its_prefix_reconstructs_alone():
    """Same problem and budget as the plain TopK planted test. The Matryoshka dictionary must
    recover the features as well, and its first 128 latents must reconstruct far better on their
    own than a plain TopK's first 128 (which were never asked to)."""
    head = 128
    mat, fvu, l0, rec = train_planted(
        DictionaryConfig(D_IN, D_SAE, arch="topk", k=8, matryoshka=(head, D_SAE)), steps=800
    )
    plain, *_ = train_planted(DictionaryConfig(D_IN, D_SAE, arch="topk", k=8), steps=800)
    assert fvu < 0.25 and 7.5 <= l0 <= 8.0
    assert rec >= 0.9
    _, _, sample = planted(seed=99)
    x, _ = sample(4096)
    var = (x - x.mean(0)).pow(2).sum(-1).mean()
    head_fvu = {}
    for name, d in (("matryoshka", mat), ("plain", plain)):
        d.cfg.matryoshka = (head, D_SAE)  # prefix_mse reads the sizes from the config
        head_fvu[name] = (prefix_mse(d, x)[0] / var).item()
    # 128 latents hold at most half of the 256 equally common planted directions (FVU ~0.5 at
    # best); measured 0.75 against the plain dictionary's 0.91.
    assert head_fvu["matryoshka"] < 0.9 * head_fvu["plain"], head_fvu


def test_saved_and_loaded_with_its_prefixes(tmp_path):
    from interp_bench.dictionaries import load_dictionary, save_dictionary

    m, x = _dictionary("batchtopk", "sparse")
    m.loss(x)  # moves the inference threshold off zero
    save_dictionary(m, tmp_path / "d")
    back = load_dictionary(tmp_path / "d")
    assert back.cfg.matryoshka == PREFIXES and back.cfg.arch == "batchtopk"
    torch.testing.assert_close(back(x), m(x))
    torch.testing.assert_close(prefix_mse(back, x), prefix_mse(m, x))


def test_bad_prefixes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="end at d_sae=512"):
        DictionaryConfig(D_IN, D_SAE, matryoshka=(64, 256))
    with pytest.raises(ValueError, match="must increase"):
        DictionaryConfig(D_IN, D_SAE, matryoshka=(256, 64, D_SAE))
    with pytest.raises(ValueError, match="applies to topk and batchtopk"):
        DictionaryConfig(D_IN, D_SAE, arch="relu", matryoshka=(64, D_SAE))
    loaded = DictionaryConfig.from_dict({"d_in": 4, "d_sae": 64, "matryoshka": [16, 64]})
    assert loaded.matryoshka == (16, 64)  # JSON lists come back as tuples


def test_cli_flag_takes_a_comma_list():
    from interp_bench.commands.config_args import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p, DictionaryConfig, exclude=("d_in", "d_sae"))
    args = p.parse_args(["--matryoshka", "64,192,512", "--arch", "batchtopk"])
    cfg = config_from_args(DictionaryConfig, args, d_in=D_IN, d_sae=D_SAE)
    assert cfg.matryoshka == PREFIXES
    assert "matryoshka" in cfg.name
    assert config_from_args(DictionaryConfig, p.parse_args([]), d_in=4, d_sae=64).matryoshka is None
    with pytest.raises(SystemExit):
        p.parse_args(["--matryoshka", "64,x"])


def test_train_help_lists_the_flag():
    """`interp-bench train --help` renders (field docs holding '%' once broke it)."""
    from interp_bench.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    text = p.format_help()
    assert "--matryoshka" in text and "256,1024,4608" in text
