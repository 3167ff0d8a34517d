"""Atomic training checkpoints: `NAME/checkpoint/step_000000100/state.pt`.

A checkpoint is written into a `.tmp` folder, flushed to disk and renamed, so a kill at any
moment leaves either the old checkpoint or the new one, never half of one. Several
dictionaries trained together each get their own checkpoint folder; older steps are pruned only
after every dictionary has its new one, so resuming picks the newest step all of them share.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

PREFIX = "step_"
ASIDE = ".tmp-old"  # a checkpoint being replaced by a rewrite of the same step


def _step_dirs(ckpt_dir: Path) -> dict[int, Path]:
    """Complete checkpoints by step; one moved aside by an interrupted rewrite still counts."""
    out: dict[int, Path] = {}
    aside: dict[int, Path] = {}
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            name = p.name.removesuffix(ASIDE)
            digits = name[len(PREFIX) :]
            if name.startswith(PREFIX) and digits.isdigit() and (p / "state.pt").is_file():
                (aside if p.name.endswith(ASIDE) else out)[int(digits)] = p
    return aside | out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(ckpt_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write `state` for `step` atomically; returns the final folder."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:09d}"
    tmp = ckpt_dir / f"{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # rewrite: move the old one aside so a step folder always exists
        aside = ckpt_dir / f"{final.name}{ASIDE}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    return final


def prune(ckpt_dir: Path, keep_step: int) -> None:
    """Remove every checkpoint older than `keep_step` and any unfinished or replaced copies."""
    if not ckpt_dir.is_dir():
        return
    live = _step_dirs(ckpt_dir)
    for step, path in live.items():
        if step < keep_step:
            shutil.rmtree(path, ignore_errors=True)
    for p in ckpt_dir.glob(f"{PREFIX}*.tmp*"):
        if p not in live.values():
            shutil.rmtree(p, ignore_errors=True)


def steps(ckpt_dir: Path) -> list[int]:
    return sorted(_step_dirs(ckpt_dir))


def latest_common_step(ckpt_dirs: list[Path]) -> int | None:
    """Newest step present in every folder (None when any folder has none)."""
    common: set[int] | None = None
    for d in ckpt_dirs:
        s = set(_step_dirs(d))
        common = s if common is None else common & s
    return max(common) if common else None


def read(ckpt_dir: Path, step: int, map_location=None) -> dict[str, Any]:
    """The state saved for `step`; a checkpoint that does not load is named, with the fix."""
    path = _step_dirs(ckpt_dir)[step] / "state.pt"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file; all mean the same
        raise ValueError(
            f"checkpoint {path} is damaged ({type(err).__name__}); rerun with --no-resume to "
            "start over, or delete that step folder to resume from an older one"
        ) from err
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
