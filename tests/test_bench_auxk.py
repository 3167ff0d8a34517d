"""bench_auxk runs both AuxK paths at each dead fraction and leaves the threshold as it found it."""

import json
import sys

from benchmarks import bench_auxk
from interp_bench.dictionaries import auxk


def test_bench_auxk_times_both_paths(tmp_path, monkeypatch):
    out = tmp_path / "auxk.json"
    argv = ["bench_auxk", "--d-in", "16", "--d-sae", "64", "--k", "4", "--batch", "32",
            "--rounds", "2", "--threads", "1", "--dead", "0,0.25", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    before = auxk.DENSE_AUX_MAX
    bench_auxk.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["n_dead"] for r in rows] == [0, 16]
    assert all(r["sparse_ms"] > 0 and r["dense_ms"] > 0 and r["dense_stride_ms"] > 0 for r in rows)
    assert before == auxk.DENSE_AUX_MAX
