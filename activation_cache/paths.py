"""Where downloaded and converted assets live, so every run after the first is fast."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$INTERP_BENCH_CACHE`, else `$XDG_CACHE_HOME/interp-bench`, else `~/.cache/interp-bench`."""
    root = os.environ.get("INTERP_BENCH_CACHE")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "interp-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path
