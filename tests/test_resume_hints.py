"""What an interrupted user is told: `inspect` of an incomplete cache prints the command that
finishes it (and that command works), Ctrl-C in the demo prints one line saying rerun resumes,
and `make quick` and `make demo` never share a folder."""

from __future__ import annotations

import argparse
import shlex

import pytest
from test_cache import make_tokens

from activation_cache.shards import read_manifest, write_manifest
from interp_bench.cli import build_parser, main
from interp_bench.commands.demo import config_from_args
from interp_bench.commands.pipeline import DemoConfig


def test_inspect_incomplete_cache_says_how_to_finish(tiny_model, tmp_path, monkeypatch, capsys):
    from activation_cache import corpus, models
    from interp_bench.commands import inspect

    splits = corpus.TokenSplits(make_tokens(10), make_tokens(3, seed=1), "fp123", 208)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(corpus, "load_corpus", lambda cfg, tok: splits)
    out = tmp_path / "acts"
    assert main(["cache", "--hooks", "L1.resid_post", "--tokens", "160", "--context-len", "16",
                 "--shard-tokens", "32", "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    done = read_manifest(out)
    cut = read_manifest(out)  # as a kill after the second shard leaves it
    cut.shards, cut.complete = cut.shards[:2], False
    write_manifest(out, cut)
    for extra in out.glob("shard_0000[2-9].safetensors"):
        extra.unlink()
    capsys.readouterr()
    assert inspect.run(argparse.Namespace(dir=str(out), no_verify=False, deep=False)) == 0
    text = capsys.readouterr().out
    assert "incomplete: 40%" in text
    [hint] = [line for line in text.splitlines() if line.startswith("incomplete: finish it")]
    command = hint.split("`")[1]
    argv = shlex.split(command)
    assert argv[:2] == ["interp-bench", "cache"]
    assert main(argv[1:]) == 0  # the printed command resumes and completes the same cache
    again = read_manifest(out)
    assert again.complete and [s.sha256 for s in again.shards] == [s.sha256 for s in done.shards]


def test_inspect_incomplete_demo_cache_names_the_demo(tmp_path):
    from interp_bench.commands.inspect import resume_command

    m = argparse.Namespace(config={"split": "train"})
    hint = resume_command(m, tmp_path / "run" / "acts" / "train")
    assert hint == f"interp-bench demo --out {(tmp_path / 'run').resolve()}"


@pytest.mark.parametrize("quick", [False, True])
def test_demo_ctrl_c_prints_one_line(quick, monkeypatch, tmp_path, capsys):
    from interp_bench.commands import pipeline

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_demo", interrupted)
    argv = ["demo", "--out", str(tmp_path / "run")] + (["--quick"] if quick else [])
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "rerun the same command" in err and "to resume" in err
    assert ("make quick" if quick else "make demo") in err and str(tmp_path / "run") in err


def test_quick_and_demo_use_their_own_folders():
    parser = build_parser()
    assert config_from_args(parser.parse_args(["demo"])).out == "runs/demo"
    assert config_from_args(parser.parse_args(["demo", "--quick"])).out == "runs/quick"
    assert config_from_args(parser.parse_args(["demo", "--quick", "--out", "x"])).out == "x"
    assert DemoConfig.quick().out == "runs/quick" and DemoConfig().out == "runs/demo"
