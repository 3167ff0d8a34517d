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
    p.add_argument("--out", default="steer", help="output prefix: PREFIX.json and PREFIX.html")
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")


def run(args: argparse.Namespace) -> int:
    from activation_cache.models import load_model, model_id
    from interp_bench.analysis.steering import (
        format_sweep,
        latent_max_activation,
        sweep,
        sweep_figure,
    )
    from interp_bench.dictionaries import load_dictionary

    if not (Path(args.dictionary) / "cfg.json").exists():
        raise FileNotFoundError(f"no dictionary at {args.dictionary} (cfg.json missing)")
    if args.max_new_tokens < 1 or args.neutral_tokens < 0:
        raise ValueError("--max-new-tokens must be positive and --neutral-tokens non-negative")
    if args.scale_by_max and args.neutral_tokens == 0:
        raise ValueError(
            "--scale-by-max measures the max on neutral text: set --neutral-tokens > 0"
        )
    coefficients = args.coefficients
    if coefficients is None:
        coefficients = [] if args.clamp else [0.0, 2.0, 4.0, 8.0]
    dictionary = load_dictionary(args.dictionary, device=args.device).eval()
    model = load_model(
        args.model or dictionary.cfg.model_name or "smollm2-135m", device=args.device
    )
    dictionary.to(next(model.parameters()).device)

    neutral = None
    if args.neutral_tokens:
        from activation_cache.corpus import CorpusConfig, load_corpus

        cfg = CorpusConfig(source=args.corpus, context_len=args.context_len)
        neutral = load_corpus(cfg, model.tokenizer).eval[
            : -(-args.neutral_tokens // args.context_len)
        ]
        if neutral.shape[0] == 0:
            raise ValueError(f"the eval split of {args.corpus} is empty; use a larger corpus")
    scale = args.scale
    if args.scale_by_max:
        scale = latent_max_activation(model, dictionary, neutral, args.latent)
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
    )
    result.extra.update(model=model_id(model), dictionary=str(Path(args.dictionary).resolve()))
    print(format_sweep(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".html")
    json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    sweep_figure(result).write_html(html_path, include_plotlyjs="cdn")
    print(f"wrote {json_path} and {html_path}")
    return 0
