"""Names read from files (manifests, cfg.json) that later become parts of paths.

A manifest or a dictionary's cfg.json may come from anywhere; a shard `file` of `../x` or a hook
named `../../escape` would make readers open, and training write, outside the folders the user
named. Every such name must match a strict pattern: one path component, no separators, no `..`.
"""

from __future__ import annotations

import re
from pathlib import Path

SHARD_FILE = re.compile(r"^shard_\d{5,9}\.safetensors$")
# Hook names: short ones (`L8.resid_post`) or transformer-lens ones (`blocks.8.hook_resid_post`,
# from SAELens cfg.json files); letters, digits, `_`, `-` and single dots.
HOOK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")
MAX_LEN = 128


def check_shard_file(name: object, source: Path | str) -> str:
    """`name` if it is a shard file name our writer could have made; else one-line ValueError."""
    if not isinstance(name, str) or not SHARD_FILE.match(name):
        raise ValueError(
            f"{source}: shard file name {name!r} is not of the form shard_NNNNN.safetensors "
            "(a crafted or damaged manifest); re-create the cache with `interp-bench cache`"
        )
    return name


def check_hook_name(name: object, source: Path | str) -> str:
    """`name` if it is a safe hook name (usable as part of a folder name); else ValueError."""
    if not isinstance(name, str) or len(name) > MAX_LEN or not HOOK_NAME.match(name):
        raise ValueError(
            f"{source}: hook name {name!r} is not a valid hook name (letters, digits, '_', '-' "
            "and single dots, e.g. L8.resid_post); the file is damaged or crafted"
        )
    return name


def check_inside(root: Path | str, path: Path | str, what: str) -> Path:
    """`path` if it resolves inside `root` (symbolic links followed); else ValueError."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ValueError(f"{what} {path} would be written outside {root}; refusing")
    return Path(path)
