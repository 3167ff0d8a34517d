"""Save and load dictionaries in the SAELens 6 folder layout (``cfg.json`` +
``sae_weights.safetensors``), so SAELens's ``SAE.load_from_disk`` reads ours and we read theirs.

Architecture mapping (ours -> SAELens ``architecture``):

==============  ======================  ==========================================
ours            SAE                     transcoder (skip -> ``*skip_transcoder``)
==============  ======================  ==========================================
relu            standard                transcoder / skip_transcoder
topk            topk                    topk_transcoder (no SAELens class: ours only)
batchtopk       jumprelu (global thr.)  jumprelu_transcoder / jumprelu_skip_...
jumprelu        jumprelu                jumprelu_transcoder / jumprelu_skip_...
==============  ======================  ==========================================

BatchTopK is saved the way SAELens saves its own: JumpReLU with the learned global threshold
on every latent. Our config, hook names and folded normalisation go in ``metadata.interp_bench``,
which SAELens keeps as opaque metadata; with it our loader restores the exact arch.
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
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries.dictionary import SparseDictionary

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.54.12"  # the SAELens release whose layout we write and test
SUPPORTED = (
    "standard",
    "topk",
    "jumprelu",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
    "topk_transcoder",
)


def saelens_architecture(cfg: DictionaryConfig) -> str:
    arch = cfg.arch
    if not cfg.is_transcoder:
        return {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu"}.get(arch, arch)
    if arch == "topk":
        return "topk_transcoder"
    base = "transcoder" if arch == "relu" else "jumprelu_transcoder"
    return base.replace("transcoder", "skip_transcoder") if cfg.skip else base


# Architectures we write that SAELens 6.54 has no class for: only our loader reads them.
NO_SAELENS_CLASS = ("topk_transcoder",)


def loads_in_saelens(cfg: DictionaryConfig) -> bool:
    """True when SAELens's `SAE.load_from_disk` reads a folder saved with this config."""
    return saelens_architecture(cfg) not in NO_SAELENS_CLASS


def how_to_load(cfg: DictionaryConfig) -> str:
    """One line saying exactly what loads a saved folder, for messages and the demo's table."""
    ours = "interp_bench.dictionaries.load_dictionary(path)"
    if loads_in_saelens(cfg):
        return f"{ours}, or SAELens: sae_lens.SAE.load_from_disk(path)"
    arch = saelens_architecture(cfg)
    return f"{ours} only (SAELens {SAELENS_FORMAT_VERSION[:4]} has no {arch} class)"


def save_dictionary(
    d: SparseDictionary, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``d`` to ``path`` in the SAELens 6 layout; files are written to temp names and renamed
    so a crash never leaves a half-written folder behind a valid-looking cfg.json. A cross-layer
    transcoder goes to its own layout (``crosslayer_format.py``)."""
    from interp_bench.dictionaries import crosslayer_format

    if isinstance(d, crosslayer_format.CrossLayerTranscoder):
        return crosslayer_format.save_crosslayer(d, path, metadata)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = d.cfg
    arch = saelens_architecture(cfg)
    state = {
        "W_enc": d.W_enc,
        "b_enc": d.b_enc,
        "W_dec": d.W_dec,
        "b_dec": d.b_dec,
    }
    if d.threshold is not None:
        state["threshold"] = d.threshold
    if d.W_skip is not None:
        state["W_skip"] = d.W_skip.t()  # SAELens stores [d_out, d_in]
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}

    meta = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": cfg.model_name,
        "hook_name": hooked_transformer_name(cfg.hook_in),
        "hook_head_index": None,
        "prepend_bos": True,
        "context_size": None,
        "dataset_path": None,
    }
    if cfg.hook_out:
        meta["hook_name_out"] = hooked_transformer_name(cfg.hook_out)
    meta.update(metadata or {})
    meta["interp_bench"] = {
        "config": cfg.to_dict(),
        "folded_scales": list(d.folded_scales),
        "acts_on": "raw activations (normalisation folded into the weights)",
    }
    out: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(d.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": not d.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
        "architecture": arch,
    }
    if cfg.arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    if d.is_transcoder:
        out["d_out"] = cfg.out_dim
    tmp_w, tmp_c = path / (WEIGHTS_FILE + ".tmp"), path / (CFG_FILE + ".tmp")
    save_tensors(state, tmp_w)
    tmp_c.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp_w, path / WEIGHTS_FILE)
    os.replace(tmp_c, path / CFG_FILE)
    return path


def _config_from_saelens(c: dict[str, Any]) -> DictionaryConfig:
    arch = c["architecture"]
    meta = c.get("metadata") or {}
    transcoder = "transcoder" in arch
    ours = {
        "standard": "relu",
        "transcoder": "relu",
        "skip_transcoder": "relu",
        "topk": "topk",
        "topk_transcoder": "topk",
    }.get(arch, "jumprelu")
    return DictionaryConfig(
        d_in=int(c["d_in"]),
        d_sae=int(c["d_sae"]),
        arch=ours,
        d_out=int(c["d_out"]) if transcoder else None,
        hook_in=meta.get("hook_name") or "",
        hook_out=(meta.get("hook_name_out") or "") if transcoder else None,
        model_name=meta.get("model_name") or "",
        k=int(c.get("k", 32)),
        skip="skip" in arch,
    )


def _check_shapes(path: Path, state: dict, cfg: DictionaryConfig, arch: str) -> None:
    """Weights must have the shapes cfg.json promises (copying would fail, or broadcast)."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.out_dim
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if cfg.skip:
        want["W_skip"] = (d_out, d_in)
    for name, shape in want.items():
        got = tuple(state[name].shape) if name in state else None
        if got != shape:
            raise ValueError(
                f"{path}: {WEIGHTS_FILE} has {name} of shape {list(got) if got else 'none'}, "
                f"but {CFG_FILE} says {list(shape)} (d_in {d_in}, d_sae {d_sae}, d_out {d_out}); "
                "the two files do not belong together"
            )
    if cfg.arch in ("jumprelu", "batchtopk") and "threshold" not in state:
        raise ValueError(f"{path}: {arch} needs a threshold tensor in {WEIGHTS_FILE}; it has none")
    if "threshold" in state and state["threshold"].numel() not in (1, d_sae):
        raise ValueError(f"{path}: threshold has {state['threshold'].numel()} values, not {d_sae}")


def load_dictionary(path: str | Path, device: torch.device | str | None = None) -> SparseDictionary:
    """Load a dictionary saved by ``save_dictionary`` or by SAELens (standard, topk, jumprelu,
    and the transcoder variants), or a cross-layer transcoder folder (returned as a
    ``CrossLayerTranscoder``)."""
    from interp_bench.dictionaries import crosslayer_format

    path = Path(path)
    if crosslayer_format.is_crosslayer(path):
        return crosslayer_format.load_crosslayer(path, device)
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a dictionary folder: expected {CFG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        c = json.loads(cfg_path.read_text())
        if not isinstance(c, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not a valid dictionary config ({err})") from err
    arch = c.get("architecture", "standard")
    if arch not in SUPPORTED:
        raise ValueError(
            f"{path}: SAELens architecture {arch!r} is not supported; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    if c.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{path}: normalize_activations={c['normalize_activations']!r} needs a run-time "
            "scale; fold it first (SAELens: sae.fold_activation_norm_scaling_factor) and re-save"
        )
    if c.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{path}: reshape_activations={c['reshape_activations']!r} unsupported")
    ours = (c.get("metadata") or {}).get("interp_bench")
    try:
        cfg = DictionaryConfig.from_dict(ours["config"]) if ours else _config_from_saelens(c)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path} lacks or mistypes a field ({err!r})") from err
    for hook in (cfg.hook_in, cfg.hook_out):
        if hook:  # hook names become parts of folder names (training runs, analysis)
            check_hook_name(hook, cfg_path)

    state = load_file(str(w_path))
    _check_shapes(path, state, cfg, arch)
    dtype = state["W_enc"].dtype
    d = SparseDictionary(cfg, device="cpu", dtype=dtype)
    with torch.no_grad():
        W_enc, b_enc, W_dec = state["W_enc"], state["b_enc"], state["W_dec"]
        if arch == "topk" and c.get("rescale_acts_by_decoder_norm", False):
            # SAELens scales pre-acts by ||W_dec row|| and divides them out before decoding.
            n = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
        if not d.is_transcoder and not c.get("apply_b_dec_to_input", True):
            # (x - b_dec) @ W_enc + b_enc' == x @ W_enc + b_enc
            b_enc = b_enc + state["b_dec"] @ W_enc
        d.W_enc.copy_(W_enc)
        d.b_enc.copy_(b_enc)
        d.W_dec.copy_(W_dec)
        d.b_dec.copy_(state["b_dec"])
        if d.W_skip is not None:
            d.W_skip.copy_(state["W_skip"].t())
        if "threshold" in state:
            d.act.load_threshold(state["threshold"])
    if ours:
        a, b = ours.get("folded_scales", [1.0, 1.0])
        d.folded_scales = (float(a), float(b))
    return d.to(device) if device is not None else d
