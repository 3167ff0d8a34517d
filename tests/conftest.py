"""Shared fixtures: the real GPT-2 tokenizer and a tiny random GPT-2-class model, all offline."""

import os
import warnings

import pytest
import torch

from activation_cache.tiny_model import tiny_random_model as make_tiny_model

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


@pytest.fixture(scope="session")
def tiny_model(gpt2_tokenizer):
    return make_tiny_model(gpt2_tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer):
    """A tiny random GPT-2 as a Hugging Face folder (loads through `TransformerBridge`), built
    once for every module that loads a model from a folder; tests only read it."""
    from circuits_helpers import tiny_gpt2_folder

    return tiny_gpt2_folder(tmp_path_factory.mktemp("tiny-gpt2"), gpt2_tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_bridge(tiny_gpt2_dir):
    """That folder loaded as `load_model` loads any folder (a `TransformerBridge`), once per
    session for the tests that only read it (a load costs about a second of CPU)."""
    from activation_cache.models import load_model

    return load_model(str(tiny_gpt2_dir), device="cpu")
