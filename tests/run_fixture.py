"""One small run of the main job, shared by test_pipeline.py and test_notebooks.py.

Each module declares its own session fixture, but both call `small_run_dir`, which is memoised
here (the module is imported once), so the expensive run happens once per test session.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# A run small enough for the test suite yet with every stage doing real work.
SMALL = dict(
    train_tokens=16_384,
    eval_tokens=4_096,
    splice_tokens=1_024,
    expansion=4,
    batch_size=1024,
    progress=False,
)


def small_config(out: Path):
    from interp_bench.commands.pipeline import DemoConfig

    return DemoConfig(out=str(out), **SMALL)


@functools.cache
def small_run_dir(base: str) -> tuple[Path, dict]:
    """(run folder, summary) of the small run under the session's base temp dir."""
    from interp_bench.commands.pipeline import run_demo

    # Run as `make demo` does: from the folder above, with a relative --out, so the summary's
    # paths are tested for resolving from elsewhere (a notebook kernel runs in notebooks/).
    here = os.getcwd()
    os.chdir(base)
    try:
        summary = run_demo(small_config(Path("small_run")))
    finally:
        os.chdir(here)
    return Path(base).resolve() / "small_run", summary
