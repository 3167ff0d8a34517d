"""Where downloaded and converted assets live, so every run after the first is fast."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def publishing(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; when the block finishes, rename it to `out`.

    A crash mid-build leaves no half-written asset, and of two processes building the same one
    the first to finish wins (the other's copy is discarded)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        yield tmp
        if not out.exists():
            tmp.chmod(0o755)
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
