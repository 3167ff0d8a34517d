"""Optional experiment tracking: the metrics the trainer logs to `metrics.jsonl` also go to wandb.

wandb is not a dependency (`pip install wandb`, or the `[wandb]` extra); the JSONL log stays the
record of a run and is written whether or not wandb is used. One wandb run holds every
dictionary of a training pass, each metric prefixed by the dictionary's folder name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

INSTALL = "pip install wandb"


def require_wandb(project: str | None) -> None:
    """Fail before any work when wandb is asked for and cannot be imported."""
    if project is not None and importlib.util.find_spec("wandb") is None:
        raise ValueError(
            f"--wandb {project} needs wandb, which is not installed: `{INSTALL}` "
            "(or drop --wandb; metrics.jsonl is written either way)"
        )


class WandbLog:
    """A wandb run fed the same metric dicts as metrics.jsonl."""

    def __init__(self, project: str, names: list[str], config: dict, out_dir: Path | None):
        require_wandb(project)
        import wandb

        self.names = names
        # Without WANDB_DIR the run files go next to the dictionaries, not into the current folder.
        where = None if os.environ.get("WANDB_DIR") or out_dir is None else str(out_dir)
        self.run = wandb.init(
            project=project,
            name=out_dir.name if out_dir is not None else None,
            config=config,
            dir=where,
            reinit="finish_previous",
        )

    def log(self, metrics: list[dict[str, float]]) -> None:
        """One wandb step per logged step: `NAME/fvu`, `NAME/l0`, ... for every dictionary."""
        row: dict[str, float] = {}
        for name, m in zip(self.names, metrics, strict=True):
            row |= {f"{name}/{k}": v for k, v in m.items() if k not in ("step", "tokens")}
        first = metrics[0]
        row |= {"tokens": first["tokens"]}
        self.run.log(row, step=int(first["step"]))

    def finish(self) -> None:
        self.run.finish()
