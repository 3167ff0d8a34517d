"""Held-out quality of saved SAEs with bench_train's metrics, to compare runs after the fact.

The demo's summary gives FVU over every held-out token; on SmolLM2 a handful of massive-activation
tokens dominate that number, so this also prints ``fvu_typical`` (without tokens above 10x the
median norm of the whole held-out set, as bench_train takes it) for each saved dictionary, on the
same activations.

    python -m benchmarks.eval_saved --acts RUN/acts/eval RUN_A/dictionaries/NAME RUN_B/...

Prints one row per dictionary and writes benchmarks/out/eval_saved.json.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from activation_cache.reader import ActivationReader
from benchmarks.bench_train import held_out
from benchmarks.common import OUT, machine_info, print_table, write_json
from interp_bench.dictionaries import load_dictionary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dictionaries", nargs="+", help="saved SAE folders (cfg.json + weights)")
    p.add_argument("--acts", required=True, help="activation cache with the SAEs' hook")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(OUT / "eval_saved.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    dicts = {path: load_dictionary(path).eval() for path in args.dictionaries}
    hooks = sorted({d.cfg.hook_in for d in dicts.values()})
    if any(d.is_transcoder for d in dicts.values()):
        p.error("transcoders are not supported: the metrics reconstruct the input hook")
    reader = ActivationReader(args.acts, hooks, 4096, shuffle=False, prefetch=False)
    acts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for batch in reader:
        for h in hooks:
            acts[h].append(batch[h].float())
    rows = []
    for hook in hooks:  # the typical-token threshold is each hook's own
        paths = [path for path, d in dicts.items() if d.cfg.hook_in == hook]
        evals = held_out([dicts[path] for path in paths], torch.cat(acts[hook]))
        rows += [{"dictionary": path, **ev} for path, ev in zip(paths, evals, strict=True)]
    rows.sort(key=lambda r: args.dictionaries.index(r["dictionary"]))  # as given
    print_table(
        [("dictionary", ""), ("FVU", ".4f"), ("FVU typ", ".4f"), ("L0", ".1f"), ("dead%", ".2f")],
        [[r["dictionary"][-60:], r["fvu"], r["fvu_typical"], r["l0"], 100 * r["dead_frac"]]
         for r in rows],
    )  # fmt: skip
    write_json(args.out, {"machine": machine, "acts": args.acts, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
