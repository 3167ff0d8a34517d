"""Several trainers on the same batches in lock-step, then measured on one held-out pass.

Shared by ``quality_grid`` (one cell) and ``frontier`` (one sweep round). Each step feeds one
batch to every trainer, starting from a different trainer each step so none always runs first
(on a warm or cold cache), and times each trainer's steps on their own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

from torch import Tensor

from interp_bench.dictionaries.evaluate import EvalStats, evaluate


class PeerSAE:
    """A peer SAE fed the run's one hook (peers.py steps on a bare tensor)."""

    def __init__(self, peer, hook: str) -> None:
        self.peer, self.hook = peer, hook

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
    stats: dict[str, EvalStats]  # held-out quality per trainer
    seconds: dict[str, float]  # time spent in each trainer's steps
    load: list[float]  # 1-minute load average before training and after evaluation


def train_lockstep(
    trainers: dict[str, Any],
    batches: Iterator[dict[str, Tensor]],
    steps: int,
    held_out: Iterable[dict[str, Tensor]],
    hook: str,
    *,
    typical_norm: float,
    after_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Lockstep:
    """Take ``steps`` batches, each stepped by every trainer (rotating order); ``after_step(done,
    seconds)`` runs after each (progress, probes). Then evaluate every trainer's dictionary on
    ``held_out`` in one pass; ``hook`` is the one a peer SAE reads."""
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
    with ExitStack() as stack:
        dicts = [stack.enter_context(eval_dictionary(t, hook)) for t in trainers.values()]
        stats = evaluate(dicts, held_out, typical_norm=typical_norm)
    return Lockstep(dict(zip(names, stats, strict=True)), seconds, [load0, os.getloadavg()[0]])
