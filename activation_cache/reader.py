"""Stream shuffled batches of cached activations with bounded memory (the training hot path).

An epoch visits this rank's shards in a seeded random order, a window of several shards at a
time. A window's shards are read whole into a reusable staging buffer with plain sequential
reads (the same work as reading the files raw, done on a background thread while the previous
window is served); a seeded permutation of the window's rows (BOS rows left out by default) is
served as batches, each one `index_select` gather plus the cast to the output dtype. Rows that do
not fill a window's last batch carry over into the next window, so every row is served exactly
once per epoch and only the epoch's final batch is short.

Everything the order depends on (shard sizes, seed, epoch) is known from the manifest, so
`batches(epoch, start_batch)` skips whole windows without reading them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .shards import ShardView, cache_tag, read_manifest, temp_name, to_torch

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
    `skip_bos=False, with_positions=True` to see every token). Memory: two staging buffers of
    `buffer_tokens` rows (at least one shard) in the stored dtype, plus the batches in flight.
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
        verify: bool = True,
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
        # Each shard's sha256 is checked once per process, just before its first read (in the
        # prefetch thread, so it overlaps training); `verify=False` only for sampling statistics.
        self._views = [
            ShardView(self.dir / s.file, s.bytes, s.sha256 if verify else None) for s in infos
        ]
        for view, info in zip(self._views, infos, strict=True):
            view.check(info, self.dims)
        self._rows = np.array(
            [s.n_tokens - (s.seq_end - s.seq_start) * skip_bos for s in infos], dtype=np.int64
        )
        self._n_phys = np.array([s.n_tokens for s in infos], dtype=np.int64)
        self._regular: dict[int, bool] = {}
        self.n_tokens = int(self._rows.sum())
        if self.n_tokens == 0:
            raise ValueError(f"{self.dir}: no rows to read (context length 1 with skip_bos?)")
        self.shards_per_window = max(1, buffer_tokens // int(self._n_phys.max())) if shuffle else 1
        self._staging_rows = batch_size - 1 + self.shards_per_window * int(self._n_phys.max())
        self._spare: list[dict[str, torch.Tensor]] = []
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
        # Two staging buffers per iteration: one is served while the next window fills the
        # other. A buffer is refilled only after its window's last batch has been yielded, and
        # batches are gathered copies, so nothing yielded ever changes underneath its holder.
        # Staging buffers outlive the iteration (reused next epoch: no fresh page faults), but
        # an iteration running alongside this one gets its own.
        slots = [self._spare.pop() if self._spare else {} for _ in range(2)]
        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            current = next(windows, None)
            pending = pool.submit(self._load, current, slots[0]) if pool and current else None
            i = 0
            while current is not None:
                bufs, order = pending.result() if pending else self._load(current, slots[i % 2])
                upcoming = next(windows, None)
                pending = None
                if pool and upcoming:
                    pending = pool.submit(self._load, upcoming, slots[(i + 1) % 2])
                skip = max(0, start_batch - current.first_batch)
                yield from self._serve(current, bufs, order, skip)
                current, i = upcoming, i + 1
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._spare.extend(slots)

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

    def locate(self, epoch: int, batch: int, rows: list[int]) -> list[tuple[str, int, int, int]]:
        """Where rows of batch `batch` of `epoch` came from: (shard file, row in the file,
        sequence, position) each. Recomputed from the plan, so serving costs nothing extra."""
        for w in self._plan(epoch):
            if w.first_batch <= batch < w.first_batch + w.n_batches:
                base = (batch - w.first_batch) * self.batch_size
                idx = w.perm[base + np.asarray(rows, dtype=np.int64)]
                shard, kept = self._identify(w.shards, w.carry_shard, w.carry_row, idx)
                out = []
                for s, k in zip(shard.tolist(), kept.tolist(), strict=True):
                    row = int(self._physical(s, np.array([k]))[0])
                    seq = int(self._views[s].array("seq")[row])
                    pos = int(self._views[s].array("pos")[row])
                    out.append((self.shard_files[s], row, seq, pos))
                return out
        raise ValueError(f"epoch {epoch} has no batch {batch}")

    # ---- loading -------------------------------------------------------------------------

    def _is_regular(self, s: int) -> bool:
        """Whole sequences with pos 0..ctx-1, so kept rows map to file rows by arithmetic."""
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
        """Memory-mapped rows of one shard, for random access (carried rows, statistics)."""
        view = self._views[s]
        return to_torch(view.array(name), view.dtype(name))

    def _order(self, w: _Window) -> tuple[np.ndarray, int]:
        """Serving order as staging-buffer rows (carried rows first, then whole shards, BOS
        rows included but never served), and the staging size."""
        nc = len(w.carry_row)
        parts, offset = [np.arange(nc)], nc
        for s in w.shards:
            parts.append(offset + self._physical(int(s), np.arange(self._rows[s])))
            offset += int(self._n_phys[s])
        return np.concatenate(parts)[w.perm], offset

    def _load(self, w: _Window, slot: dict[str, torch.Tensor]):
        """Fill a staging buffer with the window's shards, read whole and in the stored dtype
        (sequential `readinto`, like a raw file read), plus the rows carried in."""
        order, size = self._order(w)
        self.max_buffer_rows = max(self.max_buffer_rows, size)
        first = self._views[int(w.shards[0])]
        bufs = {}
        for name in self._names():
            shape = first.shape(name)[1:]
            if name not in slot:
                slot[name] = torch.empty((self._staging_rows, *shape), dtype=first.dtype(name))
            buf = bufs[name] = slot[name][:size]
            for s in np.unique(w.carry_shard):
                sel = np.flatnonzero(w.carry_shard == s)
                phys = torch.from_numpy(self._physical(int(s), w.carry_row[sel]))
                rows = self._source(int(s), name).index_select(0, phys)
                buf.index_copy_(0, torch.from_numpy(sel), rows)
            offset = len(w.carry_row)
            for s in w.shards:
                n = int(self._n_phys[s])
                self._views[s].read_into(name, buf[offset : offset + n])
                offset += n
        return bufs, torch.from_numpy(order)

    def _serve(self, w: _Window, bufs: dict[str, torch.Tensor], order: torch.Tensor, skip: int):
        bsz = self.batch_size
        cuda = self.device.type == "cuda"
        order_np = order.numpy()
        # The gather is numpy's `take`: single-threaded, and as fast as torch's index_select
        # with one thread, while torch's thread pool on a busy machine ran it ten times slower.
        arrays = {name: _as_numpy(buf) for name, buf in bufs.items()}
        for i in range(skip, w.n_batches):
            idx = order_np[i * bsz : (i + 1) * bsz]
            out = {}
            for name, buf in bufs.items():
                x = np.take(arrays[name], idx, axis=0)  # the shuffle: a fresh array
                if name in POSITIONS:
                    out[name] = torch.from_numpy(x.astype(np.int64)).to(self.device)
                elif cuda:  # the stored (narrower) dtype crosses PCIe, the cast runs on the GPU
                    t = _from_numpy(x, buf.dtype).pin_memory()
                    out[name] = t.to(self.device, non_blocking=True).to(self.dtype)
                else:
                    out[name] = _cast(x, buf.dtype, self.dtype)
            yield out


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _from_numpy(x: np.ndarray, stored: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.view(torch.bfloat16) if stored == torch.bfloat16 else t


# Elements per cast call: below torch's parallel grain size (32768), so each call runs on the
# calling thread. A cast is memory-bound; one thread saturates it, and on a busy machine torch's
# thread pool made the same cast ten times slower (benchmarks/bench_cache.py).
_CAST_CHUNK = 32768


def _cast(x: np.ndarray, stored: torch.dtype, dtype: torch.dtype) -> torch.Tensor:
    """Gathered rows (numpy, stored dtype) as a torch tensor of `dtype`."""
    src = _from_numpy(x, stored)
    if dtype == stored:
        return src
    out = torch.empty(src.shape, dtype=dtype)
    flat_src, flat_out = src.view(-1), out.view(-1)
    for a in range(0, flat_src.numel(), _CAST_CHUNK):
        flat_out[a : a + _CAST_CHUNK].copy_(flat_src[a : a + _CAST_CHUNK])
    return out


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
    # No sha256 pass here: it would hash every shard before training starts. The statistics are
    # keyed by the shards' sha256 list, and training checks each shard before reading it.
    reader = ActivationReader(cache_dir, [hook], 1, shuffle=False, skip_bos=skip_bos, verify=False)
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
    tmp = path.with_name(temp_name(path.name, cache_tag(manifest.config)))
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:  # read-only or full cache dir: the stats are cheap to recompute
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return stats
