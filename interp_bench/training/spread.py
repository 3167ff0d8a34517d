"""Many dictionaries, several ranks: each rank trains its own share of the dictionaries.

Data parallelism copies every dictionary to every rank and all-reduces their gradients each
step. With many dictionaries (a sweep, or a layer each) it is cheaper to do as sparsify's
`distribute_modules` does: every rank still reads its own shards, the batch is gathered so each
rank holds the global batch (every rank's rows, in rank order), and each rank steps only its
own dictionaries on it, without any gradient traffic. A dictionary trained so equals the one a
single process trains on the same global batches (no averaging at all).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from interp_bench.training import checkpoint as ckpt
from interp_bench.training import ddp


def share(n_dicts: int, rank: int, world: int) -> list[int]:
    """Indices of the dictionaries `rank` trains: round robin, so a sweep's sizes mix."""
    if n_dicts < world:
        raise ValueError(
            f"{n_dicts} dictionaries cannot be spread over {world} ranks; "
            "use --spread data (or train more dictionaries)"
        )
    return list(range(rank, n_dicts, world))


def _all_true(flag: bool, device: torch.device) -> bool:
    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(flag)], device=dev)
    dist.all_reduce(t, dist.ReduceOp.MIN)
    return bool(t.item())


class GatheredBatches:
    """A reader whose every batch is the global batch: this rank's rows gathered with every
    other rank's, in rank order. Ends, on every rank at once, when any rank runs out."""

    def __init__(self, reader, device: torch.device):
        self.reader, self.device = reader, torch.device(device)

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        world = dist.get_world_size()
        it = iter(self.reader.batches(epoch, start_batch))
        try:
            while _all_true((batch := next(it, None)) is not None, self.device):
                out = {}
                for name in sorted(batch):
                    x = batch[name].contiguous()
                    parts = [torch.empty_like(x) for _ in range(world)]
                    dist.all_gather(parts, x)
                    out[name] = torch.cat(parts)
                yield out
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


def agree_on_checkpoints(out_dir: Path, names: list[str], mine: list[int]) -> None:
    """Drop this rank's checkpoints newer than the newest step every dictionary has, so every
    rank resumes from the same step (a kill can land between two ranks' checkpoints)."""
    dirs = [Path(out_dir) / n / "checkpoint" for n in names]
    common = ckpt.latest_common_step(dirs)
    for i in mine:
        for step in ckpt.steps(dirs[i]):
            if common is None or step > common:
                shutil.rmtree(dirs[i] / f"{ckpt.PREFIX}{step:09d}", ignore_errors=True)
    ddp.barrier()


def fit(trainer_cls, cfgs, train_cfg, reader, *, stats, device, out_dir, resume: bool, names):
    """Train this rank's share of `cfgs` on gathered batches; returns (trainer, indices)."""
    import dataclasses

    mine = share(len(cfgs), ddp.rank(), ddp.world_size())
    world = ddp.world_size()
    if out_dir is not None and resume:
        agree_on_checkpoints(Path(out_dir), names, mine)
    # The trainer sees one process with the global batch: `batch_size` is per step, all ranks.
    tc = dataclasses.replace(train_cfg, batch_size=train_cfg.batch_size * world)
    source = GatheredBatches(reader, device)
    with ddp.local():
        trainer = trainer_cls(
            [cfgs[i] for i in mine], tc, stats=stats, device=device, out_dir=out_dir,
            names=[names[i] for i in mine],
        )  # fmt: skip
        dicts = trainer.fit(source, resume=resume)
    return trainer, dicts, mine
