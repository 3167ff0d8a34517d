"""Size and time to first render of the feature browser, at 4,608 and 16,384 latents.

For each size we build a feature index the way `analyze` does (activations of the tiny random
GPT-2-class model over random tokens, a random TopK dictionary on its width, default
AnalysisConfig: 20 top examples, 10 tokens either side, per-example direct effects), write the
browser with `write_report` (defaults: 8 top examples and 2 per quantile shown), and open it in
headless Chromium from file:// with the network off:

* page bytes (what the browser parses before drawing anything) and chunk bytes (loaded per card);
* all-inline bytes: the same data in one page, as the browser was before chunking;
* time to first render: the page's own mark (`data-first-render`, ms from navigation until the
  first 25 cards are drawn with their examples), and the wall time of `chromium --dump-dom`
  minus that of a blank page (median of `--repeats`);
* with `--compare-commit C`: the same wall-time measure for the one-file page written by
  `interp_bench/analysis/report.py` as of commit C (read with `git show`).

    python -m benchmarks.bench_report [--sizes 4608,16384] [--tokens 65536] [--compare-commit C]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import OUT, ROOT, machine_info, print_table, write_json

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def build_index(d_sae: int, tokens: int, out: Path, k: int = 32) -> float:
    """A feature index of a random TopK dictionary on the tiny model's L1.resid_post; seconds."""
    from activation_cache.streams import model_stream
    from activation_cache.tiny_model import tiny_random_model
    from interp_bench.analysis.top_examples import analyze
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary

    model = tiny_random_model()
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, model.cfg.d_vocab, (tokens // 128, 128), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    torch.manual_seed(0)
    hook = "L1.resid_post"
    cfg = DictionaryConfig(d_in=model.cfg.d_model, d_sae=d_sae, arch="topk", k=k, hook_in=hook)
    sae = SparseDictionary(cfg).eval()
    t0 = time.perf_counter()
    analyze(sae, model_stream(model, toks, [hook], batch_seqs=32), out, model=model)
    return time.perf_counter() - t0


def chromium_wall(url: str, profile: Path) -> tuple[float, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
           "--dump-dom", url]  # fmt: skip
    t0 = time.perf_counter()
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    return time.perf_counter() - t0, dom


def median_wall(url: str, profile: Path, repeats: int) -> tuple[float, list[str]]:
    runs = [chromium_wall(url, profile) for _ in range(repeats)]
    return statistics.median(w for w, _ in runs), [d for _, d in runs]


def old_writer(commit: str):
    """`write_report` of interp_bench/analysis/report.py as it was at `commit`."""
    src = subprocess.run(["git", "show", f"{commit}:interp_bench/analysis/report.py"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "old_report.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4608,16384", help="latent counts")
    ap.add_argument("--tokens", type=int, default=65536, help="tokens analysed per index")
    ap.add_argument("--repeats", type=int, default=3, help="Chromium runs per page (median)")
    ap.add_argument("--compare-commit", help="also time the one-file page of this commit")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium not found (apt install chromium)")
    torch.set_num_threads(args.threads)
    machine = machine_info()
    from interp_bench.analysis.report import report_data, script_json, write_report
    from interp_bench.analysis.top_examples import load_feature_index

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blank = tmp / "blank.html"
        blank.write_text("<!DOCTYPE html><title>blank</title><p>blank</p>")
        base, _ = median_wall(blank.as_uri(), tmp / "profile", args.repeats)
        for n in (int(s) for s in args.sizes.split(",")):
            idx = tmp / f"idx{n}"
            build_s = build_index(n, args.tokens, idx)
            print(f"{n:,} latents: index built in {build_s:.0f} s", flush=True)
            t0 = time.perf_counter()
            page = write_report(idx)
            write_s = time.perf_counter() - t0
            chunks = list((idx / "report_chunks").iterdir())
            chunk_bytes = sum(c.stat().st_size for c in chunks)
            index = load_feature_index(idx)
            inline_bytes = len(script_json(report_data(index)).encode())
            print(f"{n:,} latents: report written in {write_s:.0f} s", flush=True)
            wall, doms = median_wall(page.as_uri(), tmp / "profile", args.repeats)
            marks = [int(d.split('data-first-render="')[1].split('"')[0]) for d in doms]
            assert all(d.count('class="de"') > 0 for d in doms), "cards drew no direct effects"
            row = {
                "latents": n,
                "live": int((index.arrays["fire_count"] > 0).sum()),
                "page_bytes": page.stat().st_size,
                "chunk_files": len(chunks),
                "chunk_bytes": chunk_bytes,
                "all_inline_json_bytes": inline_bytes,
                "first_render_ms": statistics.median(marks),
                "dump_dom_wall_s": wall,
                "blank_page_wall_s": base,
                "render_over_blank_s": wall - base,
                "build_index_s": build_s,
                "write_report_s": write_s,
            }
            if args.compare_commit:
                old_page = old_writer(args.compare_commit)(idx, tmp / f"old{n}.html")
                old_wall, _ = median_wall(old_page.as_uri(), tmp / "profile", args.repeats)
                row |= {"old_page_bytes": old_page.stat().st_size,
                        "old_render_over_blank_s": old_wall - base}  # fmt: skip
            results.append(row)
            rows.append([f"{n:,} latents ({row['live']:,} live)", row["page_bytes"] / 1e3,
                         chunk_bytes / 1e6, inline_bytes / 1e6, row["first_render_ms"],
                         wall - base, row.get("old_page_bytes", 0) / 1e6 or None,
                         row.get("old_render_over_blank_s")])  # fmt: skip
    print()
    print_table(
        [("index", ""), ("page kB", ",.0f"), ("chunks MB", ".1f"), ("all-inline MB", ".1f"),
         ("first render ms", ".0f"), ("dump-dom - blank s", ".2f"), ("old page MB", ".1f"),
         ("old dump-dom - blank s", ".2f")],
        rows,
    )  # fmt: skip
    print(json.dumps(results, indent=1))
    write_json(OUT / "bench_report.json", {"machine": machine, "tokens": args.tokens,
                                           "compare_commit": args.compare_commit,
                                           "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
