"""`interp-bench train`: SAEs or transcoders on cached activations, sweeps in one pass of reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interp_bench.commands.config_args import add_config_arguments, config_from_args
from interp_bench.commands.counts import parse_count

HELP = "Train sparse autoencoders or transcoders on cached activations (sweeps share one pass)."


# The field each arch's sweep varies (one dictionary per value, all on one pass of reads).
SWEEP = {"topk": "k", "batchtopk": "k", "relu": "l1_coefficient", "jumprelu": "l0_coefficient"}
# Set from --hook / --hook-in / --hook-out and the cache, not flags of their own.
_FROM_CACHE = ("d_in", "d_out", "hook_in", "hook_out", "model_name")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from interp_bench.config import DictionaryConfig, TrainConfig

    p.add_argument("--activations", required=True, help="cache dir written by `interp-bench cache`")
    p.add_argument("--hook", help="SAE input hook(s), comma-separated, e.g. L8.resid_post")
    p.add_argument("--hook-in", help="transcoder input hook, e.g. L8.mlp_in")
    p.add_argument("--hook-out", help="transcoder target hook, e.g. L8.mlp_out")
    p.add_argument("--out", required=True, help="output dir; one subfolder per dictionary")
    p.add_argument(
        "--expansion", type=parse_count, default=8, help="d_sae = expansion * d_in (default: 8)"
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the last checkpoint in --out (default on)",
    )
    p.add_argument("--eval-activations", help="held-out cache dir: report FVU/L0/dead at the end")
    p.add_argument("--eval-tokens", type=parse_count, default=200_000)
    add_config_arguments(
        p,
        DictionaryConfig,
        exclude=_FROM_CACHE,
        sweep=tuple(set(SWEEP.values())),
        aliases={"l1_coefficient": "--l1", "l0_coefficient": "--l0"},
    )
    add_config_arguments(p, TrainConfig, exclude=("extra",))


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

    swept = SWEEP[args.arch]
    singles = {}
    for name in set(SWEEP.values()) - {swept}:
        value = getattr(args, name)
        if isinstance(value, list):
            if len(value) > 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"a {flag} sweep does not apply to --arch {args.arch}")
            singles[name] = value[0]
    values = getattr(args, swept)
    sweep = [{swept: v} for v in (values if isinstance(values, list) else [values])]

    cfgs = []
    for hook_in, hook_out in pairs:
        d_in = _check_hook(hook_in, hooks, cache)
        d_out = _check_hook(hook_out, hooks, cache) if hook_out else None
        d_sae = args.d_sae or args.expansion * d_in
        for extra in sweep:
            fixed = dict(d_in=d_in, d_sae=d_sae, d_out=d_out, hook_in=hook_in, hook_out=hook_out)
            cfgs.append(
                config_from_args(
                    DictionaryConfig, args, model_name=model_name, **fixed, **singles, **extra
                )
            )
    return cfgs


def check_out(out: Path, cfgs) -> None:
    """Every dictionary's subfolder stays inside --out (names come from hook names)."""
    from activation_cache.names import check_inside
    from interp_bench.training.trainer import run_names

    for name in run_names(cfgs):
        check_inside(out, out / name, "dictionary folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from activation_cache.models import default_device
    from activation_cache.reader import ActivationReader, hook_stats
    from interp_bench.config import TrainConfig
    from interp_bench.dictionaries import evaluate
    from interp_bench.training import ddp
    from interp_bench.training.trainer import Trainer

    tc = config_from_args(TrainConfig, args)  # checks every training setting first
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (one subfolder per dictionary)")
    cache = Path(args.activations)
    hooks = cached_hooks(cache)
    cfgs = build_configs(args, hooks, cache, read_cache(cache).model)
    check_out(out, cfgs)
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

    device = ddp.init_from_env() or torch.device(args.device or default_device())
    tc.device, tc.autocast = str(device), tc.autocast or device.type == "cuda"
    reader = ActivationReader(
        cache,
        needed,
        tc.batch_size,
        seed=tc.seed,
        device=device,
        rank=ddp.rank(),
        world_size=ddp.world_size(),
        drop_last=True,  # equal batches on every rank; a ragged last batch is a noisy step
    )
    if reader.n_batches == 0:
        raise ValueError(
            f"--batch-size {tc.batch_size} is more than the {reader.n_tokens} cached tokens "
            "this process reads; lower --batch-size or cache more tokens"
        )
    stats = {h: hook_stats(cache, h) for h in needed}
    trainer = Trainer(cfgs, tc, stats=stats, device=device, out_dir=out)
    dicts = trainer.fit(reader, resume=args.resume)
    if ddp.is_main():
        for name, m in zip(trainer.names, trainer.last_metrics or [{}] * len(cfgs), strict=True):
            last = f"fvu {m['fvu']:.4f}  l0 {m['l0']:.1f}  dead {m['dead_frac']:.3f}" if m else ""
            print(f"saved {(out / name).resolve()}  {last}")
    if eval_dir is not None and ddp.is_main():
        held = ActivationReader(eval_dir, needed, tc.batch_size, shuffle=False, device=device)
        rows = evaluate(dicts, held, max_tokens=args.eval_tokens)
        print(f"{'dictionary (held-out)':<48} {'FVU':>8} {'FVU typ':>8} {'L0':>8} {'dead':>7}")
        for name, r in zip(trainer.names, rows, strict=True):
            print(f"{name:<48} {r.fvu:8.4f} {r.fvu_typical:8.4f} {r.l0:8.2f} {r.dead_frac:7.3f}")
            (out / name / "eval.json").write_text(json.dumps(r.to_dict(), indent=2) + "\n")
    return 0
