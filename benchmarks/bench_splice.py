"""Throughput of the spliced-loss pass vs a plain forward of the model over the same tokens.

A spliced-loss pass over one dictionary runs the clean forward plus four variants (spliced,
error added back, zero- and mean-ablated; the ablations are shared by dictionaries on the same
hook) and a cheap first pass for the ablation mean, so it cannot beat ~1/5 of the floor unless
the variants share the prefix up to the spliced block. We time, in one run:

* `model forward`: the floor, a full-depth forward (embedded SmolLM2-135M when it loads, else the
  tiny random GPT-2-class model; the table says which), batches of 8 x 128 tokens;
* `splice 1 SAE` and `splice SAE + transcoder` on that model (random TopK dictionaries at the
  middle layer: the cost does not depend on training);
* `share prefix` on/off on a random `HookedTransformer` with SmolLM2's shape (30 layers,
  d 576, GQA, gated MLP, vocab 49152), since SmolLM2 loads as a `TransformerBridge`, which
  cannot start a forward at a layer.

The JSON also records `ce_error_added - ce_clean` (must be ~0: the splice is exact).

    python benchmarks/bench_splice.py [--tokens 1024] [--skip-shape]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_floor_model():
    """The embedded SmolLM2 if it is available here, else the tiny random test model."""
    try:
        from activation_cache.models import load_model

        return load_model("smollm2-135m", device="cpu"), "smollm2-135m (embedded, bridge)"
    except Exception as err:  # any failure: fall back, and say so in the table
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny_model

        from activation_cache.tokenizers import gpt2_tokenizer

        print(f"SmolLM2 unavailable ({err}); using the tiny random model")
        return make_tiny_model(gpt2_tokenizer()), "tiny random GPT-2 (2 layers, d 64)"


def smollm2_shaped_hooked_transformer(tokenizer=None):
    """Random weights, SmolLM2-135M's shape, as a HookedTransformer (supports start_at_layer)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=30,
        d_model=576,
        n_heads=9,
        d_head=64,
        n_key_value_heads=3,
        d_mlp=1536,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMSPre",  # folded, as from_pretrained gives
        positional_embedding_type="rotary",
        rotary_dim=64,
        rotary_base=100000,
        d_vocab=49152,
        n_ctx=2048,
        final_rms=True,
        device="cpu",
        seed=0,
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def eval_tokens(model, n_tokens: int, ctx: int) -> tuple[torch.Tensor, str]:
    n_seq = max(1, n_tokens // ctx)
    try:
        from activation_cache.corpus import CorpusConfig, load_corpus

        ev = load_corpus(CorpusConfig(context_len=ctx), model.tokenizer).eval
        if ev.shape[0] >= n_seq:
            return ev[:n_seq], "shakespeare eval split"
    except Exception as err:
        print(f"corpus unavailable ({err}); using random tokens")
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (n_seq, ctx), generator=g), "random tokens"


def dictionaries(model, expansion: int = 8, k: int = 32) -> dict:
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary

    d, layer = model.cfg.d_model, model.cfg.n_layers // 2
    torch.manual_seed(0)
    sae = DictionaryConfig(d_in=d, d_sae=expansion * d, k=k, hook_in=f"L{layer}.resid_post")
    tc = DictionaryConfig(
        d_in=d,
        d_sae=expansion * d,
        k=k,
        d_out=d,
        hook_in=f"L{layer}.mlp_in",
        hook_out=f"L{layer}.mlp_out",
    )
    return {"sae": SparseDictionary(sae).eval(), "transcoder": SparseDictionary(tc).eval()}


def clocks() -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds: on a shared machine the second is steadier."""
    return time.perf_counter(), time.process_time()


def rates(n_tokens: int, start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return n_tokens / (wall - start[0]), n_tokens / (cpu - start[1])


def time_forward(model, tokens: torch.Tensor, batch: int) -> tuple[float, float]:
    with torch.inference_mode():
        model(tokens[:1, :16])  # warm-up
        start = clocks()
        for s in range(0, tokens.shape[0], batch):
            model(tokens[s : s + batch])
    return rates(tokens.numel(), start)


def time_splice(model, dicts: dict, tokens: torch.Tensor, batch: int, share: bool):
    from interp_bench.analysis.splice import spliced_loss

    start = clocks()
    results = spliced_loss(model, dicts, tokens, batch_size=batch, share_prefix=share)
    return rates(tokens.numel(), start), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--skip-shape", action="store_true", help="skip the share-prefix comparison")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bench_splice.json"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    rows = []

    def row(name, model_name, tok_s, floor, forwards, results=None):
        entry = {
            "case": name,
            "model": model_name,
            "tokens_per_s": tok_s[0],
            "fraction_of_floor": tok_s[0] / floor[0],
            "tokens_per_cpu_s": tok_s[1],
            "fraction_of_floor_cpu": tok_s[1] / floor[1],
            "forwards_ideal": forwards,
        }
        if results:
            entry["exactness_gap"] = max(abs(r.ce_error_added - r.ce_clean) for r in results)
            entry["ce_recovered"] = {r.name: r.ce_recovered for r in results}
        rows.append(entry)

    def measure(model, model_name, tokens, cases) -> None:
        """Floor timed before and after the splice runs (averaged) to damp drifting load."""
        before = time_forward(model, tokens, args.batch)
        timed = [(label, forwards, *time_splice(model, d, tokens, args.batch, share))
                 for label, d, share, forwards in cases]  # fmt: skip
        after = time_forward(model, tokens, args.batch)
        floor = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
        row("model forward (floor)", model_name, floor, floor, 1)
        for label, forwards, tok_s, res in timed:
            row(label, model_name, tok_s, floor, forwards, res)

    from interp_bench.analysis.splice import supports_start_at_layer

    model, model_name = load_floor_model()
    tokens, token_source = eval_tokens(model, args.tokens, args.ctx)
    dicts = dictionaries(model)
    share = supports_start_at_layer(model)
    cases = [
        (f"splice 1 SAE (share_prefix={share})", {"sae": dicts["sae"]}, share, 5.5),
        (f"splice SAE + transcoder (share_prefix={share})", dicts, share, 9.5),
    ]
    measure(model, model_name, tokens, cases)
    del model, dicts

    if not args.skip_shape:
        ht = smollm2_shaped_hooked_transformer()
        g = torch.Generator().manual_seed(0)
        ht_tokens = torch.randint(0, ht.cfg.d_vocab, tokens.shape, generator=g)
        ht_dicts = dictionaries(ht)
        cases = [
            (f"splice SAE + transcoder (share_prefix={sp})", ht_dicts, sp, 5.5 if sp else 9.5)
            for sp in (False, True)
        ]
        measure(ht, "random HookedTransformer, SmolLM2 shape", ht_tokens, cases)

    print(
        f"\n{args.tokens} tokens ({token_source}), batch {args.batch} x {args.ctx}, "
        f"{torch.get_num_threads()} threads"
    )
    head = (
        f"{'case':<44} {'model':<40} {'tok/s':>8} {'x floor':>8} {'tok/cpu-s':>9} "
        f"{'x floor':>8} {'ideal':>6} {'exact gap':>10}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        gap = f"{r['exactness_gap']:10.2e}" if "exactness_gap" in r else f"{'':>10}"
        print(
            f"{r['case']:<44} {r['model'][:40]:<40} {r['tokens_per_s']:8.1f} "
            f"{r['fraction_of_floor']:8.3f} {r['tokens_per_cpu_s']:9.1f} "
            f"{r['fraction_of_floor_cpu']:8.3f} {1 / r['forwards_ideal']:6.3f} {gap}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "tokens": int(tokens.numel()),
        "token_source": token_source,
        "batch": args.batch,
        "ctx": args.ctx,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "note": "ideal = 1 / full-depth forwards per token (clean, variants, half-depth mean pass)",
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
