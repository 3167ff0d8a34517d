"""Where `steer` and `splice` write, what they print, how they show progress, and that every
file they save opens for others (umask mode) and every HTML page opens with no network."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from interp_bench.cli import main
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TEXT = "the king is dead long live the queen and all her lords who love her well"
WORDS = TEXT.split(" ")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


@pytest.fixture
def on_tiny_model(monkeypatch, tiny_model, tmp_path):
    """Commands load the tiny model; the asset cache is private to the test."""
    from activation_cache import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_model)
    monkeypatch.setenv("INTERP_BENCH_CACHE", str(tmp_path / "assets"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(WORDS[i % len(WORDS)] for i in range(4000)))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land here
    return corpus


@pytest.fixture
def sae(tmp_path):
    torch.manual_seed(0)
    cfg = DictionaryConfig(d_in=64, d_sae=96, arch="topk", k=6, hook_in="L1.resid_post")
    return save_dictionary(SparseDictionary(cfg), tmp_path / "dicts" / "sae")


def test_steer_writes_next_to_the_dictionary(on_tiny_model, sae, umask_022, capsys):
    argv = ["steer", "--dictionary", str(sae), "--latent", "3", "--prompt", "the king is",
            "--model", "tiny", "--corpus", str(on_tiny_model), "--context-len", "16",
            "--neutral-tokens", "64", "--max-new-tokens", "4", "--coefficients", "0,4"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    json_path, html_path = sae / "steer_latent3.json", sae / "steer_latent3.html"
    assert f"wrote {json_path}" in out and f"wrote {html_path}" in out  # absolute paths
    assert json_path.is_absolute() and list(Path.cwd().iterdir()) == []
    assert json.loads(json_path.read_text())["latent"] == 3
    for p in (json_path, html_path):
        assert p.stat().st_mode & 0o777 == umask_022, p
    page = html_path.read_text()
    # plotly.js inlined; its bundle names a CDN only as the default map-data URL (geo plots)
    assert "plotly.js v" in page and not re.search(r"<script[^>]+src=", page)
    # progress in generated tokens and neutral tokens, both to completion
    assert re.search(r"steer: generate 3 rows: 100%.*8/8", err), err
    assert re.search(r"steer: side effects on neutral text: 100%.*128/128", err), err


def test_steer_positions_past_the_prompt(on_tiny_model, sae, capsys):
    argv = ["steer", "--dictionary", str(sae), "--latent", "3", "--prompt", "the king",
            "--model", "tiny", "--neutral-tokens", "0", "--positions", "1,7"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--positions 7 is outside the prompt, which has 3 tokens" in err and "\n" not in err


def test_steer_out_folder(on_tiny_model, sae, tmp_path, capsys):
    argv = ["steer", "--dictionary", str(sae), "--latent", "0", "--prompt", "the king",
            "--model", "tiny", "--neutral-tokens", "0", "--max-new-tokens", "2",
            "--out", "elsewhere", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert (Path.cwd() / "elsewhere" / "steer_latent0.json").exists()
    assert str(Path.cwd() / "elsewhere" / "steer_latent0.html") in capsys.readouterr().out


def test_splice_writes_next_to_the_dictionary(on_tiny_model, sae, umask_022, capsys):
    argv = ["splice", "--dictionary", str(sae), "--model", "tiny", "--corpus", str(on_tiny_model),
            "--context-len", "16", "--tokens", "64", "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    path = sae / "splice.json"
    assert f"wrote {path}" in out and list(Path.cwd().iterdir()) == []
    assert path.stat().st_mode & 0o777 == umask_022
    assert json.loads(path.read_text())["results"][0]["n_tokens"] > 0
    # the bars count tokens (4 sequences of 16), not batches
    assert re.search(r"splice: ablation means: 100%.*64/64", err), err
    assert re.search(r"splice: clean, ablated, spliced: 100%.*64/64", err), err
    assert "batch" not in err


def test_token_cache_has_the_umask_mode(gpt2_tokenizer, tmp_path, monkeypatch, umask_022):
    """tempfile makes 0600 files; renamed into the shared asset cache they must be readable."""
    from activation_cache.corpus import CorpusConfig, load_corpus
    from activation_cache.paths import publishing

    monkeypatch.setenv("INTERP_BENCH_CACHE", str(tmp_path))
    text = tmp_path / "c.txt"
    text.write_text(" ".join(WORDS * 50))
    load_corpus(CorpusConfig(source=str(text), context_len=16), gpt2_tokenizer)
    [cached] = (tmp_path / "tokens").glob("*.safetensors")
    assert cached.stat().st_mode & 0o777 == umask_022
    with publishing(tmp_path / "asset") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "asset").stat().st_mode & 0o777 == 0o755


def _offline_dom(url: str, tmp_path: Path) -> str:
    """Headless Chromium with every connection refused (no proxy answers, no name resolves)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", url]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.long  # launches headless Chromium
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt install chromium)")
def test_steer_html_renders_offline(on_tiny_model, sae, tmp_path, capsys):
    argv = ["steer", "--dictionary", str(sae), "--latent", "3", "--prompt", "the king",
            "--model", "tiny", "--neutral-tokens", "0", "--max-new-tokens", "2",
            "--target", " queen", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    dom = _offline_dom((sae / "steer_latent3.html").as_uri(), tmp_path)
    assert 'class="main-svg"' in dom, dom[-1500:]  # plotly drew the figure
    assert "Steering latent 3" in dom


def test_saved_dictionary_and_index_have_the_umask_mode(tiny_model, tmp_path, umask_022):
    """safetensors' save_file creates 0600 files: weights and indexes were private."""
    from activation_cache.streams import model_stream
    from interp_bench.analysis.top_examples import AnalysisConfig, analyze

    torch.manual_seed(0)
    cfg = DictionaryConfig(d_in=64, d_sae=32, arch="topk", k=4, hook_in="L1.resid_post")
    d = SparseDictionary(cfg)
    save_dictionary(d, tmp_path / "sae")
    tokens = torch.randint(0, 50000, (4, 16))
    tokens[:, 0] = 50256
    analyze(d, model_stream(tiny_model, tokens, ["L1.resid_post"]), tmp_path / "index",
            AnalysisConfig(top_k=3, window=2))  # fmt: skip
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o644 for p in files}
