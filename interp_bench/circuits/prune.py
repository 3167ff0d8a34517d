"""Indirect influence, pruning, and the graph's replacement and completeness scores.

Following Ameisen et al. 2025 (and circuit-tracer): edges are made non-negative and each
target's incoming edges normalised to sum to 1 (`normalized`); a node's *influence* is the sum,
over every path from it to a logit, of the product of the normalised edges along the path,
weighted by the logit's probability: `w @ (A + A^2 + A^3 + ...)`. The graph is a DAG (edges
go to later layers, or along the same layer's error/feature into later blocks), so the series
ends after at most `n_layers + 2` terms.

Pruning keeps the features and error nodes that together carry `node_threshold` of the total
influence (most influential first), then the edges that carry `edge_threshold` of the
influence-weighted edge mass, then drops nodes left without outgoing edges. Logits are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interp_bench.circuits.graph import Graph


def normalized(adjacency: Tensor) -> Tensor:
    """|A| with each row (one target's incoming edges) summing to 1 (all-zero rows stay 0)."""
    a = adjacency.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(1e-30)


def influence(adjacency: Tensor, row_nodes: Tensor, weights: Tensor) -> Tensor:
    """`[n_nodes]`: sum over k >= 1 of `weights @ A^k` for the normalised adjacency whose
    rows `row_nodes` are given (rows not given have no incoming edges).

    Only row nodes pass influence on, so the series is summed on the square block of the row
    nodes, and one product with the full rows spreads it to every source."""
    a = normalized(adjacency)
    square = a[:, row_nodes]
    current = weights[row_nodes]
    total = current.clone()
    for _ in range(len(row_nodes) + 1):  # a DAG: ends after its depth
        current = current @ square
        if not bool(current.any()):
            break
        total += current
    return total @ a


def _threshold_mask(scores: Tensor, fraction: float) -> Tensor:
    """Bool mask of the highest scores whose sum first reaches `fraction` of the total.

    The cut is found by bisection on the score value rather than by sorting: edge scores of a
    long prompt are `rows x nodes` (10^8) values, which a sort would copy several times."""
    total = float(scores.sum())
    if scores.numel() == 0 or total <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    target = fraction * total
    lo, hi = 0.0, float(scores.max())  # sum(scores >= lo) >= target > sum(scores >= hi)
    if float(scores[scores >= hi].sum()) >= target:
        return scores >= hi
    while hi - lo > 1e-7 * hi:  # about float32 resolution
        mid = (lo + hi) / 2
        if float(torch.where(scores >= mid, scores, 0.0).sum()) >= target:
            lo = mid
        else:
            hi = mid
    return (scores >= lo) & (scores > 0)


@dataclass
class Pruned:
    """Kept nodes (bool `[n_nodes]`), kept edges (bool, the adjacency's shape), the node
    influences, the nodes kept by influence alone (before edge pruning), and the scores of the
    full graph."""

    nodes: Tensor
    edges: Tensor
    influence: Tensor
    by_influence: Tensor
    replacement_score: float
    completeness_score: float


def scores(graph: Graph, node_influence: Tensor | None = None) -> tuple[float, float]:
    """(replacement score, completeness score) of the graph.

    Replacement: of the influence reaching the logits from the graph's roots (embeddings and
    errors), the fraction that starts at embeddings, i.e. flows through features only.
    Completeness: the fraction of incoming (normalised) edge weight that comes from non-error
    nodes, averaged over nodes weighted by their influence (logits by their probability).
    """
    w = graph.logit_weights()
    inf = node_influence
    if inf is None:
        inf = influence(graph.adjacency, graph.row_nodes, w)
    kinds = graph.kinds()
    emb = float(inf[kinds == 2].sum())
    err = float(inf[kinds == 1].sum())
    replacement = emb / (emb + err) if emb + err > 0 else float("nan")
    a = normalized(graph.adjacency)
    non_error = 1.0 - a[:, kinds == 1].sum(-1)
    out_inf = (inf + w)[graph.row_nodes]
    completeness = float((non_error * out_inf).sum() / out_inf.sum().clamp_min(1e-30))
    return replacement, completeness


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes and edges that carry most of the influence on the logits."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 < v <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {v}")
    w = graph.logit_weights()
    inf = influence(graph.adjacency, graph.row_nodes, w)
    kinds = graph.kinds()
    prunable = (kinds == 0) | (kinds == 1)
    nodes = ~prunable.clone()
    idx = prunable.nonzero().flatten()
    nodes[idx[_threshold_mask(inf[idx], node_threshold)]] = True
    by_influence = nodes.clone()

    a = normalized(graph.adjacency)
    keep_rows = nodes[graph.row_nodes]
    edge_score = a * (inf + w)[graph.row_nodes][:, None]
    edge_score = edge_score * keep_rows[:, None] * nodes[None, :]
    edges = _threshold_mask(edge_score.flatten(), edge_threshold).view_as(edge_score)
    # Nodes left without edges go (logits stay); repeat until nothing changes.
    while True:
        has_out = torch.zeros_like(nodes)
        has_out[edges.any(0).nonzero().flatten()] = True
        new = nodes & ((kinds == 3) | has_out)
        if bool((new == nodes).all()):
            break
        nodes = new
        edges &= nodes[graph.row_nodes][:, None] & nodes[None, :]
    rep_score, comp_score = scores(graph, inf)
    return Pruned(nodes, edges, inf, by_influence, rep_score, comp_score)
