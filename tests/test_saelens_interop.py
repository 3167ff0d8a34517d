"""Save/load round trips, and SAELens 6 interop both ways: SAELens loads our folders and gives
the same outputs; we load folders SAELens wrote and give the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, load_dictionary, save_dictionary

sae_lens = pytest.importorskip("sae_lens")

ARCHS = ["relu", "topk", "batchtopk", "jumprelu"]


def random_dictionary(arch: str, transcoder: bool = False, skip: bool = False):
    torch.manual_seed(0)
    cfg = DictionaryConfig(
        16,
        64,
        arch=arch,
        k=5,
        d_out=12 if transcoder else None,
        hook_in="L2.mlp_in" if transcoder else "L2.resid_post",
        hook_out="L2.mlp_out" if transcoder else None,
        model_name="tiny",
        skip=skip,
    )
    m = SparseDictionary(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if arch == "batchtopk":
            m.act.load_threshold(torch.tensor(0.4))
    m.fold_scale(0.5, 0.5 if not transcoder else 0.25)
    return m


def same_outputs(a, b_encode, b_forward, x, out_atol=1e-5):
    with torch.no_grad():
        fa, fb = a.encode(x), b_encode(x)
        assert torch.equal(fa > 0, fb > 0)
        assert torch.allclose(fa, fb, atol=1e-5)
        assert torch.allclose(a(x), b_forward(x), atol=out_atol)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_round_trip(tmp_path, arch, kind):
    m = random_dictionary(arch, kind != "sae", kind == "skip_transcoder")
    save_dictionary(m, tmp_path, metadata={"note": "hello"})
    r = load_dictionary(tmp_path)
    assert r.cfg == m.cfg and r.folded_scales == m.folded_scales
    for name, t in m.state_dict().items():
        assert torch.allclose(t, r.state_dict()[name], atol=1e-6), name
    x = 3 * torch.randn(50, 16)
    same_outputs(m, r.encode, r.forward, x)
    meta = json.loads((tmp_path / "cfg.json").read_text())["metadata"]
    assert meta["note"] == "hello" and meta["hook_name"].startswith("blocks.2.")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_saelens_loads_ours(tmp_path, arch, kind):
    if arch == "topk" and kind != "sae":
        pytest.skip("SAELens 6.54 has no TopK transcoder class; ours only (see round trip)")
    m = random_dictionary(arch, kind != "sae", kind == "skip_transcoder")
    save_dictionary(m, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    expected = {
        "sae": {"relu": "standard", "topk": "topk"}.get(arch, "jumprelu"),
        "transcoder": "transcoder" if arch == "relu" else "jumprelu_transcoder",
        "skip_transcoder": "skip_transcoder" if arch == "relu" else "jumprelu_skip_transcoder",
    }[kind]
    assert theirs.cfg.architecture() == expected
    same_outputs(m, theirs.encode, theirs.forward, 3 * torch.randn(50, 16))


def _saelens_folder(tmp_path, arch: str, **cfg_kw):
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    torch.manual_seed(1)
    cls, cfg_cls = {
        "standard": (StandardSAE, StandardSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
    }[arch]
    sae = cls(cfg_cls(d_in=16, d_sae=48, **cfg_kw))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.rand_like(p) * 0.3 if name == "threshold" else torch.randn_like(p) * 0.3)
    sae.save_model(tmp_path)
    return sae


@pytest.mark.parametrize(
    "arch,cfg_kw",
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": 6}),
        ("topk", {"k": 6, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
    ],
)
def test_we_load_saelens_folders(tmp_path, arch, cfg_kw):
    sae = _saelens_folder(tmp_path, arch, **cfg_kw)
    ours = load_dictionary(tmp_path)
    assert ours.cfg.arch == {"standard": "relu"}.get(arch, arch)
    x = torch.randn(50, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), sae(x), atol=1e-5)
        if not cfg_kw.get("rescale_acts_by_decoder_norm"):
            assert torch.allclose(ours.encode(x), sae.encode(x), atol=1e-5)
        else:  # SAELens reports latents in decoder-norm units; same support either way
            assert torch.equal(ours.encode(x) > 0, sae.encode(x) > 0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_dictionary(tmp_path)
    save_dictionary(random_dictionary("topk"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gated"):
        load_dictionary(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_how_to_load_is_true(tmp_path, arch, kind):
    """The demo's "loads with" line promises SAELens exactly when SAELens loads the folder."""
    from interp_bench.dictionaries.saelens_format import how_to_load, loads_in_saelens

    m = random_dictionary(arch, kind != "sae", kind == "skip_transcoder")
    save_dictionary(m, tmp_path)
    line = how_to_load(m.cfg)
    assert "load_dictionary(path)" in line
    try:
        sae_lens.SAE.load_from_disk(str(tmp_path))
        loaded = True
    except (KeyError, ValueError):  # SAELens 6.54: KeyError 'topk_transcoder'
        loaded = False
    assert loads_in_saelens(m.cfg) == loaded
    assert ("SAE.load_from_disk" in line) == loaded
    if not loaded:
        assert "only" in line and "has no topk_transcoder class" in line
