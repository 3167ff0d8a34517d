"""A run's summary is read the same from anywhere (a notebook kernel runs in notebooks/), the
printed notebook hint works when pasted, and every "loads with" line is true."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from interp_bench.commands import pipeline
from interp_bench.commands.pipeline import find_run, notebook_hint, read_summary, repo_root

ROW = {"name": "sae_x", "kind": "sae", "fvu": 0.1, "dictionary": "dictionaries/sae_x",
       "metrics": "dictionaries/sae_x/metrics.jsonl", "index": "analysis/sae_x",
       "report": "analysis/sae_x/report.html"}  # fmt: skip


def _fake_run(folder: Path) -> Path:
    (folder / "analysis" / "sae_x").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"model": "m", "dictionaries": [ROW]}))
    return folder


def test_summary_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    run = _fake_run(tmp_path / "runs" / "demo")
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    [row] = read_summary(run)["dictionaries"]
    assert row["index"] == str(run.resolve() / "analysis" / "sae_x")
    assert Path(row["index"]).is_dir()
    moved = tmp_path / "moved"
    run.rename(moved)  # the folder moves with its summary
    assert Path(read_summary(moved)["dictionaries"][0]["index"]).is_dir()
    with pytest.raises(FileNotFoundError, match="interp-bench demo --out"):
        read_summary(tmp_path / "nothing")


def test_find_run_from_the_notebooks_folder(tmp_path, monkeypatch):
    """`INTERP_BENCH_RUN=runs/quick` typed at the checkout's root still works in a kernel whose
    cwd is notebooks/; absolute paths are taken as they are."""
    monkeypatch.setattr(pipeline, "repo_root", lambda: tmp_path)
    run = _fake_run(tmp_path / "runs" / "quick")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("INTERP_BENCH_RUN", "runs/quick")
    assert find_run() == run
    monkeypatch.setenv("INTERP_BENCH_RUN", str(run))
    assert find_run() == run
    monkeypatch.delenv("INTERP_BENCH_RUN")
    assert find_run() == run  # no runs/demo: the quick one
    _fake_run(tmp_path / "runs" / "demo")
    assert find_run() == tmp_path / "runs" / "demo"


def test_notebook_hint_without_jupyterlab(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n: None if n in ("jupyterlab", "notebook") else real(n)
    )
    lines = notebook_hint(tmp_path)
    assert "is not installed here" in lines[0] and "install jupyterlab" in lines[0]
    # the headless alternative works when pasted: absolute executable, notebooks and run folder
    cmd = shlex.split(lines[1].split(": ", 1)[1])
    assert cmd[:2] == ["mkdir", "-p"] and cmd[3] == "&&"
    env, jupyter, verb = cmd[4], cmd[5], cmd[6]
    assert env == f"INTERP_BENCH_RUN={tmp_path}" and verb == "execute"
    assert Path(jupyter).is_absolute() and Path(jupyter).exists()
    assert cmd[-1] == f"{repo_root() / 'notebooks'}/*.ipynb"
    assert list((repo_root() / "notebooks").glob("*.ipynb"))


def test_notebook_hint_with_jupyterlab(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n: object() if n == "jupyterlab" else real(n)
    )
    [line] = notebook_hint(tmp_path)
    cmd = shlex.split(line)
    assert cmd[:2] == ["cd", str(repo_root() / "notebooks")]  # Jupyter's kernel cwd anyway
    assert cmd[3] == f"INTERP_BENCH_RUN={tmp_path}" and cmd[-1] == "lab"


def test_missing_index_error_does_not_blame_analyze(tmp_path, monkeypatch):
    from interp_bench.analysis.top_examples import load_feature_index

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_feature_index("runs/demo/analysis/sae")
    assert "interp-bench analyze" not in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run `interp-bench analyze`"):
        load_feature_index(tmp_path / "empty")


def test_summary_table_says_what_loads_where(tmp_path):
    rows = [
        ROW | {"kind": "sae", "loads_with": "ours, or SAELens: X"},
        ROW | {"kind": "transcoder", "loads_with": "ours only (SAELens 6.54 has no Y class)"},
    ]
    rows = [r | {k: 0.5 for k in ("l0", "dead_frac", "ce_recovered", "kl_spliced")} for r in rows]
    summary = {"model": "m", "layer": 1, "trained_tokens": 1, "seconds": 1, "stages": [],
               "dictionaries": [r | {"ce_clean": 1.0} for r in rows]}  # fmt: skip
    text = pipeline.format_summary(summary, tmp_path)
    assert "SAE.load_from_disk(path))" not in text
    assert "loads with ours, or SAELens: X" in text
    assert "loads with ours only (SAELens 6.54 has no Y class)" in text
