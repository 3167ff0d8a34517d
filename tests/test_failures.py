"""Ranks leave a distributed stage together, through the job's store (no process group here:
a HashStore stands in for torchrun's store and threads for the ranks)."""

from __future__ import annotations

import threading
import time

import pytest
import torch.distributed as dist

from interp_bench.training import failures


def test_a_rank_waits_until_every_rank_has_finished_the_stage():
    store, left = dist.HashStore(), []
    rank1 = threading.Thread(
        target=lambda: (failures.leave_together(store, 1, 2, "training", 0, 0.05), left.append(1))
    )
    rank1.start()
    time.sleep(0.3)
    assert not left  # rank 0 is still inside the stage (its last barrier): rank 1 must not exit
    failures.leave_together(store, 0, 2, "training", 0, 0.05)
    rank1.join(5)
    assert left == [1]
    failures.leave_together(store, 0, 2, "saving", 0, 0.05)  # the same stage again: no wait


def test_a_rank_that_finished_names_the_rank_that_failed():
    store = dist.HashStore()
    failures._report(store, 0, ValueError("no space left on device"))
    want = "rank 1: training finished here, but rank 0 failed: ValueError: no space left on device"
    with pytest.raises(failures.RankFailed, match=want):
        failures.leave_together(store, 1, 2, "training", 3, 0.05)


def test_a_silent_rank_ends_the_wait_at_the_timeout(monkeypatch):
    monkeypatch.setattr(failures, "timeout_s", lambda: 0.2)
    store = dist.HashStore()
    start = time.monotonic()
    with pytest.raises(failures.RankFailed, match="rank 1 stopped responding"):
        failures.leave_together(store, 0, 2, "training", 0, 0.05)
    assert time.monotonic() - start < 5
