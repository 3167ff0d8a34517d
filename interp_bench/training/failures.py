"""Name the rank that stopped a distributed run, instead of hanging or a bare socket error.

Every rank bumps a heartbeat counter in the process group's key-value store (under torchrun,
the launcher's store) and, when it fails, leaves its error message there. A rank whose
collective fails (a peer closed its socket, or nothing arrived within the group's timeout,
`--dist-timeout`) looks up who failed or whose heartbeat stopped and says so in one line. A rank
stuck outside any collective is ended by its own heartbeat thread once another rank has failed
or the store is gone (the launcher of rank 0 ended), so no process is left behind.

Ranks also leave a stage together, through the store rather than a collective: the last
collective of a stage (the barrier after saving) can return on one rank before the other has
read the last message, and a rank that then exits closes its sockets under its peer, whose
barrier fails ("rank 1 stopped responding") although both finished.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

from activation_cache.distributed import timeout_s

_KEY = "interp-bench/"
_stages = itertools.count()  # every rank enters the same stages in the same order


class RankFailed(ValueError):
    """Another rank died, raised or hung; the message names it (one line, via the CLI)."""


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


def _get(store, key: str) -> str | None:
    try:
        return store.get(key).decode() if store.check([key]) else None
    except Exception:  # the store's host is gone too
        return None


def _beats(store, world: int) -> list[str | None]:
    return [_get(store, f"{_KEY}beat/{r}") for r in range(world)]


def culprit(store, me: int, world: int, period: float) -> str:
    """Which rank failed: one that left an error, else one whose heartbeat stopped."""
    if store is None:
        return "another rank stopped"
    for r in range(world):
        if r != me and (msg := _get(store, f"{_KEY}failed/{r}")) is not None:
            return f"rank {r} failed: {msg}"
    before = _beats(store, world)
    time.sleep(2.5 * period)
    after = _beats(store, world)
    silent = [r for r in range(world) if r != me and before[r] == after[r]]
    if silent:
        return f"rank {', '.join(map(str, silent))} stopped responding (killed or hung)"
    return "another rank stopped (all still answer: see the other ranks' logs)"


@contextmanager
def watched(stage: str) -> Iterator[None]:
    """Run `stage` of a distributed job; any failure ends with a line naming the rank."""
    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    store, me, world = _store(), dist.get_rank(), dist.get_world_size()
    seq = next(_stages)
    period = max(0.05, min(5.0, timeout_s() / 5))
    stop, handling = threading.Event(), threading.Event()

    def beat() -> None:
        n = 0
        while store is not None and not stop.wait(period):
            n += 1
            try:
                store.set(f"{_KEY}beat/{me}", str(n))
                failed = [r for r in range(world) if r != me and _failed(store, r)]
            except Exception:
                failed = None  # the store's host (rank 0's launcher) is gone: the job is over
            if (failed is None or failed) and not handling.is_set():
                if stop.wait(2 * period) or handling.is_set():
                    continue  # the main thread got its own error and is reporting it
                why = culprit(store, me, world, 0) if failed else "the job's store is gone"
                print(f"rank {me}: {stage} stopped, {why}", file=sys.stderr, flush=True)
                os._exit(3)  # the main thread is stuck outside any collective

    thread = threading.Thread(target=beat, daemon=True, name="rank-heartbeat")
    thread.start()
    try:
        yield
        leave_together(store, me, world, stage, seq, period)
    except RuntimeError as err:  # gloo / NCCL: a peer closed its socket or timed out
        handling.set()
        if not _is_comm_error(err):
            _report(store, me, err)
            raise
        who = culprit(store, me, world, period)
        lost = RankFailed(
            f"rank {me}: {stage} stopped, {who}; the last checkpoint is kept: rerun the same "
            f"command to resume (--dist-timeout, now {timeout_s():g} s, bounds the wait)"
        )
        _report(store, me, lost)
        raise lost from err
    except BaseException as err:
        handling.set()
        _report(store, me, err)
        raise
    finally:
        stop.set()
        thread.join()


def leave_together(store, me: int, world: int, stage: str, seq: int, period: float) -> None:
    """Return once every rank has finished `stage` (this process's `seq`-th watched stage);
    raise `RankFailed` naming a rank that failed in it instead. Waits at most the group's
    timeout (`--dist-timeout`) for a silent rank."""
    if store is None:
        return
    key = f"{_KEY}left/{seq}/"
    deadline = time.monotonic() + timeout_s()
    try:
        store.set(key + str(me), "1")
        while not store.check([key + str(r) for r in range(world)]):
            failed = next((r for r in range(world) if r != me and _failed(store, r)), None)
            if failed is not None or time.monotonic() > deadline:
                who = culprit(store, me, world, period)
                raise RankFailed(f"rank {me}: {stage} finished here, but {who}")
            time.sleep(0.02)
    except RankFailed:
        raise
    except Exception:  # the store's host is gone: rank 0's launcher ended, so the job is over
        return


def _is_comm_error(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, dist.DistError) or any(
        s in text for s in ("gloo", "Connection", "Timed out", "NCCL", "timeout", "closed")
    )


def _failed(store, r: int) -> bool:
    return store.check([f"{_KEY}failed/{r}"])


def _report(store, me: int, err: BaseException) -> None:
    if store is None:
        return
    line = (str(err).splitlines() or [""])[0][:300]
    # When the store's host is gone too, the launcher's summary still names this rank.
    with contextlib.suppress(Exception):
        store.set(f"{_KEY}failed/{me}", f"{type(err).__name__}: {line}")
