"""Attribution-graph cost on the embedded SmolLM2-135M vs one clean forward + backward.

Transcoders: random-init TopK (k 32, 8x = 4608 latents) at every one of the 30 layers. The cost
of attribution does not depend on training: every (layer, position) has exactly k active
features either way, and the backward passes do not look at the weights' values.

Per prompt length (16 and 64 tokens, BOS included, cut from Shakespeare), in one process:
* `floor`: one forward of the prompt and one backward of its next-token loss to the input
  embeddings (parameters frozen, as in attribution), best of `--repeats`;
* `attribute`: freeze the clean forward and encode every layer (`build_replacement`), then the
  graph (`attribute`: rows for the top logits and for `--max-feature-nodes` features chosen by
  influence, `--batch-size` targets per vectorised backward), then `prune`.
Peak memory is the largest resident-set growth above the level before the step (sampled every
5 ms from /proc). `--full16` also attributes every active feature of the 16-token prompt.

    python -m benchmarks.bench_attribution [--max-feature-nodes 2048] [--full16]

Prints a table and writes benchmarks/out/bench_attribution.json.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Largest resident-set size above the starting level while the block runs."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def prompt_tokens(model, n: int) -> torch.Tensor:
    from activation_cache.corpus import CorpusConfig, load_corpus

    splits = load_corpus(CorpusConfig(context_len=128, max_tokens=4096), model.tokenizer)
    return splits.eval[:1, :n].clone()


def _leaf(store: dict):
    """Hook making the embedding a leaf that requires grad (parameters stay frozen)."""

    def fn(act, hook):
        store["x"] = act.detach().requires_grad_(True)
        return store["x"]

    return fn


def floor(model, tokens: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(seconds, peak MiB) of forward + backward of the next-token loss to the embeddings."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            store: dict[str, torch.Tensor] = {}
            with torch.enable_grad():
                hooks = [("blocks.0.hook_resid_pre", _leaf(store))]
                logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
                loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
                loss.backward()
            assert store["x"].grad is not None
            best = min(best, time.perf_counter() - t0)
        peak = max(peak, mem.mib)
    return best, peak


def attribution(model, ts, tokens, max_feature_nodes, batch_size) -> dict:
    from interp_bench.circuits.graph import attribute
    from interp_bench.circuits.prune import prune
    from interp_bench.circuits.replacement import build_replacement

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        rep = build_replacement(model, ts, tokens)
        t1 = time.perf_counter()
        graph = attribute(rep, max_feature_nodes=max_feature_nodes, batch_size=batch_size)
        t2 = time.perf_counter()
        pruned = prune(graph)
        t3 = time.perf_counter()
    err = float((graph.adjacency.sum(1) + graph.biases - graph.inputs).abs().max())
    n_rows = len(graph.row_nodes)
    return {
        "build_s": t1 - t0,
        "attribute_s": t2 - t1,
        "prune_s": t3 - t2,
        "total_s": t3 - t0,
        "peak_mib": mem.mib,
        "active_features": graph.n_features,
        "rows": n_rows,
        "ms_per_row": 1000 * (t2 - t1) / n_rows,
        "forward_s": graph.extra["forward_s"],
        "backward_s": graph.extra["backward_s"],
        "ranking_s": graph.extra["ranking_s"],
        "nodes": graph.n_nodes,
        "kept_nodes": int(pruned.nodes.sum()),
        "kept_edges": int(pruned.edges.sum()),
        "replacement_score": pruned.replacement_score,
        "completeness_score": pruned.completeness_score,
        "max_completeness_error": err,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="16,64")
    p.add_argument("--max-feature-nodes", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full16", action="store_true", help="also every feature at 16 tokens")
    p.add_argument("--out", default=str(ROOT / "benchmarks/out/bench_attribution.json"))
    args = p.parse_args()

    from activation_cache.models import load_model
    from interp_bench.circuits.replacement import transcoder_set
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary

    model = load_model("smollm2-135m", device="cpu")
    n, d = model.cfg.n_layers, model.cfg.d_model
    torch.manual_seed(0)
    cfgs = [
        DictionaryConfig(
            d_in=d,
            d_sae=8 * d,
            d_out=d,
            arch="topk",
            k=32,
            hook_in=f"L{i}.mlp_in",
            hook_out=f"L{i}.mlp_out",
        )  # fmt: skip
        for i in range(n)
    ]
    ts = transcoder_set(model, [SparseDictionary(c).eval() for c in cfgs])
    runs = [(int(x), args.max_feature_nodes) for x in args.lengths.split(",")]
    if args.full16:
        runs.append((16, None))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "smollm2-135m",
        "transcoders": "random-init TopK k=32, d_sae 4608, all 30 layers",
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    rows = []
    for length, cap in runs:
        tokens = prompt_tokens(model, length)
        floor_s, floor_mib = floor(model, tokens, args.repeats)
        row = {"tokens": length, "max_feature_nodes": cap, "floor_s": floor_s,
               "floor_peak_mib": floor_mib}  # fmt: skip
        row.update(attribution(model, ts, tokens, cap, args.batch_size))
        row["x_floor"] = row["total_s"] / floor_s
        row["loadavg"] = os.getloadavg()
        rows.append(row)
        print(json.dumps(row), flush=True)
        # written after every row, so a run cut short keeps what it measured
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")

    head = (
        f"{'tokens':>6} {'rows':>6} {'features':>8} {'floor s':>8} {'floor MiB':>9} "
        f"{'build s':>7} {'attr s':>7} {'prune s':>7} {'total s':>7} {'x floor':>8} "
        f"{'ms/row':>7} {'peak MiB':>8} {'repl':>5} {'compl':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['tokens']:>6} {r['rows']:>6} {r['active_features']:>8} {r['floor_s']:8.3f} "
            f"{r['floor_peak_mib']:9.1f} {r['build_s']:7.2f} {r['attribute_s']:7.1f} "
            f"{r['prune_s']:7.2f} {r['total_s']:7.1f} {r['x_floor']:8.0f} {r['ms_per_row']:7.1f} "
            f"{r['peak_mib']:8.0f} {r['replacement_score']:5.3f} {r['completeness_score']:5.3f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
