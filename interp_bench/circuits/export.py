"""The pruned graph as JSON (format in docs/CIRCUITS.md), with feature cards when an index is
given for a layer."""

from __future__ import annotations

import json
import math
from pathlib import Path

from interp_bench.circuits.graph import Graph
from interp_bench.circuits.prune import Pruned

FORMAT = "interp-bench-attribution-graph"
VERSION = 1


def node_key(node: dict) -> str:
    """Stable id of a node: `F<layer>.<pos>.<latent>`, `E<layer>.<pos>`, `T<pos>`, `L<token>`."""
    kind = node["kind"]
    if kind == "feature":
        return f"F{node['layer']}.{node['pos']}.{node['feature']}"
    if kind == "error":
        return f"E{node['layer']}.{node['pos']}"
    if kind == "embedding":
        return f"T{node['pos']}"
    return f"L{node['token']}"


def graph_dict(graph: Graph, pruned: Pruned, *, tokenizer=None, meta: dict | None = None) -> dict:
    """The kept nodes and edges, each node with its input, bias and influence."""
    row_of = {int(n): r for r, n in enumerate(graph.row_nodes.tolist())}
    kept = pruned.nodes.nonzero().flatten().tolist()
    nodes, keys = [], {}
    for i in kept:
        node = graph.node(i)
        r = row_of.get(i)
        node["influence"] = float(pruned.influence[i])
        if r is not None:
            node["input"] = float(graph.inputs[r])
            node["bias"] = float(graph.biases[r])
        if "token" in node:
            node["token_str"] = _decode(tokenizer, node["token"])
        node["id"] = keys[i] = node_key(node)
        nodes.append(node)
    rows, cols = pruned.edges.nonzero(as_tuple=True)
    edges = [
        {
            "source": keys[int(s)],
            "target": keys[int(graph.row_nodes[r])],
            "weight": float(graph.adjacency[r, s]),
        }  # fmt: skip
        for r, s in zip(rows.tolist(), cols.tolist(), strict=True)
    ]
    edges.sort(key=lambda e: -abs(e["weight"]))
    kinds = graph.kinds()
    return {
        "format": FORMAT,
        "version": VERSION,
        **(meta or {}),
        "tokens": graph.tokens,
        "token_strs": graph.token_strs,
        "n_layers": graph.n_layers,
        "skip_positions": graph.extra.get("skip_positions", []),
        "scores": {
            "replacement": finite(pruned.replacement_score),
            "completeness": finite(pruned.completeness_score),
        },
        "stats": {
            "active_features": graph.n_features,
            "feature_rows": int((kinds[graph.row_nodes] == 0).sum()),
            "nodes": graph.n_nodes,
            "kept_nodes": len(nodes),
            "kept_edges": len(edges),
            "seconds": graph.extra.get("seconds"),
        },
        "nodes": nodes,
        "edges": edges,
    }


def finite(x: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return float(x) if math.isfinite(x) else None


def _decode(tokenizer, token: int) -> str:
    return tokenizer.decode([token]) if tokenizer is not None else str(token)


def feature_cards(data: dict, index_dirs: dict[int, str | Path], n_examples: int = 4) -> dict:
    """`{"<layer>.<latent>": card}` for the kept features of layers with a feature index: top
    examples (tokens around the peak, with activations), promoted tokens, density."""
    from interp_bench.analysis.top_examples import load_feature_index

    cards: dict[str, dict] = {}
    indexes = {int(k): load_feature_index(v) for k, v in index_dirs.items()}
    for node in data["nodes"]:
        if node["kind"] != "feature" or node["layer"] not in indexes:
            continue
        index = indexes[node["layer"]]
        card = index.feature(node["feature"])
        top = [
            {
                "tokens": e["tokens"],
                "acts": [round(float(a), 3) for a in e["acts"]],
                "center": e["center"],
            }  # fmt: skip
            for e in card["top"][:n_examples]
        ]
        cards[f"{node['layer']}.{node['feature']}"] = {
            "density": finite(card["density"]),
            "max_act": finite(card["max_act"]),
            "top": top,
            "promoted": [t for t, _ in card.get("promoted", [])[:8]],
        }
    return cards


def write_json(data: dict, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a killed run leaves no half-written graph."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_graph_json(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an attribution graph (format {data.get('format')!r})")
    return data
