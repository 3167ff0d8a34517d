"""`interp-bench analyze`: one pass over held-out activations that writes a feature index."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "Feature density, top-activating and quantile examples, promoted tokens and reconstruction "
    "error of a dictionary over cached activations; writes a feature index (a cross-layer "
    "transcoder: one per layer, OUT/L<l>/, from one pass)."
)
CLT_ARCHITECTURE = "crosslayer_transcoder"  # crosslayer_format's cfg.json tag (that imports torch)


def _layers(text: str) -> list[int]:
    try:
        return [int(v.strip().removeprefix("L")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of layer numbers: {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from interp_bench.commands.counts import parse_count

    p.add_argument("--dictionary", required=True, help="dictionary folder (cfg.json + weights)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--activations", help="activation cache dir, e.g. RUN/acts/eval")
    src.add_argument(
        "--corpus",
        help="instead of a cache: this text's eval split through --model, every hook the "
        "dictionary reads captured in one forward per batch (nothing cached)",
    )
    p.add_argument(
        "--context-len", type=int, default=128, help="with --corpus: tokens per sequence"
    )
    p.add_argument("--tokens", type=parse_count, help="tokens to analyse (1M, 50k); default: all")
    p.add_argument("--out", help="index folder (default: DICTIONARY/analysis)")
    p.add_argument(
        "--model",
        help="model for token strings and promoted/suppressed tokens "
        "(default: the cache's model; 'none' to skip)",
    )
    p.add_argument("--top-k", type=int, default=20, help="top examples kept per latent")
    p.add_argument("--window", type=int, default=10, help="context tokens either side")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens encoded at once")
    p.add_argument(
        "--direct-effects",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per top example, the latent's direct effect on the next-token logits (one forward "
        "of the model over the sequences holding the examples; default on)",
    )
    p.add_argument("--device", help="cpu, cuda (default: the dictionary's load default)")
    p.add_argument(
        "--layers",
        type=_layers,
        help="cross-layer transcoder only: index these model layers (e.g. 3,7; default: all)",
    )


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs neither torch nor the model: answers in about a second."""
    from interp_bench.analysis.memory import check_window
    from interp_bench.commands import preflight as pf

    if args.activations is not None and not (Path(args.activations) / "manifest.json").exists():
        raise FileNotFoundError(
            f"no activation cache at {args.activations}; run `interp-bench cache --split eval` "
            "first, or read text straight from the model with --corpus"
        )
    if args.corpus is not None:
        if (args.model or "").lower() == "none":
            raise ValueError("--corpus runs the model over the text: name it with --model")
        if args.context_len < 2:
            raise ValueError(f"--context-len must be >= 2, got {args.context_len}")
    cfg = pf.dictionary_cfg(args.dictionary)
    d_sae = cfg.get("d_sae", 0)
    args.crosslayer = cfg.get("architecture") == CLT_ARCHITECTURE
    if args.crosslayer:  # every index of the pass is held at once
        d_sae *= len(set(args.layers)) if args.layers else cfg.get("n_layers", 1)
    elif args.layers:
        raise ValueError(
            f"--layers selects layers of a cross-layer transcoder; {args.dictionary} is not one "
            "(drop --layers)"
        )
    pf.positive(tokens=args.tokens, top_k=args.top_k, batch_tokens=args.batch_tokens)
    check_window(args.window, args.top_k, d_sae)  # the context length is not known yet
    args.total_latents = d_sae


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from activation_cache.shards import read_manifest
    from activation_cache.streams import cache_stream
    from interp_bench.analysis.memory import check_window
    from interp_bench.analysis.top_examples import AnalysisConfig, analyze, check_index_out
    from interp_bench.dictionaries import load_dictionary

    out = Path(args.out) if args.out else Path(args.dictionary) / "analysis"
    if out.is_file():
        raise ValueError(f"--out {out} is a file; pick a folder for the feature index")
    if not args.crosslayer:  # a CLT's indexes are its subfolders, checked once it is loaded
        check_index_out(out)  # before any work: never after a long pass
    dictionary = load_dictionary(args.dictionary, device=args.device)
    dictionary.eval()
    if args.crosslayer:
        from interp_bench.analysis.crosslayer_index import index_folders, stream_hooks

        index_folders(out, dictionary, args.layers)  # bad layers or --out: before any work
        hooks = stream_hooks(dictionary, args.layers)
    else:
        hooks = [h for h in (dictionary.cfg.hook_in, dictionary.cfg.hook_out) if h]
    cfg = AnalysisConfig(top_k=args.top_k, window=args.window, direct_effects=args.direct_effects)
    if args.corpus is None:
        acts_dir = Path(args.activations)
        manifest = read_manifest(acts_dir)
        for h in hooks:
            manifest.hook(h)  # a clear error naming the hooks the cache holds
        check_window(cfg.window, cfg.top_k, args.total_latents, manifest.context_len, cfg.reservoir)
        model = _load_model(args.model or manifest.model or dictionary.cfg.model_name)
        total = manifest.n_tokens if args.tokens is None else min(args.tokens, manifest.n_tokens)
        stream = cache_stream(acts_dir, hooks, args.batch_tokens)
    else:
        check_window(cfg.window, cfg.top_k, args.total_latents, args.context_len, cfg.reservoir)
        model, stream, total = _model_source(args, dictionary, hooks)
    if args.crosslayer:
        return _run_crosslayer(args, dictionary, stream, out, cfg, model, total)
    index = analyze(
        dictionary,
        stream,
        out,
        cfg,
        model=model,
        max_tokens=total,  # a known total gives the bar its ETA
        progress=True,
    )
    d, r = index.meta["density"], index.recon
    print(
        f"analysed {d['n_tokens']:,} tokens: {d['dead']} dead and {d['dense']} dense of "
        f"{d['d_sae']:,} latents, NMSE {r['nmse']:.4f}, mean relative error "
        f"{r['mean_rel_err']:.4f}\nfeature index: {out}  (browse: interp-bench report {out})"
    )
    return 0


def _model_source(args: argparse.Namespace, dictionary, hooks: list[str]):
    """(model, stream, total tokens) for --corpus: the eval split's sequences through the
    model, every hook in one forward per batch of sequences."""
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.hooks import resolve_hooks
    from activation_cache.models import load_model
    from activation_cache.streams import model_stream

    name = args.model or dictionary.cfg.model_name
    if not name:
        raise ValueError("the dictionary names no model: pass --model with --corpus")
    model = load_model(name, device=args.device)
    resolve_hooks(model, hooks)  # a clear error naming the hooks the model has
    splits = load_corpus(
        CorpusConfig(source=args.corpus, context_len=args.context_len), model.tokenizer
    )
    n_seq = splits.eval.shape[0] if args.tokens is None else -(-args.tokens // args.context_len)
    tokens = splits.eval[:n_seq]
    if tokens.shape[0] == 0:
        raise ValueError(f"the eval split of {args.corpus} is empty; use a larger corpus")
    batch_seqs = max(1, args.batch_tokens // args.context_len)
    return model, model_stream(model, tokens, hooks, batch_seqs), tokens.numel()


def _run_crosslayer(args, clt, stream, out, cfg, model, total) -> int:
    """One pass over the stream, one feature index per selected CLT layer."""
    from interp_bench.analysis.crosslayer_index import analyze_crosslayer

    indexes = analyze_crosslayer(
        clt, stream, out, cfg, layers=args.layers, model=model, max_tokens=total, progress=True,
    )  # fmt: skip
    for layer, index in indexes.items():
        d, r = index.meta["density"], index.recon
        print(
            f"L{layer}: {d['dead']} dead and {d['dense']} dense of {d['d_sae']:,} latents, "
            f"NMSE {r['nmse']:.4f} (whole CLT into L{layer}'s output)  {index.path}"
        )
    n = next(iter(indexes.values())).meta["density"]["n_tokens"]
    print(
        f"analysed {n:,} tokens; feature indexes: {out}/L<l>  (browse: interp-bench report {out}, "
        "one report.html per layer)"
    )
    return 0


def _load_model(name: str | None):
    """The model only supplies the tokenizer and the unembedding, so it is optional."""
    if not name or name.lower() == "none":
        return None
    from activation_cache.models import load_model

    try:
        return load_model(name, device="cpu")
    except Exception as err:  # any loader failure gets the same fix
        raise ValueError(
            f"could not load model {name!r} for token strings ({err}); "
            "pass --model NAME, or --model none to skip token strings and logit effects"
        ) from err
