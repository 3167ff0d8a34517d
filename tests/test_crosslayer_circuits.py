"""Attribution graphs with a cross-layer transcoder (random weights, every cross-layer block
non-zero) on a tiny 3-layer model: the replacement is exact, each layer's write is the CLT's
decode from every earlier layer plus its error, completeness, edges are finite differences
(a feature's removal takes back its writes into every later layer), and `interp-bench
attribute` reads a CLT folder."""

from __future__ import annotations

import json

import pytest
import torch
from circuits_helpers import tiny_gpt2_folder

from activation_cache.tiny_model import tiny_random_model
from interp_bench.circuits.crosslayer import CrossLayerSet
from interp_bench.circuits.graph import attribute
from interp_bench.circuits.replacement import build_replacement, transcoder_set, unembedding
from interp_bench.dictionaries import save_dictionary
from interp_bench.dictionaries.crosslayer import CrossLayerConfig, CrossLayerTranscoder

PROMPT = "The cat sat on the mat because"


def random_clt(n_layers: int, d: int, *, seed: int = 0, arch: str = "topk") -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    cfg = CrossLayerConfig(
        d_in=d, d_sae=48, arch=arch, k=5, hooks_in=tuple(f"L{i}.mlp_in" for i in range(n_layers)),
        hooks_out=tuple(f"L{i}.mlp_out" for i in range(n_layers)), jumprelu_init_threshold=0.3,
    )  # fmt: skip
    clt = CrossLayerTranscoder(cfg).eval()
    with torch.no_grad():
        for i in range(n_layers):
            clt.W_dec[i].normal_(0, 0.1)
            clt.b_enc[i].normal_(0, 0.3)
        clt.b_dec.normal_(0, 0.1)
    return clt


@pytest.fixture(scope="module")
def model(gpt2_tokenizer):
    m = tiny_random_model(gpt2_tokenizer, n_layers=3)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module", params=["topk", "jumprelu"])
def rep(model, request):
    clt = random_clt(3, model.cfg.d_model, arch=request.param)
    ts = transcoder_set(model, [clt])
    assert isinstance(ts, CrossLayerSet)
    return build_replacement(model, ts, model.to_tokens(PROMPT))


@pytest.fixture(scope="module")
def graph(rep):
    return attribute(rep, batch_size=16)


def test_replacement_with_a_clt_is_exact(rep, model):
    assert len(rep.features) > 0 and set(rep.features.layer.tolist()) == {0, 1, 2}
    clean = model(rep.tokens)[0]
    with torch.no_grad():
        logits, _, _ = rep.forward()
    torch.testing.assert_close(logits, clean, atol=2e-5, rtol=1e-5)
    clt = rep.transcoders.clt
    with torch.no_grad():
        want = clt(rep.mlp_in)  # the CLT's own prediction of every MLP output
        own_only = [clt.encode_layer(j, rep.mlp_in[j]) @ clt.decoder(j, j) + clt.b_dec[j]
                    for j in range(3)]  # fmt: skip
    for j in range(3):
        # Positions after BOS: features of every earlier layer + b_dec; error = the rest.
        torch.testing.assert_close(rep.recon[j][1:], want[j][1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rep.recon[j] + rep.error[j], rep.mlp_out[j])
        if j > 0:  # the cross-layer blocks matter
            assert (rep.recon[j][1:] - own_only[j][1:]).abs().max() > 1e-2


def test_completeness_with_a_clt(graph, rep):
    assert len(graph.row_nodes) == len(rep.features) + len(graph.logit_tokens)
    torch.testing.assert_close(graph.adjacency.sum(1) + graph.biases, graph.inputs,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    for r, node in enumerate(graph.row_nodes.tolist()):
        t = graph.node(node)
        for s in graph.adjacency[r].nonzero().flatten().tolist():
            src = graph.node(s)
            assert src["pos"] <= t["pos"] and src["layer"] < t["layer"]


def _input(rep, graph, node: int, logits, mlp_in, final) -> float:
    n = graph.node(node)
    if n["kind"] == "logit":
        w_u, b_u = unembedding(rep.model)
        x = final[-1] @ w_u + b_u
        return float(x[n["token"]] - x.mean())
    w, b = rep.transcoders.encoder(n["layer"], torch.tensor([n["feature"]]))
    return float(mlp_in[n["layer"]][n["pos"]] @ w[:, 0] + b[0])


def _without(rep, graph, source: int):
    s = graph.node(source)
    resid0, writes = rep.resid0.clone(), [w.clone() for w in rep.writes()]
    if s["kind"] == "embedding":
        resid0[s["pos"]] = 0
    elif s["kind"] == "error":
        writes[s["layer"]][s["pos"]] -= rep.error[s["layer"]][s["pos"]]
    else:  # a CLT feature writes into its own layer and every later one
        for t in rep.transcoders.targets(s["layer"]):
            writes[t][s["pos"]] -= s["act"] * rep.transcoders.decoder(s["layer"], t)[s["feature"]]
    return resid0, writes


@torch.no_grad()
def test_clt_edges_are_finite_differences(graph, rep):
    base = rep.forward()
    gen = torch.Generator().manual_seed(0)
    nf = graph.n_features
    checked = cross = 0
    for r in torch.randperm(len(graph.row_nodes), generator=gen)[:12].tolist():
        target = int(graph.row_nodes[r])
        before = _input(rep, graph, target, *base)
        row = graph.adjacency[r]
        strongest = row.abs().topk(3).indices.tolist()
        feats = (row[:nf] != 0).nonzero().flatten()  # feature sources, earlier layers included
        some = feats[torch.randint(len(feats), (2,), generator=gen)].tolist() if len(feats) else []
        for source in strongest + some:
            after = _input(rep, graph, target, *rep.forward(*_without(rep, graph, source)))
            assert before - after == pytest.approx(float(row[source]), abs=2e-4, rel=1e-3)
            checked += 1
            t_layer = graph.node(target)["layer"]
            if source < nf and graph.node(source)["layer"] < t_layer - 1:
                cross += 1
    assert checked >= 36 and cross > 0  # some edges skip a layer: they run through the CLT


@pytest.fixture(scope="module")
def clt_dir(tmp_path_factory, gpt2_tokenizer):
    folder = tiny_gpt2_folder(tmp_path_factory.mktemp("tiny-gpt2"), gpt2_tokenizer)
    clt = random_clt(2, 64, seed=1)
    clt.cfg.model_name = str(folder)
    return save_dictionary(clt, tmp_path_factory.mktemp("clt") / "clt")


def test_attribute_command_reads_a_clt_folder(clt_dir, tmp_path, capsys):
    from interp_bench.cli import main

    out = tmp_path / "attr"
    rc = main(["attribute", "--transcoders", str(clt_dir), "--prompt", PROMPT, "--out", str(out),
               "--max-feature-nodes", "0", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "graph.json").read_text())
    layers = {n["layer"] for n in data["nodes"] if n["kind"] == "feature"}
    assert layers == {0, 1} and (out / "graph.html").exists()
    for n in data["nodes"]:
        if n["kind"] == "feature":
            assert n["input"] == pytest.approx(n["act"], rel=1e-4, abs=1e-5)  # TopK: pre = act
    assert 0 <= data["scores"]["completeness"] <= 1


def test_interventions_on_a_clt(rep, model):
    """A CLT feature scaled by 1 is a no-op; clamped to 0, it takes its writes back out of the
    MLP outputs of its layer and of every later one: -act * decoder(l, L)[i] at its position."""
    from interp_bench.analysis.splice import hook_point
    from interp_bench.circuits.intervene import Intervention, intervene, intervention_hooks

    ts, tokens, f = rep.transcoders, rep.tokens, rep.features
    layer, pos, feat, act = int(f.layer[0]), int(f.pos[0]), int(f.index[0]), float(f.act[0])
    assert layer == 0  # its writes reach layers 1 and 2
    same = intervene(model, ts, tokens, [Intervention(layer, pos, feat, 1.0, "scale")])
    assert same.kl == pytest.approx(0, abs=1e-6)

    def put(target: int):
        def fn(x, hook):
            x = x.clone()
            x[:, pos] -= act * ts.clt.decoder(0, target)[feat].detach()
            return x

        return fn

    hand = [(hook_point(model, f"L{t}.mlp_out").tl_name, put(t)) for t in range(3)]
    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=hand)
        got = model.run_with_hooks(tokens, fwd_hooks=intervention_hooks(
            model, ts, tokens, [Intervention(layer, pos, feat, 0.0)]))  # fmt: skip
        own = model.run_with_hooks(tokens, fwd_hooks=hand[:1])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, own, atol=1e-4)  # the later layers' writes count
    with pytest.raises(ValueError, match="no transcoder at layer 7"):
        intervene(model, ts, tokens, [Intervention(7, 1, 0, 1.0)])
