"""Shared fixtures: the real GPT-2 tokenizer and a tiny random GPT-2-class model, all offline."""

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
# Tests run single-threaded: their tensors are tiny, and on a 2-core machine an OpenMP team costs
# far more than it saves (7-9 ms per training step against 160-195 ms with two threads). Tests
# marked `slow` run the real 135M-parameter model, where two threads do help.
_CORES = min(2, torch.get_num_threads())
torch.set_num_threads(1)


def pytest_runtest_setup(item):
    torch.set_num_threads(_CORES if item.get_closest_marker("slow") else 1)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from activation_cache.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


def make_tiny_model(
    tokenizer, n_layers: int = 2, d_model: int = 64, seed: int = 0, normalization: str = "LNPre"
):
    """A randomly initialised GPT-2-class HookedTransformer (GELU MLP, learned positions).

    Layer norms are folded ("LNPre"), as `HookedTransformer.from_pretrained("gpt2")` gives by
    default, so `ln2.hook_normalized` is exactly what the MLP reads.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=4,
        d_head=d_model // 4,
        d_mlp=4 * d_model,
        n_ctx=256,
        d_vocab=len(tokenizer),
        act_fn="gelu_new",
        normalization_type=normalization,
        positional_embedding_type="standard",
        default_prepend_bos=True,
        model_name="tiny-gpt2",
        seed=seed,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model(gpt2_tokenizer):
    return make_tiny_model(gpt2_tokenizer)
