"""`interp-bench report`: write the offline HTML feature browser of a feature index."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "Write report.html, a feature browser that opens from disk with no network (each latent's "
    "examples load on demand from report_chunks/ beside it)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="feature index folder (from `interp-bench analyze`), or a "
                   "dictionary folder holding one in analysis/")  # fmt: skip
    p.add_argument("--out", help="HTML file (default: DIR/report.html)")
    p.add_argument("--top", type=int, default=8, help="top examples shown per latent")
    p.add_argument("--per-quantile", type=int, default=2, help="examples per quantile bucket")


def run(args: argparse.Namespace) -> int:
    from interp_bench.commands import preflight as pf

    pf.positive(top=args.top)
    pf.non_negative(per_quantile=args.per_quantile)
    from interp_bench.analysis.report import chunk_dir, write_report

    for d in index_dirs(Path(args.dir), args.out):
        out = write_report(d, args.out, n_top=args.top, per_quantile=args.per_quantile)
        chunks = chunk_dir(out)
        size = sum(p.stat().st_size for p in chunks.iterdir()) / 2**20
        print(
            f"wrote {out} ({out.stat().st_size / 2**10:,.0f} KiB) and {chunks.name}/ "
            f"({size:.1f} MiB, keep it beside the page); open it in a browser "
            f"(file://{out.resolve()})"
        )
    return 0


def index_dirs(d: Path, out: str | None) -> list[Path]:
    """The feature index folder(s) DIR names: itself, its analysis/, or (a cross-layer
    transcoder's, from `analyze`) their per-layer subfolders L<l>/, one report each."""
    for cand in (d, d / "analysis"):
        if (cand / "index.json").exists():
            return [cand]
    for cand in (d, d / "analysis"):
        layers = sorted(p.parent for p in cand.glob("L*/index.json"))
        if layers:
            if out:
                raise ValueError(
                    f"{cand} holds {len(layers)} per-layer feature indexes: drop --out (each "
                    f"gets its report.html) or name one of them, e.g. {layers[0]}"
                )
            return sorted(layers, key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0)
    return [d]  # write_report names what is missing
