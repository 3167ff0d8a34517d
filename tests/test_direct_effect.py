"""Per-example direct effect on the next-token logits against a brute-force computation: add the
latent's write at that position to the final residual, recompute the logits with the final norm's
scale frozen, and take the difference."""

from __future__ import annotations

import pytest
import torch

from activation_cache.streams import model_stream
from activation_cache.tiny_model import tiny_random_model
from interp_bench.analysis.top_examples import AnalysisConfig, analyze
from tests.analysis_helpers import relu_dictionary


@pytest.fixture(scope="module")
def tokens(gpt2_tokenizer):
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 50000, (6, 20), generator=g)
    t[:, 0] = gpt2_tokenizer.bos_token_id
    return t


def model_with(norm: str, tokenizer):
    """A tiny model whose final norm has a non-trivial weight and bias (when it has them)."""
    model = tiny_random_model(tokenizer, normalization=norm, seed=1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in ("w", "b"):
            p = getattr(model.ln_final, name, None)
            if p is not None:
                p.copy_((1.0 if name == "w" else 0.0) + 0.5 * torch.randn(p.shape, generator=g))
    return model


def dictionary_on(hook: str, d_in: int, d_model: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d_sae = 24
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    W_dec = torch.randn(d_sae, d_in, generator=g)
    return relu_dictionary(W_enc, torch.full((d_sae,), -0.3), W_dec, hook)


def frozen_logits(model, resid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The unembedding of `resid` with the final norm's denominator fixed at `scale`."""
    norm = model.cfg.normalization_type
    x = resid - resid.mean(-1, keepdim=True) if norm.startswith("LN") else resid
    x = x / scale
    if norm in ("LN", "RMS"):
        x = x * model.ln_final.w
    if norm == "LN":
        x = x + model.ln_final.b
    return x @ model.W_U + model.b_U


@torch.no_grad()
def brute_force(model, index, latent: int, slot: int, write: torch.Tensor):
    """(next token id, delta logits) of adding act * write to the final residual at the example."""
    g = int(index.arrays["top_index"][latent, slot])
    act = float(index.arrays["top_acts"][latent, slot])
    seq, tok = index.stream["seq"], index.stream["tokens"]
    rows = (seq == seq[g]).nonzero().squeeze(1)
    p = g - int(rows[0])
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits, cache = model.run_with_cache(tok[rows][None].long())
    r, s = cache[last][0, p], cache["ln_final.hook_scale"][0, p]
    clean = frozen_logits(model, r, s)
    torch.testing.assert_close(clean, logits[0, p], rtol=1e-4, atol=1e-4)  # frozen == the model
    delta = frozen_logits(model, r + act * write, s) - clean
    nxt = int(tok[g + 1]) if p + 1 < rows.numel() else -1
    return nxt, delta


LONG = pytest.mark.long  # one norm in the fast lane, all three in the full suite


@pytest.mark.parametrize(
    "norm", [pytest.param("LNPre", marks=LONG), pytest.param("LN", marks=LONG), "RMS"]
)
def test_direct_effect_matches_brute_force(norm, gpt2_tokenizer, tokens, tmp_path):
    model = model_with(norm, gpt2_tokenizer)
    hook = "L1.resid_post"
    d = dictionary_on(hook, 64, 64)
    index = analyze(d, model_stream(model, tokens, [hook], batch_seqs=4), tmp_path,
                    AnalysisConfig(top_k=4, window=2), model=model)  # fmt: skip
    assert index.meta["direct_effect"].startswith("act / ln_final scale")
    checked = 0
    for latent in range(d.cfg.d_sae):
        card = index.feature(latent)
        for slot, ex in enumerate(card["top"][:2]):
            nxt, delta = brute_force(model, index, latent, slot, d.W_dec[latent].detach())
            assert ex["next_id"] == nxt
            if nxt < 0:
                assert ex["next_effect"] != ex["next_effect"]  # NaN: nothing comes next
                continue
            assert ex["next_effect"] == pytest.approx(float(delta[nxt]), rel=1e-3, abs=1e-4)
            # the example's promoted / suppressed tokens: the latent's, times act / scale
            top = delta.topk(3)
            assert top.indices.tolist() == index.arrays["logit_pos_ids"][latent, :3].tolist()
            want = ex["direct_mult"] * index.arrays["logit_pos_vals"][latent, :3]
            torch.testing.assert_close(top.values, want, rtol=1e-3, atol=1e-4)
            low = delta.topk(3, largest=False).indices
            assert low.tolist() == index.arrays["logit_neg_ids"][latent, :3].tolist()
            checked += 1
    assert checked >= 10


def test_per_head_z_goes_through_W_O(gpt2_tokenizer, tokens, tmp_path):
    model = model_with("LNPre", gpt2_tokenizer)
    hook = "L1.z"
    d = dictionary_on(hook, 64, 64, seed=1)  # z is n_heads x d_head = 4 x 16, flattened
    index = analyze(d, model_stream(model, tokens, [hook], batch_seqs=4), tmp_path,
                    AnalysisConfig(top_k=3, window=2), model=model)  # fmt: skip
    assert "W_O" in index.meta["logits"]
    W_O = model.blocks[1].attn.W_O.detach()
    checked = 0
    for latent in range(d.cfg.d_sae):
        for slot, ex in enumerate(index.feature(latent)["top"][:1]):
            write = torch.einsum("hd,hdm->m", d.W_dec[latent].detach().view(4, 16), W_O)
            nxt, delta = brute_force(model, index, latent, slot, write)
            if nxt >= 0:
                assert ex["next_effect"] == pytest.approx(float(delta[nxt]), rel=1e-3, abs=1e-4)
                checked += 1
    assert checked >= 5


def test_mlp_in_has_no_direct_effect(gpt2_tokenizer, tokens, tmp_path):
    model = model_with("LNPre", gpt2_tokenizer)
    hook = "L1.mlp_in"
    d = dictionary_on(hook, 64, 64)
    index = analyze(d, model_stream(model, tokens, [hook], batch_seqs=4), tmp_path,
                    AnalysisConfig(top_k=3, window=2), model=model)  # fmt: skip
    assert index.meta["direct_effect"] is None and index.meta["logits"] is None
    assert "top_next_effect" not in index.arrays
    assert all("next_effect" not in ex for ex in index.feature(0)["top"])


def test_second_dictionary_on_the_same_text_runs_no_forward(gpt2_tokenizer, tokens, tmp_path):
    """The norm scales depend on the tokens only: a second analysis reuses them."""
    model = model_with("RMS", gpt2_tokenizer)
    hook = "L1.resid_post"
    acts = list(model_stream(model, tokens, [hook], batch_seqs=4))
    cfg = AnalysisConfig(top_k=3, window=2)
    first = analyze(dictionary_on(hook, 64, 64, seed=2), acts, tmp_path / "a", cfg, model=model)
    calls = []
    real = model.forward
    model.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    second = analyze(dictionary_on(hook, 64, 64, seed=2), acts, tmp_path / "b", cfg, model=model)
    assert calls == []
    torch.testing.assert_close(first.arrays["top_next_effect"], second.arrays["top_next_effect"],
                               equal_nan=True)  # fmt: skip
    off = AnalysisConfig(top_k=3, window=2, direct_effects=False)  # analyze --no-direct-effects
    third = analyze(dictionary_on(hook, 64, 64, seed=2), acts, tmp_path / "c", off, model=model)
    assert "top_next_effect" not in third.arrays and third.meta["direct_effect"] is None
    assert "logit_pos_ids" in third.arrays  # the latent's promoted tokens stay


@pytest.mark.slow
def test_direct_effect_on_the_embedded_bridge(tmp_path):
    """SmolLM2 through the TransformerBridge (RMSNorm, tied unembedding): the browser's
    per-example effect equals the model's own logit change when the latent's write is added to
    the final residual through the bridge's hooks, with the final norm's scale frozen."""
    from activation_cache.models import load_model
    from interp_bench.circuits.replacement import hooked

    model = load_model("smollm2-135m", device="cpu")
    d_model, hook = model.cfg.d_model, "L15.resid_post"
    d = dictionary_on(hook, d_model, d_model, seed=1)
    g = torch.Generator().manual_seed(5)
    toks = torch.randint(100, 40000, (4, 16), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    index = analyze(d, model_stream(model, toks, [hook], batch_seqs=4), tmp_path,
                    AnalysisConfig(top_k=2, window=2), model=model)  # fmt: skip
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    seq, tok = index.stream["seq"], index.stream["tokens"]
    checked = 0
    for latent in range(8):
        for slot, ex in enumerate(index.feature(latent)["top"]):
            gi = int(index.arrays["top_index"][latent, slot])
            rows = (seq == seq[gi]).nonzero().squeeze(1)
            p = gi - int(rows[0])
            if p + 1 >= rows.numel():
                continue
            x = tok[rows][None].long()
            store: dict = {}
            with torch.no_grad(), hooked(model, [("ln_final.hook_scale", _keep(store))]):
                clean = model(x)[0, p].float()
            write = float(index.arrays["top_acts"][latent, slot]) * d.W_dec[latent].detach()
            edits = [(last, _add(write, p)), ("ln_final.hook_scale", _frozen(store))]
            with torch.no_grad(), hooked(model, edits):
                new = model(x)[0, p].float()
            nxt = int(tok[gi + 1])
            assert ex["next_id"] == nxt
            want = float(new[nxt] - clean[nxt])
            assert ex["next_effect"] == pytest.approx(want, rel=2e-3, abs=2e-3)
            checked += 1
    assert checked >= 8


def _keep(store: dict):
    def fn(act, hook):
        store["scale"] = act.detach().clone()

    return fn


def _frozen(store: dict):
    return lambda act, hook: store["scale"].to(act.dtype)


def _add(write: torch.Tensor, pos: int):
    def fn(act, hook):
        act = act.clone()
        act[0, pos] += write.to(act.dtype)
        return act

    return fn
