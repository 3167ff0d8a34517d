"""A cross-layer transcoder behind the replacement model's `TranscoderSet` questions.

Layer l's features write into the MLP output of l and of every later layer the CLT covers, so
`decoder(l, L)` answers for every `L >= l` and the replacement model, the attribution graph and
pruning need nothing else: a feature's edge into a later target sums its paths through every
MLP output it writes to, and the error node of layer L is the true MLP output minus everything
the CLT decodes into L (from all earlier layers' features) minus b_dec[L].
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from interp_bench.dictionaries.crosslayer import CrossLayerTranscoder


@dataclass
class CrossLayerSet:
    """One CLT, indexed by model layer (`layer_of[i]`: the model layer of the CLT's i-th)."""

    clt: CrossLayerTranscoder
    layer_of: list[int]

    def __post_init__(self) -> None:
        self.position = {layer: i for i, layer in enumerate(self.layer_of)}

    @property
    def layers(self) -> list[int]:
        return list(self.layer_of)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        return self.clt.encode_layer(self.position[layer], x).detach()

    def encoder(self, layer: int, index: Tensor) -> tuple[Tensor, Tensor]:
        i = self.position[layer]
        return self.clt.W_enc_t[i][index].t().detach(), self.clt.b_enc[i][index].detach()

    def targets(self, source: int) -> list[int]:
        return self.layer_of[self.position[source] :]

    def decoder(self, source: int, target: int) -> Tensor | None:
        i, j = self.position.get(source), self.position.get(target)
        if i is None or j is None or j < i:
            return None
        return self.clt.decoder(i, j).detach()

    def b_dec(self, layer: int) -> Tensor | None:
        i = self.position.get(layer)
        return None if i is None else self.clt.b_dec[i].detach()

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        return None


def crosslayer_set(model, clt: CrossLayerTranscoder) -> CrossLayerSet:
    """Check that every layer of the CLT is an `L<l>.mlp_in -> L<l>.mlp_out` pair of this model,
    in increasing layer order; ValueError naming the fix otherwise."""
    from activation_cache.hooks import resolve_hooks

    layers = []
    for hook_in, hook_out in zip(clt.cfg.hooks_in, clt.cfg.hooks_out, strict=True):
        spec_in, spec_out = resolve_hooks(model, [hook_in, hook_out])
        if (spec_in.kind, spec_out.kind) != (
            "mlp_in",
            "mlp_out",
        ) or spec_in.layer != spec_out.layer:
            raise ValueError(
                f"CLT layer {hook_in} -> {hook_out} does not replace one MLP: attribution needs "
                "a CLT trained with --hook-in L<l>.mlp_in --hook-out L<l>.mlp_out"
            )
        layers.append(spec_in.layer)
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"CLT layers {layers} are not in increasing order; retrain with --clt")
    return CrossLayerSet(clt, layers)
