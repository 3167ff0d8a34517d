"""Several trainers on the same batches in lock-step, then measured on one held-out pass.

Shared by ``quality_grid`` (one cell), ``frontier`` (one sweep round), ``bench_train`` (one row;
``seeds_train`` one seed) and ``bench_transcoder``. Each step feeds one batch to every trainer,
starting from a different trainer each step so none always runs first (on a warm or cold cache),
and times each trainer's steps on their own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

from torch import Tensor

from interp_bench.dictionaries.evaluate import EvalStats, evaluate


class PeerSAE:
    """A peer SAE fed the run's one hook (peers.py steps on a bare tensor)."""

    def __init__(self, peer, hook: str) -> None:
        self.peer, self.hook = peer, hook

    @property
    def config(self) -> dict:
        """The peer's settings, recorded with its results like ours."""
        return self.peer.config

    def step(self, batch: dict[str, Tensor]) -> None:
        self.peer.step(batch[self.hook])

    def dictionary(self, hook: str):
        return self.peer.dictionary(hook)


@contextmanager
def eval_dictionary(trainer, hook: str) -> Iterator:
    """The dictionary in its evaluation state: ours folded, a peer's as it saves it (swapped in
    for the block)."""
    if isinstance(trainer, PeerSAE):
        with trainer.dictionary(hook) as d:
            yield d
    else:
        yield trainer.dictionary()


class Lockstep(NamedTuple):
    stats: dict[str, EvalStats]  # held-out quality per trainer (not the timed_only ones)
    seconds: dict[str, float]  # time spent in each trainer's steps
    load: list[float]  # 1-minute load average before training and after evaluation


def train_lockstep(
    trainers: dict[str, Any],
    batches: Iterator[dict[str, Tensor]],
    steps: int,
    held_out: Iterable[dict[str, Tensor]],
    hook: str,
    *,
    typical_norm: float | None,
    after_step: Callable[[int, dict[str, float]], None] | None = None,
    timed_only: Collection[str] = (),
    after_eval: Callable[[dict[str, Any], dict[str, EvalStats]], None] | None = None,
) -> Lockstep:
    """Take ``steps`` batches, each stepped by every trainer (rotating order); ``after_step(done,
    seconds)`` runs after each (progress, probes). Then evaluate every trainer's dictionary on
    ``held_out`` in one pass (``typical_norm`` None: `evaluate`'s first-batch rule), except the
    ``timed_only`` ones (reference probes with no dictionary); ``hook`` is the one a peer SAE
    reads. ``after_eval(dictionaries, stats)`` runs while the dictionaries are still in their
    evaluation state (a peer's swapped-in weights), for measurements beyond `evaluate`'s."""
    names = list(trainers)
    seconds = dict.fromkeys(names, 0.0)
    load0 = os.getloadavg()[0]
    for i in range(steps):
        x = next(batches)
        for j in range(len(names)):
            n = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            trainers[n].step(x)
            seconds[n] += time.perf_counter() - t0
        if after_step is not None:
            after_step(i + 1, seconds)
    evaluated = [n for n in names if n not in timed_only]
    with ExitStack() as stack:
        dicts = {n: stack.enter_context(eval_dictionary(trainers[n], hook)) for n in evaluated}
        stats = evaluate(list(dicts.values()), held_out, typical_norm=typical_norm)
        by_name = dict(zip(evaluated, stats, strict=True))
        if after_eval is not None:
            after_eval(dicts, by_name)
    return Lockstep(by_name, seconds, [load0, os.getloadavg()[0]])
