"""Spliced loss on the tiny model: exactness, ablation bounds, one pass == separate passes."""

import json
import math

import pytest
import torch
from analysis_helpers import relu_dictionary

from interp_bench.analysis.splice import format_table, spliced_loss
from interp_bench.dictionaries import save_dictionary


def perfect_sae(d: int, hook: str):
    """relu(x) - relu(-x) == x exactly: latents [x+, x-], decoder [I; -I]."""
    eye = torch.eye(d)
    enc, dec = torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0)
    return relu_dictionary(enc, torch.zeros(2 * d), dec, hook)


def random_dict(d_in: int, d_sae: int, hook_in: str, hook_out=None, seed=0, d_out=None):
    g = torch.Generator().manual_seed(seed)
    d_out = d_out or d_in
    return relu_dictionary(
        torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        torch.zeros(d_sae),
        torch.randn(d_sae, d_out, generator=g) / d_sae**0.5,
        hook_in,
        hook_out,
    )


@pytest.fixture(scope="module")
def tokens(tiny_model):
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, tiny_model.cfg.d_vocab, (4, 16), generator=g)
    toks[:, 0] = tiny_model.tokenizer.bos_token_id
    return toks


@pytest.mark.parametrize("share_prefix", [True, False])
def test_perfect_sae_recovers_clean_loss(tiny_model, tokens, share_prefix):
    (r,) = spliced_loss(
        tiny_model,
        [perfect_sae(64, "L1.resid_pre")],
        tokens,
        batch_size=4,
        share_prefix=share_prefix,
    )
    assert r.ce_spliced == pytest.approx(r.ce_clean, abs=1e-6)
    assert r.ce_error_added == pytest.approx(r.ce_clean, abs=1e-6)
    assert r.kl_spliced == pytest.approx(0.0, abs=1e-6)
    assert r.ce_recovered == pytest.approx(1.0, abs=1e-5)
    assert r.ce_recovered_vs_mean == pytest.approx(1.0, abs=1e-5)
    assert r.fvu == pytest.approx(0.0, abs=1e-9)
    assert r.n_tokens == 4 * 14
    # Ablating a hook of a random model still changes the loss: the bound is informative.
    assert abs(r.ce_zero - r.ce_clean) > 1e-3 and r.kl_zero > 1e-4 and r.kl_mean > 0


def test_zero_dictionary_recovers_nothing(tiny_model, tokens):
    """A dictionary whose output is 0 everywhere is the zero ablation: recovered fraction 0."""
    d = random_dict(64, 32, "L0.resid_post")
    with torch.no_grad():
        d.W_dec.zero_()
    (r,) = spliced_loss(tiny_model, [d], tokens, batch_size=6)
    assert r.ce_spliced == pytest.approx(r.ce_zero, abs=1e-6)
    assert r.ce_recovered == pytest.approx(0.0, abs=1e-5)
    assert r.kl_spliced == pytest.approx(r.kl_zero, rel=1e-5)
    assert r.l0 > 0


def test_error_added_back_is_exact_for_a_bad_dictionary(tiny_model, tokens):
    """recon + (x - recon) must put back x: CE equals clean even when recon is poor."""
    d = random_dict(64, 128, "L1.resid_post", seed=3)
    (r,) = spliced_loss(tiny_model, [d], tokens, batch_size=3)
    assert r.ce_spliced > r.ce_clean + 1e-3 and r.kl_spliced > 1e-4
    assert r.ce_error_added == pytest.approx(r.ce_clean, abs=1e-5)
    assert r.kl_error_added == pytest.approx(0.0, abs=1e-6)
    assert r.fvu > 0.1


def test_transcoder_error_added_back_equals_clean(tiny_model, tokens):
    d = random_dict(64, 96, "L1.mlp_in", "L1.mlp_out", seed=1)
    for share in (True, False):
        (r,) = spliced_loss(tiny_model, [d], tokens, batch_size=4, share_prefix=share)
        assert r.splice_hook == "L1.mlp_out"
        assert r.ce_error_added == pytest.approx(r.ce_clean, abs=1e-5)
        assert r.kl_error_added == pytest.approx(0.0, abs=1e-6)
        assert r.kl_spliced > 1e-4


def test_transcoder_splice_replaces_mlp_out(tiny_model, tokens):
    """Splicing a transcoder equals hooking the model by hand with its prediction at mlp_out."""
    d = random_dict(64, 96, "L0.mlp_in", "L0.mlp_out", seed=2)
    (r,) = spliced_loss(tiny_model, [d], tokens, batch_size=6)
    store = {}

    def keep(act, hook):
        store["x"] = act

    def put(act, hook):
        out = d(store["x"]).detach()
        out[:, 0] = act[:, 0]
        return out

    with torch.no_grad():
        logits = tiny_model.run_with_hooks(
            tokens,
            fwd_hooks=[("blocks.0.ln2.hook_normalized", keep), ("blocks.0.hook_mlp_out", put)],
        )
        logp = torch.log_softmax(logits[:, 1:-1], -1)
        ce = -logp.gather(-1, tokens[:, 2:, None]).mean()
    assert r.ce_spliced == pytest.approx(float(ce), abs=1e-5)


def test_several_dictionaries_in_one_pass_equal_separate_passes(tiny_model, tokens):
    dicts = {
        "sae0": random_dict(64, 64, "L0.resid_post", seed=4),
        "tc1": random_dict(64, 96, "L1.mlp_in", "L1.mlp_out", seed=6),
        "sae0b": random_dict(64, 32, "L0.resid_post", seed=7),
    }
    tokens = tokens[:3]
    together = {r.name: r for r in spliced_loss(tiny_model, dicts, tokens, batch_size=2)}
    for name, d in dicts.items():
        (alone,) = spliced_loss(tiny_model, {name: d}, tokens, batch_size=3, share_prefix=False)
        a, b = together[name].to_dict(), alone.to_dict()
        for key, value in a.items():
            if isinstance(value, float):
                # Ratios over small gaps amplify float noise; their inputs are compared tightly.
                rel = 1e-3 if key.startswith("ce_recovered") else 1e-5
                assert value == pytest.approx(b[key], rel=rel, abs=1e-6), (name, key)


def test_result_is_json_and_table(tiny_model, tokens):
    results = spliced_loss(tiny_model, [perfect_sae(64, "L0.resid_post")], tokens[:2])
    back = json.loads(json.dumps([r.to_dict() for r in results]))
    assert back[0]["hook_in"] == "L0.resid_post" and math.isfinite(back[0]["ce_clean"])
    assert "L0.resid_post" in format_table(results)


def test_bad_input_is_a_clear_error(tiny_model, tokens):
    with pytest.raises(ValueError, match="expects d_in=32"):
        spliced_loss(tiny_model, [random_dict(32, 16, "L0.resid_post")], tokens)
    with pytest.raises(ValueError, match="out of range"):
        spliced_loss(tiny_model, [random_dict(64, 16, "L7.resid_post")], tokens)
    with pytest.raises(ValueError, match="ctx >= 3"):
        spliced_loss(tiny_model, [perfect_sae(64, "L0.resid_post")], tokens[:0])
    with pytest.raises(ValueError, match="no dictionaries"):
        spliced_loss(tiny_model, [], tokens)


def _real(cfg_kwargs: dict, seed: int = 0):
    from interp_bench.config import DictionaryConfig
    from interp_bench.dictionaries import SparseDictionary

    torch.manual_seed(seed)
    return SparseDictionary(DictionaryConfig(**cfg_kwargs)).eval()


def test_real_dictionaries_perfect_relu_and_mixed_pass(tiny_model, tokens):
    """The same checks through `SparseDictionary` (relu SAE made perfect, topk SAE, transcoder)."""
    perfect = _real({"d_in": 64, "d_sae": 128, "arch": "relu", "hook_in": "L1.resid_pre"})
    eye = torch.eye(64)
    with torch.no_grad():
        perfect.W_enc.copy_(torch.cat([eye, -eye], 1))
        perfect.W_dec.copy_(torch.cat([eye, -eye], 0))
    topk = _real({"d_in": 64, "d_sae": 256, "k": 8, "hook_in": "L0.resid_post"}, seed=1)
    tc = _real(
        {
            "d_in": 64,
            "d_sae": 256,
            "k": 8,
            "hook_in": "L1.mlp_in",
            "hook_out": "L1.mlp_out",
            "d_out": 64,
            "skip": True,
        },
        seed=2,
    )
    dicts = {"perfect": perfect, "topk": topk, "tc": tc}
    with torch.no_grad():
        together = {r.name: r for r in spliced_loss(tiny_model, dicts, tokens, batch_size=3)}
    p = together["perfect"]
    assert p.ce_spliced == pytest.approx(p.ce_clean, abs=1e-6) and p.kl_spliced < 1e-6
    assert together["topk"].l0 == pytest.approx(8.0)
    for name in ("topk", "tc"):
        r = together[name]
        assert r.ce_error_added == pytest.approx(r.ce_clean, abs=1e-5) and r.kl_spliced > 1e-4
    (alone,) = spliced_loss(tiny_model, {"tc": tc}, tokens, batch_size=4)
    assert alone.ce_spliced == pytest.approx(together["tc"].ce_spliced, abs=1e-5)
    assert alone.kl_spliced == pytest.approx(together["tc"].kl_spliced, rel=1e-4)


@pytest.fixture(scope="module")
def bridge_setup(tmp_path_factory, tiny_gpt2_dir):
    """A tiny GPT-2 HF folder (loads as a TransformerBridge), a saved SAE and a text file."""
    root = tmp_path_factory.mktemp("splice-cli")
    (root / "model").symlink_to(tiny_gpt2_dir)
    sae = _real({"d_in": 64, "d_sae": 128, "k": 8, "hook_in": "L1.resid_post"}, seed=3)
    save_dictionary(sae, root / "sae")
    text = " ".join(
        f"Line {i} of a small held-out corpus about foxes and dogs." for i in range(400)
    )
    (root / "corpus.txt").write_text(text)
    return root


@pytest.mark.long  # loads a bridge model through the CLI, as test_cli_steer_on_a_bridge_model
def test_cli_splice_on_a_bridge_model(bridge_setup, capsys):
    """End to end through `TransformerBridge` (no start_at_layer): table, JSON, exact splice."""
    import argparse

    from interp_bench.commands import splice as cmd

    root = bridge_setup
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(
        ["--dictionary", str(root / "sae"), "--model", str(root / "model"), "--corpus",
         str(root / "corpus.txt"), "--tokens", "128", "--context-len", "32", "--batch-size", "64",
         "--out", str(root / "splice.json"), "--device", "cpu"]
    )  # fmt: skip
    assert cmd.run(args) == 0
    assert "L1.resid_post" in capsys.readouterr().out
    (r,) = json.loads((root / "splice.json").read_text())["results"]
    assert r["n_tokens"] == 4 * 30 and r["extra"]["share_prefix"] is False
    assert r["ce_error_added"] == pytest.approx(r["ce_clean"], abs=1e-5)
    assert r["kl_spliced"] > 0 and r["kl_error_added"] < 1e-6
    args.dictionary = [str(root / "missing")]
    with pytest.raises(FileNotFoundError, match="no dictionary"):
        cmd.run(args)


def test_error_added_check_can_be_skipped(tiny_model, tokens):
    d = random_dict(64, 32, "L0.resid_post", seed=9)
    (full,) = spliced_loss(tiny_model, [d], tokens[:2])
    (fast,) = spliced_loss(tiny_model, [d], tokens[:2], error_added=False)
    assert fast.ce_error_added is None and fast.kl_error_added is None
    assert fast.ce_spliced == full.ce_spliced and fast.ce_zero == full.ce_zero
    assert "-" in format_table([fast])
