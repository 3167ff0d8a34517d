"""Joint splice (every MLP a CLT or a set of per-layer transcoders covers, replaced in one
forward) on tiny models: an exact replacement keeps the clean loss, one transcoder jointly ==
today's single splice, a CLT without cross-layer blocks == its per-layer transcoders, cross-layer
writes and earlier replacements propagate as a hand-hooked forward says, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from analysis_helpers import relu_dictionary
from circuits_helpers import tiny_gpt2_folder

from interp_bench.analysis.joint_splice import joint_spliced_loss
from interp_bench.analysis.splice import format_table, spliced_loss
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary
from interp_bench.dictionaries.crosslayer import CrossLayerConfig, CrossLayerTranscoder

N_LAYERS, D = 3, 64
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated")
FLOATS = ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_error_added", "kl_spliced",
          "kl_zero", "kl_mean", "l0", "fvu")  # fmt: skip


def relu_model(gpt2_tokenizer):
    """A tiny 3-layer model with ReLU MLPs and folded norms: a ReLU transcoder can be exact."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D, n_heads=4, d_head=D // 4, d_mlp=4 * D, n_ctx=64,
        d_vocab=len(gpt2_tokenizer), act_fn="relu", normalization_type="LNPre",
        positional_embedding_type="standard", default_prepend_bos=True, seed=0, device="cpu",
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer).eval()
    with torch.no_grad():
        for block in model.blocks:  # non-zero biases, so b_dec matters
            block.mlp.b_in.normal_(0, 0.1)
            block.mlp.b_out.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def model(gpt2_tokenizer):
    return relu_model(gpt2_tokenizer)


@pytest.fixture(scope="module")
def tokens(model):
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 5000, (4, 12), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    return toks


def hooks(n: int | tuple[int, ...]) -> dict:
    layers = range(n) if isinstance(n, int) else n
    return {"hooks_in": tuple(f"L{i}.mlp_in" for i in layers),
            "hooks_out": tuple(f"L{i}.mlp_out" for i in layers)}  # fmt: skip


def random_clt(seed: int, cross: bool = True, layers=(0, 1, 2)) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(CrossLayerConfig(d_in=D, d_sae=48, k=6, **hooks(layers)))
    with torch.no_grad():
        for i in range(len(layers)):
            clt.W_dec[i].normal_(0, 0.1)
            clt.b_enc[i].normal_(0, 0.3)
            if not cross:
                clt.W_dec[i][:, D:] = 0
        clt.b_dec.normal_(0, 0.1)
    return clt.eval()


def own_layer_transcoders(clt: CrossLayerTranscoder) -> list[SparseDictionary]:
    """Per-layer TopK transcoders with the CLT's same-layer encoder, decoder and b_dec."""
    out = []
    for i, (hook_in, hook_out) in enumerate(zip(clt.cfg.hooks_in, clt.cfg.hooks_out, strict=True)):
        cfg = DictionaryConfig(d_in=D, d_sae=clt.d_sae, k=clt.cfg.ks[i], d_out=D,
                               hook_in=hook_in, hook_out=hook_out)  # fmt: skip
        d = SparseDictionary(cfg)
        with torch.no_grad():
            d.W_enc.copy_(clt.W_enc_t[i].t())
            d.b_enc.copy_(clt.b_enc[i])
            d.W_dec.copy_(clt.decoder(i, i))
            d.b_dec.copy_(clt.b_dec[i])
        out.append(d.eval())
    return out


def assert_same(a, b, rel=1e-5, abs=1e-6) -> None:
    for key in FLOATS:
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=rel, abs=abs), key


def test_exact_replacements_keep_the_clean_loss(model, tokens):
    """ReLU MLPs copied into transcoders, and into a CLT (top-k over all latents is ReLU)."""
    d_mlp = model.cfg.d_mlp
    per_layer = []
    clt = CrossLayerTranscoder(CrossLayerConfig(d_in=D, d_sae=d_mlp, k=d_mlp, **hooks(N_LAYERS)))
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            mlp = block.mlp
            d = relu_dictionary(mlp.W_in, mlp.b_in, mlp.W_out, f"L{i}.mlp_in", f"L{i}.mlp_out")
            d.b_dec.copy_(mlp.b_out)
            per_layer.append(d)
            clt.W_enc_t[i].copy_(mlp.W_in.t())
            clt.b_enc[i].copy_(mlp.b_in)
            clt.W_dec[i].zero_()
            clt.W_dec[i][:, :D] = mlp.W_out
            clt.b_dec[i].copy_(mlp.b_out)
    for dicts in (per_layer, [clt.eval()]):
        r = joint_spliced_loss(model, dicts, tokens, batch_size=3)
        assert r.ce_spliced == pytest.approx(r.ce_clean, abs=1e-5)
        assert r.kl_spliced == pytest.approx(0.0, abs=1e-6)
        assert r.ce_recovered == pytest.approx(1.0, abs=1e-4)
        assert max(r.extra["fvu_per_layer"]) < 1e-9
        assert r.extra["layers"] == [0, 1, 2] and r.splice_hook == "L0-2.mlp_out"
        # Ablating every MLP moves the loss, so the comparison is informative.
        assert abs(r.ce_zero - r.ce_clean) > 1e-3 and r.kl_mean > 1e-4


@pytest.mark.parametrize("layer", [0, 2])
def test_one_transcoder_jointly_equals_the_single_splice(model, tokens, layer):
    torch.manual_seed(layer)
    cfg = DictionaryConfig(d_in=D, d_sae=96, k=8, d_out=D, hook_in=f"L{layer}.mlp_in",
                           hook_out=f"L{layer}.mlp_out", skip=True)  # fmt: skip
    tc = SparseDictionary(cfg).eval()
    with torch.no_grad():
        tc.b_dec.normal_(0, 0.1)
    joint = joint_spliced_loss(model, [tc], tokens, batch_size=3)
    (single,) = spliced_loss(model, [tc], tokens, batch_size=4)
    assert single.kl_spliced > 1e-4  # a poor transcoder: the numbers differ from clean
    assert_same(joint, single)
    assert joint.splice_hook == single.splice_hook == f"L{layer}.mlp_out"


@pytest.mark.parametrize("layers", [(0, 1, 2), (1, 2)])
def test_clt_without_cross_blocks_equals_its_per_layer_transcoders(model, tokens, layers):
    """Also for a CLT over the last layers only: its i-th layer is model layer i + 1."""
    clt = random_clt(seed=1, cross=False, layers=layers)
    as_clt = joint_spliced_loss(model, [clt], tokens, batch_size=4)
    as_set = joint_spliced_loss(model, own_layer_transcoders(clt), tokens, batch_size=2)
    assert_same(as_clt, as_set)
    for a, b in zip(as_clt.extra["fvu_per_layer"], as_set.extra["fvu_per_layer"], strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert as_clt.extra["l0_per_layer"] == as_set.extra["l0_per_layer"]
    assert as_clt.extra["layers"] == list(layers) and as_set.splice_hook == as_clt.splice_hook
    # The cross-layer blocks are read: adding them back changes the spliced loss.
    with torch.no_grad():
        clt.W_dec[0][:, D:].normal_(0, 0.1)
    crossed = joint_spliced_loss(model, [clt], tokens, batch_size=4)
    assert abs(crossed.ce_spliced - as_clt.ce_spliced) > 1e-4
    assert crossed.ce_zero == pytest.approx(as_clt.ce_zero, rel=1e-6)


def test_clt_splice_equals_a_hand_hooked_replacement_forward(model, tokens):
    """Each MLP output is `clt(...)` of the MLP inputs *of the spliced forward*: the CLT's own
    sparse forward, fed the inputs as the replaced model computes them."""
    clt = random_clt(seed=2)
    r = joint_spliced_loss(model, [clt], tokens, batch_size=4, error_added=False)
    inputs: dict[int, torch.Tensor] = {}

    def keep(layer):
        def fn(act, hook):
            inputs[layer] = act

        return fn

    def put(layer):
        def fn(act, hook):
            xs = [inputs.get(i, torch.zeros_like(act)) for i in range(N_LAYERS)]
            out = clt(xs)[layer]  # later layers' inputs do not reach output `layer`
            out[:, 0] = act[:, 0]
            return out

        return fn

    fwd = [(f"blocks.{i}.ln2.hook_normalized", keep(i)) for i in range(N_LAYERS)]
    fwd += [(f"blocks.{i}.hook_mlp_out", put(i)) for i in range(N_LAYERS)]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd)
    logp = torch.log_softmax(logits[:, 1:-1], -1)
    ce = -logp.gather(-1, tokens[:, 2:, None]).mean()
    assert r.ce_spliced == pytest.approx(float(ce), abs=1e-5)
    assert r.l0 == pytest.approx(6.0) and r.ce_error_added is None
    assert "L0-2.mlp_out" in format_table([r])


def test_mixes_that_make_no_sense_are_clear_errors(model, tokens):
    clt = random_clt(seed=3)
    tcs = own_layer_transcoders(clt)
    sae = SparseDictionary(DictionaryConfig(d_in=D, d_sae=32, k=4, hook_in="L0.resid_post"))
    attn = SparseDictionary(
        DictionaryConfig(d_in=D, d_sae=32, k=4, hook_in="L1.resid_pre", hook_out="L1.mlp_out")
    )
    cases = [([sae, tcs[1]], "is an SAE"), ([tcs[0], tcs[0]], "two transcoders for layer 0"),
             ([clt, tcs[0]], "on its own"), ([attn], "does not replace one MLP"),
             ([], "no dictionaries")]  # fmt: skip
    for dicts, match in cases:
        with pytest.raises(ValueError, match=match):
            joint_spliced_loss(model, dicts, tokens)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, gpt2_tokenizer):
    """A tiny GPT-2 folder (2 layers), a CLT without cross-layer blocks, the same weights as
    per-layer transcoders in one parent folder, an SAE, and a text file."""
    root = tmp_path_factory.mktemp("joint-cli")
    tiny_gpt2_folder(root / "model", gpt2_tokenizer)
    torch.manual_seed(4)
    clt = CrossLayerTranscoder(CrossLayerConfig(d_in=D, d_sae=48, k=6, **hooks(2))).eval()
    with torch.no_grad():
        for i in range(2):
            clt.W_dec[i].normal_(0, 0.1)
            clt.W_dec[i][:, D:] = 0
    save_dictionary(clt, root / "clt")
    for i, d in enumerate(own_layer_transcoders(clt)):
        save_dictionary(d, root / "layers" / f"L{i}")
    save_dictionary(
        SparseDictionary(DictionaryConfig(d_in=D, d_sae=32, k=4, hook_in="L0.resid_post")),
        root / "sae",
    )
    text = " ".join(
        f"Line {i} of a small held-out corpus about foxes and dogs." for i in range(300)
    )
    (root / "corpus.txt").write_text(text)
    return root


def test_cli_splices_a_clt_folder_and_a_joint_parent_folder(cli_setup, capsys):
    from interp_bench.cli import main

    root = cli_setup
    common = ["--model", str(root / "model"), "--corpus", str(root / "corpus.txt"), "--tokens",
              "96", "--context-len", "24", "--batch-size", "48", "--no-progress",
              "--device", "cpu"]  # fmt: skip
    got = {}
    for name, args in [("clt", ["--dictionary", str(root / "clt")]),
                       ("layers", ["--joint", "--dictionary", str(root / "layers")])]:  # fmt: skip
        out = root / f"{name}.json"
        rc = main(["splice", *args, "--out", str(out), *common])
        assert rc == 0, capsys.readouterr().err
        data = json.loads(out.read_text())
        assert data["joint"] is True and len(data["results"]) == 1
        got[name] = data["results"][0]
    assert "L0-1.mlp_out" in capsys.readouterr().out
    # Without --out: the parent of the per-layer folders gets the file, not L0 (its own).
    assert main(["splice", "--joint", "--dictionary", str(root / "layers"), *common]) == 0
    assert (root / "layers" / "splice_joint.json").exists()
    assert not (root / "layers" / "L0" / "splice.json").exists()
    clt, layers = got["clt"], got["layers"]
    assert layers["name"] == "joint:layers" and clt["extra"]["layers"] == [0, 1]
    assert clt["ce_error_added"] == pytest.approx(clt["ce_clean"], abs=1e-5)
    assert clt["kl_spliced"] > 1e-4
    for key in FLOATS:  # the CLT without cross-layer blocks == its per-layer transcoders
        assert clt[key] == pytest.approx(layers[key], rel=1e-5, abs=1e-6), key


def test_cli_bad_mixes_are_one_line_errors(cli_setup, capsys, monkeypatch):
    import activation_cache.models as models
    from interp_bench.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("a bad mix must be refused before the model loads")

    monkeypatch.setattr(models, "load_model", no_model)

    root = cli_setup
    common = ["--model", str(root / "model"), "--corpus", str(root / "corpus.txt"), "--tokens",
              "48", "--context-len", "24", "--no-progress", "--device", "cpu"]  # fmt: skip
    cases = [
        (["--dictionary", str(root / "clt"), "--dictionary", str(root / "sae")], "on its own"),
        (["--joint", "--dictionary", str(root / "sae"), "--dictionary",
          str(root / "layers" / "L1")], "is an SAE"),
        (["--dictionary", str(root / "layers")], "pass --joint"),
        (["--joint", "--dictionary", str(root / "layers" / "L0"), "--dictionary",
          str(root / "layers" / "L0")], "two transcoders for layer 0"),
    ]  # fmt: skip
    for args, match in cases:
        assert main(["splice", *args, *common]) != 0
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("interp-bench splice: error:") and match in last, last
