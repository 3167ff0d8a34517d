"""Hook lists over many layers: ``all.mlp_in``, ``L0-29.mlp_in``, ``L3,L5.mlp_out``-style specs.

A per-layer job (a transcoder at every layer) names its hooks once instead of thirty times. The
result is the plain short names (``L0.mlp_in``, ...) that ``hooks.resolve_hooks`` and the cache
reader take.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ITEM = re.compile(r"^(?:all|L(\d+)(?:-(\d+))?)\.([a-z_]+)$")


def expand_layers(spec: str, n_layers: int, present: Iterable[str] | None = None) -> list[str]:
    """Expand a comma-separated spec into short hook names, in the order given.

    Items: ``L15.mlp_in`` (one hook), ``L0-29.mlp_in`` (a range, both ends included),
    ``all.mlp_in`` (every layer ``0..n_layers-1``; with ``present``, e.g. a cache's hooks,
    every layer of that kind it holds; layers are then not range-checked, the caller reports
    what the cache lacks). Raises ``ValueError`` naming the accepted forms.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError("no hooks given: pass e.g. L15.mlp_in, L0-29.mlp_in or all.mlp_in")
    out: list[str] = []
    for item in items:
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(
                f"cannot read hook {item!r}; write L<layer>.<kind>, L<first>-<last>.<kind> "
                "or all.<kind> (e.g. all.mlp_in)"
            )
        first, last, kind = m.groups()
        if item.startswith("all."):
            layers = range(n_layers)
            if present is not None:
                have = set(present)
                layers = [i for i in layers if f"L{i}.{kind}" in have]
                if not layers:
                    raise ValueError(f"{item}: no {kind} hook at any layer (have: {sorted(have)})")
        elif last is not None:
            a, b = int(first), int(last)
            if b < a:
                raise ValueError(f"{item}: the range L{a}-{b} is empty; write L{b}-{a}")
            layers = range(a, b + 1)
        else:
            layers = [int(first)]
        for i in layers:
            if present is None and i >= n_layers:  # a cache says what it lacks itself
                raise ValueError(f"{item}: layer {i} out of range for a {n_layers}-layer model")
            short = f"L{i}.{kind}"
            if short in out:
                raise ValueError(f"hook {short} given twice (in {spec!r})")
            out.append(short)
    return out
