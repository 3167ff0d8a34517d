"""Stream shuffled batches of cached activations with bounded memory (the training hot path).

An epoch visits this rank's shards in a seeded random order, a window of several shards at a
time. A window's rows (BOS dropped by default) are copied from the memory-mapped shards into one
buffer with a single strided copy per hook, shuffled by a seeded permutation, and served as
batches gathered with `index_select`; rows that do not fill a last batch carry over into the next
window, so every row is served exactly once per epoch and only the epoch's final batch is short.
The next window is copied out of the memory maps and shuffled on a background thread while the
current one is served, so a batch costs the consumer a slice and a cast.

Everything the order depends on (shard sizes, seed, epoch) is known from the manifest, so
`batches(epoch, start_batch)` skips whole windows without reading them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .shards import ShardView, read_manifest, to_torch

POSITIONS = ("tokens", "seq", "pos")


@dataclass
class _Window:
    """What one window serves, computed from sizes alone: no data is read to build it."""

    index: int
    shards: np.ndarray  # local shard indices, in load order
    carry_shard: np.ndarray  # rows carried in from the previous window: local shard index...
    carry_row: np.ndarray  # ...and kept-row index within that shard
    perm: np.ndarray  # serving order over [carry rows, then each shard's kept rows]
    first_batch: int  # global batch index of this window's first batch
    n_batches: int


class ActivationReader:
    """Batches `{hook: Tensor[B, d]}` of the same tokens, shuffled, deterministic per (seed, epoch).

    `shuffle=False` serves every row once in cache order (for analysis; pair with
    `skip_bos=False, with_positions=True` to see every token). Memory: at most two windows of
    about `buffer_tokens` rows (at least one shard each) in the stored dtype (twice that
    while a window is being shuffled), plus one batch.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        hooks: list[str] | str,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        buffer_tokens: int = 1 << 17,
        skip_bos: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
        with_positions: bool = False,
        drop_last: bool = False,
        prefetch: bool = True,
    ):
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        if isinstance(hooks, str):
            hooks = [h.strip() for h in hooks.split(",") if h.strip()]
        if not hooks:
            raise ValueError(f"no hooks requested; {self.dir} holds {self.manifest.hook_names}")
        self.hooks = list(hooks)
        self.dims = {h: int(self.manifest.hook(h)["d"]) for h in self.hooks}
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        shards = self.manifest.shards
        if not shards:
            raise ValueError(
                f"{self.dir} has no complete shard yet; run `interp-bench cache` first"
            )
        if len(shards) < world_size:  # checked on every rank, so none of them starts alone
            raise ValueError(
                f"{len(shards)} shards cannot be split over {world_size} ranks; "
                "re-cache with a smaller --shard-tokens"
            )
        infos = shards[rank::world_size]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.skip_bos = skip_bos
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.with_positions = with_positions
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.ctx = self.manifest.context_len
        self.shard_files = [s.file for s in infos]
        self._views = [ShardView(self.dir / s.file, s.bytes) for s in infos]
        self._rows = np.array(
            [s.n_tokens - (s.seq_end - s.seq_start) * skip_bos for s in infos], dtype=np.int64
        )
        self._regular: dict[int, bool] = {}
        self.n_tokens = int(self._rows.sum())
        if self.n_tokens == 0:
            raise ValueError(f"{self.dir}: no rows to read (context length 1 with skip_bos?)")
        self.shards_per_window = max(1, buffer_tokens // int(self._rows.max())) if shuffle else 1
        self.max_buffer_rows = 0  # largest window actually loaded (for tests and tuning)
        self._next_epoch = 0

    # ---- sizes ---------------------------------------------------------------------------

    @property
    def n_batches(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.n_tokens, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self.n_batches

    # ---- iteration -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch; each new iteration starts the next epoch (0, 1, 2, ...)."""
        epoch = self._next_epoch
        self._next_epoch += 1
        return self.batches(epoch)

    def epoch(self, e: int) -> Iterator[dict[str, torch.Tensor]]:
        return self.batches(e)

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of `epoch` from `start_batch` on; skipped windows are never read."""
        windows = (w for w in self._plan(epoch) if w.first_batch + w.n_batches > start_batch)
        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            current = next(windows, None)
            pending = pool.submit(self._load, current) if pool and current else None
            while current is not None:
                bufs = pending.result() if pending else self._load(current)
                upcoming = next(windows, None)
                pending = pool.submit(self._load, upcoming) if pool and upcoming else None
                skip = max(0, start_batch - current.first_batch)
                yield from self._serve(current, bufs, skip)
                del bufs
                current = upcoming
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _plan(self, epoch: int) -> Iterator[_Window]:
        n = len(self._views)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        k, bsz = self.shards_per_window, self.batch_size
        carry_shard = np.empty(0, dtype=np.int64)
        carry_row = np.empty(0, dtype=np.int64)
        first = 0
        for w, start in enumerate(range(0, n, k)):
            ids = order[start : start + k]
            size = len(carry_row) + int(self._rows[ids].sum())
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch, w + 1]).permutation(size)
            else:
                perm = np.arange(size)
            last = start + k >= n
            full = size // bsz
            n_batches = full + (1 if last and size % bsz and not self.drop_last else 0)
            yield _Window(w, ids, carry_shard, carry_row, perm, first, n_batches)
            first += n_batches
            carry_shard, carry_row = self._identify(ids, carry_shard, carry_row, perm[full * bsz :])

    def _identify(self, ids, carry_shard, carry_row, idx) -> tuple[np.ndarray, np.ndarray]:
        """Map buffer positions `idx` of a window back to (local shard, kept row)."""
        shard = np.empty(len(idx), dtype=np.int64)
        row = np.empty(len(idx), dtype=np.int64)
        nc = len(carry_row)
        old = idx < nc
        shard[old], row[old] = carry_shard[idx[old]], carry_row[idx[old]]
        j = idx[~old] - nc
        ends = np.cumsum(self._rows[ids])
        which = np.searchsorted(ends, j, side="right")
        shard[~old] = ids[which]
        row[~old] = j - (ends - self._rows[ids])[which]
        return shard, row

    # ---- loading -------------------------------------------------------------------------

    def _is_regular(self, s: int) -> bool:
        """Whole sequences with pos 0..ctx-1: BOS rows can then be skipped with a strided view."""
        if s not in self._regular:
            pos = self._views[s].array("pos")
            n = len(pos)
            self._regular[s] = n % self.ctx == 0 and bool(
                (pos.reshape(-1, self.ctx) == np.arange(self.ctx, dtype=pos.dtype)).all()
            )
        return self._regular[s]

    def _physical(self, s: int, kept: np.ndarray) -> np.ndarray:
        if not self.skip_bos:
            return kept
        if self._is_regular(s):
            per = self.ctx - 1
            return (kept // per) * self.ctx + kept % per + 1
        return np.flatnonzero(self._views[s].array("pos") != 0)[kept]

    def _names(self) -> list[str]:
        return self.hooks + (list(POSITIONS) if self.with_positions else [])

    def _source(self, s: int, name: str) -> torch.Tensor:
        view = self._views[s]
        t = to_torch(view.array(name), view.dtype(name))
        return t if t.ndim == 2 else t.unsqueeze(1)

    def _copy_kept(self, s: int, name: str, dst: torch.Tensor) -> None:
        """Shard `s`'s kept rows of `name` into `dst`: one strided copy, no cast."""
        src = self._source(s, name).view(-1, *dst.shape[1:])
        if not self.skip_bos:
            dst.copy_(src)
        elif self._is_regular(s):
            tail = dst.shape[1:]
            dst.view(-1, self.ctx - 1, *tail).copy_(src.view(-1, self.ctx, *tail)[:, 1:])
        else:
            dst.copy_(src[torch.from_numpy(self._views[s].array("pos") != 0)])

    def _load(self, w: _Window) -> dict[str, torch.Tensor]:
        """The window's rows in serving order, in the stored dtype: a sequential copy out of the
        memory maps, then one permuting gather (both on the prefetch thread), so serving a batch
        is a slice plus the cast to the output dtype."""
        size = len(w.perm)
        self.max_buffer_rows = max(self.max_buffer_rows, size)
        first = self._views[int(w.shards[0])]
        perm = None if not self.shuffle else torch.from_numpy(w.perm)
        nc = len(w.carry_row)
        bufs = {}
        for name in self._names():
            shape = (size,) if name in POSITIONS else (size, self.dims[name])
            buf = torch.empty(shape, dtype=first.dtype(name))
            for s in np.unique(w.carry_shard):
                sel = torch.from_numpy(np.flatnonzero(w.carry_shard == s))
                phys = torch.from_numpy(self._physical(int(s), w.carry_row[sel.numpy()]))
                rows = self._source(int(s), name).index_select(0, phys)
                buf.index_copy_(0, sel, rows.view(-1, *shape[1:]))
            offset = nc
            for s in w.shards:
                k = int(self._rows[s])
                self._copy_kept(int(s), name, buf[offset : offset + k])
                offset += k
            if perm is not None:
                buf = buf.index_select(0, perm)
            if self.device.type == "cuda":
                buf = buf.pin_memory()
            bufs[name] = buf
        return bufs

    def _serve(self, w: _Window, bufs: dict[str, torch.Tensor], skip: int):
        bsz, size = self.batch_size, len(w.perm)
        cuda = self.device.type == "cuda"
        for i in range(skip, w.n_batches):
            rows = slice(i * bsz, min((i + 1) * bsz, size))
            out = {}
            for name, buf in bufs.items():
                # On CUDA the stored (narrower) dtype crosses PCIe and is cast on the GPU.
                dtype = torch.int64 if name in POSITIONS else self.dtype
                if cuda:
                    out[name] = buf[rows].to(self.device, non_blocking=True).to(dtype)
                else:  # a copy, so a kept batch does not pin its whole window in memory
                    out[name] = buf[rows].to(dtype, copy=True)
            yield out


@dataclass
class HookStats:
    """For input normalisation: mean activation and mean L2 norm (BOS excluded by default)."""

    mean: torch.Tensor  # [d], float32
    mean_norm: float
    n_tokens: int = 0


def hook_stats(
    cache_dir: str | Path, hook: str, max_tokens: int = 65536, skip_bos: bool = True
) -> HookStats:
    """Statistics on an evenly spread sample of at most `max_tokens` rows, cached as JSON."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    manifest.hook(hook)
    key = f"stats_{hook}_{max_tokens}{'' if skip_bos else '_bos'}.json"
    path = cache_dir / key
    shard_ids = [s.sha256 for s in manifest.shards]
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("shards") == shard_ids:
            mean = torch.tensor(saved["mean"], dtype=torch.float32)
            return HookStats(mean, float(saved["mean_norm"]), int(saved["n_tokens"]))
    reader = ActivationReader(cache_dir, [hook], 1, shuffle=False, skip_bos=skip_bos)
    per_shard = -(-max_tokens // len(reader._views))
    total = torch.zeros(reader.dims[hook], dtype=torch.float64)
    norm_sum, n = 0.0, 0
    for s in range(len(reader._views)):
        rows = int(reader._rows[s])
        kept = np.unique(np.linspace(0, rows - 1, min(per_shard, rows)).astype(np.int64))
        phys = torch.from_numpy(reader._physical(s, kept))
        x = reader._source(s, hook).index_select(0, phys).to(torch.float64)
        total += x.sum(0)
        norm_sum += float(x.norm(dim=1).sum())
        n += len(kept)
    stats = HookStats((total / n).float(), norm_sum / n, n)
    record = {"hook": hook, "n_tokens": n, "skip_bos": skip_bos, "shards": shard_ids}
    record |= {"mean_norm": stats.mean_norm, "mean": stats.mean.tolist()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:
        pass  # read-only cache dir: the stats are cheap to recompute
    return stats
