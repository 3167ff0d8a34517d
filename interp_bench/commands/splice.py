"""`interp-bench splice`: CE loss recovered, KL and ablation baselines of dictionaries on text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = (
    "Spliced next-token loss of one or more dictionaries on held-out text, against the clean "
    "model and zero/mean ablation of the hook (CE recovered, KL); prints a table, writes JSON."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from interp_bench.commands.counts import parse_count

    p.add_argument(
        "--dictionary", action="append", required=True, help="dictionary folder (repeatable)"
    )
    p.add_argument("--model", help="model (default: the first dictionary's model_name)")
    p.add_argument("--corpus", default="shakespeare", help="held-out text: its eval split is used")
    p.add_argument("--context-len", type=int, default=128, help="tokens per sequence, BOS included")
    p.add_argument("--tokens", type=parse_count, default=16384, help="eval tokens (16k, 1M)")
    p.add_argument(
        "--batch-size",
        type=parse_count,
        default=1024,
        help="tokens per forward pass (whole sequences; as in `train`, a batch counts tokens)",
    )
    p.add_argument("--out", default="splice.json", help="JSON results file")
    p.add_argument(
        "--no-share-prefix",
        action="store_true",
        help="re-run every variant from the embedding instead of from the spliced block",
    )
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")


def run(args: argparse.Namespace) -> int:
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model, model_id
    from interp_bench.analysis.splice import format_table, spliced_loss, supports_start_at_layer
    from interp_bench.dictionaries import load_dictionary

    if args.tokens < 1 or args.batch_size < 1:
        raise ValueError("--tokens and --batch-size must be positive")
    dictionaries = {}
    for folder in args.dictionary:
        if not (Path(folder) / "cfg.json").exists():
            raise FileNotFoundError(f"no dictionary at {folder} (cfg.json missing)")
        name = Path(folder).resolve().name
        if name in dictionaries:
            name = f"{name}#{len(dictionaries)}"
        dictionaries[name] = load_dictionary(folder, device=args.device).eval()
    first = next(iter(dictionaries.values()))
    model = load_model(args.model or first.cfg.model_name or "smollm2-135m", device=args.device)
    for d in dictionaries.values():
        d.to(next(model.parameters()).device)
    splits = load_corpus(
        CorpusConfig(source=args.corpus, context_len=args.context_len), model.tokenizer
    )
    if splits.eval.shape[0] == 0:
        raise ValueError(f"the eval split of {args.corpus} is empty; use a larger corpus")
    n_seq = -(-args.tokens // args.context_len)
    if n_seq > splits.eval.shape[0]:
        print(f"note: the eval split has {splits.eval.numel():,} tokens, using all of them")
    tokens = splits.eval[:n_seq]
    share = False if args.no_share_prefix else supports_start_at_layer(model)
    results = spliced_loss(
        model,
        dictionaries,
        tokens,
        batch_size=max(1, args.batch_size // args.context_len),
        share_prefix=share,
        progress=True,
    )
    print(format_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model_id(model),
        "corpus": args.corpus,
        "corpus_fingerprint": splits.fingerprint,
        "context_len": args.context_len,
        "n_sequences": int(tokens.shape[0]),
        "dictionaries": {
            name: str(Path(f).resolve())
            for name, f in zip(dictionaries, args.dictionary, strict=True)
        },
        "results": [r.to_dict() for r in results],
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0
