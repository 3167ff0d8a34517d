"""Feature indexes of a cross-layer transcoder (CLT): one per source layer, from one pass.

A CLT feature is (source layer, latent). Its layer's encoder reads that layer's MLP input, so
each source layer gets a normal feature index (`top_examples.py`; the HTML browser reads it as
any other) in a subfolder named for the layer, `OUT/L<l>/`. Every index rides the same stream:
one read of the activations (every layer's MLP input, one forward or one cache pass) feeds all
of them. Per layer:

* top / quantile examples, density: the layer's own latents on its own MLP input;
* reconstruction error: of that layer's MLP output by the whole CLT, i.e. the decoders of every
  source layer <= l (so the layers before a selected one are encoded too), plus b_dec;
* decoder-cosine neighbours: within the layer, by each latent's decoder into its own layer;
* promoted tokens and direct effects: a latent's writes into every MLP output it decodes to all
  reach the residual stream, so its direct path to the logits reads their sum (the index's
  `logits` note says so).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from interp_bench.analysis.direct_effect import WRITES
from interp_bench.analysis.top_examples import (
    AnalysisConfig,
    FeatureIndex,
    IndexPass,
    check_index_out,
    finish_index,
    require_hooks,
    run_pass,
)

_LAYER = re.compile(r"^L(\d+)\.")


def clt_layers(clt) -> list[int]:
    """The model layer of each CLT position, from its input hooks (`L3.mlp_in` -> 3)."""
    out = []
    for hook in clt.cfg.hooks_in:
        m = _LAYER.match(hook)
        if m is None:
            raise ValueError(f"CLT input hook {hook!r} names no layer (L<l>.<kind>)")
        out.append(int(m.group(1)))
    return out


def layer_position(clt, layer: int) -> int:
    """The CLT position of model layer `layer`; a one-line error naming the layers it has."""
    layers = clt_layers(clt)
    if layer not in layers:
        raise ValueError(
            f"layer {layer} is not in this CLT (it covers layers "
            f"{','.join(map(str, layers))}): pick one of those"
        )
    return layers.index(layer)


def layer_folder(clt, position: int) -> str:
    """Subfolder name of a CLT position's feature index: `L<l>`."""
    return clt.cfg.hooks_in[position].split(".")[0]


def positions(clt, layers: Sequence[int] | None = None) -> list[int]:
    """CLT positions of the selected model layers (default: all), in order."""
    if not layers:
        return list(range(clt.n_layers))
    return sorted({layer_position(clt, la) for la in layers})


def stream_hooks(clt, layers: Sequence[int] | None = None) -> list[str]:
    """What the pass reads: the input of every layer up to the last selected one (its
    reconstruction sums their decoders) and the output of each selected layer."""
    sel = positions(clt, layers)
    return [*clt.cfg.hooks_in[: sel[-1] + 1], *(clt.cfg.hooks_out[i] for i in sel)]


def index_folders(out: str | Path, clt, layers: Sequence[int] | None = None) -> dict[int, Path]:
    """`{model layer: OUT/L<l>}` for the selected layers, each checked writable before any
    work."""
    folders = {clt_layers(clt)[i]: Path(out) / layer_folder(clt, i) for i in positions(clt, layers)}
    for folder in folders.values():
        check_index_out(folder)
    return folders


def residual_write(clt, position: int) -> tuple[Tensor, str] | None:
    """A layer's latents' total write into the residual stream `[d_sae, d_model]`: the sum of
    their decoders into every MLP output they reach (None unless every target writes there)."""
    targets = clt.cfg.hooks_out[position:]
    if any(h.split(".", 1)[-1] not in WRITES for h in targets):
        return None
    W = clt.W_dec[position].detach().float().cpu().view(clt.d_sae, len(targets), clt.d_out)
    span = targets[0] if len(targets) == 1 else f"{targets[0]}..{targets[-1]}"
    return W.sum(1), f"W_dec summed over {span}"


def _csr(acts: Tensor) -> Tensor:
    """Dense latents `[n, d_sae]` as a CSR matrix of their firing entries."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return acts.to_sparse_csr()


@torch.inference_mode()
def analyze_crosslayer(
    clt,
    stream: Iterable[dict[str, Tensor]],
    out_dir: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    layers: Sequence[int] | None = None,
    model=None,
    tokenizer=None,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[int, FeatureIndex]:
    """One pass over `stream` (every CLT input hook, and the output hooks of the selected
    layers); writes `out_dir/L<l>/` per selected model layer (default: all) and returns
    `{layer: FeatureIndex}`."""
    cfg = cfg or AnalysisConfig()
    folders = index_folders(out_dir, clt, layers)
    selected = positions(clt, layers)
    hooks = stream_hooks(clt, layers)
    hooks_in = clt.cfg.hooks_in[: selected[-1] + 1]
    device = clt.b_dec.device
    states = {i: IndexPass(clt.d_sae, cfg) for i in selected}
    t_start = time.perf_counter()

    def step(chunk, keep, seq, offset):
        require_hooks(chunk, hooks)
        sparse = []
        for i, hook in enumerate(hooks_in):
            x = chunk[hook].to(device=device, dtype=torch.float32)
            acts = clt.encode_layer(i, x).float()
            if i in states:
                states[i].add(acts.cpu(), keep, seq, offset)
            sparse.append(_csr(acts))
        for j in selected:
            recon = clt.b_dec[j].expand(keep.numel(), -1)
            for i in range(j + 1):
                recon = recon + sparse[i] @ clt.decoder(i, j)
            target = chunk[clt.cfg.hooks_out[j]].to(dtype=torch.float32)
            states[j].recon.update(recon.cpu(), target, keep)

    base = run_pass(stream, step, skip_bos=cfg.skip_bos, max_tokens=max_tokens, progress=progress)
    pass_s = time.perf_counter() - t_start
    clt_cfg = clt.cfg.to_dict()
    out = {}
    for (layer, folder), i in zip(folders.items(), selected, strict=True):
        meta = {
            "dictionary": clt.layer_cfgs[i].to_dict(),
            "crosslayer": {
                "layer": layer,
                "position": i,
                "writes_to": list(clt.cfg.hooks_out[i:]),
                "neighbours": "decoder into its own layer",
                "config": clt_cfg,
            },
        }
        writes = residual_write(clt, i) if model is not None else None
        out[layer] = finish_index(
            folder, states[i], cfg, base, clt.decoder(i, i), writes, meta, model=model,
            tokenizer=tokenizer, pass_s=pass_s,
        )  # fmt: skip
    return out
