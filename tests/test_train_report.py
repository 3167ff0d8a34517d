"""`train`'s report: a warning for many passes over a small cache, the FVU labelled as train or
held-out, and a finished run started again prints its final metrics instead of nothing."""

from __future__ import annotations

import json

from test_trainer import planted, tcfg, topk_cfg

from interp_bench.commands.train_report import (
    epochs_note,
    final_metrics,
    metrics_text,
    saved_line,
)
from interp_bench.training.trainer import Trainer


def test_epochs_note():
    note = epochs_note(1_500_000, 32_768)
    assert "45.8 passes over the 32,768 cached tokens" in note and "\n" not in note
    assert "--eval-activations" in note and "training batches" in note
    assert epochs_note(32_768, 32_768) is None and epochs_note(65_536, 32_768) is None


def test_fvu_is_labelled():
    m = {"fvu": 0.1234, "l0": 32.0, "dead_frac": 0.01, "tokens": 4096}
    assert metrics_text(m, held_out=False).startswith("train (last logged batch): FVU 0.1234")
    assert metrics_text(m, held_out=True).startswith("held-out: FVU 0.1234")


def test_rerun_of_a_finished_run_prints_its_metrics(tmp_path):
    cfg, tc = topk_cfg(), tcfg(tokens=128 * 6, log_every=2, checkpoint_every=0)
    first = Trainer([cfg], tc, out_dir=tmp_path)
    first.fit(planted(6))
    [name] = first.names
    line = saved_line(tmp_path / name, first.last_metrics[0])
    again = Trainer([cfg], tc, out_dir=tmp_path)
    again.fit(planted(6))  # finished: nothing to train
    this_run = again.last_metrics[0] if again.last_metrics else None
    assert saved_line(tmp_path / name, this_run) == line  # the same numbers, not empty
    assert "FVU" in line and str((tmp_path / name).resolve()) in line
    logged = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert final_metrics(tmp_path / name, None) == logged[-1]
