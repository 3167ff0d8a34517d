"""Held-out quality of saved SAEs with bench_train's metrics, to compare runs after the fact.

The demo's summary gives FVU over every held-out token; on SmolLM2 a handful of massive-activation
tokens dominate that number, so this also prints bench_train's ``fvu_typical`` (without tokens
above 10x the median norm) for each saved dictionary, on the same activations.

    python benchmarks/eval_saved.py --acts RUN/acts/eval RUN_A/dictionaries/NAME RUN_B/...

Prints one row per dictionary and writes benchmarks/out/eval_saved.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_train as bt  # noqa: E402

from activation_cache.reader import ActivationReader  # noqa: E402
from interp_bench.dictionaries import SparseDictionary, load_dictionary  # noqa: E402


class Saved:
    """bench_train.evaluate's trainer interface over a loaded dictionary."""

    def __init__(self, d: SparseDictionary) -> None:
        self.d = d.eval()

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.d(x), self.d.encode(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dictionaries", nargs="+", help="saved SAE folders (cfg.json + weights)")
    p.add_argument("--acts", required=True, help="activation cache with the SAEs' hook")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(bt.OUT / "eval_saved.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dicts = {path: load_dictionary(path) for path in args.dictionaries}
    hooks = sorted({d.cfg.hook_in for d in dicts.values()})
    if any(d.is_transcoder for d in dicts.values()):
        p.error("transcoders are not supported: the metrics reconstruct the input hook")
    reader = ActivationReader(args.acts, hooks, 4096, shuffle=False, prefetch=False)
    acts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for batch in reader:
        for h in hooks:
            acts[h].append(batch[h].float())
    rows = []
    print(f"{'dictionary':60} {'FVU':>7} {'FVU typ':>8} {'L0':>6} {'dead%':>6}")
    for path, d in dicts.items():
        r = {"dictionary": path, **bt.evaluate(Saved(d), torch.cat(acts[d.cfg.hook_in]))}
        rows.append(r)
        print(
            f"{path[-60:]:60} {r['fvu']:7.4f} {r['fvu_typical']:8.4f} {r['l0']:6.1f} "
            f"{100 * r['dead_frac']:6.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"acts": args.acts, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
