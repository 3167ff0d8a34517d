"""Density, histograms and reconstruction error from the analysis pass equal brute force."""

import json

import pytest
import torch
from analysis_helpers import batches, planted_stream, stand_in_dictionary

from interp_bench.analysis.density import (
    HIST_BINS,
    DensityStats,
    density_summary,
    hist_edges,
    whole_sequences,
)
from interp_bench.analysis.recon_error import context_window, recon_summary
from interp_bench.analysis.top_examples import analyze

HOOK = "L0.resid_post"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = stand_in_dictionary()
    full = planted_stream()
    index = analyze(d, batches(full), tmp_path_factory.mktemp("idx"))
    return d, full, index


def test_whole_sequences_regroups_without_loss():
    full = planted_stream(n_seq=12)
    chunks = list(whole_sequences(batches(full, max_size=9)))
    joined = {k: torch.cat([c[k] for c in chunks]) for k in full}
    for k in full:
        assert torch.equal(joined[k], full[k])
    for c in chunks:  # every chunk starts at a sequence start and ends at a sequence end
        assert int(c["pos"][0]) == 0
        nxt = int(c["seq"][-1]) + 1
        assert nxt not in c["seq"].tolist()
    assert len({int(c["seq"][-1]) for c in chunks}) == len(chunks)


def test_density_matches_brute_force(planted):
    d, full, index = planted
    acts = d.encode(full[HOOK])
    counted = full["pos"] != 0
    fire = (acts > 0) & counted[:, None]
    n = int(counted.sum())
    assert index.meta["n_tokens"] == n
    assert torch.equal(index.arrays["fire_count"], fire.sum(0))
    torch.testing.assert_close(index.density, (fire.sum(0) / n).float())
    mean = torch.where(fire, acts, 0).sum(0) / fire.sum(0).clamp(min=1)
    torch.testing.assert_close(index.arrays["mean_act"], mean, rtol=1e-5, atol=1e-6)
    mx = torch.where(fire, acts, 0).amax(0)
    torch.testing.assert_close(index.arrays["max_act"], mx)
    # the BOS rows are huge: had they counted, the maxima would differ
    assert not torch.allclose(acts.amax(0), mx)

    edges = hist_edges()
    for j in range(d.cfg.d_sae):
        v = acts[fire[:, j], j].double()
        b = (torch.searchsorted(edges, v, right=True) - 1).clamp(0, HIST_BINS - 1)
        want = torch.bincount(b, minlength=HIST_BINS)
        assert torch.equal(index.arrays["hist_counts"][j].long(), want)

    summary = index.meta["density"]
    dens = fire.sum(0) / n
    assert summary["dead"] == int((dens == 0).sum())
    assert summary["dense"] == int((dens > 0.1).sum())
    assert sum(summary["log10_density_counts"]) == int((dens > 0).sum())


def test_dead_and_dense_counts():
    stats = DensityStats(4)
    cols = torch.tensor([0, 0, 0, 1])
    stats.update(10, cols, torch.ones(4))
    s = density_summary(stats.density, stats.n_tokens, dense_threshold=0.1)
    assert (s["dead"], s["dense"]) == (2, 1)  # latent 0 fires on 30%, latent 1 on exactly 10%


def test_recon_error_matches_brute_force(planted):
    d, full, index = planted
    x = full[HOOK]
    with torch.no_grad():
        sq = (d(x) - x).pow(2).sum(-1)
    rel = sq / x.pow(2).sum(-1)
    bos = full["pos"] == 0
    st = index.stream
    assert st["sq_err"][bos].isnan().all()
    torch.testing.assert_close(st["sq_err"][~bos], sq[~bos])
    torch.testing.assert_close(st["rel_err"][~bos], rel[~bos])
    r = index.recon
    assert r["n_tokens"] == int((~bos).sum())
    assert r["mean_rel_err"] == pytest.approx(float(rel[~bos].mean()), rel=1e-5)
    assert r["nmse"] == pytest.approx(float(sq[~bos].sum() / x[~bos].pow(2).sum()), rel=1e-5)
    worst = [w["index"] for w in r["worst"]]
    assert worst == rel.masked_fill(bos, -1).topk(len(worst)).indices.tolist()
    p = full["pos"].long()
    for q in (1, 5):
        sel = (p == q) & ~bos
        assert r["by_position"]["mean_rel_err"][q] == pytest.approx(float(rel[sel].mean()), 1e-5)
    assert sum(r["by_frequency"]["count"]) == r["n_tokens"]
    json.dumps(r)


def test_recon_by_frequency_buckets():
    tokens = torch.tensor([1] * 20 + [2] * 3 + [3])
    n = tokens.numel()
    rel = torch.cat([torch.full((20,), 0.1), torch.full((3,), 0.5), torch.tensor([0.9])])
    r = recon_summary(rel, rel, tokens, torch.zeros(n, dtype=torch.long), torch.arange(n).int())
    f = r["by_frequency"]
    # counts 1 -> bucket [1,4), 3 -> [1,4), 20 -> [16,64)
    assert f["count"] == [4, 0, 20]
    assert f["mean_rel_err"][0] == pytest.approx((3 * 0.5 + 0.9) / 4)
    assert f["mean_rel_err"][2] == pytest.approx(0.1)


def test_context_window_stops_at_sequence_boundaries():
    tokens = torch.arange(10)
    seq = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    ctx = context_window(tokens, seq, torch.tensor([0, 3, 6, 9]), 2)
    assert ctx.tolist() == [
        [-1, -1, 0, 1, 2],
        [-1, -1, 3, 4, 5],
        [4, 5, 6, -1, -1],
        [7, 8, 9, -1, -1],
    ]
