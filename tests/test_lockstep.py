"""benchmarks.lockstep.train_lockstep, the one lock-step loop of bench_train, bench_transcoder,
quality_grid and frontier: every trainer steps every batch with the first mover rotating, timing
probes are stepped but not evaluated, and after_eval sees peers in their evaluation state."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from benchmarks.lockstep import PeerSAE, train_lockstep
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary

HOOK, D, STEPS = "L0.resid_post", 8, 3


def _dictionary(hook: str = HOOK) -> SparseDictionary:
    torch.manual_seed(0)
    return SparseDictionary(DictionaryConfig(d_in=D, d_sae=16, k=2, hook_in=hook)).eval()


class Ours:
    """Steps dict batches; its dictionary is a plain copy."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def step(self, batch: dict[str, Tensor]) -> None:
        self.log.append((self.name, int(batch[HOOK][0, 0])))

    def dictionary(self) -> SparseDictionary:
        return _dictionary()


class Peer:
    """Steps bare tensors; its dictionary is valid only inside the block."""

    def __init__(self, log: list) -> None:
        self.log, self.in_eval = log, False

    def step(self, x: Tensor) -> None:
        self.log.append(("peer", int(x[0, 0])))

    @contextmanager
    def dictionary(self, hook: str) -> Iterator[SparseDictionary]:
        self.in_eval = True
        try:
            yield _dictionary(hook)
        finally:
            self.in_eval = False


def test_lockstep_rotates_times_probes_and_evaluates_in_eval_state():
    log: list = []
    peer = Peer(log)
    trainers = {"a": Ours("a", log), "peer": PeerSAE(peer, HOOK), "probe": Ours("probe", log)}
    batches = ({HOOK: torch.full((4, D), float(i))} for i in range(100))
    held_out = [{HOOK: torch.randn(32, D, generator=torch.Generator().manual_seed(1))}]
    done: list[int] = []
    seen: dict = {}

    def after_eval(dicts: dict, stats: dict) -> None:
        seen.update(names=list(dicts), stats=list(stats), peer_in_eval=peer.in_eval)

    out = train_lockstep(
        trainers, batches, STEPS, held_out, HOOK, typical_norm=None,
        after_step=lambda n, seconds: done.append(n), timed_only=["probe"], after_eval=after_eval,
    )  # fmt: skip
    assert log == [
        ("a", 0), ("peer", 0), ("probe", 0),
        ("peer", 1), ("probe", 1), ("a", 1),
        ("probe", 2), ("a", 2), ("peer", 2),
    ]  # fmt: skip
    assert done == [1, 2, 3]
    assert set(out.seconds) == {"a", "peer", "probe"} and all(s > 0 for s in out.seconds.values())
    assert list(out.stats) == ["a", "peer"]
    assert seen == {"names": ["a", "peer"], "stats": ["a", "peer"], "peer_in_eval": True}
    assert not peer.in_eval
    # Same weights, same held-out batch: the peer's dictionary measures as ours does.
    assert out.stats["a"].fvu == out.stats["peer"].fvu and out.stats["a"].tokens == 32


def test_peer_config_is_recorded_like_ours():
    """frontier and bench_train record ``trainer.config`` with each result; a wrapped peer's is
    its own settings, not an empty dict."""
    peer = Peer([])
    peer.config = {"optimizer": "signum", "lr": 1e-3}
    assert PeerSAE(peer, HOOK).config == {"optimizer": "signum", "lr": 1e-3}
