"""A cross-layer transcoder (CLT) in `analyze` (one feature index per source layer, one pass)
and `steer` (a feature's decoder writes into its layer's MLP output and every later one's), on
tiny models: indexes equal a brute-force encode, `--layers` equals the full pass, steering
without cross-layer blocks equals steering the per-layer transcoder, with them it equals a
hand-hooked forward; the CLI end to end (analyze, report, attribute's feature cards, steer)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from circuits_helpers import tiny_gpt2_folder

from activation_cache.streams import model_stream
from activation_cache.tiny_model import tiny_random_model
from interp_bench.analysis.crosslayer_index import analyze_crosslayer
from interp_bench.analysis.direct_effect import unembed_directions
from interp_bench.analysis.steering import Steer, latent_max_activation, steering_hooks
from interp_bench.analysis.top_examples import AnalysisConfig
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary
from interp_bench.dictionaries.crosslayer import CrossLayerConfig, CrossLayerTranscoder

D, TOP_K, WINDOW = 64, 5, 3
PROMPT = "The quick brown fox jumps over the lazy dog"
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated")


def random_clt(n_layers: int, *, seed: int = 0, cross: bool = True) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    cfg = CrossLayerConfig(
        d_in=D, d_sae=48, k=6, hooks_in=tuple(f"L{i}.mlp_in" for i in range(n_layers)),
        hooks_out=tuple(f"L{i}.mlp_out" for i in range(n_layers)),
    )  # fmt: skip
    clt = CrossLayerTranscoder(cfg)
    with torch.no_grad():
        for i in range(n_layers):
            clt.W_dec[i].normal_(0, 0.3)
            clt.b_enc[i].normal_(0, 0.3)
            if not cross:
                clt.W_dec[i][:, D:] = 0
        clt.b_dec.normal_(0, 0.1)
    return clt.eval()


def own_layer_transcoder(clt: CrossLayerTranscoder, i: int) -> SparseDictionary:
    """Layer i of the CLT as a TopK transcoder: same encoder, own-layer decoder, b_dec."""
    cfg = DictionaryConfig(d_in=D, d_sae=clt.d_sae, k=clt.cfg.ks[i], d_out=D,
                           hook_in=clt.cfg.hooks_in[i], hook_out=clt.cfg.hooks_out[i])  # fmt: skip
    d = SparseDictionary(cfg)
    with torch.no_grad():
        d.W_enc.copy_(clt.W_enc_t[i].t())
        d.b_enc.copy_(clt.b_enc[i])
        d.W_dec.copy_(clt.decoder(i, i))
        d.b_dec.copy_(clt.b_dec[i])
    return d.eval()


def all_hooks(n: int) -> list[str]:
    return [f"L{i}.mlp_in" for i in range(n)] + [f"L{i}.mlp_out" for i in range(n)]


@pytest.fixture(scope="module")
def model(gpt2_tokenizer):
    m = tiny_random_model(gpt2_tokenizer, n_layers=3)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def tokens(gpt2_tokenizer):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 5000, (8, 16), generator=g)
    t[:, 0] = gpt2_tokenizer.bos_token_id
    return t


@pytest.fixture(scope="module")
def clt():
    return random_clt(3)


@pytest.fixture(scope="module")
def indexes(model, tokens, clt, tmp_path_factory):
    out = tmp_path_factory.mktemp("clt-index") / "analysis"
    stream = model_stream(model, tokens, all_hooks(3), batch_seqs=3)
    return analyze_crosslayer(clt, stream, out, AnalysisConfig(top_k=TOP_K, window=WINDOW),
                              model=model)  # fmt: skip


def captured(model, tokens) -> dict[str, torch.Tensor]:
    batches = list(model_stream(model, tokens, all_hooks(3), batch_seqs=8))
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_per_layer_indexes_equal_a_brute_force_encode(indexes, model, tokens, clt):
    assert sorted(indexes) == [0, 1, 2]
    full = captured(model, tokens)
    bos = full["pos"] == 0
    xs = [full[f"L{i}.mlp_in"] for i in range(3)]
    recon = clt(xs)
    for i, index in indexes.items():
        assert index.path.name == f"L{i}" and (index.path / "index.json").exists()
        acts = clt.encode_layer(i, xs[i]).float()
        acts[bos] = 0  # BOS counts for nothing
        want = acts.T.topk(TOP_K, dim=1).values  # [d_sae, top_k], zero where fewer fired
        torch.testing.assert_close(index.arrays["top_acts"], want)
        rows = index.arrays["top_index"]
        ok = rows >= 0
        latents = torch.arange(clt.d_sae)[:, None].expand_as(rows)
        torch.testing.assert_close(acts[rows[ok], latents[ok]], index.arrays["top_acts"][ok])
        assert torch.equal(index.arrays["fire_count"], (acts > 0).sum(0))
        # reconstruction error: the whole CLT's output into this layer (every layer <= i)
        y = full[f"L{i}.mlp_out"]
        sq = (recon[i] - y).pow(2).sum(-1)
        torch.testing.assert_close(index.stream["sq_err"][~bos], sq[~bos], rtol=1e-4, atol=1e-5)
        # neighbours within the layer, by the decoder into its own layer
        unit = torch.nn.functional.normalize(clt.decoder(i, i), dim=1)
        cos = unit @ unit.T
        cos.fill_diagonal_(-2)
        assert torch.equal(index.arrays["neighbour_ids"][:, 0].long(), cos.argmax(1))
        assert index.meta["crosslayer"]["writes_to"] == [f"L{j}.mlp_out" for j in range(i, 3)]


def test_promoted_tokens_read_the_summed_decoders(indexes, model, clt):
    """A latent's direct path to the logits: its writes into every later MLP output, summed."""
    index = indexes[0]
    assert "summed" in index.meta["logits"]
    writes = sum(clt.decoder(0, j) for j in range(3)).detach()
    dirs, W_U, _ = unembed_directions(writes, model)
    want = (dirs @ W_U).topk(index.arrays["logit_pos_ids"].shape[1], dim=1).indices
    assert torch.equal(index.arrays["logit_pos_ids"].long(), want)
    last = indexes[2]  # the last layer writes into its own output only
    assert torch.equal(last.arrays["logit_pos_ids"].long(),
                       (unembed_directions(clt.decoder(2, 2).detach(), model)[0] @ W_U)
                       .topk(want.shape[1], dim=1).indices)  # fmt: skip


def test_layers_option_equals_the_full_pass(indexes, model, tokens, clt, tmp_path):
    stream = model_stream(model, tokens, all_hooks(3), batch_seqs=3)
    only = analyze_crosslayer(clt, stream, tmp_path, AnalysisConfig(top_k=TOP_K, window=WINDOW),
                              layers=[1])  # fmt: skip
    assert list(only) == [1] and not (tmp_path / "L0").exists()
    for key in ("fire_count", "top_index", "top_acts", "quantile_index"):
        assert torch.equal(only[1].arrays[key], indexes[1].arrays[key]), key
    torch.testing.assert_close(only[1].stream["sq_err"], indexes[1].stream["sq_err"],
                               rtol=0, atol=0, equal_nan=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"layer 5 is not in this CLT \(it covers layers 0,1,2\)"):
        analyze_crosslayer(clt, iter(()), tmp_path / "x", layers=[5])


def logits_with(model, tokens, hooks) -> torch.Tensor:
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


@pytest.mark.parametrize("mode,value", [("add", 3.0), ("clamp", 5.0), ("clamp", 0.0)])
def test_clt_without_cross_blocks_steers_as_its_transcoder(model, mode, value):
    clt = random_clt(3, seed=1, cross=False)
    tokens = model.to_tokens(PROMPT)
    for layer in (0, 1, 2):
        latent = int(
            clt.encode_layer(layer, captured_in(model, tokens, layer)).sum((0, 1)).argmax()
        )
        s = Steer(latent, mode, value)
        got = logits_with(model, tokens, steering_hooks(model, clt, [s], layer=layer))
        want = logits_with(
            model, tokens, steering_hooks(model, own_layer_transcoder(clt, layer), [s])
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, model(tokens), atol=1e-4)  # it did steer


def captured_in(model, tokens, layer: int) -> torch.Tensor:
    store = {}

    def keep(act, hook):
        store["x"] = act.clone()

    logits_with(model, tokens, [(tl_name(model, f"L{layer}.mlp_in"), keep)])
    return store["x"]


def tl_name(model, short: str) -> str:
    from interp_bench.analysis.splice import hook_point

    return hook_point(model, short).tl_name


@pytest.mark.parametrize("mode,value", [("add", 2.0), ("clamp", 4.0)])
def test_cross_layer_steering_equals_a_hand_hooked_forward(model, mode, value):
    """Layer 0's feature writes into L0, L1 and L2's MLP outputs: the hand-hooked forward adds
    amount * decoder(0, L)[i] at each, amount computed once from L0's MLP input."""
    clt = random_clt(3, seed=2)
    tokens = model.to_tokens(PROMPT)
    latent, positions = 7, (2, 4)
    store = {}

    def take(act, hook):
        f = clt.encode_layer(0, act)[..., latent]
        amount = torch.full_like(f, value) if mode == "add" else value - f
        mask = torch.zeros_like(amount)
        mask[:, list(positions)] = 1
        store["amount"] = amount * mask

    def put(target: int):
        def fn(act, hook):
            return act + store["amount"][..., None] * clt.decoder(0, target)[latent]

        return fn

    hand = [(tl_name(model, "L0.mlp_in"), take)]
    hand += [(tl_name(model, f"L{t}.mlp_out"), put(t)) for t in range(3)]
    with torch.no_grad():
        want = logits_with(model, tokens, hand)
        s = Steer(latent, mode, value, positions=positions)
        got = logits_with(model, tokens, steering_hooks(model, clt, [s], layer=0))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        own_only = logits_with(model, tokens, hand[:2])  # the write into L0 alone
    assert not torch.allclose(got, own_only, atol=1e-4)  # the later writes do reach the logits


def test_clt_feature_errors_and_max_activation(model, clt):
    tokens = model.to_tokens(PROMPT)
    with pytest.raises(ValueError, match="name the feature's source layer with --layer"):
        steering_hooks(model, clt, [Steer(0, "add", 1.0)])
    with pytest.raises(ValueError, match="layer 3 is not in this CLT"):
        steering_hooks(model, clt, [Steer(0, "add", 1.0)], layer=3)
    with pytest.raises(ValueError, match=r"latent 48 out of range: .* 0\.\.47"):
        steering_hooks(model, clt, [Steer(48, "add", 1.0)], layer=1)
    x = captured_in(model, tokens, 1)
    want = float(clt.encode_layer(1, x[:, 1:])[..., 3].max().detach())
    assert latent_max_activation(model, clt, tokens, 3, layer=1) == pytest.approx(want)


# ----------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, gpt2_tokenizer):
    """A tiny GPT-2 folder (2 layers), a CLT over both layers, an SAE, and a cache of every
    hook the CLT reads."""
    from activation_cache.cache import cache_activations
    from activation_cache.models import load_model

    root = tmp_path_factory.mktemp("clt-cli")
    folder = tiny_gpt2_folder(root / "model", gpt2_tokenizer)
    clt = random_clt(2, seed=3)
    clt.cfg.model_name = str(folder)
    save_dictionary(clt, root / "clt")
    save_dictionary(
        SparseDictionary(DictionaryConfig(d_in=D, d_sae=32, k=4, hook_in="L0.resid_post")),
        root / "sae",
    )
    model = load_model(str(folder), device="cpu")
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(0, 5000, (6, 16), generator=g)
    toks[:, 0] = gpt2_tokenizer.bos_token_id
    cache_activations(model, toks, all_hooks(2), root / "acts", dtype="float32",
                      shard_tokens=40, progress=False)  # fmt: skip
    text = " ".join(
        f"Line {i} of a small held-out corpus about foxes and dogs." for i in range(200)
    )
    (root / "corpus.txt").write_text(text)
    return root


def test_cli_analyze_straight_from_the_model(cli_setup, capsys):
    """--corpus: the eval split through the model, every CLT hook captured in one forward."""
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model
    from interp_bench.analysis.top_examples import load_feature_index
    from interp_bench.cli import main
    from interp_bench.dictionaries import load_dictionary

    root = cli_setup
    rc = main(["analyze", "--dictionary", str(root / "clt"), "--corpus", str(root / "corpus.txt"),
               "--model", str(root / "model"), "--context-len", "16", "--tokens", "64",
               "--top-k", str(TOP_K), "--window", str(WINDOW), "--out", str(root / "direct"),
               "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    model = load_model(str(root / "model"), device="cpu")
    toks = load_corpus(CorpusConfig(source=str(root / "corpus.txt"), context_len=16),
                       model.tokenizer).eval[:4]  # fmt: skip
    full = {k: torch.cat([b[k] for b in model_stream(model, toks, all_hooks(2))])
            for k in ("L1.mlp_in", "pos")}  # fmt: skip
    clt = load_dictionary(root / "clt")
    f = clt.encode_layer(1, full["L1.mlp_in"])
    f[full["pos"] == 0] = 0
    index = load_feature_index(root / "direct" / "L1")
    assert index.meta["n_tokens"] == 4 * 15
    torch.testing.assert_close(index.arrays["top_acts"], f.T.topk(TOP_K, dim=1).values)
    assert "summed" in index.meta["logits"]  # the model gives promoted tokens


def test_cli_analyze_report_and_attribute_cards(cli_setup, capsys):
    from interp_bench.analysis.top_examples import load_feature_index
    from interp_bench.cli import main
    from interp_bench.dictionaries import load_dictionary

    root = cli_setup
    common = ["--activations", str(root / "acts"), "--model", "none", "--top-k", str(TOP_K),
              "--window", str(WINDOW), "--batch-tokens", "30"]  # fmt: skip
    rc = main(["analyze", "--dictionary", str(root / "clt"), *common])
    assert rc == 0, capsys.readouterr().err
    assert "L1:" in capsys.readouterr().out
    clt = load_dictionary(root / "clt")
    from activation_cache.streams import cache_stream

    acts = torch.cat([b["L1.mlp_in"] for b in cache_stream(root / "acts", ["L1.mlp_in"])])
    pos = torch.cat([b["pos"] for b in cache_stream(root / "acts", ["L1.mlp_in"])])
    f = clt.encode_layer(1, acts)
    f[pos == 0] = 0
    index = load_feature_index(root / "clt" / "analysis" / "L1")
    torch.testing.assert_close(index.arrays["top_acts"], f.T.topk(TOP_K, dim=1).values)
    # a second run over the same folder rewrites it; --layers keeps the other layer's index
    assert main(["analyze", "--dictionary", str(root / "clt"), *common, "--layers", "0"]) == 0
    assert (root / "clt" / "analysis" / "L1" / "index.json").exists()
    capsys.readouterr()

    assert main(["report", str(root / "clt")]) == 0, capsys.readouterr().err
    for layer in (0, 1):
        assert (root / "clt" / "analysis" / f"L{layer}" / "report.html").exists()
    capsys.readouterr()

    out = root / "attr"
    rc = main(["attribute", "--transcoders", str(root / "clt"), "--prompt", PROMPT, "--out",
               str(out), "--max-feature-nodes", "0", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    page = (out / "graph.html").read_text()
    block = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    data = json.loads(block.group(1).replace("<\\/", "</"))
    features = {f"{n['layer']}.{n['feature']}" for n in data["nodes"] if n["kind"] == "feature"}
    assert features and set(data["cards"]) == features  # every feature card linked
    assert {k.split(".")[0] for k in data["cards"]} == {"0", "1"}


def test_cli_analyze_bad_input(cli_setup, capsys):
    from interp_bench.cli import main

    root = cli_setup
    common = ["--activations", str(root / "acts"), "--model", "none", "--out",
              str(root / "bad")]  # fmt: skip
    cases = [
        (["--dictionary", str(root / "clt"), "--layers", "7"],
         "layer 7 is not in this CLT (it covers layers 0,1)"),
        (["--dictionary", str(root / "sae"), "--layers", "0"], "drop --layers"),
    ]  # fmt: skip
    for args, match in cases:
        assert main(["analyze", *args, *common]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("interp-bench analyze: error:") and match in last, last
    assert not (root / "bad").exists()


def test_cli_steer_a_clt_feature(cli_setup, capsys):
    from interp_bench.cli import main

    root = cli_setup
    common = ["--dictionary", str(root / "clt"), "--prompt", "The quick brown fox",
              "--model", str(root / "model"), "--neutral-tokens", "0", "--max-new-tokens", "4",
              "--no-progress", "--device", "cpu"]  # fmt: skip
    rc = main(["steer", *common, "--layer", "0", "--latent", "3", "--coefficients", "0,40",
               "--clamp", "0"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "L0 latent 3" in capsys.readouterr().out
    result = json.loads((root / "clt" / "steer_L0_latent3.json").read_text())
    assert result["layer"] == 0 and result["latent"] == 3
    assert [(r["mode"], r["value"]) for r in result["rows"]] == [
        ("add", 0), ("add", 40), ("clamp", 0)]  # fmt: skip
    assert result["rows"][0]["greedy"] == result["clean_greedy"]
    assert (root / "clt" / "steer_L0_latent3.html").exists()
    cases = [
        (["--latent", "3"], "name the feature's source layer with --layer"),
        (["--layer", "5", "--latent", "3"], "layer 5 is not in this CLT (it covers layers 0,1)"),
        (["--layer", "1", "--latent", "48"], "--latent 48 out of range"),
    ]
    for args, match in cases:
        assert main(["steer", *common, *args]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("interp-bench steer: error:") and match in last, last
    sae = ["--dictionary", str(root / "sae"), *common[2:], "--layer", "0", "--latent", "1"]
    assert main(["steer", *sae]) == 2
    assert "drop --layer" in capsys.readouterr().err
