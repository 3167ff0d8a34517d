"""Top and quantile examples from the one-pass running selection equal brute force."""

from types import SimpleNamespace

import pytest
import torch
from analysis_helpers import batches, planted_stream, stand_in_dictionary

from activation_cache.streams import model_stream
from interp_bench.analysis.top_examples import (
    AnalysisConfig,
    analyze,
    load_feature_index,
    logit_effects,
    per_column_top,
    unembedding,
)

HOOK = "L0.resid_post"
CFG = AnalysisConfig(top_k=5, window=3, reservoir=12, n_quantiles=3, per_quantile=2)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = stand_in_dictionary()
    full = planted_stream()
    out = tmp_path_factory.mktemp("idx")
    analyze(d, batches(full), out, CFG)
    return d, full, load_feature_index(out)


def _brute(d, full):
    acts = d.encode(full[HOOK]).detach()
    fire = (acts > 0) & (full["pos"] != 0)[:, None]
    return acts, fire


def _brute_context(full, acts, g, j, w):
    """Token ids and latent-j activations around global index g, within its sequence."""
    seq = full["seq"]
    ids, vals = [], []
    for o in range(-w, w + 1):
        h = g + o
        if 0 <= h < seq.numel() and seq[h] == seq[g]:
            ids.append(int(full["tokens"][h]))
            vals.append(float(acts[h, j]))
    return ids, vals


def test_per_column_top_picks_largest_keys():
    cols = torch.tensor([2, 0, 2, 2, 0, 1])
    keys = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.7, 0.3], dtype=torch.float64)
    sel, rank, seg, uniq = per_column_top(cols, keys.float(), 2)
    got = sorted(zip(cols[sel].tolist(), rank.tolist(), keys[sel].tolist(), strict=True))
    assert got == [(0, 0, 0.7), (0, 1, 0.1), (1, 0, 0.3), (2, 0, 0.9), (2, 1, 0.5)]
    assert uniq.tolist() == [0, 1, 2] and torch.equal(uniq[seg], cols[sel])


def test_top_examples_match_brute_force(planted):
    d, full, index = planted
    acts, fire = _brute(d, full)
    w = CFG.window
    n_checked = 0
    for j in range(d.cfg.d_sae):
        v = torch.where(fire[:, j], acts[:, j], -1.0)
        n_fire = int(fire[:, j].sum())
        want = v.topk(min(CFG.top_k, n_fire)).indices.tolist() if n_fire else []
        card = index.feature(j)
        assert [e["index"] for e in card["top"]] == want
        for e in card["top"]:
            g = e["index"]
            assert e["act"] == pytest.approx(float(acts[g, j]))
            ids, vals = _brute_context(full, acts, g, j, w)
            assert e["token_ids"] == ids
            assert e["acts"] == pytest.approx(vals, rel=2e-3, abs=2e-3)  # stored as fp16
            assert e["token_ids"][e["center"]] == int(full["tokens"][g])
            n_checked += 1
    assert n_checked > 50
    # some top examples sit at the start or end of a sequence: contexts were truncated there
    top_tok = index.arrays["top_tokens"]
    assert (top_tok[..., 0] == -1).any() and (top_tok[..., -1] == -1).any()


def test_quantile_examples_come_from_their_buckets(planted):
    d, full, index = planted
    acts, fire = _brute(d, full)
    exact = 0
    for j in range(d.cfg.d_sae):
        n_fire = int(fire[:, j].sum())
        card = index.feature(j)
        fired = acts[fire[:, j], j]
        if n_fire == 0:
            assert all(not q["examples"] for q in card["quantiles"])
            continue
        edges = [q["lo"] for q in card["quantiles"]] + [card["quantiles"][-1]["hi"]]
        if n_fire <= CFG.reservoir:  # the sample holds every event: quantiles are exact
            want = torch.quantile(fired, torch.linspace(0, 1, CFG.n_quantiles + 1))
            assert edges == pytest.approx(want.tolist(), rel=1e-5)
            exact += 1
        seen = set()
        for b, q in enumerate(card["quantiles"]):
            for e in q["examples"]:
                g = e["index"]
                assert fire[g, j] and e["act"] == pytest.approx(float(acts[g, j]))
                last = b == len(card["quantiles"]) - 1
                assert q["lo"] <= e["act"] and (e["act"] < q["hi"] or last and e["act"] <= q["hi"])
                assert e["token_ids"] == _brute_context(full, acts, g, j, CFG.window)[0]
                seen.add(g)
            if n_fire <= CFG.reservoir:  # exact: as many as the bucket holds, up to per_quantile
                hi_ok = fired <= q["hi"] if b == CFG.n_quantiles - 1 else fired < q["hi"]
                in_bucket = int(((fired >= q["lo"]) & hi_ok).sum())
                assert len(q["examples"]) == min(CFG.per_quantile, in_bucket)
        assert len(seen) == sum(len(q["examples"]) for q in card["quantiles"])
    assert exact > 3


def test_sampling_is_uniform_over_firing_events():
    """Bucket 0 of a latent with 400 firings is drawn from all of its low events, not the first."""
    d = stand_in_dictionary(d_in=4, d_sae=1, bias=-10.0)
    with torch.no_grad():
        d.W_enc.fill_(1.0)
    n = 4000
    x = torch.zeros(n, 4)
    x[torch.arange(1, n, 10)] = torch.linspace(3.0, 4.0, 400)[:, None]  # fires on every 10th
    full = {HOOK: x, "tokens": torch.zeros(n, dtype=torch.int32),
            "seq": torch.arange(n) // 100, "pos": (torch.arange(n) % 100).int()}  # fmt: skip
    picked = []
    for seed in range(20):
        cfg = AnalysisConfig(top_k=2, window=1, reservoir=16, n_quantiles=2, per_quantile=4,
                             seed=seed)  # fmt: skip
        idx = analyze(d, [full], f"/tmp/ib-uniform-{seed}", cfg)
        picked += idx.arrays["quantile_index"][0, 0].tolist()
    picked = torch.tensor([p for p in picked if p >= 0])
    assert picked.numel() == 80
    assert float(picked.float().mean()) == pytest.approx(n / 4, rel=0.3)  # low half: 0..2000


def test_logit_effects_and_search(planted):
    d, full, index = planted
    W_U = torch.randn(16, 30)
    ln_w = torch.rand(16) + 0.5
    eff = logit_effects(d.W_dec, W_U, ln_w, 3, chunk=7)
    logits = (d.W_dec * ln_w) @ W_U
    assert torch.equal(eff["pos_ids"].long(), logits.topk(3).indices)
    assert torch.equal(eff["neg_ids"].long(), (-logits).topk(3).indices)

    card = index.feature(int(index.by_density()[0]))
    center = card["top"][0]["tokens"][card["top"][0]["center"]]
    hits = index.search_token(center)
    assert card["id"] in hits
    for j in hits:
        assert any(e["tokens"][e["center"]] == center for e in index.feature(j)["top"])
    assert index.search_token("no-such-token") == []
    with pytest.raises(ValueError):
        index.feature(d.cfg.d_sae)


def test_unembedding_applies_the_final_norm_weight():
    ln = torch.nn.Module()
    ln.w = torch.tensor([2.0, 0.5])
    model = SimpleNamespace(W_U=torch.eye(2), ln_final=ln)
    W_U, w = unembedding(model)
    assert torch.equal(W_U, torch.eye(2)) and torch.equal(w, ln.w)
    assert unembedding(SimpleNamespace(W_U=torch.eye(2)))[1] is None
    assert unembedding(SimpleNamespace()) is None


def test_from_model_with_logits(tiny_model, gpt2_tokenizer, tmp_path):
    """Straight from the model: capture a hook, encode, and rank tokens through W_U."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 50000, (6, 24))
    tokens[:, 0] = gpt2_tokenizer.bos_token_id
    d = stand_in_dictionary(d_in=64, d_sae=40, hook_in="L1.resid_post", bias=0.0)
    index = analyze(d, model_stream(tiny_model, tokens, ["L1.resid_post"], batch_seqs=4), tmp_path,
                    AnalysisConfig(top_k=4, window=2), model=tiny_model)  # fmt: skip
    assert index.meta["n_tokens"] == 6 * 23
    ln_w = getattr(tiny_model.ln_final, "w", None)  # None when the LN weight is folded
    # the final LayerNorm removes the mean of whatever is added to the residual
    want_note = "W_dec centred @ W_U" if ln_w is None else "W_dec centred * ln_final.w @ W_U"
    assert index.meta["logits"] == want_note
    card = index.feature(0)
    assert len(card["promoted"]) == 10 and isinstance(card["promoted"][0][0], str)
    scale = 1.0 if ln_w is None else ln_w
    centred = d.W_dec[0] - d.W_dec[0].mean()
    want = ((centred * scale) @ tiny_model.W_U).topk(10).indices
    assert [t for t, _ in card["promoted"]] == [gpt2_tokenizer.decode([int(i)]) for i in want]
    _, cache = tiny_model.run_with_cache(tokens[:1], names_filter="blocks.1.hook_resid_post")
    x = cache["blocks.1.hook_resid_post"][0]
    acts = d.encode(x).detach()
    j = int(acts[1:].sum(0).argmax())
    top = index.feature(j)["top"]
    in_first = [e for e in top if e["index"] < 24]
    for e in in_first:
        assert e["act"] == pytest.approx(float(acts[e["index"], j]), rel=1e-4)


def test_empty_stream_is_a_clear_error(tmp_path):
    d = stand_in_dictionary()
    with pytest.raises(ValueError, match="empty"):
        analyze(d, [], tmp_path)
    with pytest.raises(FileNotFoundError, match="analyze"):
        load_feature_index(tmp_path / "nothing")
