"""The analysis pass's memory rule and the one bound on `--window` that follows from it.

Torch-free, so `interp-bench analyze` can refuse a window before importing torch (the argument
checks) and again, with the cache's context length known, after reading its manifest: the same
function both times, so the two can never disagree.
"""

from __future__ import annotations

import os
from pathlib import Path

RESERVOIR = 64  # default uniform sample of firing events kept per latent (AnalysisConfig)


def analysis_bytes(d_sae: int, top_k: int, window: int, reservoir: int = RESERVOIR) -> int:
    """Memory the per-latent example contexts take: float contexts in both selections, plus the
    token and context arrays built from them at the end (about as many again)."""
    return 2 * 4 * d_sae * (top_k + reservoir) * (2 * window + 1)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_window(
    window: int,
    top_k: int,
    d_sae: int,
    context_len: int | None = None,
    reservoir: int = RESERVOIR,
    budget: int | None = None,
) -> None:
    """Refuse a window that cannot help (past the context, when `context_len` is known) or whose
    contexts would not fit in half the available memory, naming the largest value that fits.
    `d_sae` 0 (unknown) skips the memory bound; `budget` (bytes) replaces half of MemAvailable."""
    if window < 0:
        raise ValueError(f"--window must be >= 0, got {window}")
    budget = budget if budget is not None else available_memory() // 2
    per_token = analysis_bytes(d_sae, top_k, 0, reservoir)  # the cost grows as (2 w + 1)
    fits = max(0, int((budget / per_token - 1) // 2)) if per_token else window
    safe = fits if context_len is None else min(fits, context_len - 1)
    if context_len is not None and window > context_len - 1:
        raise ValueError(
            f"--window {window} reaches past the cache's {context_len}-token context; "
            f"use --window {safe} or less"
        )
    if fits < window:
        need = analysis_bytes(d_sae, top_k, window, reservoir)
        raise ValueError(
            f"--window {window} needs about {need / 2**30:.1f} GiB for {d_sae} latents x "
            f"{top_k + reservoir} examples (more than half the {budget * 2 / 2**30:.1f} GiB "
            f"available); use --window {safe} or less, or a smaller --top-k"
        )
