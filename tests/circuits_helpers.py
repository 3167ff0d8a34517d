"""A tiny random GPT-2 saved as a Hugging Face folder: `load_model(folder)` boots it through
`TransformerBridge`, so circuit tests and the circuits notebook run the bridge path offline."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_gpt2_folder(out: Path, tokenizer, n_layers: int = 2, d_model: int = 64) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=n_layers,
        n_embd=d_model,
        n_head=4,
        n_positions=128,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
