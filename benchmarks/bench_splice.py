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

    python -m benchmarks.bench_splice [--tokens 1024] [--skip-shape]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import OUT, corpus_tokens, floor_model, machine_info, print_table, write_json


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
    ap.add_argument("--out", default=str(OUT / "bench_splice.json"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    machine = machine_info()

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

    model, model_name = floor_model()
    tokens, token_source = corpus_tokens(model, max(1, args.tokens // args.ctx), args.ctx, "eval")
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
    print_table(
        [("case", ""), ("model", ""), ("tok/s", ".1f"), ("x floor", ".3f"), ("tok/cpu-s", ".1f"),
         ("x floor", ".3f"), ("ideal", ".3f"), ("exact gap", ".2e")],
        [[r["case"], r["model"][:40], r["tokens_per_s"], r["fraction_of_floor"],
          r["tokens_per_cpu_s"], r["fraction_of_floor_cpu"], 1 / r["forwards_ideal"],
          r.get("exactness_gap")] for r in rows],
    )  # fmt: skip
    payload = {
        "machine": machine,
        "tokens": int(tokens.numel()),
        "token_source": token_source,
        "batch": args.batch,
        "ctx": args.ctx,
        "rows": rows,
        "note": "ideal = 1 / full-depth forwards per token (clean, variants, half-depth mean pass)",
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
