"""benchmarks/quality_grid.py: the grid plan, variant parsing, and a --small run on the tiny model
that trains ours and both peers on the same batches and compares them (not the numbers)."""

import json
import math

import pytest

from benchmarks import quality_grid


def _load():
    return quality_grid


def test_plan_varies_one_factor_at_a_time():
    qg = _load()
    args = qg.parse_args(
        ["--hooks", "L1.resid_post,L5.mlp_out,L9.resid_post", "--spread-seeds", "2"]
    )
    cells = qg.plan(args)
    keys = {(c["hook"], c["width"], c["k"], c["tokens"]) for c in cells}
    # every hook at every budget (centre k 32, 8x), k and width at the middle hook and budget
    assert len(keys) == 3 * 3 + 2 + 1
    assert ("L5.mlp_out", 32, 32, 800_000) in keys and ("L5.mlp_out", 8, 16, 800_000) in keys
    assert ("L1.resid_post", 32, 32, 800_000) not in keys
    seeds = {}
    for c in cells:
        seeds.setdefault((c["hook"], c["width"], c["k"], c["tokens"]), []).append(c["seed"])
    assert seeds[("L1.resid_post", 8, 32, 200_000)] == [0, 1, 2]
    assert seeds[("L1.resid_post", 8, 32, 800_000)] == [0]
    full = qg.plan(qg.parse_args(["--hooks", "L1.resid_post", "--design", "full"]))
    assert len({(c["width"], c["k"], c["tokens"]) for c in full}) == 2 * 3 * 3


def test_variant_routes_fields_and_refuses_unknown_ones():
    qg = _load()
    name, d_over, t_over, mult = qg.parse_variant("x:auxk_alpha=0,adam-beta1=0.9,lr_mult=2")
    assert (name, d_over, t_over, mult) == ("x", {"auxk_alpha": 0}, {"adam_beta1": 0.9}, 2.0)
    variant = qg.parse_variant("avg:weight_average=0.25")
    assert variant[2] == {"weight_average": 0.25}
    ours = qg.Ours("L0.resid_post", 8, 32, 4, 64, 640, 0, variant)
    assert ours.trainer.train_cfg.weight_average == 0.25
    # "none" is None where a field takes None, else the string (revive="none" is a mode)
    _, d_over, t_over, _ = qg.parse_variant("n:revive=none,dead_tokens=none")
    assert d_over == {"revive": "none"} and t_over == {"dead_tokens": None}
    with pytest.raises(ValueError, match="no DictionaryConfig/TrainConfig field"):
        qg.parse_variant("x:nonsense=1")
    with pytest.raises(SystemExit):
        qg.parse_args(["--trainers", "ours,nobody"])


def test_small_grid_runs_and_compares(tiny_model, tmp_path):
    pytest.importorskip("sae_lens")
    pytest.importorskip("sparsify")
    qg = _load()
    out = tmp_path / "grid.json"
    args = qg.parse_args(
        ["--small", "--hooks", "L1.resid_post", "--budgets", "2k", "--ks", "4",
         "--spread-seeds", "1", "--acts-dir", str(tmp_path / "acts"), "--out", str(out),
         "--variant", "same:lr_mult=1", "--variant", "fast:lr_mult=4"]
    )  # fmt: skip
    result = qg.run(args, model=tiny_model)
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(result["summary"]))
    assert [c["seed"] for c in result["cells"]] == [0, 1]
    for cell in result["cells"]:
        tr = cell["trainers"]
        assert set(tr) == {"ours", "ours[same]", "ours[fast]", "sparsify", "sae_lens"}
        for r in tr.values():
            assert math.isfinite(r["fvu"]) and 0 < r["fvu"] < 10
            assert r["l0"] <= 4 + 1e-6 and 0 <= r["dead_frac"] <= 1
        # A variant that changes nothing sees the same batches and lands on the same weights.
        assert tr["ours[same]"]["fvu"] == tr["ours"]["fvu"]
        assert tr["ours[fast]"]["fvu"] != tr["ours"]["fvu"]
    (row,) = result["summary"]
    assert row["seeds"] == 2 and row["best_peer"] in ("sparsify", "sae_lens")
    best = row["trainers"][row["best_peer"]]["fvu"]
    assert row["ours_over_best"] == pytest.approx(row["trainers"]["ours"]["fvu"] / best)
    qg.print_table(result)


def test_small_transcoder_cell_runs_against_sparsify(tiny_model, tmp_path):
    """An ``in>out`` hook spec trains ours and sparsify's transcoder mode on the same batches,
    cached with the other hooks in one pass (SAELens has no transcoder here, so it sits out)."""
    pytest.importorskip("sparsify")
    qg = _load()
    args = qg.parse_args(
        ["--small", "--hooks", "L1.mlp_in>L1.mlp_out", "--budgets", "2k", "--ks", "4",
         "--spread-seeds", "0", "--cache-also", "L0.resid_post", "--acts-dir",
         str(tmp_path / "acts"), "--out", str(tmp_path / "grid.json")]
    )  # fmt: skip
    result = qg.run(args, model=tiny_model)
    (cell,) = result["cells"]
    assert set(cell["trainers"]) == {"ours", "sparsify"}
    for r in cell["trainers"].values():
        assert math.isfinite(r["fvu"]) and 0 < r["fvu"] < 10 and r["l0"] <= 4 + 1e-6
    assert cell["trainers"]["ours"]["config"]["dictionary"]["hook_out"] == "L1.mlp_out"
    (cached,) = (tmp_path / "acts").glob("*/*+*")
    assert cached.name == "L0.resid_post+L1.mlp_in+L1.mlp_out"
    # A later run on a subset of those hooks reads that cache instead of making its own.
    work = qg.Workload(qg.parse_args(["--small", "--acts-dir", str(tmp_path / "acts")]), tiny_model)
    work.prepare(["L0.resid_post"])
    assert work.base == cached
