"""The cache writer: exact values, resumption after kills, refusals, corruption detection, CLI."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from activation_cache import cache as cache_mod
from activation_cache import shards as shards_mod
from activation_cache.cache import cache_activations
from activation_cache.reader import ActivationReader
from activation_cache.shards import ShardError, read_manifest, verify

HOOKS = ["L0.resid_pre", "L0.mlp_in", "L1.resid_post", "L1.mlp_out"]
TESTS = Path(__file__).parent


def make_tokens(n_seq: int = 20, ctx: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 50000, (n_seq, ctx), generator=g)
    t[:, 0] = 50256
    return t


def read_all(out: Path) -> dict[str, torch.Tensor]:
    """Every shard concatenated, in manifest order."""
    parts: dict[str, list[torch.Tensor]] = {}
    for s in read_manifest(out).shards:
        with safe_open(str(out / s.file), "pt") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                parts.setdefault(k, []).append(f.get_tensor(k))
    return {k: torch.cat(v) for k, v in parts.items()}


def assert_covers_once(out: Path, tokens: torch.Tensor) -> None:
    data = read_all(out)
    n_seq, ctx = tokens.shape
    assert torch.equal(data["seq"], torch.arange(n_seq).repeat_interleave(ctx))
    assert torch.equal(data["pos"], torch.arange(ctx, dtype=torch.int32).repeat(n_seq))
    assert torch.equal(data["tokens"], tokens.reshape(-1).to(torch.int32))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cached_values_equal_run_with_cache(tiny_model, tmp_path, dtype):
    tokens = make_tokens()
    manifest = cache_activations(
        tiny_model, tokens, HOOKS, tmp_path, dtype=dtype, batch_size=3, shard_tokens=80,
        progress=False,
    )  # fmt: skip
    assert manifest.complete and manifest.n_tokens == tokens.numel()
    assert len(manifest.shards) == 4  # 5 whole sequences (80 tokens) per shard
    assert [s.seq_start for s in manifest.shards] == [0, 5, 10, 15]
    _, ref = tiny_model.run_with_cache(tokens)
    data = read_all(tmp_path)
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    for h in manifest.hooks:
        stored = data[h["short"]]
        assert stored.dtype == getattr(torch, dtype) and stored.shape == (tokens.numel(), 64)
        want = ref[h["tl_name"]].reshape(-1, 64)
        torch.testing.assert_close(stored.float(), want, rtol=tol, atol=tol)
    assert_covers_once(tmp_path, tokens)
    assert verify(tmp_path) == []


def test_manifest_records_what_is_needed(tiny_model, tmp_path):
    meta = {"tokenizer": "gpt2", "corpus_fingerprint": "abc", "split": "eval"}
    cache_activations(
        tiny_model, make_tokens(4), ["L1.resid_post"], tmp_path, meta=meta, progress=False
    )
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["model"] == "tiny-gpt2" and m["tokenizer"] == "gpt2"
    assert m["corpus_fingerprint"] == "abc" and m["config"]["split"] == "eval"
    assert m["hooks"] == [
        {"short": "L1.resid_post", "tl_name": "blocks.1.hook_resid_post", "layer": 1,
         "kind": "resid_post", "d": 64}
    ]  # fmt: skip
    assert m["dtype"] == "float16" and m["context_len"] == 16 and m["n_tokens"] == 64
    (shard,) = m["shards"]
    assert shard["file"] == "shard_00000.safetensors" and len(shard["sha256"]) == 64
    assert (shard["seq_start"], shard["seq_end"], shard["n_tokens"]) == (0, 4, 64)


def test_resume_after_injected_crash(tiny_model, tmp_path, monkeypatch):
    """Crash between a shard's rename and the manifest update (the worst moment), plus a stray
    temp file: the rerun rewrites that shard and loses or duplicates nothing."""
    tokens = make_tokens(20)
    kwargs = dict(dtype="float32", batch_size=4, shard_tokens=64, progress=False)
    ref_dir = tmp_path / "ref"
    cache_activations(tiny_model, tokens, HOOKS, ref_dir, **kwargs)

    out = tmp_path / "out"
    real = shards_mod.write_manifest
    calls = []

    def flaky(out_dir, manifest):
        calls.append(1)
        if len(calls) == 4:  # initial write + 2 shards listed; shard 2 is on disk, unlisted
            raise RuntimeError("simulated crash")
        real(out_dir, manifest)

    monkeypatch.setattr(cache_mod, "write_manifest", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache_activations(tiny_model, tokens, HOOKS, out, **kwargs)
    monkeypatch.setattr(cache_mod, "write_manifest", real)
    assert len(read_manifest(out).shards) == 2 and (out / "shard_00002.safetensors").exists()
    tag = shards_mod.cache_tag(read_manifest(out).config)
    (out / f"shard_00003.safetensors.{tag}.99999.tmp").write_bytes(b"half a shard")
    (out / "shard_00003.safetensors.tmp").write_bytes(b"not ours: no tag")

    manifest = cache_activations(tiny_model, tokens, HOOKS, out, **kwargs)
    assert manifest.complete and len(manifest.shards) == 5
    assert [p.name for p in out.glob("*.tmp")] == ["shard_00003.safetensors.tmp"]
    assert_covers_once(out, tokens)
    got, want = read_all(out), read_all(ref_dir)
    for h in HOOKS:
        torch.testing.assert_close(got[h], want[h], rtol=0, atol=0)


@pytest.mark.long
def test_resume_after_sigkill(tiny_model, tmp_path):
    """A real SIGKILL of a caching subprocess mid-run, then a resume in this process."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        import torch
        torch.set_num_threads(1)
        from conftest import make_tiny_model
        from activation_cache.tokenizers import gpt2_tokenizer
        from activation_cache import cache as cache_mod
        from test_cache import make_tokens, HOOKS
        from contextlib import contextmanager
        real = cache_mod.capturing
        @contextmanager
        def slow(*a):
            with real(*a) as run:
                yield lambda t: time.sleep(0.03) or run(t)
        cache_mod.capturing = slow
        model = make_tiny_model(gpt2_tokenizer())
        cache_mod.cache_activations(model, make_tokens(60), HOOKS, {str(out)!r},
            dtype="float32", batch_size=2, shard_tokens=64, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            m = out / "manifest.json"
            if m.exists() and len(json.loads(m.read_text())["shards"]) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the subprocess ended before it could be killed"
        time.sleep(0.05)  # land somewhere inside the next shard
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = read_manifest(out)
    assert not before.complete and 3 <= len(before.shards) < 15

    tokens = make_tokens(60)
    manifest = cache_activations(
        tiny_model, tokens, HOOKS, out, dtype="float32", batch_size=5, shard_tokens=64,
        progress=False,
    )  # fmt: skip
    assert manifest.complete and len(manifest.shards) == 15
    assert [s.sha256 for s in manifest.shards[: len(before.shards)]] == [
        s.sha256 for s in before.shards
    ]
    assert_covers_once(out, tokens)
    assert verify(out) == []
    _, ref = tiny_model.run_with_cache(tokens)
    got = read_all(out)
    torch.testing.assert_close(
        got["L1.resid_post"], ref["blocks.1.hook_resid_post"].reshape(-1, 64), rtol=1e-5,
        atol=1e-5,
    )  # fmt: skip


def test_refuses_different_arguments_and_rerun_is_noop(tiny_model, tmp_path, monkeypatch, capsys):
    tokens = make_tokens(4)
    cache_activations(tiny_model, tokens, ["L1.resid_post"], tmp_path, progress=False)
    for change in (
        dict(hooks=["L0.resid_post"]),
        dict(dtype="float32"),
        dict(tokens=make_tokens(4, seed=1)),
        dict(meta={"split": "eval"}),
    ):
        args = dict(hooks=["L1.resid_post"], tokens=tokens, dtype="float16") | change
        with pytest.raises(ValueError, match="different arguments"):
            cache_activations(
                tiny_model, args["tokens"], args["hooks"], tmp_path, dtype=args["dtype"],
                meta=change.get("meta"), progress=False,
            )  # fmt: skip

    def boom(*a, **k):
        raise AssertionError("a complete cache must not run the model again")

    monkeypatch.setattr(cache_mod, "capturing", boom)
    capsys.readouterr()
    cache_activations(tiny_model, tokens, "L1.resid_post", tmp_path, batch_size=2, progress=False)
    assert "already complete" in capsys.readouterr().out


def test_refuses_foreign_folder_and_bad_input(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        cache_activations(tiny_model, make_tokens(2), ["L0.resid_post"], tmp_path, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        cache_activations(tiny_model, make_tokens(2), ["L5.resid_post"], tmp_path / "a")
    with pytest.raises(ValueError, match="dtype"):
        cache_activations(tiny_model, make_tokens(2), ["L0.resid_post"], tmp_path / "b", dtype="i8")
    with pytest.raises(ValueError, match="non-empty"):
        cache_activations(tiny_model, torch.zeros(0, 16, dtype=torch.long), "L0.mlp_in", tmp_path)


def _small_cache(model, out: Path) -> None:
    cache_activations(
        model, make_tokens(12), ["L0.mlp_in", "L0.mlp_out"], out, shard_tokens=64, progress=False
    )


def _run_inspect(out: Path, capsys, no_verify: bool = False) -> tuple[int, str]:
    from interp_bench.commands import inspect

    capsys.readouterr()
    rc = inspect.run(argparse.Namespace(dir=str(out), no_verify=no_verify, deep=False))
    return rc, capsys.readouterr().out


def test_corrupt_shard_is_named(tiny_model, tmp_path, capsys):
    _small_cache(tiny_model, tmp_path)
    rc, text = _run_inspect(tmp_path, capsys)
    assert rc == 0 and "ok: 3 shards pass" in text and "L0.mlp_in" in text
    path = tmp_path / "shard_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the activations, size unchanged
    path.write_bytes(bytes(data))
    assert verify(tmp_path) == ["shard_00001.safetensors: sha256 mismatch (corrupt)"]
    rc, text = _run_inspect(tmp_path, capsys)
    assert rc == 1 and "shard_00001.safetensors" in text and "CORRUPT" in text
    assert "shard_00000" not in text.split("CORRUPT")[1]


def test_truncated_shard_is_named_everywhere(tiny_model, tmp_path, capsys):
    _small_cache(tiny_model, tmp_path)
    path = tmp_path / "shard_00002.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    assert "shard_00002.safetensors" in verify(tmp_path)[0]
    rc, text = _run_inspect(tmp_path, capsys, no_verify=True)
    assert rc == 1 and "shard_00002.safetensors" in text
    with pytest.raises(ShardError, match="shard_00002.safetensors"):
        ActivationReader(tmp_path, ["L0.mlp_in"], 8)
    with pytest.raises(ShardError, match="shard_00002.safetensors"):
        _small_cache(tiny_model, tmp_path)  # resuming refuses too: the manifest lists it
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(ShardError, match="shard_00002.safetensors"):
        shards_mod.read_header(path)


def test_inspect_on_a_non_cache_folder(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not an activation cache"):
        _run_inspect(tmp_path, capsys)


def test_cache_command(tiny_model, tmp_path, monkeypatch, capsys):
    from activation_cache import corpus, models
    from interp_bench.commands import cache as cmd

    splits = corpus.TokenSplits(make_tokens(10), make_tokens(3, seed=1), "fp123", 208)
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)
    monkeypatch.setattr(corpus, "load_corpus", lambda cfg, tok: splits)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    out = tmp_path / "acts"
    args = parser.parse_args(
        ["--hooks", "L1.resid_post", "--tokens", "0.05k", "--context-len", "16", "--out", str(out),
         "--device", "cpu", "--shard-tokens", "32"]
    )  # fmt: skip
    assert args.tokens == 50
    assert cmd.run(args) == 0
    m = read_manifest(out)
    assert m.n_tokens == 64 and m.corpus_fingerprint == "fp123" and m.config["split"] == "train"
    assert torch.equal(read_all(out)["tokens"], make_tokens(4).reshape(-1).to(torch.int32))
    args = parser.parse_args(["--hooks", "L1.mlp_out", "--split", "eval", "--out", str(out)])
    with pytest.raises(ValueError, match="different arguments"):
        cmd.run(args)
    assert cmd.parse_count("1M") == 10**6 and cmd.parse_count("50k") == 50_000


@pytest.mark.slow
def test_embedded_model_caches_offline(tmp_path):
    from activation_cache.models import load_model

    model = load_model("smollm2-135m", device="cpu")
    tokens = torch.randint(0, 49152, (2, 128), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = model.tokenizer.bos_token_id or 0
    hooks = ["L3.resid_post", "L3.mlp_in", "L3.mlp_out"]
    manifest = cache_activations(
        model, tokens, hooks, tmp_path, dtype="float32", shard_tokens=128, progress=False
    )
    assert manifest.model == "smollm2-135m" and len(manifest.shards) == 2
    assert manifest.hook("L3.mlp_in")["tl_name"] == "blocks.3.ln2.hook_out"
    assert manifest.hook("L3.mlp_in")["d"] == 576
    data = read_all(tmp_path)
    _, ref = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.3.hook_resid_post")
    torch.testing.assert_close(
        data["L3.resid_post"], ref["blocks.3.hook_resid_post"].reshape(-1, 576),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    with torch.inference_mode():
        mlp = model.blocks[3].mlp(data["L3.mlp_in"][:64].unsqueeze(0))
    torch.testing.assert_close(mlp[0], data["L3.mlp_out"][:64], rtol=1e-4, atol=1e-4)
