"""Data-parallel helpers: each rank reads its own shards, gradients are averaged by all-reduce.

We all-reduce gradients by hand instead of wrapping dictionaries in `DistributedDataParallel`:
the trainer steps several dictionaries per batch, some of which only touch k latents, and a
plain averaged gradient is all that data parallelism needs. With equal per-rank batches and a
per-token mean loss, the averaged gradient equals the gradient on the concatenated batch.

Inside `local()` the helpers act as if this process were alone (rank 0 of 1) except `barrier`:
that is how `spread.py` gives each rank its own dictionaries, trained on gathered batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

_local = False


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and not _local


@contextmanager
def local() -> Iterator[None]:
    """Collectives off (rank 0 of 1), barriers still global: each rank trains on its own."""
    global _local
    before, _local = _local, True
    try:
        yield
    finally:
        _local = before


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(timeout: float | None = None) -> torch.device | None:
    """Join the process group `torchrun` describes in the environment; no-op when not launched so.

    Returns this rank's CUDA device when CUDA is present (NCCL), else None (gloo on CPU). A
    collective waits at most `timeout` seconds (default 300, `$INTERP_BENCH_DIST_TIMEOUT`).
    """
    from activation_cache import distributed

    return distributed.init(timeout)


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average tensors in place across ranks (one flattened all-reduce, not one per tensor)."""
    if not enabled() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce with op "sum" or "max" (max of bools is "any")."""
    if enabled():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        if t.dtype == torch.bool:
            as_int = t.to(torch.uint8)
            dist.all_reduce(as_int, ops[op])
            t.copy_(as_int.bool())
        else:
            dist.all_reduce(t, ops[op])
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    if not enabled():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Copy rank `src`'s tensors to every rank (used so all ranks start from identical weights)."""
    if enabled():
        for t in tensors:
            dist.broadcast(t.data, src)


def barrier() -> None:
    """Global even inside `local()`: every rank reaches the same barriers in the same order."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_true(flag: bool) -> bool:
    """True when `flag` holds on every rank."""
    if not enabled():
        return flag
    nccl = dist.get_backend() == "nccl"
    t = torch.tensor([int(flag)], device=torch.cuda.current_device() if nccl else "cpu")
    dist.all_reduce(t, dist.ReduceOp.MIN)
    return bool(t.item())
