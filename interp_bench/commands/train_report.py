"""What `interp-bench train` says about a run: repeated data, and which FVU it prints.

Kept apart from the command so the rules are tested on their own: a `--tokens` larger than the
cache silently repeats every activation many times (46 passes for 1.5M tokens on a 32k-token
cache), and a number from training batches must never read as a held-out one. A finished run
that is started again trains nothing; it still prints its final metrics, from metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

# more passes than this is worth a word: a second epoch is common practice, dozens are not
EPOCHS_NOTE_ABOVE = 2.0


def epochs_note(tokens: int, cached_tokens: int) -> str | None:
    """A one-line warning when `tokens` asks for many passes over the cached activations."""
    if cached_tokens <= 0:
        raise ValueError("the activation cache holds no tokens; run `interp-bench cache` first")
    passes = tokens / cached_tokens
    if passes <= EPOCHS_NOTE_ABOVE:
        return None
    return (
        f"note: --tokens {tokens:,} is {passes:.1f} passes over the {cached_tokens:,} cached "
        "tokens, so each activation is seen that many times; the FVU printed after training is "
        "on training batches: cache more tokens, lower --tokens, or give --eval-activations for "
        "held-out numbers"
    )


def last_logged(run_dir: str | Path) -> dict | None:
    """The last line of a run's metrics.jsonl (None when there is none or it is unreadable)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            last = json.loads(line)
        except ValueError:  # a line cut short by a kill mid-write
            continue
    return last


def final_metrics(run_dir: str | Path, this_run: dict | None) -> dict | None:
    """The metrics to print: this process's last logged step, else (a finished run started
    again, which trains nothing) the last line its earlier run logged."""
    return this_run or last_logged(run_dir)


def metrics_text(m: dict | None, held_out: bool) -> str:
    """`train FVU ...` or `held-out FVU ...`: the label says where the number comes from."""
    if not m:
        return "no metrics logged (metrics.jsonl missing)"
    where = "held-out" if held_out else "train (last logged batch)"
    return f"{where}: FVU {m['fvu']:.4f}  L0 {m['l0']:.1f}  dead {m['dead_frac']:.3f}" + (
        f"  after {m['tokens']:,} tokens" if "tokens" in m else ""
    )


def saved_line(run_dir: str | Path, this_run: dict | None) -> str:
    """The line printed per dictionary after `train`: absolute folder and labelled metrics."""
    run_dir = Path(run_dir).resolve()
    return f"saved {run_dir}  {metrics_text(final_metrics(run_dir, this_run), held_out=False)}"
