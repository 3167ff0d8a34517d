"""`interp-bench cache`: run a model over a corpus split and store activations as shards."""

from __future__ import annotations

import argparse
import time

from interp_bench.commands.counts import parse_count

HELP = "Cache activations at hook points (e.g. L15.resid_post) as resumable safetensors shards."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, HF folder or TL name")
    p.add_argument(
        "--hooks",
        default="L15.resid_post,L15.mlp_in,L15.mlp_out",
        help="comma-separated L<layer>.<kind>, kind in resid_pre, resid_post, mlp_in, mlp_out, "
        "attn_out, z (per-head, flattened)",
    )
    p.add_argument("--corpus", default="shakespeare", help="shakespeare, .txt file/folder, dataset")
    p.add_argument("--context-len", type=int, default=128, help="tokens per sequence, BOS included")
    p.add_argument("--tokens", type=parse_count, help="tokens to cache (1M, 50k); default: all")
    p.add_argument("--split", choices=["train", "eval"], default="train")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument(
        "--batch-size",
        type=parse_count,
        default=1024,
        help="tokens per forward pass (whole sequences; as in `train`, a batch counts tokens)",
    )
    p.add_argument("--shard-tokens", type=parse_count, default=65536, help="tokens per shard")
    p.add_argument("--out", required=True, help="cache dir (one split); rerun to resume")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument(
        "--dist-timeout",
        type=float,
        help="under torchrun: seconds a silent rank is waited for before the others stop "
        "(default 300, or $INTERP_BENCH_DIST_TIMEOUT)",
    )


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, so a typo costs no model load."""
    from interp_bench.commands import preflight as pf

    pf.positive(tokens=args.tokens, batch_size=args.batch_size, shard_tokens=args.shard_tokens)
    if args.context_len < 2:
        raise ValueError(f"--context-len must be >= 2 (BOS and one token), got {args.context_len}")
    facts = pf.model_facts(args.model)
    pf.hook_names(args.hooks, facts)
    pf.fits_context(facts, args.context_len, "--context-len", "lower it")


def run(args: argparse.Namespace) -> int:
    check_args(args)  # before any heavy import: answers in about a second
    from activation_cache import distributed
    from activation_cache.cache import cache_activations
    from activation_cache.corpus import CorpusConfig, cache_metadata, load_corpus
    from activation_cache.models import default_device, load_model
    from activation_cache.shards import STORAGE_DTYPES
    from interp_bench.commands import preflight as pf

    if args.dtype not in STORAGE_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}")
    rank_device = distributed.init(args.dist_timeout)  # torchrun: join the ranks; else no-op
    device = rank_device or args.device or default_device()
    model = load_model(args.model, device=device)
    pf.fits_context(pf.loaded_facts(model), args.context_len, "--context-len", "lower it")
    corpus_cfg = CorpusConfig(source=args.corpus, context_len=args.context_len)
    splits = load_corpus(corpus_cfg, model.tokenizer)
    tokens = splits.train if args.split == "train" else splits.eval
    if tokens.shape[0] == 0:
        raise ValueError(f"the {args.split} split of {args.corpus} is empty; use a larger corpus")
    available = tokens.numel()
    if args.tokens is not None:
        if args.tokens < 1:
            raise ValueError("--tokens must be positive")
        n_seq = -(-args.tokens // args.context_len)
        if n_seq > tokens.shape[0]:
            print(f"note: {args.split} split has {available:,} tokens, caching all of them")
        tokens = tokens[:n_seq]
    meta = cache_metadata(splits, corpus_cfg, args.split, model.tokenizer)
    t0 = time.perf_counter()
    manifest = cache_activations(
        model,
        tokens,
        args.hooks,
        args.out,
        dtype=args.dtype,
        batch_size=max(1, args.batch_size // args.context_len),
        shard_tokens=args.shard_tokens,
        meta=meta,
    )
    dt = time.perf_counter() - t0
    if distributed.rank() != 0:
        return 0
    print(
        f"{args.out}: {manifest.n_tokens:,} tokens x {len(manifest.hooks)} hooks in "
        f"{len(manifest.shards)} shards, {manifest.total_bytes / 2**20:.1f} MiB ({dt:.1f} s)"
    )
    return 0
