"""Streaming training (`interp-bench train --model M`): a transcoder at every layer fed by one
forward per batch, against the forward alone (the floor: what capturing every layer's mlp_in and
mlp_out costs without any training).

Both run on the same batches of the embedded SmolLM2 (Shakespeare), timed in alternation so load
from other processes hits both alike. Reports tokens/s of the forward alone, of streaming training,
and the training share of each step.

    python -m benchmarks.bench_stream                      # every layer, 8x, 3 steps
    python -m benchmarks.bench_stream --layers L0-3 --steps 5

Writes benchmarks/out/bench_stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from activation_cache.corpus import CorpusConfig, load_corpus
from activation_cache.hooks import capturing, resolve_hooks
from activation_cache.layer_lists import expand_layers
from activation_cache.model_batches import ModelBatches
from activation_cache.models import load_model
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.training.trainer import Trainer

OUT = Path(__file__).resolve().parent / "out"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="all", help="all, or a range such as L0-3")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seqs", type=int, default=8, help="sequences of 128 per batch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT / "bench_stream.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m", device="cpu")
    n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    ins = expand_layers(f"{args.layers}.mlp_in", n)
    outs = [h.replace("mlp_in", "mlp_out") for h in ins]
    hooks = ins + outs
    tokens = load_corpus(CorpusConfig(source="shakespeare", context_len=128), model.tokenizer).train
    batch = args.seqs * 127
    cfgs = [
        DictionaryConfig(d_in=d, d_sae=args.expansion * d, d_out=d, k=args.k, hook_in=i, hook_out=o)
        for i, o in zip(ins, outs, strict=True)
    ]
    tc = TrainConfig(batch_size=batch, tokens=args.steps * batch, checkpoint_every=0)
    trainer = Trainer(cfgs, tc, device="cpu")
    source = ModelBatches(model, tokens, hooks, batch, seed=0)
    specs = resolve_hooks(model, hooks)
    fwd_s = train_s = 0.0
    load = [os.getloadavg()[0]]
    batches = source.batches(0, 0)
    with capturing(model, specs) as run:
        for i in range(args.steps):
            seqs = tokens[source.order(0)[i * args.seqs : (i + 1) * args.seqs]]
            t0 = time.perf_counter()
            run(seqs)  # the floor: the same forward, nothing trained
            fwd_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            trainer.step(next(batches))  # streaming: forward + every transcoder's step
            train_s += time.perf_counter() - t0
            load.append(os.getloadavg()[0])
            print(f"step {i + 1}/{args.steps} load {load[-1]:.1f}", flush=True)
    n_tok = args.steps * batch
    result = {
        "layers": len(ins),
        "d_sae": args.expansion * d,
        "batch_tokens": batch,
        "steps": args.steps,
        "threads": args.threads,
        "forward_tokens_per_s": n_tok / fwd_s,
        "streaming_tokens_per_s": n_tok / train_s,
        "forward_share": fwd_s / train_s,
        "load": load,
    }
    print(
        f"{len(ins)} transcoders ({args.expansion}x), {args.steps} steps x {batch} tokens, "
        f"{args.threads} thread(s), load {min(load):.1f}..{max(load):.1f}\n"
        f"forward alone (floor): {result['forward_tokens_per_s']:,.0f} tok/s\n"
        f"streaming training:    {result['streaming_tokens_per_s']:,.0f} tok/s "
        f"(the forward is {100 * result['forward_share']:.0f}% of each step)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
