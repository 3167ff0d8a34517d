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
    from interp_bench.analysis.report import write_report

    d = Path(args.dir)
    if not (d / "index.json").exists() and (d / "analysis" / "index.json").exists():
        d = d / "analysis"
    out = write_report(d, args.out, n_top=args.top, per_quantile=args.per_quantile)
    from interp_bench.analysis.report import chunk_dir

    chunks = chunk_dir(out)
    size = sum(p.stat().st_size for p in chunks.iterdir()) / 2**20
    print(
        f"wrote {out} ({out.stat().st_size / 2**10:,.0f} KiB) and {chunks.name}/ ({size:.1f} MiB, "
        f"keep it beside the page); open it in a browser (file://{out.resolve()})"
    )
    return 0
