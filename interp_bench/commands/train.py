"""`interp-bench train`: SAEs or transcoders on cached activations (or straight from a model's
forward), sweeps and every layer at once in one pass of reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interp_bench.commands.config_args import add_config_arguments, config_from_args
from interp_bench.commands.counts import parse_count

HELP = "Train sparse autoencoders or transcoders on cached activations (sweeps share one pass)."


# The field each arch's sweep varies (one dictionary per value, all on one pass of reads).
SWEEP = {"topk": "k", "batchtopk": "k", "relu": "l1_coefficient", "jumprelu": "l0_coefficient"}
KINDS = ("resid_pre", "resid_post", "mlp_in", "mlp_out")
# Set from --hook / --hook-in / --hook-out and the cache, not flags of their own.
_FROM_CACHE = ("d_in", "d_out", "hook_in", "hook_out", "model_name")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from interp_bench.config import DictionaryConfig, TrainConfig

    p.add_argument("--activations", help="cache dir written by `interp-bench cache`")
    p.add_argument(
        "--model",
        help="instead of --activations: stream activations from this model's forward (one "
        "forward per batch feeds every dictionary; nothing is cached)",
    )
    p.add_argument("--corpus", default="shakespeare", help="with --model: the text to read")
    p.add_argument("--context-len", type=int, default=128, help="with --model: sequence length")
    p.add_argument(
        "--hook", help="SAE input hook(s), e.g. L8.resid_post, L0-29.resid_post or all.resid_post"
    )
    p.add_argument(
        "--hook-in", help="transcoder input hook(s), e.g. L8.mlp_in, L0-29.mlp_in or all.mlp_in"
    )
    p.add_argument("--hook-out", help="transcoder target hook(s), one per input, e.g. all.mlp_out")
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
    p.add_argument(
        "--spread",
        choices=["auto", "data", "dicts"],
        default="auto",
        help="under torchrun: 'data' copies every dictionary to every rank (gradients "
        "all-reduced); 'dicts' gives each rank its own dictionaries, trained on every rank's "
        "batches (sparsify's distribute_modules); auto: dicts when there are at least as many "
        "dictionaries as ranks",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        help="under torchrun: seconds to wait on a silent rank before stopping with an error "
        "naming it (default 300, or $INTERP_BENCH_DIST_TIMEOUT)",
    )
    p.add_argument(
        "--clt",
        action="store_true",
        help="train one cross-layer transcoder over the --hook-in/--hook-out layers (each layer's "
        "latents write into every later layer's output; --arch topk or jumprelu; default width "
        "per layer: --expansion x d_in, less where the CLT would pass 134M parameters)",
    )
    p.add_argument("--layer-k", help="with --clt --arch topk: k per layer, a comma list")
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


def hook_pairs(args: argparse.Namespace, n_layers: int, present: list[str] | None):
    """(hook_in, hook_out) per dictionary from --hook or --hook-in/--hook-out layer specs."""
    from activation_cache.layer_lists import expand_layers

    if args.hook:
        return [(h, None) for h in expand_layers(args.hook, n_layers, present)]
    ins = expand_layers(args.hook_in, n_layers, present)
    outs = expand_layers(args.hook_out, n_layers, present)
    if len(ins) != len(outs):
        raise ValueError(
            f"--hook-in names {len(ins)} hooks but --hook-out {len(outs)}; give one target per "
            "input (e.g. --hook-in all.mlp_in --hook-out all.mlp_out)"
        )
    return list(zip(ins, outs, strict=True))


def _cache_layers(hooks: dict[str, int]) -> int:
    return 1 + max(int(h.split(".")[0][1:]) for h in hooks)


def build_configs(
    args: argparse.Namespace,
    hooks: dict[str, int],
    cache,
    model_name: str,
    n_layers: int | None = None,
):
    """One DictionaryConfig per hook (pair) and swept value. ``hooks``: short name -> width of
    what can be read (a cache's hooks, or every hook of a model when streaming)."""
    from interp_bench.config import DictionaryConfig

    if args.hook and (args.hook_in or args.hook_out):
        raise ValueError("give --hook (SAE) or --hook-in/--hook-out (transcoder), not both")
    if bool(args.hook_in) != bool(args.hook_out):
        raise ValueError("a transcoder needs both --hook-in and --hook-out")
    if not (args.hook or args.hook_in):
        raise ValueError(
            f"give --hook (cached: {', '.join(sorted(hooks))}) or --hook-in/--hook-out"
        )
    if n_layers is None:
        pairs = hook_pairs(args, _cache_layers(hooks), list(hooks))
    else:
        pairs = hook_pairs(args, n_layers, None)
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
    if getattr(args, "clt", False):
        return crosslayer_configs(args, cfgs, len(pairs))
    if getattr(args, "layer_k", None):
        raise ValueError("--layer-k applies to --clt; drop it or add --clt")
    return cfgs


def crosslayer_configs(args: argparse.Namespace, cfgs, n_pairs: int):
    """One CLT config per swept value over the per-layer configs, layers in model order."""
    from interp_bench.dictionaries.crosslayer import CrossLayerConfig, default_width

    if args.hook:
        raise ValueError("--clt trains transcoders: give --hook-in/--hook-out, not --hook")
    if args.arch not in ("topk", "jumprelu"):
        raise ValueError(f"--clt supports --arch topk or jumprelu, not {args.arch}")
    per_value = len(cfgs) // n_pairs
    layer_k = None
    if args.layer_k:
        try:
            layer_k = tuple(int(k) for k in args.layer_k.split(","))
        except ValueError:
            raise ValueError(f"--layer-k {args.layer_k!r}: give integers, e.g. 16,32,32") from None
        if len(layer_k) != n_pairs or args.arch != "topk" or per_value > 1:
            raise ValueError(
                f"--layer-k needs --arch topk, no k sweep, and one k per layer ({n_pairs})"
            )
    out = []
    for s in range(per_value):
        group = sorted(cfgs[s::per_value], key=lambda c: _layer(c.hook_in))
        layers = [_layer(c.hook_in) for c in group]
        if len(set(layers)) != len(layers):
            raise ValueError("--clt needs one --hook-in per layer; two name the same layer")
        c = group[0]
        d_sae = args.d_sae or default_width(len(group), c.d_in, c.out_dim, args.expansion)
        out.append(CrossLayerConfig.from_layers(group, d_sae, layer_k))
    return out


def _layer(hook: str) -> int:
    return int(hook.split(".")[0][1:])


def check_out(out: Path, cfgs) -> None:
    """Every dictionary's subfolder stays inside --out (names come from hook names)."""
    from activation_cache.names import check_inside
    from interp_bench.training.trainer import run_names

    for name in run_names(cfgs):
        check_inside(out, out / name, "dictionary folder")


def model_hooks(n_layers: int, d_model: int) -> dict[str, int]:
    """Every hook a streaming run can read, with its width."""
    return {f"L{i}.{k}": d_model for i in range(n_layers) for k in KINDS}


def check_streaming(args: argparse.Namespace) -> None:
    """`--model M`: the dictionaries' configs checked against the depth and width in the model's
    config file, before torch and the model (25 s for SmolLM2) load. A model whose config is not
    on disk is checked after loading, by the same `build_configs`."""
    from interp_bench.commands import preflight as pf

    facts = pf.model_facts(args.model)
    pf.fits_context(facts, args.context_len, "--context-len", "lower it")
    if facts.n_layers is not None and facts.d_model is not None:
        hooks = model_hooks(facts.n_layers, facts.d_model)
        build_configs(args, hooks, args.model, args.model, n_layers=facts.n_layers)


def run(args: argparse.Namespace) -> int:
    from interp_bench.config import TrainConfig
    from interp_bench.training.tracking import require_wandb

    tc = config_from_args(TrainConfig, args)  # checks every training setting first
    require_wandb(tc.wandb)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (one subfolder per dictionary)")
    if bool(args.activations) == bool(args.model):
        raise ValueError("give --activations DIR (a cache) or --model M (streaming), not both")
    if args.model:
        check_streaming(args)
        return run_streaming(args, tc, out)
    import torch

    from activation_cache.models import default_device
    from activation_cache.reader import ActivationReader, hook_stats
    from interp_bench.commands.train_report import epochs_note
    from interp_bench.training import ddp, failures, spread
    from interp_bench.training.trainer import Trainer, dictionary_hooks, run_names

    cache = Path(args.activations)
    hooks = cached_hooks(cache)
    cfgs = build_configs(args, hooks, cache, read_cache(cache).model)
    check_out(out, cfgs)
    needed = sorted({h for c in cfgs for h in dictionary_hooks(c)})
    eval_dir = Path(args.eval_activations) if args.eval_activations else None
    if eval_dir is not None:  # check before training, not after an hour of it
        eval_hooks = cached_hooks(eval_dir)
        for h in needed:
            if eval_hooks.get(h) != hooks[h]:
                raise ValueError(
                    f"--eval-activations {eval_dir} has no {h} of width {hooks[h]} "
                    f"(it holds {', '.join(f'{k} [{v}]' for k, v in sorted(eval_hooks.items()))})"
                )

    device = ddp.init_from_env(args.dist_timeout) or torch.device(args.device or default_device())
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
    note = epochs_note(tc.tokens, reader.n_tokens * ddp.world_size())
    if note and ddp.is_main():
        print(note)
    if ddp.rank() != 0:
        ddp.barrier()  # rank 0 computes and stores the statistics; the others read them
    stats = {h: hook_stats(cache, h) for h in needed}
    if ddp.rank() == 0:
        ddp.barrier()
    world = ddp.world_size()
    by_dicts = world > 1 and (
        args.spread == "dicts" or (args.spread == "auto" and len(cfgs) >= world and not args.clt)
    )
    if by_dicts and args.clt:
        raise ValueError("--spread dicts does not take --clt yet; use --spread data")
    with failures.watched("training"):
        if by_dicts:
            trainer, dicts, _ = spread.fit(
                Trainer, cfgs, tc, reader, stats=stats, device=device, out_dir=out,
                resume=args.resume, names=run_names(cfgs),
            )  # fmt: skip
        else:
            trainer = Trainer(cfgs, tc, stats=stats, device=device, out_dir=out)
            dicts = trainer.fit(reader, resume=args.resume)
    report(args, trainer, dicts, needed, out, eval_dir, device, every_rank=by_dicts)
    return 0


def run_streaming(args: argparse.Namespace, tc, out: Path) -> int:
    """Train from the model's forward: every needed hook of one batch in one forward."""
    import torch

    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.model_batches import ModelBatches
    from activation_cache.models import default_device, load_model, model_id
    from interp_bench.training import ddp, failures
    from interp_bench.training.trainer import Trainer, dictionary_hooks

    device = ddp.init_from_env(args.dist_timeout) or torch.device(args.device or default_device())
    tc.device, tc.autocast = str(device), tc.autocast or device.type == "cuda"
    model = load_model(args.model, device=device)
    n_layers = int(model.cfg.n_layers)
    hooks = model_hooks(n_layers, int(model.cfg.d_model))
    cfgs = build_configs(args, hooks, args.model, model_id(model), n_layers=n_layers)
    needed = sorted({h for c in cfgs for h in dictionary_hooks(c)})
    splits = load_corpus(
        CorpusConfig(source=args.corpus, context_len=args.context_len), model.tokenizer
    )
    # Under torchrun each rank runs the model on its own sequences (data parallel).
    own = splits.train[ddp.rank() :: ddp.world_size()]
    source = ModelBatches(model, own, needed, tc.batch_size, seed=tc.seed, device=device)
    if source.batch_size != tc.batch_size:  # whole sequences per forward
        print(
            f"note: --batch-size {tc.batch_size} rounded to {source.batch_size} "
            f"({source.seqs_per_batch} sequences of {args.context_len - 1} tokens after BOS)"
        )
        tc.batch_size = source.batch_size
    with failures.watched("training"):
        trainer = Trainer(cfgs, tc, device=device, out_dir=out)
        dicts = trainer.fit(source, resume=args.resume)
    eval_dir = Path(args.eval_activations) if args.eval_activations else None
    report(args, trainer, dicts, needed, out, eval_dir, device)
    return 0


def report(
    args, trainer, dicts, needed, out: Path, eval_dir, device, every_rank: bool = False
) -> None:
    """Print where each dictionary went and, with --eval-activations, its held-out quality.
    With dictionaries spread over ranks (`every_rank`) each rank reports its own."""
    from activation_cache.reader import ActivationReader
    from interp_bench.commands.train_report import saved_line
    from interp_bench.dictionaries import evaluate
    from interp_bench.dictionaries.crosslayer import CrossLayerTranscoder
    from interp_bench.training import ddp

    tc = trainer.train_cfg
    if not (every_rank or ddp.is_main()):
        return
    last = trainer.last_metrics or [None] * len(trainer.names)
    for name, m in zip(trainer.names, last, strict=True):
        print(saved_line(out / name, m))  # a finished run rerun prints its logged metrics
    if eval_dir is not None:
        held = ActivationReader(eval_dir, needed, tc.batch_size, shuffle=False, device=device)
        plain = [i for i, d in enumerate(dicts) if not isinstance(d, CrossLayerTranscoder)]
        found = (
            evaluate([dicts[i] for i in plain], held, max_tokens=args.eval_tokens) if plain else []
        )
        rows = dict(zip(plain, found, strict=True))
        print(f"{'dictionary (held-out)':<48} {'FVU':>8} {'FVU typ':>8} {'L0':>8} {'dead':>7}")
        for i, name in enumerate(trainer.names):
            if i not in rows:
                crosslayer_report(name, dicts[i], held, args.eval_tokens, out / name)
                continue
            r = rows[i]
            print(f"{name:<48} {r.fvu:8.4f} {r.fvu_typical:8.4f} {r.l0:8.2f} {r.dead_frac:7.3f}")
            (out / name / "eval.json").write_text(json.dumps(r.to_dict(), indent=2) + "\n")


def crosslayer_report(name: str, clt, held, max_tokens: int, run: Path) -> None:
    """A CLT's held-out rows: FVU per output layer (L0 / dead of that layer's own latents) and
    the mean; eval.json holds them all."""
    from interp_bench.dictionaries.crosslayer import evaluate_crosslayer

    rows = evaluate_crosslayer(clt, held, max_tokens=max_tokens)
    for hook, r in zip(clt.cfg.hooks_out, rows, strict=True):
        label = f"{name[:30]} {hook}"
        print(f"{label:<48} {r.fvu:8.4f} {r.fvu_typical:8.4f} {r.l0:8.2f} {r.dead_frac:7.3f}")
    mean = {k: sum(getattr(r, k) for r in rows) / len(rows) for k in ("fvu", "fvu_typical")}
    l0 = sum(r.l0 for r in rows)
    print(f"{name[:30] + ' mean (L0 sum)':<48} {mean['fvu']:8.4f} {mean['fvu_typical']:8.4f} "
          f"{l0:8.2f}")  # fmt: skip
    layers = {h: r.to_dict() for h, r in zip(clt.cfg.hooks_out, rows, strict=True)}
    data = {"mean_fvu": mean["fvu"], "mean_fvu_typical": mean["fvu_typical"], "l0_total": l0,
            "layers": layers}  # fmt: skip
    (run / "eval.json").write_text(json.dumps(data, indent=2) + "\n")
