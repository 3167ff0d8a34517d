"""Optional wandb tracking: metrics reach wandb when asked for, metrics.jsonl is always written,
and a missing wandb is one line before any work."""

from __future__ import annotations

import json
import sys

import pytest

from interp_bench.cli import main
from interp_bench.training.trainer import Trainer
from tests.test_trainer import planted, tcfg, topk_cfg


def test_metrics_reach_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    logged: list[tuple[int, dict]] = []
    real_log = wandb.sdk.wandb_run.Run.log

    def record(self, data, step=None, **kw):
        logged.append((step, dict(data)))
        return real_log(self, data, step=step, **kw)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", record)
    cfgs = [topk_cfg(k=2), topk_cfg(k=4)]
    trainer = Trainer(cfgs, tcfg(wandb="interp-bench-test"), out_dir=tmp_path / "out")
    trainer.fit(planted(8), resume=False)

    names = trainer.names
    jsonl = [
        [json.loads(line) for line in (tmp_path / "out" / n / "metrics.jsonl").open()]
        for n in names
    ]
    assert len(jsonl[0]) > 1
    # one wandb step per JSONL line, the same numbers under each dictionary's name
    assert [s for s, _ in logged] == [m["step"] for m in jsonl[0]]
    for (_, row), *per_dict in zip(logged, *jsonl, strict=True):
        for name, m in zip(names, per_dict, strict=True):
            assert row[f"{name}/fvu"] == m["fvu"] and row[f"{name}/l0"] == m["l0"]
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "no offline run files written"
    assert not (tmp_path / "out" / "wandb").exists()  # WANDB_DIR wins over the run folder


def test_without_wandb_jsonl_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # wandb calls would raise ImportError
    trainer = Trainer([topk_cfg()], tcfg(), out_dir=tmp_path / "out")
    trainer.fit(planted(8), resume=False)
    assert (tmp_path / "out" / trainer.names[0] / "metrics.jsonl").read_text().count("\n") > 1


def test_wandb_missing_is_one_line_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec now answers "not installed"
    argv = ["train", "--activations", str(tmp_path / "nowhere"), "--hook", "L0.resid_post"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--wandb", "proj"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install wandb" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="pip install wandb"):
        Trainer([topk_cfg()], tcfg(wandb="proj"), out_dir=tmp_path / "out")


def test_wandb_flag_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--wandb WANDB" in out and "metrics also go to wandb" in out
