"""Caching under torchrun: every rank runs the model on its own share of the shards.

Shard `i` always holds the same sequences (`i * seqs_per_shard` on), so a cache written by N
ranks is file for file the cache one process writes. Ranks never write the same file: shard
`i`'s temp name is its own, and each rank records what it finished in its own progress file,
`rank_RRRRR.json` (a manifest of that rank's shards, atomic temp + rename), which doubles as its
heartbeat. `manifest.json` is written once, by rank 0, when every shard is on disk: a run that
dies leaves no partial manifest (a single process's partial manifest from before is left as it
was). Resuming, with any number of ranks, takes every shard a manifest or progress file lists
and finds whole on disk, and shares out the rest.

A rank whose heartbeat stops (its progress file is touched after every forward pass and while
it waits) because it was killed, crashed, hangs, or runs on a machine that cannot see --out,
makes every other rank stop within the timeout (`--dist-timeout`, default 300 s, or
`$INTERP_BENCH_DIST_TIMEOUT`) with an error that names it; what was written is kept for the
resume. The only collectives are at the start (the plan), so a slow rank never trips a timeout
as long as each of its forward passes takes less than the timeout.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .shards import (
    MANIFEST,
    Manifest,
    ShardInfo,
    cache_tag,
    read_manifest,
    shard_name,
    temp_name,
    write_manifest,
)

DEFAULT_TIMEOUT_S = 300.0
_timeout_s: float | None = None


class RankLost(ValueError):
    """Another rank stopped; the message names it. A ValueError, so the CLI prints one line."""


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def timeout_s() -> float:
    """Seconds a rank may go silent before the others stop (set by `init`, else the env)."""
    if _timeout_s is not None:
        return _timeout_s
    return float(os.environ.get("INTERP_BENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def init(timeout: float | None = None, backend: str | None = None) -> torch.device | None:
    """Join the process group torchrun describes in the environment (no-op outside torchrun).

    Returns this rank's CUDA device when CUDA is present, else None. The group's timeout is
    `timeout` seconds, so a collective waiting on a dead rank fails instead of hanging.
    """
    global _timeout_s
    if timeout is not None:
        if not timeout > 0:
            raise ValueError(f"--dist-timeout must be positive, got {timeout}")
        _timeout_s = float(timeout)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    device = None
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device is not None else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    return device


def rank_file(r: int) -> str:
    return f"rank_{r:05d}.json"


def has_rank_files(out_dir: str | Path) -> bool:
    out_dir = Path(out_dir)
    return out_dir.is_dir() and any(out_dir.glob("rank_*.json"))


def _read(path: Path) -> Manifest | None:
    try:
        return Manifest.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None  # vanished (renamed over, or cleaned up by rank 0) or cut short


def _write_rank(out_dir: Path, r: int, m: Manifest) -> None:
    """Atomic, like the manifest, under this rank's own temp name (carrying the cache's tag)."""
    tmp = out_dir / temp_name(rank_file(r), cache_tag(m.config))
    tmp.write_text(m.to_json())
    os.replace(tmp, out_dir / rank_file(r))


def _whole(out_dir: Path, s: ShardInfo) -> bool:
    path = out_dir / s.file
    return path.exists() and path.stat().st_size == s.bytes


def _begin(out_dir: Path, fresh: Manifest, stack: contextlib.ExitStack) -> tuple:
    """Rank 0 (or a single process resuming): check and lock the folder, then `_start`.

    Only rank 0 takes the folder's lock, for the whole run: the other ranks of the same job write
    into it too, while a second job (single or multi-process) on the same folder fails at once.
    """
    from .cache import locked, prepare_dir

    if out_dir.is_dir():
        _check_rank_files(out_dir, fresh)  # "different arguments" beats "not empty"
    prepare_dir(out_dir, fresh)
    stack.enter_context(locked(out_dir))
    return _start(out_dir, fresh)


def _check_rank_files(out_dir: Path, fresh: Manifest) -> list[Manifest]:
    """The progress files in the folder; refuses one recording another config."""
    from .cache import _check_resumable

    found = []
    for path in sorted(out_dir.glob("rank_*.json")):
        old = _read(path)
        if old is None:
            continue
        _check_resumable(out_dir, Manifest(**{**vars(old), "shards": []}), fresh.config)
        found.append(old)
    return found


def _remove_own_rank_files(out_dir: Path, tag: str, keep: str | None = None) -> None:
    from .cache import _ours

    for path in out_dir.glob("rank_*.json"):
        if path.name != keep and _ours(path, tag):
            path.unlink()


def _start(out_dir: Path, fresh: Manifest) -> tuple[Manifest, list[ShardInfo]]:
    """Rank 0, folder locked: collect the shards already done, clear this cache's leftovers.

    The shards found are recorded in rank 0's progress file before any other progress file is
    removed, so a kill at any moment here loses no finished shard. Only files carrying this
    cache's tag (temp names, shard headers, progress files of the same config) are removed.
    """
    from .cache import _discard_strays, open_cache

    tag = cache_tag(fresh.config)
    manifest = open_cache(out_dir, fresh)
    if manifest.complete:  # progress files left by a kill just after the manifest went in
        _remove_own_rank_files(out_dir, tag)
        return manifest, list(manifest.shards)
    done = {s.file: s for s in manifest.shards}
    for old in _check_rank_files(out_dir, fresh):
        for s in old.shards:
            done.setdefault(s.file, s)
    done = {f: s for f, s in done.items() if _whole(out_dir, s)}
    _discard_strays(out_dir, 0, tag, keep=set(done))
    mine = Manifest(**{**vars(fresh), "shards": sorted(done.values(), key=lambda s: s.seq_start)})
    _write_rank(out_dir, 0, mine)
    _remove_own_rank_files(out_dir, tag, keep=rank_file(0))
    return manifest, mine.shards


class Heartbeat:
    """Touches this rank's progress file as it works and watches every other rank's.

    A rank counts as alive while its progress file's mtime keeps changing (compared with this
    machine's clock only, so clocks on other machines do not matter) or once it says it is done.
    The file is touched after every forward pass and while waiting, not by a thread: a rank stuck
    inside a forward pass stops its heartbeat too.
    """

    def __init__(self, out_dir: Path, me: int, ranks: list[int], timeout: float):
        self.out_dir, self.me, self.timeout = out_dir, me, timeout
        self.period = max(0.05, min(5.0, timeout / 5))
        now = time.monotonic()
        self.seen = {r: (None, now) for r in ranks if r != me}
        self._last = now - self.period

    def watch_only(self, r: int) -> None:
        self.seen = {r: self.seen.get(r, (None, time.monotonic()))}

    def tick(self) -> None:
        """Say this rank is alive and check the others (at most once a period)."""
        now = time.monotonic()
        if now - self._last < self.period:
            return
        self._last = now
        with contextlib.suppress(FileNotFoundError):  # renamed over this instant
            os.utime(self.out_dir / rank_file(self.me))
        for r, (mtime, since) in list(self.seen.items()):
            path = self.out_dir / rank_file(r)
            try:
                st = path.stat().st_mtime_ns
            except FileNotFoundError:
                st = None
            if st != mtime:
                self.seen[r] = (st, now)
                if st is not None and (m := _read(path)) is not None and m.complete:
                    del self.seen[r]  # finished its share: silence is expected now
            elif now - since > self.timeout:
                what = "wrote no progress file" if st is None else "stopped making progress"
                raise RankLost(
                    f"rank {self.me}: rank {r} {what} for {self.timeout:g} s (killed, crashed or "
                    "hung; on several machines --out must be one folder they all share); "
                    "stopping. Finished shards are kept: rerun the same command to resume "
                    "(--dist-timeout sets the wait)"
                )

    def wait_for(self, done) -> None:
        """Block until `done()` holds, or raise once a rank this one waits on goes silent."""
        while not done():
            self.tick()
            time.sleep(min(self.period, 0.2))


def _plan(
    out_dir: Path, fresh: Manifest, stack: contextlib.ExitStack
) -> tuple[Manifest, list[ShardInfo]]:
    """Rank 0 decides (or refuses) and every rank gets the same answer, errors included."""
    configs = [None] * world()
    dist.all_gather_object(configs, fresh.config)
    answer: list = [None]
    if rank() == 0:
        differ = [r for r, c in enumerate(configs) if c != fresh.config]
        try:
            if differ:
                keys = sorted(
                    k for k in fresh.config if configs[differ[0]].get(k) != fresh.config[k]
                )
                raise ValueError(
                    f"ranks {differ} were given different arguments or data than rank 0 "
                    f"({', '.join(keys)}); launch every rank with the same command and corpus"
                )
            answer = [_begin(out_dir, fresh, stack)]
        except ValueError as err:  # every rank raises it, not only rank 0
            answer = [err]
    dist.broadcast_object_list(answer, src=0)
    if isinstance(answer[0], BaseException):
        raise type(answer[0])(str(answer[0]))
    return answer[0]


def cache_sharded(
    model,
    tokens: torch.Tensor,
    hooks: list[str] | str,
    out_dir: str | Path,
    *,
    dtype: str = "float16",
    batch_size: int = 8,
    shard_tokens: int = 65536,
    meta: dict | None = None,
    progress: bool = True,
) -> Manifest:
    """`cache_activations` for one rank of several: same arguments on every rank, same cache."""
    from .cache import plan_cache

    out_dir = Path(out_dir)
    specs, fresh = plan_cache(model, tokens, hooks, dtype, shard_tokens, meta)
    with contextlib.ExitStack() as stack:  # rank 0 holds the folder's lock until the end
        if world() > 1:
            manifest, done = _plan(out_dir, fresh, stack)
        else:  # resuming a multi-process run's leftovers in one process
            manifest, done = _begin(out_dir, fresh, stack)
        if manifest.complete:
            return manifest
        return _write_share(model, tokens, specs, out_dir, fresh, done, batch_size, progress)


def _write_share(
    model, tokens, specs, out_dir: Path, fresh: Manifest, done, batch_size: int, progress: bool
) -> Manifest:
    """This rank's shards, then (rank 0) the manifest once every rank is done."""
    from .cache import _model_device, write_indexed_shard
    from .hooks import capturing

    me, n_ranks = rank(), world()
    n_seq, ctx = tokens.shape
    n_shards = -(-n_seq // fresh.seqs_per_shard)
    finished = {s.file for s in done}
    todo = [i for i in range(n_shards) if shard_name(i) not in finished][me::n_ranks]
    mine = Manifest(**{**vars(fresh), "shards": list(done) if me == 0 else []})
    if me != 0:
        _write_rank(out_dir, me, mine)

    device = _model_device(model)
    share = sum(min(n_seq, (i + 1) * fresh.seqs_per_shard) - i * fresh.seqs_per_shard for i in todo)
    bar = tqdm(
        total=share * ctx,
        unit="tok",
        unit_scale=True,
        desc=f"caching {out_dir.name} (rank {me} of {n_ranks})",
        disable=not progress or me != 0,
        dynamic_ncols=True,
    )
    beat = Heartbeat(out_dir, me, list(range(n_ranks)), timeout_s())
    with bar, capturing(model, specs) as capture:

        def checked(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            beat.tick()
            return capture(batch)

        for index in todo:
            info = write_indexed_shard(
                checked, tokens, index, fresh, out_dir, batch_size, device, bar
            )
            mine.shards.append(info)
            _write_rank(out_dir, me, mine)
    mine.complete = True
    _write_rank(out_dir, me, mine)
    if me == 0:
        beat.wait_for(lambda: _all_done(out_dir, set(range(1, n_ranks))))
        return _finish(out_dir, fresh, n_shards, n_ranks)
    beat.watch_only(0)  # only rank 0 matters now: it writes the manifest
    beat.wait_for(lambda: _complete(out_dir))
    return read_manifest(out_dir)


def _all_done(out_dir: Path, ranks: set[int]) -> bool:
    return all((m := _read(out_dir / rank_file(r))) is not None and m.complete for r in ranks)


def _complete(out_dir: Path) -> bool:
    try:
        return read_manifest(out_dir).complete
    except (FileNotFoundError, ValueError):
        return False


def _finish(out_dir: Path, fresh: Manifest, n_shards: int, n_ranks: int) -> Manifest:
    """Rank 0: one manifest listing every shard in index order, then the progress files go."""
    by_file: dict[str, ShardInfo] = {}
    for r in range(n_ranks):
        m = _read(out_dir / rank_file(r))
        for s in m.shards if m else []:
            by_file[s.file] = s
    for i in range(n_shards):
        s = by_file.get(shard_name(i))
        if s is None or not _whole(out_dir, s):
            raise RankLost(
                f"rank 0 cannot see a whole {shard_name(i)} in {out_dir}: on several machines "
                "--out must be one folder they all share; rerun the same command to resume"
            )
    manifest = Manifest(
        **{**vars(fresh), "shards": [by_file[shard_name(i)] for i in range(n_shards)]}
    )
    manifest.complete = True
    write_manifest(out_dir, manifest)
    _remove_own_rank_files(out_dir, cache_tag(fresh.config))
    return manifest


__all__ = ["MANIFEST", "RankLost", "cache_sharded", "has_rank_files", "init", "timeout_s"]
