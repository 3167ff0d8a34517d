"""`interp-bench splice`: CE loss recovered, KL and ablation baselines of dictionaries on text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = (
    "Spliced next-token loss of one or more dictionaries on held-out text, against the clean "
    "model and zero/mean ablation of the hook (CE recovered, KL); prints a table, writes JSON. "
    "A cross-layer transcoder, or per-layer transcoders with --joint, replace every MLP they "
    "cover at once, in one forward."
)
CLT_ARCHITECTURE = "crosslayer_transcoder"  # crosslayer_format's cfg.json tag (that imports torch)


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
    p.add_argument(
        "--out",
        help="JSON results file (default: splice.json in the first dictionary's folder; with "
        "--joint over several folders, splice_joint.json in the first one's parent folder)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--no-share-prefix",
        action="store_true",
        help="re-run every variant from the embedding instead of from the spliced block",
    )
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")
    p.add_argument(
        "--joint",
        action="store_true",
        help="splice per-layer L<l>.mlp_in -> L<l>.mlp_out transcoders all at once (one result); "
        "--dictionary may name their parent folder (`train --hook-in all.mlp_in` writes one). "
        "A CLT folder is always spliced jointly",
    )


def dictionary_folders(folders: list[str], joint: bool) -> list[Path]:
    """The dictionary folders to load: with --joint, a folder without cfg.json stands for its
    subfolders that have one (one per layer, as `train` writes them)."""
    out = []
    for folder in map(Path, folders):
        subs = [] if (folder / "cfg.json").exists() else sorted(folder.glob("*/cfg.json"))
        if subs and not joint:
            raise ValueError(
                f"{folder} holds {len(subs)} dictionaries in subfolders: pass --joint to splice "
                "them together, or name each subfolder with --dictionary"
            )
        out += [p.parent for p in subs] or [folder]
    return out


def check_args(args: argparse.Namespace) -> tuple[str, Path]:
    """Every check that needs no model: (model name, absolute output path). Sets `args.joint`
    when a CLT is given and expands parent folders in `args.dictionary` (see
    `dictionary_folders`)."""
    from interp_bench.commands import preflight as pf

    pf.positive(tokens=args.tokens, batch_size=args.batch_size)
    if args.context_len < 3:
        raise ValueError(f"--context-len must be >= 3 (BOS + 2 predictions): {args.context_len}")
    args.dictionary = [str(f) for f in dictionary_folders(args.dictionary, args.joint)]
    cfgs = [pf.dictionary_cfg(folder) for folder in args.dictionary]
    if any(c.get("architecture") == CLT_ARCHITECTURE for c in cfgs):
        if len(cfgs) > 1:
            raise ValueError(
                "a cross-layer transcoder is spliced jointly on its own: pass it as the only "
                "--dictionary (run splice again for the others)"
            )
        args.joint = True
    elif args.joint:  # the mix, from the saved hook names: before the model loads
        from interp_bench.analysis.joint_pairs import check_pairs

        own = [((c.get("metadata") or {}).get("interp_bench") or {}).get("config") or {}
               for c in cfgs]  # fmt: skip
        check_pairs([(o.get("hook_in", "?"), o.get("hook_out")) for o in own], pf.hook_kind_layer)
    name = args.model or pf.dictionary_model(cfgs[0]) or "smollm2-135m"
    facts = pf.model_facts(name)
    pf.fits_context(facts, args.context_len, "--context-len", "lower --context-len")
    for folder, cfg in zip(args.dictionary, cfgs, strict=True):
        pf.dictionary_fits(cfg, facts, folder)
    first = Path(args.dictionary[0])
    default = first.parent / "splice_joint.json" if len(cfgs) > 1 and args.joint else None
    out = Path(args.out) if args.out else default or first / "splice.json"
    return name, out.expanduser().resolve()


def _joint_name(folders: list[str]) -> str:
    """A CLT's folder name; `joint:<parent>` for per-layer transcoders in one parent folder."""
    paths = [Path(f).resolve() for f in folders]
    if len(paths) == 1:
        return paths[0].name
    parents = {p.parent for p in paths}
    return f"joint:{parents.pop().name}" if len(parents) == 1 else f"joint:{len(paths)} folders"


def run(args: argparse.Namespace) -> int:
    model_name, out = check_args(args)  # before any heavy import: answers in about a second
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.models import load_model, model_id
    from activation_cache.paths import write_text_atomic
    from interp_bench.analysis.joint_splice import joint_set, joint_spliced_loss
    from interp_bench.analysis.splice import format_table, spliced_loss, supports_start_at_layer
    from interp_bench.commands import preflight as pf
    from interp_bench.dictionaries import load_dictionary

    dictionaries = {}
    for folder in args.dictionary:
        name = Path(folder).resolve().name
        if name in dictionaries:
            name = f"{name}#{len(dictionaries)}"
        dictionaries[name] = load_dictionary(folder, device=args.device).eval()
    model = load_model(model_name, device=args.device)
    pf.fits_context(pf.loaded_facts(model), args.context_len, "--context-len", "lower it")
    for d in dictionaries.values():
        d.to(next(model.parameters()).device)
    if args.joint:  # the mix is checked before the corpus is read
        replacement = joint_set(model, list(dictionaries.values()))
    splits = load_corpus(
        CorpusConfig(source=args.corpus, context_len=args.context_len), model.tokenizer
    )
    if splits.eval.shape[0] == 0:
        raise ValueError(f"the eval split of {args.corpus} is empty; use a larger corpus")
    n_seq = -(-args.tokens // args.context_len)
    if n_seq > splits.eval.shape[0]:
        print(f"note: the eval split has {splits.eval.numel():,} tokens, using all of them")
    tokens = splits.eval[:n_seq]
    batch_size = max(1, args.batch_size // args.context_len)
    if args.joint:
        results = [
            joint_spliced_loss(
                model,
                replacement,
                tokens,
                name=_joint_name(args.dictionary),
                batch_size=batch_size,
                progress=not args.no_progress,
            )
        ]
    else:
        results = spliced_loss(
            model,
            dictionaries,
            tokens,
            batch_size=batch_size,
            share_prefix=False if args.no_share_prefix else supports_start_at_layer(model),
            progress=not args.no_progress,
        )
    print(format_table(results))
    payload = {
        "model": model_id(model),
        "corpus": args.corpus,
        "corpus_fingerprint": splits.fingerprint,
        "context_len": args.context_len,
        "joint": bool(args.joint),
        "n_sequences": int(tokens.shape[0]),
        "dictionaries": {
            name: str(Path(f).resolve())
            for name, f in zip(dictionaries, args.dictionary, strict=True)
        },
        "results": [r.to_dict() for r in results],
    }
    write_text_atomic(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
