"""`interp-bench attribute`: the attribution graph of one prompt, as JSON and HTML."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HELP = (
    "Trace a prompt through per-layer transcoders or a cross-layer transcoder (local replacement "
    "model): attribution graph "
    "of features, error nodes and token embeddings onto the top logits, pruned by influence; "
    "writes graph.json and a self-contained graph.html."
)

_HOOK = re.compile(r"^L(\d+)\.(mlp_in|mlp_out)$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--transcoders",
        required=True,
        help="folder with one subfolder per layer's transcoder (as `interp-bench train` writes), "
        "or one cross-layer transcoder folder (`interp-bench train --clt`)",
    )
    p.add_argument("--prompt", required=True, help="text to trace (BOS is prepended)")
    p.add_argument("--model", help="model (default: the transcoders' model_name)")
    p.add_argument("--out", default="attribution", help="output folder (graph.json, graph.html)")
    p.add_argument(
        "--max-feature-nodes",
        type=int,
        default=2048,
        help="compute incoming edges for at most this many features, the most influential "
        "first (0: all active features)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="targets per backward pass")
    p.add_argument("--node-threshold", type=float, default=0.8, help="influence kept by nodes")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="influence kept by edges")
    p.add_argument("--logit-prob", type=float, default=0.95, help="cumulative prob of logits")
    p.add_argument("--max-logits", type=int, default=10)
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")


def transcoder_dirs(root: str | Path) -> list[Path]:
    """The transcoder folders under `root` (or `root` itself if it is one), layer order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no transcoder folder at {root}")
    dirs = (
        [root]
        if (root / "cfg.json").exists()
        else sorted(p for p in root.iterdir() if (p / "cfg.json").exists())
    )
    if not dirs:
        raise FileNotFoundError(
            f"{root} holds no transcoders (no */cfg.json): pass the --out folder of "
            "`interp-bench train --hook-in L<l>.mlp_in --hook-out L<l>.mlp_out`"
        )
    return dirs


def check_hooks(dictionaries, names: list[str]) -> None:
    """Every dictionary an `L<l>.mlp_in -> L<l>.mlp_out` transcoder, one per layer (a CLT:
    every one of its layers)."""
    seen: dict[int, str] = {}
    pairs = [p for d, n in zip(dictionaries, names, strict=True) for p in _pairs(d, n)]
    for d, name in pairs:
        m_in, m_out = _HOOK.match(d.cfg.hook_in or ""), _HOOK.match(d.cfg.hook_out or "")
        if not (m_in and m_out and m_in.group(2) == "mlp_in" and m_out.group(2) == "mlp_out"
                and m_in.group(1) == m_out.group(1)):  # fmt: skip
            raise ValueError(
                f"{name}: {d.cfg.hook_in} -> {d.cfg.hook_out} is not an MLP transcoder; "
                "attribution needs L<l>.mlp_in -> L<l>.mlp_out transcoders"
            )
        layer = int(m_in.group(1))
        if layer in seen:
            raise ValueError(f"{name} and {seen[layer]} both replace layer {layer}: keep one")
        seen[layer] = name


def _pairs(d, name: str):
    """(object with .cfg.hook_in/.hook_out, name) per layer a dictionary replaces."""
    from interp_bench.dictionaries.crosslayer import CrossLayerTranscoder

    if isinstance(d, CrossLayerTranscoder):
        return [(d.layer(i), name) for i in range(d.n_layers)]
    return [(d, name)]


def _check_args(args: argparse.Namespace) -> None:
    if not args.prompt.strip():
        raise ValueError("empty --prompt: give the text to trace")
    for name in ("node_threshold", "edge_threshold", "logit_prob"):
        v = getattr(args, name)
        if not 0 < v <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
    if args.batch_size < 1 or args.max_logits < 1 or args.max_feature_nodes < 0:
        raise ValueError("--batch-size and --max-logits must be positive, --max-feature-nodes >= 0")


def run(args: argparse.Namespace) -> int:
    from interp_bench.dictionaries import load_dictionary

    _check_args(args)
    dirs = transcoder_dirs(args.transcoders)
    dictionaries = [load_dictionary(p, device=args.device).eval() for p in dirs]
    check_hooks(dictionaries, [p.name for p in dirs])
    names = {d.cfg.model_name for d in dictionaries if d.cfg.model_name}
    if args.model is None and len(names) > 1:
        raise ValueError(f"transcoders come from different models {sorted(names)}: pass --model")

    from activation_cache.models import load_model, model_id
    from interp_bench.circuits.export import feature_cards, graph_dict, write_json
    from interp_bench.circuits.graph import attribute
    from interp_bench.circuits.graph_html import write_graph_html
    from interp_bench.circuits.prune import prune
    from interp_bench.circuits.replacement import build_replacement, transcoder_set

    model = load_model(args.model or (names.pop() if names else "smollm2-135m"), device=args.device)
    device = next(model.parameters()).device
    for d in dictionaries:
        d.to(device)
    transcoders = transcoder_set(model, dictionaries)
    tokens = model.to_tokens(args.prompt)
    rep = build_replacement(model, transcoders, tokens)
    graph = attribute(
        rep,
        logit_prob=args.logit_prob,
        max_logits=args.max_logits,
        max_feature_nodes=args.max_feature_nodes or None,
        batch_size=args.batch_size,
        progress=True,
    )
    pruned = prune(graph, args.node_threshold, args.edge_threshold)
    layer_dirs = {v.cfg.hook_in: p for d, p in zip(dictionaries, dirs, strict=True)
                  for v, _ in _pairs(d, p.name)}  # fmt: skip
    meta = {
        "prompt": args.prompt,
        "model": model_id(model),
        "transcoders": {k: str(p.resolve()) for k, p in layer_dirs.items()},
        "params": {k: getattr(args, k) for k in ("max_feature_nodes", "batch_size",
                   "node_threshold", "edge_threshold", "logit_prob", "max_logits")},
    }  # fmt: skip
    data = graph_dict(graph, pruned, tokenizer=model.tokenizer, meta=meta)
    indexes = {}  # a transcoder's index is its analysis/, a CLT's per layer analysis/L<l>/
    for k, p in layer_dirs.items():
        layer = int(_HOOK.match(k).group(1))
        found = [d for d in (p / "analysis" / f"L{layer}", p / "analysis")
                 if (d / "index.json").exists()]  # fmt: skip
        if found:
            indexes[layer] = found[0]
    out = Path(args.out)
    json_path = write_json(data, out / "graph.json")
    html_path = write_graph_html(data, out / "graph.html", feature_cards(data, indexes))
    s = data["stats"]
    print(
        f"{s['active_features']} active features ({s['feature_rows']} with edges computed) in "
        f"{s['seconds']:.1f} s; kept {s['kept_nodes']} nodes, {s['kept_edges']} edges; "
        f"replacement score {data['scores']['replacement']:.3f}, "
        f"completeness {data['scores']['completeness']:.3f}"
    )
    top = [(n["token_str"], round(n["prob"], 3)) for n in data["nodes"] if n["kind"] == "logit"]
    print(f"top logits: {json.dumps(top)}")
    print(json_path.resolve())
    print(html_path.resolve())
    return 0
