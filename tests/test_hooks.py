"""Hook names resolve on both model kinds, capture matches run_with_cache, forwards stop early."""

import pytest
import torch

from activation_cache.hooks import KINDS, capture, flat, resolve_hooks, stop_layer


@pytest.fixture(scope="module")
def tiny_bridge(gpt2_tokenizer):
    """TransformerBridge over a random 2-layer GPT-2, norm weights randomised so that the
    difference between a norm's normalised value and its output (after weight and bias) shows."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4)).eval()
    with torch.no_grad():
        for block in hf.transformer.h:
            for ln in (block.ln_1, block.ln_2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.normal_(0, 0.1)
    bridge = TransformerBridge.boot_transformers(
        "gpt2", hf_model=hf, tokenizer=gpt2_tokenizer, device="cpu"
    )
    bridge.enable_compatibility_mode()
    return bridge


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 50000, (3, 12), generator=g)
    t[:, 0] = 50256
    return t


ALL = [f"L{layer}.{kind}" for layer in (0, 1) for kind in KINDS]


def test_resolve_names_on_hooked_transformer(tiny_model):
    specs = resolve_hooks(tiny_model, "L1.resid_post, L0.mlp_in,L1.mlp_out,L0.resid_pre")
    assert [s.tl_name for s in specs] == [
        "blocks.1.hook_resid_post",
        "blocks.0.ln2.hook_normalized",
        "blocks.1.hook_mlp_out",
        "blocks.0.hook_resid_pre",
    ]
    assert [(s.layer, s.kind) for s in specs] == [
        (1, "resid_post"),
        (0, "mlp_in"),
        (1, "mlp_out"),
        (0, "resid_pre"),
    ]
    assert stop_layer(specs) == 2


def test_resolve_names_on_bridge(tiny_bridge):
    (spec,) = resolve_hooks(tiny_bridge, ["L1.mlp_in"])
    assert spec.tl_name == "blocks.1.ln2.hook_out"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("L2.resid_post", "out of range"),
        ("L0.attn_in", "unknown hook"),
        ("resid_post", "unknown hook"),
        ("blocks.0.hook_resid_post", "unknown hook"),
        ("L0.resid_post,L0.resid_post", "twice"),
        ("", "no hooks"),
    ],
)
def test_bad_hook_names_raise_with_choices(tiny_model, bad, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        resolve_hooks(tiny_model, bad)
    if fragment in ("out of range", "unknown hook"):
        assert "layer 0..1" in str(err.value) and "mlp_in" in str(err.value)


def test_capture_equals_run_with_cache(tiny_model, tokens):
    specs = resolve_hooks(tiny_model, ALL)
    acts = capture(tiny_model, tokens, specs)
    _, cache = tiny_model.run_with_cache(tokens)
    for s in specs:
        assert acts[s.short].shape == (3, 12, 64)
        torch.testing.assert_close(acts[s.short], flat(cache[s.tl_name]), rtol=0, atol=0)


def test_capture_equals_run_with_cache_on_bridge(tiny_bridge, tokens):
    specs = resolve_hooks(tiny_bridge, ALL)
    acts = capture(tiny_bridge, tokens, specs)
    _, cache = tiny_bridge.run_with_cache(tokens)
    for s in specs:
        torch.testing.assert_close(acts[s.short], flat(cache[s.tl_name]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["hooked", "bridge"])
def test_mlp_in_is_what_the_mlp_reads(request, which, tokens):
    """Feeding mlp_in through the block's MLP reproduces mlp_out: a transcoder input is exact."""
    model = request.getfixturevalue("tiny_model" if which == "hooked" else "tiny_bridge")
    for layer in (0, 1):
        specs = resolve_hooks(model, [f"L{layer}.mlp_in", f"L{layer}.mlp_out"])
        acts = capture(model, tokens, specs)
        with torch.inference_mode():
            out = model.blocks[layer].mlp(acts[f"L{layer}.mlp_in"])
        torch.testing.assert_close(out, acts[f"L{layer}.mlp_out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["hooked", "bridge"])
def test_forward_stops_after_last_needed_block(request, which, tokens):
    model = request.getfixturevalue("tiny_model" if which == "hooked" else "tiny_bridge")
    calls = []  # (block 1's resid_pre hook point may fire on the bridge; its compute must not)
    model.add_hook("blocks.1.hook_mlp_out", lambda x, hook: calls.append(1))
    try:
        capture(model, tokens, resolve_hooks(model, ["L0.resid_post", "L0.mlp_out"]))
        assert calls == []
        capture(model, tokens, resolve_hooks(model, ["L1.resid_pre"]))
        assert calls == [1]
    finally:
        model.reset_hooks()


def test_mlp_in_on_unfolded_norms_names_the_fix(gpt2_tokenizer, tokens):
    """With an unfolded LN, `ln2.hook_normalized` is before the norm's weight, so it is refused;
    after folding it is exactly what the MLP reads."""
    from conftest import make_tiny_model

    model = make_tiny_model(gpt2_tokenizer, n_layers=1, d_model=32, normalization="LN")
    with torch.no_grad():
        model.blocks[0].ln2.w.uniform_(0.5, 1.5)
    assert resolve_hooks(model, ["L0.resid_post"])  # other kinds are unaffected
    with pytest.raises(ValueError, match="fold_ln=True"):
        resolve_hooks(model, ["L0.mlp_in"])
    model.process_weights_(fold_ln=True)
    acts = capture(model, tokens, resolve_hooks(model, ["L0.mlp_in", "L0.mlp_out"]))
    with torch.inference_mode():
        out = model.blocks[0].mlp(acts["L0.mlp_in"])
    torch.testing.assert_close(out, acts["L0.mlp_out"], rtol=1e-5, atol=1e-5)
