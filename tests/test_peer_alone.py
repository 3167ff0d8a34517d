"""peer_alone times each runner in a process of its own; here its child step, in-process."""

import json
import sys

import pytest

from benchmarks import peer_alone

pytest.importorskip("sparsify")


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("runner", peer_alone.RUNNERS)
def test_each_runner_steps_and_reports_a_time(kind, runner, monkeypatch, capsys):
    shape = ["--d-in", "16", "--expansion", "4", "--k", "4", "--batch", "32", "--steps", "2"]
    argv = ["peer_alone", *shape, "--warmup", "1", "--threads", "1", f"--child={kind}:{runner}"]
    monkeypatch.setattr(sys, "argv", argv)
    peer_alone.main()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["ms"] > 0


def test_parent_runs_each_runner_per_round_and_compares_with_ours(tmp_path, monkeypatch):
    calls = []

    def fake_child(cmd, **kw):  # a child's last line: ours 2 ms, either sparsify 3 ms
        calls.append(cmd)
        return type("R", (), {"stdout": json.dumps({"ms": 2.0 if "ours" in cmd[-1] else 3.0})})

    monkeypatch.setattr(peer_alone.subprocess, "run", fake_child)
    monkeypatch.setattr(peer_alone, "machine_info", dict)
    out = tmp_path / "p.json"
    monkeypatch.setattr(
        sys, "argv", ["peer_alone", "--d-in", "16", "--rounds", "2", f"--out={out}"]
    )
    peer_alone.main()
    assert len(calls) == 2 * 2 * len(peer_alone.RUNNERS)
    assert all("--d-in=16" in c for c in calls)
    rows = json.loads(out.read_text())["rows"]
    assert {(r["runner"], r["ours_speedup"]) for r in rows} == {
        ("sparsify alone", 1.5),
        ("sparsify + our allocator", 1.5),
        ("ours", 1.0),
    }


@pytest.mark.parametrize("bad", [["--kinds", "sea"], ["--rounds", "0"], ["--steps", "0"]])
def test_bad_arguments_stop_before_any_child(bad, monkeypatch, capsys):
    monkeypatch.setattr(peer_alone.subprocess, "run", lambda *a, **k: pytest.fail("ran a child"))
    monkeypatch.setattr(sys, "argv", ["peer_alone", *bad])
    with pytest.raises(SystemExit):
        peer_alone.main()
    assert "error:" in capsys.readouterr().err
