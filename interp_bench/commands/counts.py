"""Token and width counts on the command line: `50M`, `1k`, `2.5B`, `4096`."""

from __future__ import annotations

import argparse
import math

_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str) -> int:
    """'50M' -> 50_000_000, '1k' -> 1000, '2.5B' -> 2_500_000_000, '4096' -> 4096.

    Negative, infinite and NaN counts are refused here, so they never reach a model load (and
    `inf` never reaches `int()`, which raises OverflowError)."""
    s = text.strip().lower().replace("_", "")
    scale = 1
    if s and s[-1] in _SUFFIX:
        s, scale = s[:-1], _SUFFIX[s[-1]]
    try:
        value = float(s) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"not a count: {text!r} (a count is a finite number >= 0, e.g. 50M, 1k, 4096)"
        )
    return int(value)
