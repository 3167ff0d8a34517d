"""`interp-bench demo`: the whole pipeline on the embedded default model and corpus."""

import argparse

from .cache import parse_count

HELP = (
    "Run the main job: cache a middle layer, train a TopK SAE and a transcoder, evaluate "
    "(FVU, L0, dead, CE loss recovered), write feature indexes and HTML reports."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small run in a few minutes")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, gpt2, an HF folder")
    p.add_argument("--corpus", default="shakespeare", help="shakespeare, a .txt file or folder")
    p.add_argument("--tokens", type=parse_count, help="training tokens to cache (e.g. 400k, 5M)")
    p.add_argument("--eval-tokens", type=parse_count, help="held-out tokens to cache")
    p.add_argument("--epochs", type=int, help="passes over the cached training tokens")
    p.add_argument("--layer", type=int, help="layer to study (default: the middle one)")
    p.add_argument("--expansion", type=int, default=8, help="d_sae / d_model")
    p.add_argument("--k", type=int, default=32, help="active latents per token (TopK)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", default="runs/demo", help="run folder (re-running resumes)")


def run(args: argparse.Namespace) -> int:
    from interp_bench.pipeline import DemoConfig, run_demo

    overrides = {
        "model": args.model,
        "corpus": args.corpus,
        "layer": args.layer,
        "expansion": args.expansion,
        "k": args.k,
        "device": args.device,
        "out": args.out,
    }
    if args.tokens:
        overrides["train_tokens"] = args.tokens
    if args.eval_tokens:
        overrides["eval_tokens"] = args.eval_tokens
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    run_demo(cfg)
    return 0
