"""Shared fixtures: the real GPT-2 tokenizer and a tiny random GPT-2-class model, all offline."""

import os
import warnings

import pytest
import torch

from activation_cache.tiny_model import tiny_random_model as make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from activation_cache.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(gpt2_tokenizer):
    return make_tiny_model(gpt2_tokenizer)


@pytest.fixture
def one_thread():
    """Tiny tensor ops on a shared 2-core machine run far faster on one thread (no OpenMP team
    spinning); the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
