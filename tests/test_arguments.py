"""Bad arguments get one line before anything expensive: no model is loaded for any of them.

`load_model` is replaced by a function that fails the test, so a check that only happens after
the model load (24 s for SmolLM2 on a busy machine) shows up as a failure, not a slow pass.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from interp_bench.cli import main
from interp_bench.commands.counts import parse_count
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary


@pytest.fixture
def no_model(monkeypatch):
    from activation_cache import models
    from interp_bench.commands import pipeline

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(pipeline, "load_model", refuse)  # bound at import there


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    """A dictionary on SmolLM2's width (576), and one on a 64-wide model."""
    root = tmp_path_factory.mktemp("dicts")
    torch.manual_seed(0)
    for name, d_in in (("smol", 576), ("narrow", 64)):
        cfg = DictionaryConfig(
            d_in=d_in, d_sae=96, arch="topk", k=4, hook_in="L1.resid_post", model_name=""
        )
        save_dictionary(SparseDictionary(cfg), root / name)
    return root


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "-5", "1e400", "-1k"])
def test_counts_refuse_negative_and_non_finite(text):
    with pytest.raises(argparse.ArgumentTypeError, match="finite number >= 0"):
        parse_count(text)
    assert parse_count("1.5M") == 1_500_000 and parse_count("0") == 0


def test_tokens_inf_is_an_argument_error(capsys):
    """`--tokens inf` was an OverflowError traceback from int(float('inf'))."""
    with pytest.raises(SystemExit) as exc:
        main(["cache", "--tokens", "inf", "--out", "x"])
    assert exc.value.code == 2
    assert "not a count: 'inf'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokens", "0"], "--tokens must be positive"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--shard-tokens", "0"], "--shard-tokens must be positive"),
        (["--hooks", "blocks.15.hook_resid_post"], "did you mean L15.resid_post?"),
        (["--hooks", "blocks.3.ln2.hook_normalized"], "did you mean L3.mlp_in?"),
        (["--hooks", "L40.resid_post"], "out of range for a 30-layer model"),
        (["--context-len", "9000"], "the model holds 8,192"),
    ],
)
def test_cache_checks_before_loading(extra, message, no_model, tmp_path, capsys):
    err = one_line_error(["cache", "--out", str(tmp_path / "c"), *extra], capsys)
    assert message in err
    assert not (tmp_path / "c").exists()


def test_analyze_checks_before_loading(sae_dir, tmp_path, capsys):
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "manifest.json").write_text("{}")  # never read: checks come first
    base = [
        "analyze",
        "--dictionary",
        str(sae_dir / "smol"),
        "--activations",
        str(tmp_path / "acts"),
    ]
    assert "--tokens must be positive" in one_line_error([*base, "--tokens", "0"], capsys)
    assert "--batch-tokens must be" in one_line_error([*base, "--batch-tokens", "0"], capsys)
    assert "--top-k must be positive" in one_line_error([*base, "--top-k", "0"], capsys)
    err = one_line_error([*base, "--window", "100000000"], capsys)
    assert "GiB for 96 latents" in err and "or a smaller --top-k" in err
    with pytest.raises(SystemExit):  # a negative count is refused by the parser itself
        main([*base, "--tokens", "-5"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--tokens", "0"], "--tokens must be positive"),
        (["--context-len", "9000"], "the model holds 8,192"),
        (["--context-len", "2"], "--context-len must be >= 3"),
    ],
)
def test_splice_checks_before_loading(extra, message, sae_dir, no_model, capsys):
    argv = ["splice", "--dictionary", str(sae_dir / "smol"), "--model", "smollm2-135m", *extra]
    assert message in one_line_error(argv, capsys)


def test_splice_refuses_a_dictionary_of_another_width(sae_dir, no_model, capsys):
    argv = ["splice", "--dictionary", str(sae_dir / "narrow"), "--model", "smollm2-135m"]
    assert "64-wide activations but the model's are 576 wide" in one_line_error(argv, capsys)


STEER_BAD = [
    (["--top-k", "0"], "--top-k must be positive"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--temperature", "-1"], "--temperature must be positive"),
    (["--temperature", "inf"], "--temperature must be finite"),
    (["--coefficients", "1,nan"], "--coefficients must be finite"),
    (["--clamp", "inf"], "--clamp must be finite"),
    (["--scale", "nan"], "--scale must be finite"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
    (["--max-new-tokens", "9000"], "the model holds 8,192"),
    (["--context-len", "9000"], "the model holds 8,192"),
    (["--positions", "-1"], "--positions must be >= 0"),
    (["--latent", "96"], "latents 0..95"),
    (["--latent", "-1"], "--latent must be >= 0"),
]


@pytest.mark.parametrize(("extra", "message"), STEER_BAD)
def test_steer_checks_before_loading(extra, message, sae_dir, no_model, capsys):
    argv = ["steer", "--dictionary", str(sae_dir / "smol"), "--prompt", "hi",
            "--model", "smollm2-135m", "--latent", "3", *extra]  # fmt: skip
    assert message in one_line_error(argv, capsys)


def test_steer_refuses_a_dictionary_of_another_width(sae_dir, no_model, capsys):
    argv = ["steer", "--dictionary", str(sae_dir / "narrow"), "--prompt", "hi",
            "--model", "smollm2-135m", "--latent", "3"]  # fmt: skip
    assert "64-wide activations but the model's are 576 wide" in one_line_error(argv, capsys)


def test_report_top_zero(tmp_path, capsys):
    assert "--top must be positive" in one_line_error(
        ["report", str(tmp_path), "--top", "0"], capsys
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "30"], "this model has layers 0..29"),
        (["--layer", "-1"], "out of range"),
        (["--lr", "nan"], "--lr must be positive"),
        (["--lr", "inf"], "--lr must be finite"),
        (["--k", "0"], "--k must be positive"),
        (["--expansion", "0"], "--expansion must be positive"),
        (["--k", "5000"], "exceeds d_sae = 4608"),
    ],
)
def test_demo_checks_before_loading(extra, message, no_model, tmp_path, capsys):
    err = one_line_error(["demo", "--quick", "--out", str(tmp_path / "run"), *extra], capsys)
    assert message in err


CHEAP = [
    ["cache", "--hooks", "blocks.15.hook_resid_post", "--out", "{tmp}/c"],
    ["steer", "--dictionary", "{sae}", "--latent", "1", "--prompt", "hi", "--temperature", "0"],
    ["splice", "--dictionary", "{sae}", "--batch-size", "0"],
    ["analyze", "--dictionary", "{sae}", "--activations", "{tmp}", "--tokens", "0"],
    ["demo", "--quick", "--layer", "40"],
    ["report", "{tmp}", "--top", "0"],
    ["train", "--model", "smollm2-135m", "--hook", "L40.resid_post", "--out", "{tmp}/o"],
]


def test_checks_import_no_torch(sae_dir, tmp_path):
    """Importing torch alone took 15 s on the shared 2-core machine: a bad argument must be
    answered without it (and so without any model). One fresh interpreter answers every CHEAP
    command in turn; after each, torch must still be absent and the answer one line."""
    import json
    import subprocess
    import sys

    argvs = [[a.format(tmp=tmp_path, sae=sae_dir / "smol") for a in argv] for argv in CHEAP]
    (tmp_path / "manifest.json").write_text("{}")
    code = (
        "import contextlib, io, json, sys\n"
        "from interp_bench.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(argv)\n"
        "    print(json.dumps([argv[0], rc, 'torch' in sys.modules, err.getvalue()]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True,
                       text=True)  # fmt: skip
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == [argv[0] for argv in CHEAP], r.stderr[-2000:]
    for command, rc, imported_torch, err in rows:
        assert rc == 2 and not imported_torch, (command, err)
        assert len(err.strip().splitlines()) == 1, (command, err)


def test_copied_names_match_their_sources():
    from activation_cache.hooks import KINDS
    from activation_cache.models import EMBEDDED
    from interp_bench.commands import preflight

    assert preflight.KINDS == KINDS and preflight.EMBEDDED == EMBEDDED


def _config_only_models(tmp_path, monkeypatch) -> list[str]:
    """A 2-layer, 64-wide GPT-2 known only by its config.json (no weights): as a folder, as a
    hub id in a local Hugging Face cache, and the embedded SmolLM2 (30 layers, 576 wide)."""
    import json

    import huggingface_hub.constants

    cfg = json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_positions": 256})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(cfg)
    repo = tmp_path / "hub" / "models--someorg--tiny-gpt2"
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text(cfg)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return [str(tmp_path / "model"), "someorg/tiny-gpt2", "smollm2-135m"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hook-in", "L99.mlp_in", "--hook-out", "L99.mlp_out"], "layer 99 out of range for a"),
        (["--hook", "L0-40.resid_post"], "layer {n} out of range for a {n}-layer model"),
        (["--hook-in", "all.mlp_in", "--hook-out", "L0.mlp_out"], "give one target per input"),
        (["--hook", "all.resid_post", "--k", "5000", "--expansion", "1"], "k must be in 1..d_sae"),
        (["--hook", "all.mlp_in", "--skip"], "--skip applies to transcoders"),
        (["--hook", "L0.resid_post", "--context-len", "9000"], "--context-len is 9,000 tokens"),
    ],
)
def test_streaming_train_checks_before_loading(extra, message, no_model, tmp_path, monkeypatch,
                                               capsys):  # fmt: skip
    """`train --model M --corpus C` checks its dictionaries against the depth and width in the
    model's config file before the model loads (the loader fails this test if called)."""
    for model in _config_only_models(tmp_path, monkeypatch):
        n = 30 if model == "smollm2-135m" else 2
        argv = ["train", "--model", model, "--corpus", str(tmp_path / "c.txt"),
                "--out", str(tmp_path / "o"), *extra]  # fmt: skip
        assert message.format(n=n) in one_line_error(argv, capsys), model
    assert not (tmp_path / "o").exists()


def test_streaming_train_without_a_config_on_disk_checks_after_loading(
    tiny_model, tmp_path, monkeypatch, capsys
):
    """No config.json anywhere offline (a hub id not in the HF cache): as before, the model is
    loaded first and the hooks checked against it."""
    import huggingface_hub.constants

    from activation_cache import models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    loaded = []
    monkeypatch.setattr(models, "load_model", lambda name, **k: loaded.append(name) or tiny_model)
    argv = ["train", "--model", "someorg/absent", "--corpus", str(tmp_path / "c.txt"),
            "--out", str(tmp_path / "o"), "--hook", "L99.resid_post"]  # fmt: skip
    assert "layer 99 out of range for a 2-layer model" in one_line_error(argv, capsys)
    assert loaded == ["someorg/absent"]
