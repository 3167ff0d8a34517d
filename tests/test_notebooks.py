"""The notebooks are committed without outputs and run top to bottom, offline, at small sizes.

They share the small pipeline run of test_pipeline.py (`run_fixture.small_run_dir`), so the
expensive caching and training happen once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from run_fixture import small_run_dir

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = [
    "01_cache_and_train.ipynb",
    "02_browse_features.ipynb",
    "03_steer_generation.ipynb",
    "04_transcoders.ipynb",
]
CIRCUITS = "05_circuits.ipynb"  # runs on its own tiny model, below


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    return small_run_dir(str(tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize("name", [*NOTEBOOKS, CIRCUITS])
def test_notebook_is_stripped(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, small_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    run_dir, _ = small_run
    # The kernel inherits this process's environment; the run folder is given as the demo's
    # printed hint gives it (absolute).
    monkeypatch.setenv("INTERP_BENCH_RUN", str(run_dir))
    monkeypatch.setenv("INTERP_BENCH_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    # Jupyter (lab, notebook, `jupyter execute`) starts the kernel in the notebook's folder.
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    n_figures = sum(
        "application/vnd.plotly.v1+json" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert n_figures >= 1, "every notebook draws at least one plotly figure"


def _run(name: str, path: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    return nb


@pytest.mark.long
def test_circuits_notebook_runs_on_tiny_model(tmp_path, monkeypatch, gpt2_tokenizer):
    """05 end to end (train a transcoder per layer, trace, prune, draw, intervene) on a tiny
    random GPT-2 folder through the bridge, instead of the embedded model."""
    from circuits_helpers import tiny_gpt2_folder

    folder = tiny_gpt2_folder(tmp_path / "tiny-gpt2", gpt2_tokenizer)
    monkeypatch.setenv("INTERP_BENCH_MODEL", str(folder))
    monkeypatch.setenv("INTERP_BENCH_CIRCUITS", str(tmp_path / "circuits"))
    monkeypatch.setenv("INTERP_BENCH_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = _run(CIRCUITS, NOTEBOOK_DIR)  # the kernel starts where Jupyter starts it
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "2 transcoders" in text and "completeness" in text and "scale 0.0: KL" in text
    assert (tmp_path / "circuits/graph.html").exists()
    assert (tmp_path / "circuits/transcoders/L1.mlp_in/cfg.json").exists()
