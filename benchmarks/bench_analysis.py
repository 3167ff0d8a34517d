"""Throughput of the analysis pass (density + top/quantile examples + recon error) vs the model.

The floor is a plain forward of the model over the same number of tokens: analysing a dictionary
should cost no more than producing its activations did. We time, in one run:

* `model forward`: full-depth forward of the model (embedded SmolLM2-135M when it loads, else the
  tiny random GPT-2-class model; the table says which), batches of 8 x 128 tokens;
* `encode only`: the dictionary's encode over the activations (the part no analysis can skip);
* `analysis pass`: `top_examples.analyze` end to end, writing the index (10k latents by default).

Activations are Gaussian with the model's width, served from memory in 4,096-token batches of
128-token sequences (shard reading is measured by bench_cache). A TopK dictionary fixes the number
of firing entries per token at k, so the bookkeeping cost matches a trained one.

    python -m benchmarks.bench_analysis [--tokens 131072] [--d-sae 10240] [--k 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.common import OUT, floor_model, machine_info, print_table, write_json


def time_forward(model, n_tokens: int, ctx: int = 128, batch: int = 8) -> float:
    tokens = torch.randint(0, model.cfg.d_vocab, (max(1, n_tokens // ctx), ctx))
    with torch.inference_mode():
        model(tokens[:1, :16])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, tokens.shape[0], batch):
            model(tokens[s : s + batch])
    return tokens.numel() / (time.perf_counter() - t0)


def stream(x: torch.Tensor, hook: str, ctx: int = 128, batch_tokens: int = 4096):
    n = x.shape[0]
    seq = torch.arange(n) // ctx
    pos = (torch.arange(n) % ctx).int()
    tokens = torch.randint(0, 49152, (n,), dtype=torch.int32)
    for s in range(0, n, batch_tokens):
        sl = slice(s, s + batch_tokens)
        yield {hook: x[sl], "tokens": tokens[sl], "seq": seq[sl], "pos": pos[sl]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=131072, help="tokens for the analysis pass")
    ap.add_argument("--forward-tokens", type=int, default=4096, help="tokens for the floor")
    ap.add_argument("--d-sae", type=int, default=10240)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    torch.manual_seed(0)

    from interp_bench.analysis.top_examples import AnalysisConfig, analyze
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary

    model, model_name = floor_model()
    d_model = model.cfg.d_model
    fwd = time_forward(model, args.forward_tokens)

    hook = "L15.resid_post"
    cfg = DictionaryConfig(d_in=d_model, d_sae=args.d_sae, arch="topk", k=args.k, hook_in=hook)
    sae = SparseDictionary(cfg).eval()
    x = torch.randn(args.tokens, d_model)
    with torch.inference_mode():
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, args.tokens, 4096):
            sae.encode(x[s : s + 4096])
        enc = args.tokens / (time.perf_counter() - t0)
        enc_cpu = args.tokens / (time.process_time() - c0)
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        index = analyze(sae, stream(x, hook), out, AnalysisConfig(), model=model)
        total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        assert index.meta["n_tokens"] == args.tokens - args.tokens // 128
    timings = index.meta["timings"]
    ana = args.tokens / timings["pass_s"]
    ana_cpu = args.tokens / (cpu_s * timings["pass_s"] / total_s)  # pass share of the CPU time

    print()
    print_table(
        [("what", ""), ("tokens/s", ",.0f"), ("x floor", ".2f"), ("tok/CPU-s", ",.0f")],
        [
            ["model forward (floor), " + model_name, fwd, 1.0, None],
            [f"encode only, d_sae {args.d_sae}, k {args.k}", enc, enc / fwd, enc_cpu],
            [f"analysis pass, d_sae {args.d_sae}, k {args.k}", ana, ana / fwd, ana_cpu],
        ],
    )
    print(f"fixed cost after the pass (logit effects over the vocab, contexts, writing): "
          f"{timings['finish_s']:.1f} s")  # fmt: skip
    est = 1e6 / ana + timings["finish_s"]
    print(f"\nanalysis of 1M tokens at this rate: {est / 60:.1f} min "
          f"(model forward over them: {1e6 / fwd / 60:.1f} min)")  # fmt: skip
    result = {
        "machine": machine,
        "model": model_name,
        "threads": args.threads,
        "tokens": args.tokens,
        "d_sae": args.d_sae,
        "k": args.k,
        "forward_tok_s": fwd,
        "encode_tok_s": enc,
        "analysis_tok_s": ana,
        "analysis_over_forward": ana / fwd,
        "encode_tok_per_cpu_s": enc_cpu,
        "analysis_tok_per_cpu_s": ana_cpu,
        "finish_s": timings["finish_s"],
        "analysis_1m_tokens_min": est / 60,
    }
    write_json(OUT / "bench_analysis.json", result)


if __name__ == "__main__":
    main()
