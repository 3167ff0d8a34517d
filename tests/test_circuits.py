"""Attribution graphs on the tiny model with transcoders of known (random) weights: the local
replacement model is exact, every node's input is its incoming edges plus its bias, edges are
finite differences of the frozen model, and pruning keeps what brute-force influence ranks
highest. The CLI and the HTML view run on a tiny GPT-2 folder through the bridge."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from interp_bench.circuits.graph import attribute, top_logits
from interp_bench.circuits.prune import influence, normalized, prune
from interp_bench.circuits.replacement import build_replacement, transcoder_set, unembedding
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary

PROMPT = "The cat sat on the mat because"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def random_transcoders(n_layers: int, d: int, *, seed: int = 0, skip_layer: int | None = None):
    """TopK transcoders with random weights and biases (one with a skip connection)."""
    torch.manual_seed(seed)
    out = []
    for layer in range(n_layers):
        cfg = DictionaryConfig(d_in=d, d_sae=48, d_out=d, arch="topk", k=5,
                               hook_in=f"L{layer}.mlp_in", hook_out=f"L{layer}.mlp_out",
                               skip=layer == skip_layer)  # fmt: skip
        t = SparseDictionary(cfg).eval()
        with torch.no_grad():
            t.b_enc.normal_(0, 0.3)
            t.b_dec.normal_(0, 0.1)
            if t.W_skip is not None:
                t.W_skip.normal_(0, 0.05)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def model(tiny_model):
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    return tiny_model


@pytest.fixture(scope="module")
def rep(model):
    ts = transcoder_set(model, random_transcoders(model.cfg.n_layers, model.cfg.d_model,
                                                  skip_layer=1))  # fmt: skip
    return build_replacement(model, ts, model.to_tokens(PROMPT))


@pytest.fixture(scope="module")
def graph(rep):
    return attribute(rep, batch_size=16)


def test_replacement_reproduces_clean_logits(rep, model):
    assert rep.skip_positions == (0,) and len(rep.features) > 0
    assert not (rep.features.pos == 0).any()  # no features on BOS
    clean = model(rep.tokens)[0]
    with torch.no_grad():
        logits, mlp_in, _ = rep.forward()
    torch.testing.assert_close(logits, clean, atol=2e-5, rtol=1e-5)
    # Each replaced MLP writes decoded features + b_dec + skip + error == the true MLP output.
    ts = rep.transcoders
    for layer in range(rep.n_layers):
        f = rep.features
        sel = f.of_layer(layer)
        dec = torch.zeros_like(rep.mlp_out[layer])
        dec.index_put_((f.pos[sel],), f.act[sel, None] * ts.decoder(layer, layer)[f.index[sel]],
                       accumulate=True)  # fmt: skip
        dec[1:] += ts.b_dec(layer)
        skip = ts.skip(layer, rep.mlp_in[layer])
        total = dec + rep.error[layer] + (0 if skip is None else skip)
        torch.testing.assert_close(total, rep.mlp_out[layer], atol=1e-5, rtol=1e-5)
    # Without the error nodes the logits move: the transcoders are far from exact.
    with torch.no_grad():
        no_err, _, _ = rep.forward(writes=rep.recon)
    assert (no_err - clean).abs().max() > 1e-2


def test_completeness(graph, rep):
    """input = sum of incoming edges + bias, for every node with computed edges."""
    assert len(graph.row_nodes) == rep.features.layer.numel() + len(graph.logit_tokens)
    total = graph.adjacency.sum(1) + graph.biases
    torch.testing.assert_close(total, graph.inputs, atol=1e-4, rtol=1e-4)
    # a feature's input is its pre-activation, which equals its (TopK) activation
    nf = graph.n_features
    rows = graph.row_nodes < nf
    torch.testing.assert_close(graph.inputs[rows], graph.features["act"][graph.row_nodes[rows]],
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    # logits: demeaned, and they are the model's
    ids = torch.tensor(graph.logit_tokens)
    last = rep.logits[-1]
    torch.testing.assert_close(graph.inputs[~rows], last[ids] - last.mean(), atol=1e-4, rtol=1e-5)
    assert graph.logit_probs.sum() >= 0.95 or len(ids) == 10
    # edges respect causality: nothing from a later position or a later-or-equal layer
    for r, node in enumerate(graph.row_nodes.tolist()):
        t = graph.node(node)
        for s in graph.adjacency[r].nonzero().flatten().tolist():
            src = graph.node(s)
            assert src["pos"] <= t["pos"]
            assert src["layer"] < t["layer"]


def _target_input(rep, graph, node: int, logits, mlp_in, final) -> float:
    n = graph.node(node)
    if n["kind"] == "logit":
        w_u, b_u = unembedding(rep.model)
        x = final[-1] @ w_u + b_u
        return float(x[n["token"]] - x.mean())
    w = rep.transcoders.dictionaries[n["layer"]]
    return float(mlp_in[n["layer"]][n["pos"]] @ w.W_enc[:, n["feature"]] + w.b_enc[n["feature"]])


def _without(rep, graph, source: int):
    """Frozen replacement inputs with one source node removed (its write set to zero)."""
    s = graph.node(source)
    resid0, writes = rep.resid0.clone(), [w.clone() for w in rep.writes()]
    if s["kind"] == "embedding":
        resid0[s["pos"]] = 0
    elif s["kind"] == "error":
        writes[s["layer"]][s["pos"]] -= rep.error[s["layer"]][s["pos"]]
    else:
        w_dec = rep.transcoders.decoder(s["layer"], s["layer"])
        writes[s["layer"]][s["pos"]] -= s["act"] * w_dec[s["feature"]]
    return resid0, writes


@torch.no_grad()
def test_edges_are_finite_differences(graph, rep):
    """Removing a source (a step of its full activation) changes the target's input by the
    edge weight exactly, in the frozen model with every other node held fixed."""
    base = rep.forward()
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for r in torch.randperm(len(graph.row_nodes), generator=gen)[:12].tolist():
        target = int(graph.row_nodes[r])
        before = _target_input(rep, graph, target, *base)
        row = graph.adjacency[r]
        strongest = row.abs().topk(3).indices.tolist()
        zeros = (row[: graph.logit_id(0)] == 0).nonzero().flatten()  # logits are no sources
        some_zero = zeros[torch.randint(len(zeros), (2,), generator=gen)].tolist()
        for source in strongest + some_zero:
            after = _target_input(rep, graph, target, *rep.forward(*_without(rep, graph, source)))
            assert before - after == pytest.approx(float(row[source]), abs=2e-4, rel=1e-3)
            checked += 1
    assert checked == 12 * 5


def _brute_force_influence(graph) -> torch.Tensor:
    """Sum over every path to a logit of the product of normalised edges, by enumeration."""
    a = normalized(graph.adjacency)
    row_of = {int(n): r for r, n in enumerate(graph.row_nodes.tolist())}
    memo: dict[int, torch.Tensor] = {}

    def paths_from(target: int) -> torch.Tensor:  # weight of paths ending at `target`, per node
        if target in memo:
            return memo[target]
        out = torch.zeros(graph.n_nodes, dtype=torch.float64)
        r = row_of.get(target)
        if r is not None:
            for s in a[r].nonzero().flatten().tolist():
                out[s] += float(a[r, s])
                out += float(a[r, s]) * paths_from(s)
        memo[target] = out
        return out

    total = torch.zeros(graph.n_nodes, dtype=torch.float64)
    for j, p in enumerate(graph.logit_probs.tolist()):
        total += p * paths_from(graph.logit_id(j))
    return total


def test_pruning_keeps_brute_force_top_nodes(graph):
    brute = _brute_force_influence(graph)
    fast = influence(graph.adjacency, graph.row_nodes, graph.logit_weights())
    torch.testing.assert_close(fast.double(), brute, atol=1e-6, rtol=1e-4)
    kinds = graph.kinds()
    prunable = ((kinds == 0) | (kinds == 1)).nonzero().flatten()
    order = prunable[brute[prunable].argsort(descending=True)]
    for threshold in (0.5, 0.8):
        pr = prune(graph, node_threshold=threshold, edge_threshold=1.0)
        cum = brute[order].cumsum(0) / brute[prunable].sum()
        n_top = int((cum < threshold).sum()) + 1
        assert set(pr.by_influence.nonzero().flatten().tolist()) & set(prunable.tolist()) == set(
            order[:n_top].tolist()
        )
        kept = pr.nodes.nonzero().flatten().tolist()
        assert set(kept) <= set(pr.by_influence.nonzero().flatten().tolist())
        assert all(graph.logit_id(j) in kept for j in range(len(graph.logit_tokens)))
    small = prune(graph, node_threshold=0.5, edge_threshold=0.5)
    assert small.edges.sum() < prune(graph, 0.5, 1.0).edges.sum()
    assert 0 < small.replacement_score < 1 and 0 < small.completeness_score < 1


def test_capped_graph_rows_match_full(rep, graph):
    """With max_feature_nodes the rows computed are exact rows of the full graph."""
    capped = attribute(rep, batch_size=5, max_feature_nodes=12)
    assert len(capped.row_nodes) == 12 + len(capped.logit_tokens)
    row_of = {int(n): r for r, n in enumerate(graph.row_nodes.tolist())}
    full = graph.adjacency[[row_of[int(n)] for n in capped.row_nodes]]
    torch.testing.assert_close(capped.adjacency, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(capped.adjacency.sum(1) + capped.biases, capped.inputs,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    # the first features chosen are the strongest direct sources of the logits
    logit_rows = normalized(graph.adjacency[graph.row_nodes >= graph.n_features])
    direct = (graph.logit_probs[:, None] * logit_rows).sum(0)[: graph.n_features]
    first = capped.row_nodes[len(capped.logit_tokens) : len(capped.logit_tokens) + 5]
    assert set(first.tolist()) == set(direct.topk(5).indices.tolist())


def test_top_logits():
    ids, p = top_logits(torch.tensor([5.0, 4.0, 0.0, -1.0]), prob=0.95, max_logits=10)
    assert ids.tolist() == [0, 1] and p.sum() >= 0.95  # 0.73 + 0.27
    ids, _ = top_logits(torch.zeros(50), prob=0.95, max_logits=10)
    assert len(ids) == 10


def test_intervention_clamp_to_own_value_is_a_no_op(rep, model):
    from interp_bench.circuits.intervene import Intervention, intervene

    f = rep.features
    i = int(f.act.argmax())
    layer, pos, feat = int(f.layer[i]), int(f.pos[i]), int(f.index[i])
    own = [Intervention(layer, pos, feat, 1.0, mode="scale")]
    same = intervene(model, rep.transcoders, rep.tokens, own, max_new_tokens=4)
    assert same.kl == pytest.approx(0.0, abs=1e-6)
    assert same.generation == same.clean_generation and same.top[0][0] == same.clean_top[0][0]
    strong = [Intervention(layer, rep.seq_len - 1, feat, 50.0)]
    big = intervene(model, rep.transcoders, rep.tokens, strong, max_new_tokens=4)
    assert big.kl > 1e-4
    with pytest.raises(ValueError, match="no transcoder at layer"):
        intervene(model, rep.transcoders, rep.tokens, [Intervention(7, 1, 0, 1.0)])


# ---- the bridge, the CLI and the HTML view, on a tiny GPT-2 folder ---------------------------


@pytest.fixture(scope="module")
def bridge_model(tiny_gpt2_bridge):
    return tiny_gpt2_bridge


def _stream(model, tokens, hooks):
    """Batches in the analysis stream format (activations, tokens, seq, pos)."""
    from activation_cache.hooks import capture, resolve_hooks

    acts = capture(model, tokens, resolve_hooks(model, hooks))
    n, ctx = tokens.shape
    out = {k: v.reshape(n * ctx, -1).float() for k, v in acts.items()}
    out["tokens"] = tokens.reshape(-1).to(torch.int32)
    out["seq"] = torch.arange(n).repeat_interleave(ctx)
    out["pos"] = torch.arange(ctx, dtype=torch.int32).repeat(n)
    yield out


@pytest.fixture(scope="module")
def transcoder_dir(tmp_path_factory, tiny_gpt2_dir, bridge_model):
    """Random transcoders at both layers; layer 1 also has a feature index (for the cards)."""
    from interp_bench.analysis.top_examples import AnalysisConfig, analyze

    out = tmp_path_factory.mktemp("transcoders")
    for t in random_transcoders(2, 64, seed=1):
        t.cfg.model_name = str(tiny_gpt2_dir)
        save_dictionary(t, out / t.cfg.hook_in)
    torch.manual_seed(0)
    text = torch.randint(0, 50000, (8, 24))
    text[:, 0] = bridge_model.tokenizer.bos_token_id
    layer1 = t  # the last one saved
    stream = _stream(bridge_model, text, [layer1.cfg.hook_in, layer1.cfg.hook_out])
    analyze(layer1, stream, out / "L1.mlp_in" / "analysis", AnalysisConfig(window=3),
            model=bridge_model)  # fmt: skip
    return out


def test_bridge_replacement_is_exact(bridge_model, transcoder_dir):
    """LayerNorm through TransformerBridge: hooks freeze it the same way."""
    from interp_bench.dictionaries import load_dictionary

    model = bridge_model
    dirs = sorted(p for p in transcoder_dir.iterdir() if p.is_dir())
    ts = transcoder_set(model, [load_dictionary(p) for p in dirs])
    rep = build_replacement(model, ts, model.to_tokens(PROMPT))
    with torch.no_grad():
        logits, _, _ = rep.forward()
    torch.testing.assert_close(logits, model(rep.tokens)[0], atol=2e-5, rtol=1e-5)
    g = attribute(rep, batch_size=32)
    torch.testing.assert_close(g.adjacency.sum(1) + g.biases, g.inputs, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory, transcoder_dir):
    from interp_bench.cli import main

    out = tmp_path_factory.mktemp("attr")
    rc = main(["attribute", "--transcoders", str(transcoder_dir), "--prompt", PROMPT,
               "--out", str(out), "--max-feature-nodes", "0", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    return out


def test_attribute_command_writes_graph(cli_out, capsys):
    data = json.loads((cli_out / "graph.json").read_text())
    assert data["format"] == "interp-bench-attribution-graph" and data["prompt"] == PROMPT
    ids = {n["id"] for n in data["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in data["edges"])
    kinds = {n["kind"] for n in data["nodes"]}
    assert {"logit", "feature"} <= kinds
    for n in data["nodes"]:
        if n["kind"] == "feature":
            assert n["input"] == pytest.approx(n["act"], rel=1e-4, abs=1e-5)
    assert 0 <= data["scores"]["replacement"] <= 1 and 0 <= data["scores"]["completeness"] <= 1


def test_attribute_bad_input(tmp_path, transcoder_dir, capsys):
    from interp_bench.cli import main

    assert main(["attribute", "--transcoders", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "no transcoder folder" in capsys.readouterr().err
    assert main(["attribute", "--transcoders", str(transcoder_dir), "--prompt", " "]) == 2
    assert "empty --prompt" in capsys.readouterr().err
    sae = DictionaryConfig(d_in=64, d_sae=8, arch="topk", k=2, hook_in="L0.resid_post")
    save_dictionary(SparseDictionary(sae), tmp_path / "sae" / "a")
    assert main(["attribute", "--transcoders", str(tmp_path / "sae"), "--prompt", "x"]) == 2
    assert "not an MLP transcoder" in capsys.readouterr().err
    assert main(["attribute", "--transcoders", str(transcoder_dir), "--prompt", "x",
                 "--node-threshold", "0"]) == 2  # fmt: skip
    assert "--node-threshold" in capsys.readouterr().err


def test_graph_html_is_self_contained(cli_out):
    page = (cli_out / "graph.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "cdn" not in page.lower()


@pytest.mark.long  # launches headless Chromium
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt install chromium)")
def test_graph_html_renders_in_chromium(cli_out, tmp_path):
    data = json.loads((cli_out / "graph.json").read_text())
    url = (cli_out / "graph.html").resolve().as_uri()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]  # fmt: skip
    for layer in (0, 1):  # layer 1 has a feature index: its features show their card
        feature = next(n for n in data["nodes"] if n["kind"] == "feature" and n["layer"] == layer)
        dom = subprocess.run([*cmd, url + "#node=" + feature["id"]], capture_output=True,
                             text=True, timeout=120).stdout  # fmt: skip
        assert dom.count('class="node ') == len(data["nodes"]), dom[-2000:]
        assert dom.count('class="edge') == len(data["edges"])
        title = f"Feature {feature['feature']} (layer {layer}, pos {feature['pos']})"
        assert title in dom and "Incoming (" in dom and "replacement score" in dom
        panel = dom[dom.index('<div id="panel">') : dom.index('<script id="data"')]
        assert title in panel
        assert ('class="card"' in panel) == (layer == 1)
        assert ("No feature index" in panel) == (layer == 0)


@pytest.mark.slow
def test_embedded_smollm2_replacement_is_exact():
    """RMSNorm, RoPE, GQA and a gated MLP through the bridge: transcoders at three layers (the
    other MLPs are pure error nodes), clean logits reproduced, every input complete."""
    from activation_cache.models import load_model

    model = load_model("smollm2-135m", device="cpu")
    d = model.cfg.d_model
    torch.manual_seed(0)
    dicts = []
    for layer in (0, 14, 29):
        hooks = {"hook_in": f"L{layer}.mlp_in", "hook_out": f"L{layer}.mlp_out"}
        cfg = DictionaryConfig(d_in=d, d_sae=256, d_out=d, arch="topk", k=8, **hooks)
        dicts.append(SparseDictionary(cfg).eval())
    rep = build_replacement(model, transcoder_set(model, dicts), model.to_tokens("To be, or not"))
    with torch.no_grad():
        logits, _, _ = rep.forward()
    clean = model(rep.tokens)[0]
    assert (logits - clean).abs().max() < 1e-3 * clean.abs().max()
    g = attribute(rep, batch_size=32)
    torch.testing.assert_close(g.adjacency.sum(1) + g.biases, g.inputs, atol=1e-3, rtol=1e-4)
    assert set(g.features["layer"].tolist()) == {0, 14, 29}
