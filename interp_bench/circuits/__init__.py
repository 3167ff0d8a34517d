"""Attribution graphs over a local replacement model (Ameisen et al. 2025, "Circuit Tracing").

- `replacement.py`: transcoders stand in for the MLPs; attention patterns and norm denominators
  frozen from the clean forward; error nodes make the replacement reproduce the clean logits.
- `graph.py`: nodes and edges (direct linear effects) by batched backward passes.
- `prune.py`: indirect influence on the chosen logits, pruning, replacement/completeness scores.
- `intervene.py`: clamp or scale a feature at a position, new top logits and generation.
- `graph_html.py`: self-contained HTML view of a graph.
"""
