"""`interp-bench train`: SAEs or transcoders on cached activations, sweeps in one pass of reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interp_bench.commands.counts import parse_count

HELP = "Train sparse autoencoders or transcoders on cached activations (sweeps share one pass)."


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [parse_count(v) for v in text.split(",") if v.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", required=True, help="cache dir written by `interp-bench cache`")
    p.add_argument("--hook", help="SAE input hook(s), comma-separated, e.g. L8.resid_post")
    p.add_argument("--hook-in", help="transcoder input hook, e.g. L8.mlp_in")
    p.add_argument("--hook-out", help="transcoder target hook, e.g. L8.mlp_out")
    p.add_argument("--skip", action="store_true", help="transcoder: add a linear skip connection")
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "relu", "jumprelu"])
    p.add_argument("--k", type=_ints, default=[32], help="active latents; a list sweeps: 16,32,64")
    p.add_argument("--l1", type=_floats, help="relu L1 coefficient(s); a list sweeps: 1,3,10")
    p.add_argument("--l0", type=_floats, help="jumprelu L0 coefficient(s); a list sweeps")
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion * d_in")
    p.add_argument("--d-sae", type=parse_count, help="dictionary width (overrides --expansion)")
    p.add_argument("--tokens", type=parse_count, default=10**7, help="training tokens (50M, 1k)")
    p.add_argument("--out", required=True, help="output dir; one subfolder per dictionary")
    p.add_argument("--batch-size", type=parse_count, default=4096, help="tokens per step per rank")
    p.add_argument("--lr", type=float, help="default: 1e-3 / sqrt(d_sae / 2**14)")
    p.add_argument("--lr-decay", choices=["linear", "cosine"], default="linear")
    p.add_argument("--warmup-steps", type=int, help="lr warm-up (default: min(100, 5%% of steps))")
    p.add_argument(
        "--sparsity-warmup-steps",
        type=int,
        help="L1/L0 coefficient warm-up (default: min(1000, 5%% of steps))",
    )
    p.add_argument(
        "--dead-tokens",
        type=parse_count,
        help="dead after this many tokens without firing (default: min(10M, 10%% of --tokens))",
    )
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps; 0 disables")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the last checkpoint in --out (default on)",
    )
    p.add_argument("--eval-activations", help="held-out cache dir: report FVU/L0/dead at the end")
    p.add_argument("--eval-tokens", type=parse_count, default=200_000)


def read_cache(cache: Path):
    """The cache's manifest (hooks with widths, model name); one clear error when it is not one."""
    from activation_cache.shards import read_manifest

    if not cache.is_dir():
        raise FileNotFoundError(f"no activation cache at {cache}; run `interp-bench cache` first")
    manifest = read_manifest(cache)
    if not manifest.shards:
        raise ValueError(f"{cache} holds no finished shards; run (or resume) `interp-bench cache`")
    return manifest


def cached_hooks(cache: Path) -> dict[str, int]:
    """Hook short name -> width."""
    return {h["short"]: int(h["d"]) for h in read_cache(cache).hooks}


def _check_hook(hook: str, hooks: dict[str, int], cache: Path) -> int:
    if hook not in hooks:
        raise ValueError(
            f"hook {hook!r} is not in the cache {cache}; cached hooks: {', '.join(sorted(hooks))} "
            "(cache it with `interp-bench cache --hooks ...`)"
        )
    return hooks[hook]


def build_configs(args: argparse.Namespace, hooks: dict[str, int], cache: Path, model_name: str):
    from interp_bench.config import DictionaryConfig

    if args.hook and (args.hook_in or args.hook_out):
        raise ValueError("give --hook (SAE) or --hook-in/--hook-out (transcoder), not both")
    if bool(args.hook_in) != bool(args.hook_out):
        raise ValueError("a transcoder needs both --hook-in and --hook-out")
    if not (args.hook or args.hook_in):
        raise ValueError(
            f"give --hook (cached: {', '.join(sorted(hooks))}) or --hook-in/--hook-out"
        )
    pairs = (
        [(h.strip(), None) for h in args.hook.split(",")]
        if args.hook
        else [(args.hook_in, args.hook_out)]
    )
    if args.skip and not args.hook_out:
        raise ValueError("--skip applies to transcoders; add --hook-in/--hook-out")

    sweep: list[dict] = []
    if args.arch in ("topk", "batchtopk"):
        sweep = [{"k": k} for k in args.k]
    elif args.arch == "relu":
        sweep = [{"l1_coefficient": c} for c in (args.l1 or [5.0])]
    else:
        sweep = [{"l0_coefficient": c} for c in (args.l0 or [1.0])]

    cfgs = []
    for hook_in, hook_out in pairs:
        d_in = _check_hook(hook_in, hooks, cache)
        d_out = _check_hook(hook_out, hooks, cache) if hook_out else None
        d_sae = args.d_sae or args.expansion * d_in
        for extra in sweep:
            if "k" in extra and not 0 < extra["k"] <= d_sae:
                raise ValueError(f"--k {extra['k']} must be between 1 and d_sae={d_sae}")
            cfgs.append(
                DictionaryConfig(
                    d_in=d_in,
                    d_sae=d_sae,
                    arch=args.arch,
                    d_out=d_out,
                    hook_in=hook_in,
                    hook_out=hook_out,
                    model_name=model_name,
                    skip=args.skip,
                    **extra,
                )
            )
    return cfgs


def check_out(out: Path, cfgs) -> None:
    """--out is a folder (or absent) and every dictionary's subfolder stays inside it."""
    from activation_cache.names import check_inside
    from interp_bench.training.trainer import run_names

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (one subfolder per dictionary)")
    for name in run_names(cfgs):
        check_inside(out, out / name, "dictionary folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from activation_cache.reader import ActivationReader, hook_stats
    from interp_bench.config import TrainConfig
    from interp_bench.training import ddp
    from interp_bench.training.trainer import Trainer, evaluate

    cache = Path(args.activations)
    hooks = cached_hooks(cache)
    cfgs = build_configs(args, hooks, cache, read_cache(cache).model)
    check_out(Path(args.out), cfgs)
    needed = sorted({c.hook_in for c in cfgs} | {c.hook_out for c in cfgs if c.hook_out})
    eval_dir = Path(args.eval_activations) if args.eval_activations else None
    if eval_dir is not None:  # check before training, not after an hour of it
        eval_hooks = cached_hooks(eval_dir)
        for h in needed:
            if eval_hooks.get(h) != hooks[h]:
                raise ValueError(
                    f"--eval-activations {eval_dir} has no {h} of width {hooks[h]} "
                    f"(it holds {', '.join(f'{k} [{v}]' for k, v in sorted(eval_hooks.items()))})"
                )

    ddp_device = ddp.init_from_env()
    device = ddp_device or torch.device(
        args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    steps = max(1, args.tokens // (args.batch_size * ddp.world_size()))
    short = max(1, steps // 20)  # short runs must not spend themselves warming up
    tc = TrainConfig(
        lr=args.lr,
        batch_size=args.batch_size,
        tokens=args.tokens,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else min(100, short),
        sparsity_warmup_steps=(
            args.sparsity_warmup_steps
            if args.sparsity_warmup_steps is not None
            else min(1000, short)
        ),
        lr_decay=args.lr_decay,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        device=str(device),
        autocast=device.type == "cuda",
    )
    if args.dead_tokens is not None:
        tc.dead_tokens = args.dead_tokens
    else:
        tc.dead_tokens = min(tc.dead_tokens, max(args.tokens // 10, args.batch_size))
    reader = ActivationReader(
        cache,
        needed,
        args.batch_size,
        seed=args.seed,
        device=device,
        rank=ddp.rank(),
        world_size=ddp.world_size(),
        drop_last=True,  # equal batches on every rank; a ragged last batch is a noisy step
    )
    if reader.n_batches == 0:
        raise ValueError(
            f"--batch-size {args.batch_size} is more than the {reader.n_tokens} cached tokens "
            "this process reads; lower --batch-size or cache more tokens"
        )
    stats = {h: hook_stats(cache, h) for h in needed}
    trainer = Trainer(cfgs, tc, stats=stats, device=device, out_dir=args.out)
    dicts = trainer.fit(reader, resume=args.resume)
    if ddp.is_main():
        for name, m in zip(trainer.names, trainer.last_metrics or [{}] * len(cfgs), strict=True):
            last = f"fvu {m['fvu']:.4f}  l0 {m['l0']:.1f}  dead {m['dead_frac']:.3f}" if m else ""
            print(f"saved {Path(args.out) / name}  {last}")
    if eval_dir is not None and ddp.is_main():
        held = ActivationReader(
            eval_dir, needed, args.batch_size, seed=0, shuffle=False, device=device
        )
        rows = evaluate(dicts, held, max_tokens=args.eval_tokens)
        print(f"{'dictionary':<48} {'FVU':>8} {'L0':>8} {'dead':>7}")
        for name, r in zip(trainer.names, rows, strict=True):
            print(f"{name:<48} {r['fvu']:8.4f} {r['l0']:8.2f} {r['dead_frac']:7.3f}")
            (Path(args.out) / name / "eval.json").write_text(json.dumps(r, indent=2) + "\n")
    return 0
