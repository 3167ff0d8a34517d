"""Save and load cross-layer transcoders: circuit-tracer's CLT tensor layout plus our cfg.json.

A CLT folder (documented in docs/CIRCUITS.md, "Cross-layer transcoders"):

- ``W_enc_{i}.safetensors``: ``W_enc_{i} [d_sae, d_in]``, ``b_enc_{i} [d_sae]``,
  ``b_dec_{i} [d_out]`` and, for JumpReLU, ``threshold_{i} [d_sae]``;
- ``W_dec_{i}.safetensors``: ``W_dec_{i} [d_sae, n_layers - i, d_out]``, layer i's latents into
  output layers i, i + 1, ..., n_layers - 1;
- ``cfg.json``: ``"architecture": "crosslayer_transcoder"``, the widths, hooks, per-layer k, and
  our config under ``metadata.interp_bench`` (weights act on raw activations, normalisation
  folded in).

i counts the CLT's layers (position in ``hooks_in``); it is the model layer when the CLT covers
layers 0..n-1. The tensor names and shapes are those circuit-tracer's ``load_clt`` reads
(safety-research/circuit-tracer, ``transcoder/cross_layer_transcoder.py``); it knows ReLU and
JumpReLU latents only, so a TopK CLT read there would lose its top-k (and it is untested here:
circuit-tracer is not installed). SAELens 6.54 has no CLT class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from activation_cache.hooks import hooked_transformer_name
from activation_cache.names import check_hook_name
from activation_cache.paths import save_tensors
from interp_bench.dictionaries.crosslayer import CrossLayerConfig, CrossLayerTranscoder

CLT_ARCHITECTURE = "crosslayer_transcoder"
CFG_FILE = "cfg.json"
HOW_TO_LOAD = (
    "interp_bench.dictionaries.load_dictionary(path) (SAELens has no CLT class; circuit-tracer's "
    "load_clt reads the same tensor names, untested)"
)


def is_crosslayer(path: str | Path) -> bool:
    """Whether ``path`` holds a CLT folder (its cfg.json says so)."""
    cfg = Path(path) / CFG_FILE
    try:
        return json.loads(cfg.read_text()).get("architecture") == CLT_ARCHITECTURE
    except (OSError, ValueError, AttributeError):
        return False


def _files(i: int) -> tuple[str, str]:
    return f"W_enc_{i}.safetensors", f"W_dec_{i}.safetensors"


def save_crosslayer(
    clt: CrossLayerTranscoder, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``clt`` to ``path``: every file to a temp name first, cfg.json renamed last, so a
    crash never leaves a valid-looking cfg.json over half-written weights."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg, n = clt.cfg, clt.n_layers

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu").contiguous().clone()

    done = []
    for i in range(n):
        enc = {
            f"W_enc_{i}": cpu(clt.W_enc_t[i]),
            f"b_enc_{i}": cpu(clt.b_enc[i]),
            f"b_dec_{i}": cpu(clt.b_dec[i]),
        }
        if clt.threshold(i) is not None:
            enc[f"threshold_{i}"] = cpu(clt.threshold(i))
        dec = {f"W_dec_{i}": cpu(clt.W_dec[i]).view(clt.d_sae, n - i, clt.d_out)}
        for name, tensors in zip(_files(i), (enc, dec), strict=True):
            save_tensors(tensors, path / (name + ".tmp"))
            done.append(name)
    out = {
        "architecture": CLT_ARCHITECTURE,
        "n_layers": n,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "d_out": cfg.out_dim,
        "activation": cfg.arch,
        "k": list(cfg.ks) if cfg.arch == "topk" else None,
        "dtype": str(clt.b_dec.dtype).removeprefix("torch."),
        "model_name": cfg.model_name,
        "hooks_in": [hooked_transformer_name(h) for h in cfg.hooks_in],
        "hooks_out": [hooked_transformer_name(h) for h in cfg.hooks_out],
        "metadata": dict(
            metadata or {},
            interp_bench={
                "config": cfg.to_dict(),
                "folded_scales": [list(s) for s in clt.folded_scales],
                "acts_on": "raw activations (normalisation folded into the weights)",
            },
        ),
    }
    (path / (CFG_FILE + ".tmp")).write_text(json.dumps(out, indent=2) + "\n")
    for name in done:
        os.replace(path / (name + ".tmp"), path / name)
    os.replace(path / (CFG_FILE + ".tmp"), path / CFG_FILE)
    for i in range(n, 1 << 20):  # files of a former save with more layers
        stale = [path / name for name in _files(i) if (path / name).exists()]
        if not stale:
            break
        for p in stale:
            p.unlink()
    return path


def load_crosslayer(path: str | Path, device: torch.device | str | None = None):
    """Load a CLT folder written by ``save_crosslayer``; ValueError naming what is wrong."""
    path = Path(path)
    cfg_path = path / CFG_FILE
    try:
        c = json.loads(cfg_path.read_text())
        cfg = CrossLayerConfig.from_dict(c["metadata"]["interp_bench"]["config"])
        scales = c["metadata"]["interp_bench"].get("folded_scales")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path} is not a readable CLT config ({err!r})") from err
    for hook in (*cfg.hooks_in, *cfg.hooks_out):
        check_hook_name(hook, cfg_path)
    n, d_sae, d_in, d_out = cfg.n_layers, cfg.d_sae, cfg.d_in, cfg.out_dim
    states = []
    for i in range(n):
        state = {}
        for name in _files(i):
            if not (path / name).is_file():
                raise ValueError(f"{path}: {name} is missing; the CLT folder is incomplete")
            state.update(load_file(str(path / name)))
        want = {f"W_enc_{i}": (d_sae, d_in), f"b_enc_{i}": (d_sae,), f"b_dec_{i}": (d_out,),
                f"W_dec_{i}": (d_sae, n - i, d_out)}  # fmt: skip
        if cfg.arch == "jumprelu":
            want[f"threshold_{i}"] = (d_sae,)
        for key, shape in want.items():
            got = tuple(state[key].shape) if key in state else None
            if got != shape:
                raise ValueError(
                    f"{path}: {key} has shape {list(got) if got else 'none'}, but {CFG_FILE} "
                    f"says {list(shape)}; the files do not belong together"
                )
        states.append(state)
    clt = CrossLayerTranscoder(cfg, device="cpu", dtype=states[0][f"W_enc_{0}"].dtype)
    with torch.no_grad():
        for i, s in enumerate(states):
            clt.W_enc_t[i].copy_(s[f"W_enc_{i}"])
            clt.b_enc[i].copy_(s[f"b_enc_{i}"])
            clt.b_dec[i].copy_(s[f"b_dec_{i}"])
            clt.W_dec[i].copy_(s[f"W_dec_{i}"].reshape(d_sae, -1))
            if f"threshold_{i}" in s:
                clt.acts[i].load_threshold(s[f"threshold_{i}"])
    if scales:
        clt.folded_scales = ([float(x) for x in scales[0]], [float(x) for x in scales[1]])
    return clt.to(device) if device is not None else clt
