"""benchmarks/gpu_check.py runs end to end on CPU with the tiny model (its CUDA run is manual)."""

import json
import sys

from benchmarks import gpu_check


def test_gpu_check_runs_on_cpu(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr(gpu_check, "tiny_model", lambda: tiny_model)  # the session's, not a new one
    monkeypatch.setattr(
        sys, "argv", ["gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)]
    )
    assert gpu_check.main() == 0
    result = json.loads(out.read_text())
    names = {r["check"].split()[0] for r in result["checks"]}
    assert names == {"cache", "train", "splice", "steer"} and result["ok"]
    assert len([r for r in result["checks"] if r["check"].startswith("train")]) == 8
    assert result["speed"]["ms_per_step"]["sparsify"] > 0
