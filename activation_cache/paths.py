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


def umask_mode(directory: bool = False) -> int:
    """The mode a plain `open()` or `mkdir()` gives under this process's umask (usually 0644 /
    0755). `tempfile` makes files 0600 and folders 0700; anything renamed into place from there
    gets this mode first, so collaborators can read what the workbench saves."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def save_tensors(tensors: dict, path: Path | str, metadata: dict | None = None) -> Path:
    """`safetensors.torch.save_file`, then the umask's mode: save_file creates its files 0600,
    so dictionaries and feature indexes were unreadable by collaborators."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, umask_mode())
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a per-process temp name beside `path`, then rename: a reader sees the old
    file or the new one, never half; the file gets the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
            tmp.chmod(umask_mode(directory=True))
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
