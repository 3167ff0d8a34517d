"""The main job end to end on SmolLM2 (small sizes), its resumption, and its CLI arguments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from run_fixture import SMALL, small_config, small_run_dir

from interp_bench.cli import build_parser
from interp_bench.commands.demo import config_from_args
from interp_bench.commands.pipeline import DemoConfig, format_summary


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    return small_run_dir(str(tmp_path_factory.getbasetemp()))


def _rows(summary: dict) -> dict[str, dict]:
    return {r["kind"]: r for r in summary["dictionaries"]}


@pytest.mark.slow
def test_summary_numbers_are_sensible(small_run):
    out, summary = small_run
    from interp_bench.commands.pipeline import read_summary

    assert read_summary(out) == summary
    rows = _rows(summary)  # each row says what loads its own dictionary
    assert "SAE.load_from_disk" in rows["sae"]["loads_with"]
    assert "only (SAELens 6.54 has no topk_transcoder class)" in rows["transcoder"]["loads_with"]
    on_disk = json.loads((out / "summary.json").read_text())["dictionaries"]
    assert all(not Path(r["report"]).is_absolute() for r in on_disk)  # moves with the folder
    assert summary["layer"] == 15  # the middle of SmolLM2's 30 layers
    rows = _rows(summary)
    assert set(rows) == {"sae", "transcoder"}
    for r in rows.values():
        for key in ("fvu", "l0", "dead_frac", "ce_clean", "ce_spliced", "ce_zero", "kl_spliced"):
            assert math.isfinite(r[key]), (r["name"], key, r[key])
        assert 0 < r["fvu"] < 1, r  # better than predicting the mean
        assert 0 < r["l0"] <= DemoConfig.k
        assert 0 <= r["dead_frac"] <= 1
        assert 0 < r["ce_clean"] < math.log(49152)
        assert r["kl_spliced"] >= 0
    # Zero-ablating the residual stream wrecks the model; any SAE with FVU < 1 does better.
    assert rows["sae"]["ce_spliced"] < rows["sae"]["ce_zero"]
    assert rows["sae"]["ce_recovered"] > 0
    stages = {s["name"]: s for s in summary["stages"]}
    for name in ("load model", "tokenize corpus", "cache train", "cache eval", "train"):
        assert name in stages
    assert stages["cache train"]["tokens"] == SMALL["train_tokens"]
    assert all(s["seconds"] >= 0 for s in stages.values())


@pytest.mark.slow
def test_artifacts_exist_and_load(small_run):
    from sae_lens import SAE

    from interp_bench.analysis.top_examples import load_feature_index
    from interp_bench.dictionaries import load_dictionary

    out, summary = small_run
    for split in ("train", "eval"):
        assert json.loads((out / "acts" / split / "manifest.json").read_text())["complete"]
    assert (out / "splice.json").exists()
    for r in summary["dictionaries"]:
        for f in ("cfg.json", "sae_weights.safetensors", "metrics.jsonl", "train_cfg.json"):
            assert (out / "dictionaries" / r["name"] / f).exists(), f
        lines = (out / "dictionaries" / r["name"] / "metrics.jsonl").read_text().splitlines()
        assert len(lines) >= 2 and "fvu" in json.loads(lines[-1])
        assert (out / "analysis" / r["name"] / "report.html").stat().st_size > 1000
        index = load_feature_index(r["index"])
        assert index.n_features == SMALL["expansion"] * 576
    text = format_summary(summary, out)
    assert str(out / "summary.json") in text and "cache train" in text

    sae_dir = _rows(summary)["sae"]["dictionary"]
    ours = load_dictionary(sae_dir)
    theirs = SAE.load_from_disk(sae_dir, device="cpu")
    x = torch.randn(16, 576) * 5
    torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_second_run_skips_done_work(small_run):
    from interp_bench.commands.pipeline import run_demo

    out, summary = small_run
    files = [
        out / "dictionaries" / r["name"] / "sae_weights.safetensors"
        for r in summary["dictionaries"]
    ]
    files += [out / "splice.json"] + [out / "analysis" / r["name"] / "report.html"
                                      for r in summary["dictionaries"]]  # fmt: skip
    before = [f.stat().st_mtime_ns for f in files]
    again = run_demo(small_config(out))
    assert [f.stat().st_mtime_ns for f in files] == before
    skipped = {s["name"]: s["skipped"] for s in again["stages"]}
    for name in ("cache train", "cache eval", "train", "spliced loss"):
        assert skipped[name], name
    assert all(v for k, v in skipped.items() if k.startswith("analyze"))
    for a, b in zip(again["dictionaries"], summary["dictionaries"], strict=True):
        assert a["ce_spliced"] == b["ce_spliced"]
        assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-6)


@pytest.mark.slow
def test_rerun_with_other_training_settings_refuses(small_run):
    from interp_bench.commands.pipeline import run_demo

    out, _ = small_run
    cfg = small_config(out)
    cfg.epochs += 1
    with pytest.raises(
        ValueError, match="trained with different tokens.*delete .*dictionaries to train"
    ):
        run_demo(cfg)


def test_demo_arguments():
    parser = build_parser()
    quick = config_from_args(parser.parse_args(["demo", "--quick", "--out", "x"]))
    assert quick.train_tokens == DemoConfig.quick().train_tokens < DemoConfig().train_tokens
    assert quick.out == "x"
    big = config_from_args(parser.parse_args(["demo", "--tokens", "2M", "--model", "gpt2"]))
    assert (big.train_tokens, big.model) == (2_000_000, "gpt2")
    assert big.eval_tokens == DemoConfig().eval_tokens
    with pytest.raises(ValueError, match="--epochs must be positive"):
        config_from_args(parser.parse_args(["demo", "--epochs", "0"]))
