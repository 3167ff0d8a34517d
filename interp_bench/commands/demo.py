"""`interp-bench demo`: the whole pipeline on the embedded default model and corpus."""

import argparse

from interp_bench.commands.counts import parse_count

HELP = (
    "Run the main job: cache a middle layer, train a TopK SAE and a transcoder, evaluate "
    "(FVU, L0, dead, CE loss recovered), write feature indexes and HTML reports."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small run in a few minutes")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, gpt2, an HF folder")
    p.add_argument("--corpus", default="shakespeare", help="shakespeare, a .txt file or folder")
    p.add_argument("--tokens", type=parse_count, help="training tokens to cache (e.g. 400k, 1M)")
    p.add_argument("--eval-tokens", type=parse_count, help="held-out tokens to cache")
    p.add_argument("--splice-tokens", type=parse_count, help="held-out tokens for the CE pass")
    p.add_argument("--epochs", type=int, help="passes over the cached training tokens")
    p.add_argument("--layer", type=int, help="layer to study (default: the middle one)")
    p.add_argument("--expansion", type=int, default=8, help="d_sae / d_model")
    p.add_argument("--k", type=int, default=32, help="active latents per token (TopK)")
    p.add_argument("--batch-size", type=int, help="training tokens per step")
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: TrainConfig.lr's rule: 1/sqrt(d_sae), more for short runs)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument(
        "--out", help="run folder, re-running resumes (default: runs/demo, runs/quick with --quick)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    """The `DemoConfig` these arguments ask for (`--quick` shrinks the defaults only)."""
    check_args(args)  # before importing the pipeline (torch): answers in about a second
    from interp_bench.commands.pipeline import DemoConfig

    overrides = {
        "model": args.model,
        "corpus": args.corpus,
        "layer": args.layer,
        "expansion": args.expansion,
        "k": args.k,
        "lr": args.lr,
        "device": args.device,
        "progress": not args.no_progress,
    }
    optional = {
        "train_tokens": args.tokens,
        "eval_tokens": args.eval_tokens,
        "splice_tokens": args.splice_tokens,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "out": args.out,
    }
    overrides |= {k: v for k, v in optional.items() if v is not None}
    for name in ("train_tokens", "eval_tokens", "splice_tokens", "epochs", "batch_size"):
        if name in overrides and overrides[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model (nor torch), so a bad argument costs no model load."""
    from interp_bench.commands import preflight as pf

    pf.positive(expansion=args.expansion, k=args.k, lr=args.lr)
    pf.finite("lr", args.lr)
    facts = pf.model_facts(args.model)
    if facts.d_model is not None and args.k > args.expansion * facts.d_model:
        raise ValueError(f"--k {args.k} exceeds d_sae = {args.expansion * facts.d_model}")
    if args.layer is not None:
        n = facts.n_layers
        if args.layer < 0 or (n is not None and args.layer >= n):
            top = f"0..{n - 1}" if n is not None else ">= 0"
            raise ValueError(f"--layer {args.layer} out of range: this model has layers {top}")


def run(args: argparse.Namespace) -> int:
    import sys

    cfg = config_from_args(args)
    from interp_bench.commands.pipeline import run_demo

    try:
        run_demo(cfg)
    except KeyboardInterrupt:
        # One line instead of a traceback: every finished stage and cached shard is kept.
        again = "make quick" if args.quick else "make demo"
        print(
            f"\ninterrupted; rerun the same command ({again}, or interp-bench demo with the same "
            f"arguments) to resume: finished stages in {cfg.out} are skipped",
            file=sys.stderr,
        )
        return 130
    return 0
