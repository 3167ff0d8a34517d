"""Steering on the tiny model: exact deltas, no-op cases, determinism, measured effects."""

import json

import pytest
import torch
from analysis_helpers import relu_dictionary

from interp_bench.analysis.steering import (
    Steer,
    format_sweep,
    generate,
    latent_max_activation,
    neutral_effects,
    steering_hooks,
    sweep,
    sweep_figure,
    target_logprob,
)


def stand_in(d_in, d_sae, hook_in, hook_out=None, seed=0):
    """A ReLU dictionary with known random weights and encoder bias 0.1 (latents fire often)."""
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    W_dec = torch.randn(d_sae, d_in, generator=g)
    return relu_dictionary(W_enc, torch.full((d_sae,), 0.1), W_dec, hook_in, hook_out)


PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def sae():
    return stand_in(64, 48, "L0.resid_post")


@pytest.fixture(scope="module")
def transcoder():
    return stand_in(64, 48, "L1.mlp_in", "L1.mlp_out", seed=1)


def _activation(model, name, tokens, hooks=()):
    """The activation at `name` after any steering hooks there (hooks run in order)."""
    store = {}

    def keep(act, hook):
        store["x"] = act.clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[*hooks, (name, keep)])
    return store["x"]


def test_clamp_changes_activation_by_exact_decoder_multiple(tiny_model, sae):
    tokens = tiny_model.to_tokens(PROMPT)
    name = "blocks.0.hook_resid_post"
    clean = _activation(tiny_model, name, tokens)
    latent, value = 5, 3.0
    f_i = sae.encode(clean)[..., latent].detach()
    steer = Steer(latent, "clamp", value, positions=(2, 4))
    steered = _activation(tiny_model, name, tokens, steering_hooks(tiny_model, sae, [steer]))
    expected = torch.zeros_like(clean)
    for p in (2, 4):
        expected[0, p] = (value - f_i[0, p]) * sae.W_dec[latent].detach()
    assert (expected.abs().sum(-1) > 0).sum() == 2
    torch.testing.assert_close(steered - clean, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(steered[0, [0, 1, 3, 5]], clean[0, [0, 1, 3, 5]])


def test_add_and_scale_at_all_positions_after_bos(tiny_model, sae):
    tokens = tiny_model.to_tokens(PROMPT)
    name = "blocks.0.hook_resid_post"
    clean = _activation(tiny_model, name, tokens)
    hooks = steering_hooks(tiny_model, sae, [Steer(7, "add", 2.0, scale=1.5)])
    delta = _activation(tiny_model, name, tokens, hooks) - clean
    torch.testing.assert_close(
        delta[0, 1:], (3.0 * sae.W_dec[7].detach()).expand(delta.shape[1] - 1, -1)
    )
    assert torch.equal(delta[0, 0], torch.zeros(64))


def test_clamp_to_own_value_is_a_noop(tiny_model, sae):
    """Clamping keeps the error term: clamping a latent to its own value changes nothing."""
    tokens = tiny_model.to_tokens("Hello")  # BOS + one token, so one position is steered
    name = "blocks.0.hook_resid_post"
    clean = _activation(tiny_model, name, tokens)
    f_last = float(sae.encode(clean)[0, 1, 3].detach())
    assert f_last > 0
    hooks = steering_hooks(tiny_model, sae, [Steer(3, "clamp", f_last)])
    assert torch.equal(_activation(tiny_model, name, tokens, hooks), clean)


def test_transcoder_clamp_lands_on_mlp_out(tiny_model, transcoder):
    tokens = tiny_model.to_tokens(PROMPT)
    mlp_in = _activation(tiny_model, "blocks.1.ln2.hook_normalized", tokens)
    clean = _activation(tiny_model, "blocks.1.hook_mlp_out", tokens)
    f_i = transcoder.encode(mlp_in)[..., 2].detach()
    hooks = steering_hooks(tiny_model, transcoder, [Steer(2, "clamp", 0.0)])
    delta = _activation(tiny_model, "blocks.1.hook_mlp_out", tokens, hooks) - clean
    expected = (0.0 - f_i)[..., None] * transcoder.W_dec[2].detach()
    expected[0, 0] = 0
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-5)


def test_coefficient_zero_reproduces_clean_greedy_generation(tiny_model, sae):
    clean = generate(tiny_model, PROMPT, max_new_tokens=8)
    hooks = steering_hooks(tiny_model, sae, [Steer(1, "add", 0.0)])
    assert torch.equal(generate(tiny_model, PROMPT, hooks=hooks, max_new_tokens=8), clean)
    strong = steering_hooks(tiny_model, sae, [Steer(1, "add", 50.0)])
    assert not torch.equal(generate(tiny_model, PROMPT, hooks=strong, max_new_tokens=8), clean)


def test_batched_rows_equal_single_rows(tiny_model, sae):
    rows = [None, Steer(1, "add", 0.0), Steer(1, "add", 50.0), Steer(4, "clamp", 20.0)]
    batched = generate(
        tiny_model, PROMPT, hooks=steering_hooks(tiny_model, sae, rows), n_rows=4, max_new_tokens=6
    )
    for r, s in enumerate(rows):
        hooks = steering_hooks(tiny_model, sae, [s]) if s else []
        single = generate(tiny_model, PROMPT, hooks=hooks, max_new_tokens=6)
        assert torch.equal(batched[r], single[0]), r


def test_sampled_generation_is_deterministic_under_seed(tiny_model, sae):
    hooks = steering_hooks(tiny_model, sae, [Steer(1, "add", 4.0)])
    kw = {"hooks": hooks, "max_new_tokens": 6, "temperature": 1.0, "n_rows": 2}
    a = generate(tiny_model, PROMPT, seed=11, **kw)
    b = generate(tiny_model, PROMPT, seed=11, **kw)
    c = generate(tiny_model, PROMPT, seed=12, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_effects_are_zero_without_steering_and_grow_with_it(tiny_model, sae):
    g = torch.Generator().manual_seed(0)
    neutral = torch.randint(0, 50000, (3, 16), generator=g)
    neutral[:, 0] = tiny_model.tokenizer.bos_token_id
    kl, ce0, ce1 = neutral_effects(tiny_model, neutral, hooks=[])
    assert kl == pytest.approx(0.0, abs=1e-7) and ce0 == pytest.approx(ce1)
    small = neutral_effects(
        tiny_model, neutral, hooks=steering_hooks(tiny_model, sae, [Steer(1, "add", 1.0)])
    )
    big = neutral_effects(
        tiny_model, neutral, hooks=steering_hooks(tiny_model, sae, [Steer(1, "add", 20.0)])
    )
    assert 0 < small[0] < big[0]
    lp = target_logprob(
        tiny_model,
        PROMPT,
        " the lazy dog",
        hooks=steering_hooks(tiny_model, sae, [None, Steer(1, "add", 20.0)]),
        n_rows=2,
    )
    assert lp.shape == (2,) and lp[0] != lp[1] and bool((lp < 0).all())


def test_sweep_table_json_and_figure(tiny_model, sae, tmp_path):
    neutral = torch.randint(0, 50000, (2, 12), generator=torch.Generator().manual_seed(1))
    neutral[:, 0] = tiny_model.tokenizer.bos_token_id
    scale = latent_max_activation(tiny_model, sae, neutral, 1)
    assert scale > 0
    result = sweep(
        tiny_model,
        sae,
        1,
        PROMPT,
        coefficients=[0, 2, 8],
        clamp_values=[0.0],
        target=" dog",
        neutral_tokens=neutral,
        scale=scale,
        max_new_tokens=5,
        seed=3,
    )
    assert [r.value for r in result.rows] == [0, 2, 8, 0.0]
    zero = result.rows[0]
    assert zero.greedy == result.clean_greedy and zero.sampled == result.clean_sampled
    assert zero.target_logprob_change == pytest.approx(0.0, abs=1e-6)
    assert zero.neutral_kl == pytest.approx(0.0, abs=1e-7)
    assert result.rows[2].neutral_kl > result.rows[1].neutral_kl > 0
    json.dumps(result.to_dict())
    assert "greedy" in format_sweep(result)
    fig = sweep_figure(result)
    fig.write_html(tmp_path / "sweep.html")
    assert (tmp_path / "sweep.html").stat().st_size > 1000
    assert {t.type for t in fig.data} == {"scatter", "table"}


def test_bad_steering_input(tiny_model, sae):
    with pytest.raises(ValueError, match="out of range"):
        steering_hooks(tiny_model, sae, [Steer(48, "add", 1.0)])
    with pytest.raises(ValueError, match="unknown steering mode"):
        Steer(1, "multiply", 1.0)
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_model, "", max_new_tokens=1)


def test_sampled_rows_share_random_numbers(tiny_model, sae):
    """A batched sampled row equals the same row sampled alone under the same seed."""
    rows = [None, Steer(1, "add", 30.0)]
    kw = {"max_new_tokens": 6, "temperature": 1.0, "seed": 5}
    batched = generate(
        tiny_model, PROMPT, hooks=steering_hooks(tiny_model, sae, rows), n_rows=2, **kw
    )
    alone = generate(tiny_model, PROMPT, hooks=steering_hooks(tiny_model, sae, rows[1:]), **kw)
    assert torch.equal(batched[1], alone[0])
    assert torch.equal(batched[0], generate(tiny_model, PROMPT, **kw)[0])


def test_real_topk_dictionary_clamp_delta(tiny_model):
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary

    torch.manual_seed(0)
    d = SparseDictionary(DictionaryConfig(d_in=64, d_sae=128, k=16, hook_in="L1.resid_pre")).eval()
    tokens = tiny_model.to_tokens(PROMPT)
    name = "blocks.1.hook_resid_pre"
    clean = _activation(tiny_model, name, tokens)
    with torch.no_grad():
        f = d.encode(clean)
    latent = int(f[0, 1:].ne(0).sum(0).argmax())  # a latent that fires somewhere
    hooks = steering_hooks(tiny_model, d, [Steer(latent, "clamp", 5.0)])
    delta = _activation(tiny_model, name, tokens, hooks) - clean
    expected = (5.0 - f[..., latent])[..., None] * d.W_dec[latent].detach()
    expected[0, 0] = 0
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.long
def test_cli_steer_on_a_bridge_model(tmp_path, tiny_gpt2_dir, capsys):
    """End to end through `TransformerBridge`: generations, effects, JSON and HTML written."""
    import argparse

    from interp_bench.commands import steer as cmd
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary, save_dictionary

    torch.manual_seed(0)
    save_dictionary(
        SparseDictionary(DictionaryConfig(d_in=64, d_sae=96, k=8, hook_in="L0.resid_post")),
        tmp_path / "sae",
    )
    (tmp_path / "c.txt").write_text(
        " ".join(f"Neutral sentence {i} about weather." for i in range(300))
    )
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    argv = ["--dictionary", str(tmp_path / "sae"), "--latent", "3", "--coefficients", "0,40",
            "--clamp", "0", "--prompt", "The quick brown fox", "--target", " jumps",
            "--model", str(tiny_gpt2_dir), "--corpus", str(tmp_path / "c.txt"),
            "--neutral-tokens", "64", "--context-len", "32", "--max-new-tokens", "4",
            "--out", str(tmp_path / "steer"), "--device", "cpu"]  # fmt: skip
    assert cmd.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "greedy" in out and "sampled" in out
    result = json.loads((tmp_path / "steer" / "steer_latent3.json").read_text())
    assert [(r["mode"], r["value"]) for r in result["rows"]] == [
        ("add", 0),
        ("add", 40),
        ("clamp", 0),
    ]
    zero, strong = result["rows"][0], result["rows"][1]
    assert zero["greedy"] == result["clean_greedy"] and zero["neutral_kl"] == pytest.approx(
        0, abs=1e-7
    )
    assert strong["neutral_kl"] > 0 and strong["target_logprob_change"] != 0
    assert (tmp_path / "steer" / "steer_latent3.html").stat().st_size > 1000
    with pytest.raises(ValueError, match="out of range"):
        cmd.run(parser.parse_args([*argv[:3], "999", *argv[4:]]))
