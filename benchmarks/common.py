"""What every benchmark shares: where results go, the machine they were measured on, how tables
print, and the model and tokens they fall back to when the embedded ones are unavailable."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded model and corpus load offline

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"  # results (not committed)
PEERS = ("sae-lens", "eai-sparsify")  # the peer trainers' distributions (benchmarks/peers.py)


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, None when absent (a peer left uninstalled)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit, '+dirty' when it has uncommitted changes: what was measured."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + (
            "+dirty" if git("status", "--porcelain") else ""
        )
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Call after setting the thread count; `write_json` adds the load average at the end."""
    return {
        "command": " ".join(["python -m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{dist.replace("-", "_"): package_version(dist) for dist in PEERS},
        "loadavg_start": os.getloadavg(),
    }


def machine_line(m: dict[str, Any]) -> str:
    end = m.get("loadavg_end") or os.getloadavg()
    return (
        f"machine: {m['cpu_count']} cpus ({m['cpu']}), torch {m['torch']}, {m['threads']} "
        f"threads, load {m['loadavg_start'][0]:.1f} -> {end[0]:.1f}, commit {m['git_commit']}"
    )


def print_table(columns: list[tuple[str, str]], rows: list[list[Any]]) -> None:
    """Rows under a header of (name, format spec) columns, e.g. ("tok/s", ",.0f"), ("who", "");
    the first column is left-aligned, the others right-aligned, each as wide as its widest cell;
    None prints as an empty cell."""
    cells = [
        [format(v, f) if v is not None else "" for v, (_, f) in zip(r, columns, strict=True)]
        for r in rows
    ]
    head = [name for name, _ in columns]
    widths = [max(len(c) for c in col) for col in zip(head, *cells, strict=True)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) for v, w in zip(values, widths, strict=True)]
        padded[0] = values[0].ljust(widths[0])
        return "  ".join(padded)

    print(line(head))
    print("-" * len(line(head)))
    for r in cells:
        print(line(r))


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a benchmark's result (closing its machine record's load average) and say where."""
    if "machine" in payload:
        payload["machine"].setdefault("loadavg_end", os.getloadavg())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return path


def floor_model():
    """(model, label): the embedded SmolLM2 if it loads here, else the tiny random model."""
    try:
        from activation_cache.models import load_model

        return load_model("smollm2-135m", device="cpu"), "smollm2-135m (embedded)"
    except Exception as err:  # any failure: fall back, and say so in the table
        from activation_cache.tiny_model import tiny_random_model

        print(f"SmolLM2 unavailable ({err}); using the tiny random model")
        return tiny_random_model(), "tiny random GPT-2 (2 layers, d 64)"


def corpus_tokens(model, n_seq: int, ctx: int, split: str) -> tuple[torch.Tensor, str]:
    """``n_seq`` Shakespeare windows of ``split`` when the corpus loads offline, else random
    tokens after a BOS (the label says which and why)."""
    try:
        from activation_cache.corpus import CorpusConfig, load_corpus

        tokens = getattr(load_corpus(CorpusConfig(context_len=ctx), model.tokenizer), split)
        if len(tokens) >= n_seq:
            return tokens[:n_seq], f"shakespeare ({split} split)"
        reason = f"only {len(tokens)} sequences"
    except Exception as err:  # any failure: the benchmark still measures speed
        reason = f"{type(err).__name__}: {err}"
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (n_seq, ctx), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id or 0
    return tokens, f"random tokens (corpus unavailable: {reason})"
