"""`interp-bench steer`: generate with a latent added or clamped, and measure what changes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = (
    "Steer with one dictionary latent (decoder direction added at coefficients, or clamped): "
    "greedy and sampled generations, target log-prob change, KL/CE on neutral text; "
    "writes JSON and an HTML figure."
)


CLT_ARCHITECTURE = "crosslayer_transcoder"  # crosslayer_format's cfg.json tag (that imports torch)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from interp_bench.commands.counts import parse_count

    p.add_argument("--dictionary", required=True, help="dictionary folder (cfg.json + weights)")
    p.add_argument("--latent", type=int, required=True, help="latent index to steer with")
    p.add_argument(
        "--layer",
        type=int,
        help="cross-layer transcoder: the feature's source layer (a model layer); its decoder "
        "writes into that layer's MLP output and every later one's",
    )
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument(
        "--coefficients",
        type=_floats,
        help="add the decoder direction at these coefficients (default 0,2,4,8 unless --clamp; "
        "negatives as --coefficients=-4,0,4)",
    )
    p.add_argument("--clamp", type=_floats, help="also clamp the latent to these values, e.g. 0,10")
    p.add_argument("--target", help="text whose log-probability after the prompt is measured")
    p.add_argument(
        "--positions", type=_ints, help="steer only these positions (default: all but BOS)"
    )
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=float, default=1.0, help="multiply coefficients by this")
    scale.add_argument(
        "--scale-by-max",
        action="store_true",
        help="multiply coefficients by the latent's max activation on the neutral text",
    )
    p.add_argument("--model", help="model (default: the dictionary's model_name)")
    p.add_argument(
        "--corpus", default="shakespeare", help="neutral text for side effects (eval split)"
    )
    p.add_argument(
        "--neutral-tokens",
        type=parse_count,
        default=2048,
        help="neutral tokens (0: skip side effects)",
    )
    p.add_argument("--context-len", type=int, default=64, help="neutral sequence length")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=1.0, help="for the sampled generations")
    p.add_argument("--top-k", type=int, help="sample from the top k tokens only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        help="folder for steer_latent<I>.json and .html (steer_L<l>_latent<I> with --layer; "
        "default: the dictionary folder)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")


def check_args(args: argparse.Namespace) -> tuple[str, dict]:
    """Every check that needs no model: (model name, the dictionary's cfg.json)."""
    from interp_bench.commands import preflight as pf

    cfg = pf.dictionary_cfg(args.dictionary)
    pf.positive(max_new_tokens=args.max_new_tokens, top_k=args.top_k, context_len=args.context_len)
    pf.positive(temperature=args.temperature)  # greedy rows are always generated besides
    pf.non_negative(neutral_tokens=args.neutral_tokens, latent=args.latent)
    pf.finite("coefficients", args.coefficients)
    pf.finite("clamp", args.clamp)
    pf.finite("scale", args.scale)
    pf.finite("temperature", args.temperature)
    if args.positions is not None and min(args.positions, default=0) < 0:
        raise ValueError(f"--positions must be >= 0, got {min(args.positions)}")
    clt = cfg.get("architecture") == CLT_ARCHITECTURE
    if clt and args.layer is None:
        raise ValueError(
            f"{args.dictionary} is a cross-layer transcoder: name the feature's source layer "
            "with --layer (a model layer it covers)"
        )
    if not clt and args.layer is not None:
        raise ValueError(
            f"--layer picks a source layer of a cross-layer transcoder; {args.dictionary} is "
            "not one (drop --layer)"
        )
    d_sae = cfg.get("d_sae")
    if isinstance(d_sae, int) and args.latent >= d_sae:
        raise ValueError(
            f"--latent {args.latent} out of range: this dictionary has latents 0..{d_sae - 1}"
        )
    if args.scale_by_max and args.neutral_tokens == 0:
        raise ValueError(
            "--scale-by-max measures the max on neutral text: set --neutral-tokens > 0"
        )
    name = args.model or pf.dictionary_model(cfg) or "smollm2-135m"
    facts = pf.model_facts(name)
    _check_model(args, cfg, facts)
    return name, cfg


def _check_model(args: argparse.Namespace, cfg: dict, facts) -> None:
    """Checks against what the model holds: before loading when its config is on disk, and
    again on the loaded model."""
    from interp_bench.commands import preflight as pf

    fix = "lower --max-new-tokens"
    pf.fits_context(facts, args.max_new_tokens + 1, "--max-new-tokens plus BOS", fix)
    if args.neutral_tokens:
        pf.fits_context(facts, args.context_len, "--context-len", "lower --context-len")
    pf.dictionary_fits(cfg, facts, args.dictionary)


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Absolute (json, html) paths: next to the dictionary unless --out names a folder."""
    folder = Path(args.out if args.out else args.dictionary).expanduser().resolve()
    stem = f"steer_latent{args.latent}"
    if args.layer is not None:
        stem = f"steer_L{args.layer}_latent{args.latent}"
    return folder / f"{stem}.json", folder / f"{stem}.html"


def run(args: argparse.Namespace) -> int:
    model_name, cfg = check_args(args)  # before any heavy import: answers in about a second
    json_path, html_path = output_paths(args)
    from activation_cache.models import load_model, model_id
    from activation_cache.paths import write_text_atomic
    from interp_bench.analysis.steering import (
        check_positions,
        format_sweep,
        latent_max_activation,
        sweep,
        sweep_figure,
        writer,
    )
    from interp_bench.commands import preflight as pf
    from interp_bench.dictionaries import load_dictionary

    coefficients = args.coefficients
    if coefficients is None:
        coefficients = [] if args.clamp else [0.0, 2.0, 4.0, 8.0]
    dictionary = load_dictionary(args.dictionary, device=args.device).eval()
    writer(dictionary, args.layer)  # a --layer the CLT lacks fails before the model loads
    model = load_model(model_name, device=args.device)
    _check_model(args, cfg, pf.loaded_facts(model))
    prompt_len = model.to_tokens(args.prompt, prepend_bos=True).shape[1] if args.prompt else 0
    pf.fits_context(
        pf.loaded_facts(model),
        prompt_len + args.max_new_tokens,
        "the prompt plus --max-new-tokens",
        "shorten the prompt or lower --max-new-tokens",
    )
    check_positions(args.positions, prompt_len)
    dictionary.to(next(model.parameters()).device)

    neutral = None
    if args.neutral_tokens:
        from activation_cache.corpus import CorpusConfig, load_corpus

        corpus_cfg = CorpusConfig(source=args.corpus, context_len=args.context_len)
        neutral = load_corpus(corpus_cfg, model.tokenizer).eval[
            : -(-args.neutral_tokens // args.context_len)
        ]
        if neutral.shape[0] == 0:
            raise ValueError(f"the eval split of {args.corpus} is empty; use a larger corpus")
    scale = args.scale
    if args.scale_by_max:
        scale = latent_max_activation(model, dictionary, neutral, args.latent, layer=args.layer)
        print(f"latent {args.latent} max activation on neutral text: {scale:.4g}")
        if scale <= 0:
            raise ValueError(
                f"latent {args.latent} never fires on the neutral text: drop --scale-by-max "
                "or give --scale"
            )
    result = sweep(
        model,
        dictionary,
        args.latent,
        args.prompt,
        coefficients=coefficients,
        clamp_values=args.clamp or [],
        target=args.target,
        neutral_tokens=neutral,
        scale=scale,
        positions=args.positions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        progress=not args.no_progress,
        layer=args.layer,
    )
    result.extra.update(model=model_id(model), dictionary=str(Path(args.dictionary).resolve()))
    print(format_sweep(result))
    write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    # plotly.js inlined (about 4.6 MB): the page must open from disk without a network.
    write_text_atomic(html_path, sweep_figure(result).to_html(include_plotlyjs=True))
    print(f"wrote {json_path}\nwrote {html_path}  (open in a browser, works offline)")
    return 0
