"""Cross-layer transcoders: planted cross-layer features are recovered, a 1-layer CLT is a
transcoder, the sparse decode's gradients are the dense ones, folding and the saved layout."""

from __future__ import annotations

import json

import pytest
import torch

from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import auxk, load_dictionary, save_dictionary
from interp_bench.dictionaries.crosslayer import (
    CrossLayerConfig,
    CrossLayerTranscoder,
    default_width,
    n_parameters,
)
from interp_bench.dictionaries.dictionary import fitted_rows
from interp_bench.training.trainer import Trainer

D = 16


def hooks(n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(f"L{i}.mlp_in" for i in range(n)), tuple(f"L{i}.mlp_out" for i in range(n))


def clt_cfg(n: int, d_sae: int = 48, **kw) -> CrossLayerConfig:
    ins, outs = hooks(n)
    return CrossLayerConfig(d_in=D, d_sae=d_sae, hooks_in=ins, hooks_out=outs, **kw)


class Planted:
    """Synthetic MLP inputs/outputs of `n` layers with `m` true features per layer: feature f of
    layer l reads direction E[l][f] of x_l and writes D[l][f, j - l] into y_j for every j >= l,
    so the outputs of later layers depend on features no later input holds."""

    def __init__(self, n: int = 3, m: int = 8, p: float = 0.08, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.n, self.m, self.p, self.g = n, m, p, g
        self.E = [torch.linalg.qr(torch.randn(D, D, generator=g))[0][:, :m].t() for _ in range(n)]
        self.D = []
        for i in range(n):
            dec = torch.randn(m, n - i, D, generator=g)
            self.D.append(dec / dec.flatten(1).norm(dim=1)[:, None, None])

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        out = {}
        ys = [torch.zeros(b, D) for _ in range(self.n)]
        for i in range(self.n):
            on = torch.rand(b, self.m, generator=self.g) < self.p
            a = on * (1 + torch.rand(b, self.m, generator=self.g))
            out[f"L{i}.mlp_in"] = a @ self.E[i] + 0.01 * torch.randn(b, D, generator=self.g)
            for j in range(i, self.n):
                ys[j] += a @ self.D[i][:, j - i]
        out.update({f"L{j}.mlp_out": y for j, y in enumerate(ys)})
        return out


def _fvu(y: torch.Tensor, r: torch.Tensor) -> float:
    return float((y - r).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.mark.long
def test_planted_cross_layer_features_are_recovered():
    """Every planted feature's whole decoder (all the layers it writes to) is found by one CLT
    latent, and the CLT explains later layers' outputs that per-layer transcoders cannot."""
    torch.manual_seed(0)
    data = Planted()
    batches = [data.batch(256) for _ in range(60)]
    tc = TrainConfig(batch_size=256, tokens=256 * 250, lr=1e-2, checkpoint_every=0, log_every=50,
                     dead_tokens=2048, normalize_inputs=False)  # fmt: skip
    clt = Trainer([clt_cfg(3, d_sae=32, k=2)], tc, device="cpu").fit(batches)[0]
    held = data.batch(2048)
    xs = [held[f"L{i}.mlp_in"] for i in range(3)]
    ys = [held[f"L{i}.mlp_out"] for i in range(3)]
    with torch.no_grad():
        recon = clt(xs)
    fvu = [_fvu(y, r) for y, r in zip(ys, recon, strict=True)]
    assert max(fvu) < 0.1, fvu
    for i in range(3):
        learned = clt.W_dec[i].detach()
        learned = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-9)
        true = data.D[i].flatten(1)
        cos = (true @ learned.t()).max(1).values
        assert (cos > 0.9).float().mean() >= 0.75, (i, cos)
    # A per-layer transcoder on the same batches: layer 2's output holds layers 0-1's features,
    # which its own input does not, so it stays far worse.
    last = DictionaryConfig(d_in=D, d_sae=32, d_out=D, k=2, hook_in="L2.mlp_in",
                            hook_out="L2.mlp_out")  # fmt: skip
    alone = Trainer([last], tc, device="cpu").fit(batches)[0]
    with torch.no_grad():
        r2 = alone(xs[2])
    fvu2 = _fvu(ys[2], r2)
    assert fvu2 > 3 * fvu[2] and fvu2 > 0.2, (fvu2, fvu[2])


@pytest.mark.parametrize("decoder_init", ["random", "fit"])
def test_one_layer_clt_equals_a_transcoder(decoder_init):
    """Same seed, same batches, AuxK on (small dead window): the 1-layer CLT's weights end
    equal to the transcoder's, float for float, with either decoder start."""
    data = Planted(n=1, m=12)
    batches = [data.batch(128) for _ in range(10)]
    tc = TrainConfig(batch_size=128, tokens=128 * 30, checkpoint_every=0, log_every=1,
                     dead_tokens=256)  # fmt: skip
    one = clt_cfg(1, d_sae=48, k=4, auxk_k=8, decoder_init=decoder_init)
    tr = DictionaryConfig(d_in=D, d_sae=48, d_out=D, k=4, auxk_k=8, hook_in="L0.mlp_in",
                          hook_out="L0.mlp_out", decoder_init=decoder_init)  # fmt: skip
    t_clt = Trainer([one], tc, device="cpu")
    clt = t_clt.fit(batches)[0]
    t_tr = Trainer([tr], tc, device="cpu")
    trans = t_tr.fit(batches)[0]
    assert t_clt.since_fired[0].max() >= 256  # some latents were dead: AuxK ran
    pairs = {"W_enc_t.0": "W_enc_t", "b_enc.0": "b_enc", "W_dec.0": "W_dec"}
    sd, ref = clt.state_dict(), trans.state_dict()
    for a, b in pairs.items():
        torch.testing.assert_close(sd[a], ref[b], rtol=0, atol=1e-6, msg=a)
    torch.testing.assert_close(sd["b_dec"][0], ref["b_dec"], rtol=0, atol=1e-6)
    assert not torch.equal(trans.W_dec, CrossLayerTranscoder(one).W_dec[0])  # it trained


def test_fitted_clt_decoders_start_in_their_own_layer():
    """decoder_init='fit': layer i's rows into layer i are the fitted rows of its own tokens'
    centred targets; its rows into later layers start at zero, as with random rows."""
    data = Planted(n=3)
    b = data.batch(256)
    ins, outs = hooks(3)
    clt = CrossLayerTranscoder(clt_cfg(3, k=4, decoder_init="fit"))
    clt.init_from_data([b[h] for h in ins], [b[h] for h in outs])
    for i in range(3):
        rows, chosen = fitted_rows(clt.pre_acts(i, b[ins[i]]), b[outs[i]] - clt.b_dec[i], 4)
        assert chosen.any()
        torch.testing.assert_close(clt.decoder(i, i)[chosen], rows[chosen])
        for j in range(i + 1, 3):
            assert not clt.decoder(i, j).any()
    with pytest.raises(ValueError, match="decoder_init='fit' needs topk or batchtopk"):
        clt_cfg(2, arch="jumprelu", decoder_init="fit")


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
@pytest.mark.parametrize("aux_max", [0, 100])
def test_sparse_decode_gradients_equal_dense(arch, aux_max, monkeypatch):
    """AuxK through the sparse kernels (aux_max 0) or dense over the dead latents (100)."""
    monkeypatch.setattr(auxk, "DENSE_AUX_MAX", aux_max)
    torch.manual_seed(1)
    kw = {"k": 3, "auxk_k": 5} if arch == "topk" else {}
    sparse = CrossLayerTranscoder(clt_cfg(3, d_sae=64, arch=arch, decode="sparse", **kw))
    dense = CrossLayerTranscoder(clt_cfg(3, d_sae=64, arch=arch, decode="dense", **kw))
    with torch.no_grad():
        for W in sparse.W_dec:
            W.normal_()  # cross-layer blocks non-zero
        for b in sparse.b_enc:
            b.normal_(0, 0.1)
        sparse.b_dec.normal_()
    dense.load_state_dict(sparse.state_dict())
    data = Planted(n=3)
    batch = data.batch(40)
    xs = [batch[f"L{i}.mlp_in"] * 3 for i in range(3)]
    ys = [batch[f"L{i}.mlp_out"] for i in range(3)]
    dead = torch.zeros(3 * 64, dtype=torch.bool)
    dead[::3] = True
    outs = []
    for m in (sparse, dense):
        out = m.loss(xs, ys, dead_mask=dead, warmup=0.5)
        out.loss.backward()
        outs.append(out)
    assert outs[0].l0 > 0
    if arch == "topk":
        assert outs[0].aux > 0
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fold_scale_maps_raw_activations():
    torch.manual_seed(2)
    clt = CrossLayerTranscoder(clt_cfg(3, k=4))
    with torch.no_grad():
        for W in clt.W_dec:
            W.normal_()
        clt.b_dec.normal_()
    data = Planted(n=3)
    batch = data.batch(32)
    xs = [batch[f"L{i}.mlp_in"] for i in range(3)]
    s_in, s_out = [2.0, 0.5, 3.0], [4.0, 0.25, 1.5]
    with torch.no_grad():
        scaled = clt([x * s for x, s in zip(xs, s_in, strict=True)])
        clt.fold_scale(s_in, s_out)
        raw = clt(xs)
    for r, s, t in zip(raw, scaled, s_out, strict=True):
        torch.testing.assert_close(r, s / t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_saved_layout_round_trips(tmp_path, arch):
    torch.manual_seed(3)
    clt = CrossLayerTranscoder(clt_cfg(3, arch=arch, layer_k=(2, 3, 4) if arch == "topk" else None))
    with torch.no_grad():
        for W in clt.W_dec:
            W.normal_()
        if arch == "jumprelu":
            clt.acts[1].log_threshold.normal_(0, 0.1)
    clt.fold_scale([1.0, 2.0, 3.0], [1.0, 1.0, 0.5])
    path = save_dictionary(clt, tmp_path / "clt", metadata={"step": "7"})
    names = sorted(p.name for p in path.iterdir())
    assert names == ["W_dec_0.safetensors", "W_dec_1.safetensors", "W_dec_2.safetensors",
                     "W_enc_0.safetensors", "W_enc_1.safetensors", "W_enc_2.safetensors",
                     "cfg.json"]  # fmt: skip
    from safetensors.torch import load_file

    dec1 = load_file(str(path / "W_dec_1.safetensors"))["W_dec_1"]
    assert dec1.shape == (48, 2, D)  # circuit-tracer's [d_transcoder, n_layers - i, d_model]
    torch.testing.assert_close(dec1[:, 1], clt.decoder(1, 2))
    enc = load_file(str(path / "W_enc_2.safetensors"))
    assert enc["W_enc_2"].shape == (48, D) and ("threshold_2" in enc) == (arch == "jumprelu")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "crosslayer_transcoder" and cfg["metadata"]["step"] == "7"
    back = load_dictionary(path)
    assert isinstance(back, CrossLayerTranscoder) and back.folded_scales == clt.folded_scales
    xs = [torch.randn(5, D) for _ in range(3)]
    with torch.no_grad():
        for a, b in zip(back(xs), clt(xs), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A later save with fewer layers leaves no stale layer files behind.
    save_dictionary(CrossLayerTranscoder(clt_cfg(2)), path)
    assert not (path / "W_enc_2.safetensors").exists()
    assert load_dictionary(path).n_layers == 2
    # Damaged folders are named, not half-loaded.
    (path / "W_dec_1.safetensors").unlink()
    with pytest.raises(ValueError, match="W_dec_1.safetensors is missing"):
        load_dictionary(path)


def test_config_checks_and_default_width():
    with pytest.raises(ValueError, match="topk or jumprelu"):
        clt_cfg(2, arch="relu")
    with pytest.raises(ValueError, match="one target hook per input"):
        CrossLayerConfig(d_in=D, d_sae=8, hooks_in=("L0.mlp_in",), hooks_out=())
    with pytest.raises(ValueError, match="layer_k gives 1 values for 2 layers"):
        clt_cfg(2, layer_k=(3,))
    with pytest.raises(ValueError, match="k must be in"):
        clt_cfg(2, layer_k=(3, 99), d_sae=48)
    # SmolLM2-135M: 30 layers of width 576 fit the 2**27-parameter budget at 448 per layer.
    assert default_width(30, 576, 576) == 448
    assert n_parameters(30, 576, 448, 576) == 127_764_480
    assert default_width(4, 576, 576) == 8 * 576  # a few layers: the usual 8x
