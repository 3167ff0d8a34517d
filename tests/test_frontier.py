"""benchmarks/frontier.py: the coefficient sweep's proposals, and a --small run on the tiny model
that trains every family on the same batches, sweeps, splices and writes the figure (not the
numbers)."""

import json
import math

import pytest

from benchmarks import frontier


def test_propose_interpolates_between_and_extrapolates_beyond():
    # L0 = 100 / c: a bracket interpolates exactly in log-log space.
    pts = [(1.0, 100.0), (4.0, 25.0)]
    assert frontier.propose(pts, 50.0) == pytest.approx(2.0)
    # Both too dense: move up along the fitted slope (L0 35 needs c = 100 / 35).
    assert frontier.propose(pts + [(2.0, 50.0)], 10.0) == pytest.approx(10.0)
    # Both too sparse: down, at least by 2x and at most by the cap.
    assert frontier.propose(pts, 400.0) == pytest.approx(0.25)
    assert frontier.propose([(1.0, 5.0)], 50.0, max_factor=30.0) == pytest.approx(1 / 30)
    assert frontier.propose([(1.0, 49.0), (2.0, 48.0)], 10.0) == pytest.approx(2.0 * 30)


def test_next_round_aims_only_at_bands_not_hit():
    runs = [
        {"family": "relu/ours", "coef": 1.0, "l0": 100.0},
        {"family": "relu/ours", "coef": 4.0, "l0": 35.0},
        {"family": "topk/ours", "k": 32, "l0": 32.0},
    ]
    (nxt,) = frontier.next_round(runs, [(30, 40), (60, 80)])
    assert nxt["family"] == "relu/ours" and 1.0 < nxt["coef"] < 4.0


def test_bad_bands_and_families_are_refused():
    with pytest.raises(SystemExit):
        frontier.parse_args(["--bands", "40-30"])
    with pytest.raises(SystemExit):
        frontier.parse_args(["--families", "topk/ours,gated/ours"])


def test_only_the_full_frontier_replaces_the_readme_figure(tmp_path):
    out = tmp_path / "f.json"
    full = frontier.parse_args(["--out", str(out)])
    assert full.figure == frontier.IMG / "frontier"
    part = frontier.parse_args(["--families", "jumprelu/ours", "--out", str(out)])
    assert part.figure == tmp_path / "f_figure"


def test_small_frontier_runs_and_compares(tiny_model, tmp_path):
    pytest.importorskip("sae_lens")
    pytest.importorskip("sparsify")
    pytest.importorskip("plotly")
    out = tmp_path / "frontier.json"
    args = frontier.parse_args(
        ["--small", "--rounds", "1", "--ks", "4", "--acts-dir", str(tmp_path / "acts"),
         "--out", str(out), "--no-image", "--splice-seqs", "4"]
    )  # fmt: skip
    result = frontier.run(args, model=tiny_model)
    assert json.loads(out.read_text())["runs"] == json.loads(json.dumps(result["runs"]))
    fams = {r["family"] for r in result["runs"]}
    assert fams == set(frontier.FAMILIES)
    for r in result["runs"]:
        assert math.isfinite(r["fvu"]) and 0 <= r["dead_frac"] <= 1
        assert len(r["trajectory"]) == frontier.PROBES  # L0 and dense fraction over training
        if r["family"] in ("topk/ours", "topk/sparsify"):  # exactly k per token
            assert r["l0"] <= 4 + 1e-6
    # The sweep ran a second round for every family that missed a band, at new coefficients.
    assert [x["label"] for x in result["rounds"]][:2] == ["k families", "sweep 0"]
    for fam in frontier.SWEPT:
        coefs = [r["coef"] for r in result["runs"] if r["family"] == fam]
        assert len(coefs) == len(set(coefs)) >= len(frontier.START[fam])
    # Every band has a row per swept family, and each row's dictionary was spliced.
    assert len(result["bands"]) >= 2 * len(frontier.SWEPT)
    for row in result["bands"]:
        ce = result["splice"][row["id"]]
        assert math.isfinite(ce["ce_spliced"]) and ce["l0"] >= 0
    fig = json.loads(args.figure.with_suffix(".json").read_text())
    assert len(fig["data"]) == len(frontier.FAMILIES)
    merged = frontier.merge([result, result])
    assert len(merged["runs"]) == 2 * len(result["runs"])
    frontier.print_tables(result)


def test_peer_coefficient_reaches_saelens_and_splice_shapes_work():
    pytest.importorskip("sae_lens")
    pytest.importorskip("sparsify")
    import torch

    from benchmarks.peers import SAELensPeer, SparsifyPeer

    x = torch.randn(2, 5, 16)
    for arch, field in (("jumprelu", "l0_coefficient"), ("relu", "l1_coefficient")):
        peer = SAELensPeer(arch, 16, 64, k=4, batch_size=8, total_tokens=80, coefficient=7.5)
        assert getattr(peer.sae.cfg, field) == 7.5
        with peer.dictionary("h") as d:
            assert d.forward(x).shape == x.shape and d.W_dec.shape == (64, 16)
    with pytest.raises(ValueError, match="no sparsity coefficient"):
        SAELensPeer("topk", 16, 64, k=4, batch_size=8, total_tokens=80, coefficient=1.0)
    with SparsifyPeer(16, 64, k=4, batch_size=8).dictionary("h") as d:
        y = d.forward(x)
        assert y.shape == x.shape and d.W_enc.shape == (16, 64)
        assert torch.allclose(y[1], d.decode(d.encode(x[1])), atol=1e-6)
