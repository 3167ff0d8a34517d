"""Which dictionaries can be spliced jointly (torch-free, so `splice` answers before the model
loads; `joint_splice.joint_set` asks the same with the model's own hook points)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Resolve = Callable[[str], "tuple[str, int] | None"]


def check_pairs(pairs: Sequence[tuple[str, str | None]], resolve: Resolve) -> None:
    """That (hook_in, hook_out) pairs are one L<l>.mlp_in -> L<l>.mlp_out transcoder per layer;
    `resolve(hook)` gives (kind, layer), or None when it cannot tell (the pair is not judged).
    One-line ValueError naming the fix otherwise."""
    seen: dict[int, str] = {}
    for hook_in, hook_out in pairs:
        if not hook_out:
            raise ValueError(
                f"the {hook_in} dictionary is an SAE: --joint splices transcoders "
                "(L<l>.mlp_in -> L<l>.mlp_out); splice SAEs without --joint"
            )
        p_in, p_out = resolve(hook_in), resolve(hook_out)
        if p_in is None or p_out is None:
            continue
        if (p_in[0], p_out[0]) != ("mlp_in", "mlp_out") or p_in[1] != p_out[1]:
            raise ValueError(
                f"{hook_in} -> {hook_out} does not replace one MLP: joint splicing needs "
                "L<l>.mlp_in -> L<l>.mlp_out transcoders; splice it without --joint"
            )
        if p_in[1] in seen:
            raise ValueError(
                f"two transcoders for layer {p_in[1]} ({seen[p_in[1]]} and {hook_in}): "
                "pass one per layer"
            )
        seen[p_in[1]] = hook_in
