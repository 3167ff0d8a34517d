"""Fault injection: kills at exact moments, damaged and swapped shards, foreign folders, crafted
names, bad arguments and a full disk. Each case asserts the exact outcome: data identical after
a resume, one error line (no traceback), files that are not ours untouched.

Kills are real SIGKILLs of a forked child at an exact call (no `finally` runs, as in a crash);
the parent then resumes and compares with an uninterrupted run. With INTERP_BENCH_FAULT_LOG=FILE
every case appends one JSON record; benchmarks/reliability.py turns them into the RESULTS table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cache import make_tokens, read_all
from test_trainer import HOOK, assert_same, planted, tcfg, topk_cfg, weights, write_tiny_cache

from activation_cache import cache as cache_mod
from activation_cache import shards as shards_mod
from activation_cache.cache import cache_activations
from activation_cache.reader import ActivationReader
from activation_cache.shards import read_manifest
from interp_bench.cli import main
from interp_bench.training import checkpoint as ckpt
from interp_bench.training.trainer import Trainer, TrainingDiverged

HOOKS = ["L0.resid_post", "L1.mlp_out"]
N_SEQ, CTX = 12, 16
KW = dict(dtype="float32", batch_size=4, shard_tokens=64, progress=False)  # 3 shards of 4 seqs


def record(kind: str, name: str, **fields) -> None:
    """Append the measured outcome of one case to $INTERP_BENCH_FAULT_LOG (when set)."""
    path = os.environ.get("INTERP_BENCH_FAULT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "name": name, **fields}) + "\n")


def snapshot(folder: Path) -> dict[str, str]:
    """Name -> sha256 of every file under `folder`: 'untouched' means this stays equal."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli_error(capsys, case: str, argv: list[str], rc: int = 2) -> str:
    """Run the CLI; assert exit code `rc` and exactly one stderr line (besides progress bars),
    no traceback; record the outcome as bad input `case`."""
    capsys.readouterr()
    got = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("caching ")]
    ok = got == rc and len(lines) == 1 and "Traceback" not in err
    record("bad_input", case, one_line=ok, rc=got)
    assert got == rc, err
    assert len(lines) == 1 and lines[0].startswith(f"interp-bench {argv[0]}: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tokens():
    return make_tokens(N_SEQ, CTX)


@pytest.fixture(scope="module")
def reference(tiny_model, tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "acts"
    cache_activations(tiny_model, tokens, HOOKS, out, **KW)
    return out


@pytest.fixture
def cache_copy(reference, tmp_path):
    out = tmp_path / "acts"
    shutil.copytree(reference, out)
    return out


@pytest.fixture
def fake_model(tiny_model, monkeypatch):
    """`interp-bench cache` with the tiny model (no downloads)."""
    from activation_cache import models

    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)


@pytest.fixture
def fake_corpus(monkeypatch):
    """`interp-bench cache` reads `tokens` as its corpus."""
    from activation_cache import corpus

    splits = corpus.TokenSplits(make_tokens(N_SEQ, CTX), make_tokens(2, CTX, seed=1), "fp", 0)
    monkeypatch.setattr(corpus, "load_corpus", lambda cfg, tok: splits)


CACHE_ARGS = [
    "--hooks",
    ",".join(HOOKS),
    "--context-len",
    str(CTX),
    "--dtype",
    "float32",
    "--batch-size",
    "4",
    "--shard-tokens",
    "64",
    "--device",
    "cpu",
]


# ---- kills at exact moments ------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def run_killed(install, fn) -> None:
    """Run `fn` in a forked child with `install()`'s kill switch; assert it died by SIGKILL."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            torch.set_num_threads(1)
            install()
            fn()
        finally:
            os._exit(3)  # the kill point was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def kill_on_replace(prefix: str, n: int, after: bool):
    """Kill at the n-th os.replace of a file whose name starts with `prefix`."""

    def install():
        real, calls = os.replace, []

        def replace(src, dst, *a, **k):
            hit = Path(dst).name.startswith(prefix)
            calls.append(1) if hit else None
            if hit and len(calls) == n and not after:
                _die()
            real(src, dst, *a, **k)
            if hit and len(calls) == n and after:
                _die()

        os.replace = replace

    return install


def kill_mid_shard(n: int):
    """Kill before the n-th tensor is written into a shard's temp file (a half-written temp)."""

    def install():
        real, calls = shards_mod._as_bytes, []

        def as_bytes(t):
            calls.append(1)
            if len(calls) == n:
                _die()
            return real(t)

        shards_mod._as_bytes = as_bytes

    return install


CACHE_KILLS = {
    "first manifest, before rename": kill_on_replace("manifest", 1, after=False),
    "mid-shard (temp half written)": kill_mid_shard(8),
    "shard written, before rename": kill_on_replace("shard_", 2, after=False),
    "shard renamed, manifest not yet": kill_on_replace("shard_", 2, after=True),
    "manifest temp written, before rename": kill_on_replace("manifest", 3, after=False),
    "manifest renamed (between shards)": kill_on_replace("manifest", 3, after=True),
    "final 'complete' manifest": kill_on_replace("manifest", 5, after=False),
}


def coverage(out: Path, tokens: torch.Tensor) -> tuple[int, int]:
    """(tokens lost, tokens duplicated) of a cache against the tokens it should hold."""
    data = read_all(out)
    got = (data["seq"] * CTX + data["pos"].long()).tolist()
    want = set(range(tokens.numel()))
    return len(want - set(got)), len(got) - len(set(got))


@pytest.mark.parametrize("point", list(CACHE_KILLS))
def test_cache_kill_and_resume(point, tiny_model, tokens, reference, tmp_path):
    out = tmp_path / "acts"
    run_killed(CACHE_KILLS[point], lambda: cache_activations(tiny_model, tokens, HOOKS, out, **KW))
    manifest = cache_activations(tiny_model, tokens, HOOKS, out, **KW)
    lost, dup = coverage(out, tokens)
    got, want = read_all(out), read_all(reference)
    same = all(torch.equal(got[k], want[k]) for k in want)
    left = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    record("kill", f"cache: {point}", lost=lost, duplicated=dup, identical=same)
    assert manifest.complete and (lost, dup) == (0, 0) and same
    assert left == []


def _train(out: Path, data, tokens: int = 128 * 12):
    return Trainer([topk_cfg()], tcfg(tokens=tokens, checkpoint_every=4), out_dir=out).fit(data)


TRAIN_KILLS = {
    "checkpoint state half written": "save",
    "checkpoint written, before rename": "ckpt",
    "dictionary weights saved, cfg.json not yet": "final",
    "twice in one run (two checkpoints)": "twice",
}


def _train_kill(kind: str, n: int = 1):
    def install():
        if kind == "save":
            real, calls = torch.save, []

            def save(obj, f, *a, **k):
                calls.append(1)
                if len(calls) == n:
                    f.write(b"half a checkpoint")
                    f.flush()
                    _die()
                real(obj, f, *a, **k)

            ckpt.torch.save = save
        elif kind in ("ckpt", "twice"):
            kill_on_replace("step_", n, after=False)()
        else:
            kill_on_replace("cfg.json", 1, after=False)()

    return install


@pytest.mark.parametrize("point", list(TRAIN_KILLS))
def test_train_kill_and_resume(point, tmp_path):
    data = planted(12)
    straight = _train(tmp_path / "a", data)
    kind = TRAIN_KILLS[point]
    run_killed(_train_kill(kind, 2), lambda: _train(tmp_path / "b", data))
    if kind == "twice":
        run_killed(_train_kill(kind, 1), lambda: _train(tmp_path / "b", data))
    t = Trainer([topk_cfg()], tcfg(tokens=128 * 12, checkpoint_every=4), out_dir=tmp_path / "b")
    resumed = t.fit(data)
    lost = max(0, 128 * 12 - t.tokens_seen)
    dup = max(0, t.tokens_seen - 128 * 12)
    same = True
    try:
        assert_same(weights(straight), weights(resumed))
    except AssertionError:
        same = False
    record("kill", f"train: {point}", lost=lost, duplicated=dup, identical=same)
    assert (lost, dup) == (0, 0) and same


# ---- damaged, swapped and crafted shards ------------------------------------------------------


def _flip(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_manifest(out: Path, edit) -> None:
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))


def _read_everything(out: Path) -> None:
    reader = ActivationReader(out, HOOKS, 32, shuffle=False)
    for _ in reader:
        pass


def _swap(out: Path) -> None:
    a, b = out / "shard_00000.safetensors", out / "shard_00001.safetensors"
    tmp = out / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _wrong_sha(out: Path) -> None:
    _rewrite_manifest(out, lambda m: m["shards"][1].update(sha256="0" * 64))


def _other_width(out: Path) -> None:
    """shard 1 replaced by a same-size shard whose hook has another width (same bytes)."""
    path = out / "shard_00001.safetensors"
    start, header = shards_mod.read_header(path)
    t = {
        k: torch.zeros(e["shape"], dtype=shards_mod._ST_DTYPES[e["dtype"]])
        for k, e in header.items()
    }
    t["L0.resid_post"] = torch.zeros(t["L0.resid_post"].shape[0] * 2, 32)
    sha, size = shards_mod.write_shard(path, t)
    _rewrite_manifest(out, lambda m: m["shards"][1].update(sha256=sha, bytes=size))


CORRUPTIONS = {
    "one bit flipped in activations": lambda out: _flip(out / "shard_00001.safetensors"),
    "two shards swapped": _swap,
    "wrong sha256 in the manifest": _wrong_sha,
    "shard truncated": lambda out: (out / "shard_00002.safetensors").write_bytes(
        (out / "shard_00002.safetensors").read_bytes()[:-8]
    ),
    "shard replaced (other width, sha updated)": _other_width,
    "manifest not JSON": lambda out: (out / "manifest.json").write_text("{not json"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corruption_is_named_before_use(kind, cache_copy, capsys):
    CORRUPTIONS[kind](cache_copy)
    shards_mod._VERIFIED.clear()  # a fresh process has checked nothing yet
    with pytest.raises(ValueError) as err:
        _read_everything(cache_copy)
    msg = str(err.value)
    named = ("shard_0000" in msg or "manifest.json" in msg) and "\n" not in msg
    rc = main(["inspect", str(cache_copy)])
    record("corruption", kind, detected=named and rc != 0)
    assert named and rc != 0, msg


def test_swapped_shards_inspect_names_the_sequence_range(cache_copy, capsys):
    _swap(cache_copy)
    capsys.readouterr()
    assert main(["inspect", str(cache_copy), "--no-verify"]) == 1
    out = capsys.readouterr().out
    assert "shard_00000.safetensors: holds sequences 4..7, manifest says 0..3" in out


def _set_value(out: Path, shard: int, row: int, col: int, value: float) -> None:
    """Write `value` into one float32 activation and re-hash: data bad at the source."""
    path = out / shards_mod.shard_name(shard)
    start, header = shards_mod.read_header(path)
    a, _ = header[HOOK]["data_offsets"]
    d = header[HOOK]["shape"][1]
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, start + a + 4 * (row * d + col), value)
    path.write_bytes(bytes(raw))
    sha = hashlib.sha256(raw).hexdigest()
    _rewrite_manifest(out, lambda m: m["shards"][shard].update(sha256=sha))


@pytest.mark.parametrize("value", [-6e36, float("nan")], ids=["exponent-flip", "nan"])
def test_bad_activation_is_named_by_shard_row(value, tmp_path, capsys):
    cache = tmp_path / "acts"
    write_tiny_cache(cache, planted(8))
    _set_value(cache, 1, 37, 5, value)
    capsys.readouterr()
    assert main(["inspect", str(cache), "--deep"]) == (1 if value != value else 0)
    if value != value:
        assert "shard_00001.safetensors: L0.resid_post has 1 rows with NaN/inf" in (
            capsys.readouterr().out
        )
    reader = ActivationReader(cache, [HOOK], 128, seed=3, drop_last=True)
    t = Trainer([topk_cfg()], tcfg(tokens=128 * 14, checkpoint_every=3), out_dir=tmp_path / "o")
    with pytest.raises(TrainingDiverged) as err:
        t.fit(reader)
    msg = str(err.value)
    named = "shard_00001.safetensors row 37" in msg and "not the learning rate" in msg
    saved = list((tmp_path / "o").rglob("sae_weights.safetensors"))
    record("corruption", f"activation {value:g} in a shard (sha consistent)", detected=named)
    assert named and "\n" not in msg, msg
    assert saved == []


def test_finite_loss_explosion_is_not_saved(tmp_path):
    """A loss that grows without overflowing stops the run (fvu > 1e3, or loss > 1e6 x the
    first): the guard sees each step's metrics before the step's update is applied."""
    from interp_bench.training import guards

    data = planted(6)
    t = Trainer([topk_cfg()], tcfg(tokens=128 * 4, checkpoint_every=2), out_dir=tmp_path)
    t.fit(data[:4])  # four good steps, checkpoint at 4, then saved
    saved = snapshot(tmp_path)
    batch = {HOOK: data[4][HOOK]}
    first = guards._STATE[t]["first"][0]
    for fvu, loss in ((5.5e9, 1.0), (0.5, first * 2e6)):
        try:
            guards.check_step(t, batch, [[loss, 0.0, 0.0, 0.0, 1.0, fvu, 4.0]])
            msg = ""
        except TrainingDiverged as err:
            msg = str(err)
        detected = re.search(r"exploded at step 5: .*checkpoint \(step 4\)", msg) is not None
        record(
            "corruption", f"finite loss explosion (fvu {fvu:g}, loss {loss:.3g})", detected=detected
        )
        assert detected, msg
    guards.check_step(t, batch, [[first * 10, 0.0, 0.0, 0.0, 1.0, 0.9, 4.0]])  # noisy is fine
    assert snapshot(tmp_path) == saved


# ---- foreign folders and files: never touched ------------------------------------------------


def test_cache_refuses_folder_with_lookalike_files(tiny_model, tokens, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "shard_00000.safetensors").write_bytes(b"my own file")
    (out / "notes.tmp").write_text("mine too")
    before = snapshot(out)
    with pytest.raises(ValueError, match="not empty and holds no cache manifest"):
        cache_activations(tiny_model, tokens, HOOKS, out, **KW)
    record(
        "foreign", "cache --out: folder with shard-like files", untouched=snapshot(out) == before
    )
    assert snapshot(out) == before


def test_cache_refuses_unlisted_foreign_shard(tiny_model, tokens, tmp_path):
    out = tmp_path / "acts"
    run_killed(
        kill_on_replace("shard_", 2, after=False),
        lambda: cache_activations(tiny_model, tokens, HOOKS, out, **KW),
    )
    foreign = out / "shard_00001.safetensors"
    foreign.write_bytes(b"a user's file that happens to carry our name")
    with pytest.raises(ValueError, match="not written by this cache"):
        cache_activations(tiny_model, tokens, HOOKS, out, **KW)
    ok = foreign.read_bytes().startswith(b"a user's file")
    record("foreign", "cache --out: unlisted shard name not ours", untouched=ok)
    assert ok


def test_second_cache_run_fails_at_once_naming_the_pid(tiny_model, tokens, tmp_path):
    out = tmp_path / "acts"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / cache_mod.LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
            "print('locked', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"another process \\(pid {holder.pid}\\)"):
            cache_activations(tiny_model, tokens, HOOKS, out, **KW)
        assert not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    cache_activations(tiny_model, tokens, HOOKS, out, **KW)  # the lock died with its holder
    assert read_manifest(out).complete


@pytest.fixture(scope="module")
def feature_index(tmp_path_factory):
    from analysis_helpers import batches, planted_stream, stand_in_dictionary

    from interp_bench.analysis.top_examples import AnalysisConfig, analyze
    from interp_bench.dictionaries import save_dictionary

    root = tmp_path_factory.mktemp("index")
    d = stand_in_dictionary()
    save_dictionary(d, root / "sae")
    analyze(d, batches(planted_stream()), root / "index", AnalysisConfig(top_k=4, window=3))
    return root


def test_analyze_out_refuses_a_user_folder(feature_index, reference, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "index.json").write_text('{"my": "index"}')
    (user / "vocab.json").write_text('{"my": "vocab"}')
    before = snapshot(user)
    line = cli_error(
        capsys,
        "analyze --out: a user's folder",
        [
            "analyze",
            "--dictionary",
            str(feature_index / "sae"),
            "--activations",
            str(reference),
            "--out",
            str(user),
        ],
    )
    record(
        "foreign", "analyze --out: user's index.json/vocab.json", untouched=snapshot(user) == before
    )
    assert "not a feature index we wrote" in line and snapshot(user) == before


def test_report_out_folder_and_foreign_file(feature_index, tmp_path, capsys):
    index = feature_index / "index"
    folder = tmp_path / "DIR"
    folder.mkdir()
    line = cli_error(capsys, "report --out: a folder", ["report", str(index), "--out", str(folder)])
    assert "is a folder" in line and sorted(os.listdir(tmp_path)) == ["DIR"]
    mine = tmp_path / "page.html"
    mine.write_text("<html>my page</html>")
    cli_error(capsys, "report --out: a user's file", ["report", str(index), "--out", str(mine)])
    ok = mine.read_text() == "<html>my page</html>" and sorted(os.listdir(tmp_path)) == [
        "DIR",
        "page.html",
    ]
    record("foreign", "report --out: folder / user's file", untouched=ok)
    assert ok
    line = cli_error(capsys, "report --top 0", ["report", str(index), "--top", "0"])
    assert "--top" in line  # a traceback before; now refused in one line


def test_train_out_file_is_refused(cache_copy, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    line = cli_error(
        capsys,
        "train --out: a file",
        [
            "train",
            "--activations",
            str(cache_copy),
            "--hook",
            HOOKS[0],
            "--out",
            str(f),
            "--tokens",
            "256",
        ],
    )
    assert "is a file" in line and f.read_text() == "mine"


# ---- crafted names -----------------------------------------------------------------------------


CRAFTED = {
    "shard file '../evil'": lambda m: m["shards"][0].update(file="../shard_00000.safetensors"),
    "shard file absolute": lambda m: m["shards"][0].update(file="/etc/passwd"),
    "hook '../../../escape'": lambda m: m["hooks"][0].update(short="../../../escape"),
    "hook without d": lambda m: m["hooks"][0].pop("d"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_crafted_manifest_names(kind, cache_copy, tmp_path, capsys):
    _rewrite_manifest(cache_copy, CRAFTED[kind])
    out = tmp_path / "runs"
    hook = "../../../escape" if "escape" in kind else HOOKS[0]
    line = cli_error(
        capsys,
        f"train on a manifest with {kind}",
        [
            "train",
            "--activations",
            str(cache_copy),
            "--hook",
            hook,
            "--out",
            str(out),
            "--tokens",
            "256",
        ],
    )
    assert "manifest" in line
    assert not out.exists() and not (tmp_path.parent / "escape").exists()


def test_crafted_cfg_json(feature_index, reference, tmp_path, capsys):
    sae = tmp_path / "sae"
    shutil.copytree(feature_index / "sae", sae)
    cfg = json.loads((sae / "cfg.json").read_text())
    cfg["metadata"]["interp_bench"]["config"]["hook_in"] = "../../x"
    (sae / "cfg.json").write_text(json.dumps(cfg))
    line = cli_error(
        capsys,
        "cfg.json: crafted hook name",
        [
            "analyze",
            "--dictionary",
            str(sae),
            "--activations",
            str(reference),
            "--out",
            str(tmp_path / "ix"),
        ],
    )
    assert "hook name" in line
    cfg["metadata"]["interp_bench"]["config"]["hook_in"] = "L0.resid_post"
    cfg["d_sae"] = 48
    cfg["metadata"]["interp_bench"]["config"]["d_sae"] = 48
    (sae / "cfg.json").write_text(json.dumps(cfg))
    line = cli_error(
        capsys,
        "cfg.json: width not matching the weights",
        [
            "analyze",
            "--dictionary",
            str(sae),
            "--activations",
            str(reference),
            "--out",
            str(tmp_path / "ix"),
        ],
    )
    assert "do not belong together" in line


# ---- bad arguments and inputs: one line each ---------------------------------------------------


def test_window_bounded_by_context_and_memory(feature_index, reference, monkeypatch, capsys):
    from interp_bench.analysis import memory
    from interp_bench.analysis.memory import check_window

    # Memory to spare (1 TiB): the context is what binds here, whatever else the machine runs.
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 40)
    line = cli_error(
        capsys,
        "analyze --window 100000",
        [
            "analyze",
            "--dictionary",
            str(feature_index / "sae"),
            "--activations",
            str(reference),
            "--window",
            "100000",
            "--out",
            str(reference.parent / "ix"),
        ],
    )
    assert f"use --window {CTX - 1} or less" in line
    with pytest.raises(ValueError, match=r"needs about 2\.1 GiB.*use --window 48 or less"):
        check_window(100, 20, 16384, 1024, budget=1 << 30)


def test_window_one_bound_before_and_after_the_manifest(reference, tmp_path, monkeypatch, capsys):
    """`analyze` bounds --window twice, with one function: in the argument checks (no manifest
    read yet) and after reading it (context known). With memory for window 5, both refuse 6 and
    accept 5; only the second knows the context, so only it refuses 16 on its own."""
    from analysis_helpers import stand_in_dictionary

    from interp_bench.analysis import memory
    from interp_bench.dictionaries import save_dictionary

    save_dictionary(stand_in_dictionary(d_in=64, d_sae=24), tmp_path / "sae")
    budget = memory.analysis_bytes(24, 20, 5)  # exactly what window 5 needs
    for w in range(12):
        verdicts = set()
        for context_len in (None, CTX):
            try:
                memory.check_window(w, 20, 24, context_len, budget=budget)
                verdicts.add("accept")
            except ValueError as err:
                verdicts.add(f"refuse, {str(err).split('; ')[-1]}")
        refused = {"refuse, use --window 5 or less, or a smaller --top-k"}
        assert verdicts == ({"accept"} if w <= 5 else refused), (w, verdicts)
    memory.check_window(CTX, 20, 24, None, budget=1 << 40)
    with pytest.raises(ValueError, match=f"use --window {CTX - 1} or less"):
        memory.check_window(CTX, 20, 24, CTX, budget=1 << 40)

    monkeypatch.setattr(memory, "available_memory", lambda: 2 * budget)
    seen, real = [], memory.check_window
    monkeypatch.setattr(memory, "check_window", lambda *a: seen.append(a[3:4]) or real(*a))
    argv = ["analyze", "--dictionary", str(tmp_path / "sae"), "--activations", str(reference),
            "--model", "none", "--top-k", "20", "--out", str(tmp_path / "ix")]  # fmt: skip
    line = cli_error(capsys, "analyze --window past memory", [*argv, "--window", "6"])
    assert "use --window 5 or less" in line and seen == [()]  # refused before the manifest
    seen.clear()
    assert main([*argv, "--window", "5"]) == 0, capsys.readouterr().err
    assert seen == [(), (CTX,)]  # accepted by the argument checks, then with the context
    assert (tmp_path / "ix" / "index.json").exists()


def test_damaged_checkpoint_names_it(tmp_path, capsys):
    cache = tmp_path / "acts"
    write_tiny_cache(cache, planted(8))
    args = [
        "train",
        "--activations",
        str(cache),
        "--hook",
        HOOK,
        "--out",
        str(tmp_path / "o"),
        "--tokens",
        "1280",
        "--batch-size",
        "128",
        "--checkpoint-every",
        "4",
        "--k",
        "4",
        "--expansion",
        "2",
        "--device",
        "cpu",
    ]
    capsys.readouterr()
    assert main(args) == 0
    (state,) = (tmp_path / "o").rglob("state.pt")
    state.write_bytes(state.read_bytes()[:100])
    line = cli_error(capsys, "train: damaged checkpoint", args)
    assert str(state) in line and "--no-resume" in line
    assert main([*args, "--no-resume"]) == 0


def test_context_past_n_ctx_and_bad_corpus(fake_model, tmp_path, capsys):
    out = str(tmp_path / "acts")
    args = [a if a != str(CTX) else "300" for a in CACHE_ARGS]
    line = cli_error(
        capsys, "cache --context-len past the model's n_ctx", ["cache", *args, "--out", out]
    )
    assert "--context-len is 300 tokens but the model holds 256" in line
    assert not Path(out).exists()
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 10)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"ok\x00\x01\x02" * 10)
    for path, what in ((latin, "is not UTF-8 text .*iconv"), (binary, "NUL bytes")):
        line = cli_error(
            capsys,
            f"corpus: {path.name}",
            ["cache", *CACHE_ARGS, "--corpus", str(path), "--out", out],
        )
        assert path.name in line and re.search(what, line), line
    assert not Path(out).exists()


def test_interrupt_prints_one_line_and_130(fake_model, fake_corpus, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "cache_activations", interrupted)
    line = cli_error(
        capsys,
        "Ctrl-C (KeyboardInterrupt)",
        ["cache", *CACHE_ARGS, "--out", str(tmp_path / "a")],
        rc=130,
    )
    assert line.endswith("interrupted; rerun the same command to resume")


# ---- a full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_keeps_manifest_and_resumes_identically(
    fake_model, fake_corpus, tokens, reference, tmp_path, capsys
):
    with small_tmpfs(tmp_path / "disk", "60k") as disk:
        out = disk / "acts"
        line = cli_error(
            capsys, "disk full (OSError ENOSPC)", ["cache", *CACHE_ARGS, "--out", str(out)], rc=1
        )
        assert "no space left" in line and "rerun the same command" in line
        before = read_manifest(out)
        assert 0 < len(before.shards) < 3 and shards_mod.verify(out) == []
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        capsys.readouterr()
        assert main(["cache", *CACHE_ARGS, "--out", str(out)]) == 0
        lost, dup = coverage(out, tokens)
        got, want = read_all(out), read_all(reference)
        same = all(torch.equal(got[k], want[k]) for k in want)
        record(
            "kill", "cache: disk full, then space freed", lost=lost, duplicated=dup, identical=same
        )
        assert (lost, dup) == (0, 0) and same


def test_report_escapes_script_context(feature_index, tmp_path):
    """Token strings `<!--` then `<script>` once blanked the page: the data block must hold no
    `<`, `>` or `&` at all and still parse back to the same strings."""
    from interp_bench.analysis.report import script_json, write_report

    text = "<!--<script>x</script>&\u2028\u2029"
    encoded = script_json({"t": text})
    assert json.loads(encoded) == {"t": text}
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in encoded
    index = tmp_path / "index"
    shutil.copytree(feature_index / "index", index)
    vocab = json.loads((index / "vocab.json").read_text())
    first, second = sorted(vocab, key=int)[:2]
    vocab[first], vocab[second] = "<!--", "<script>"
    (index / "vocab.json").write_text(json.dumps(vocab))
    page = write_report(index, tmp_path / "r.html").read_text()
    block = page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    shown = json.loads(block)["vocab"]
    assert not {"<", ">", "&"} & set(block)
    for chunk in (tmp_path / "r_chunks").iterdir():  # each latent's examples, loaded on demand
        body = chunk.read_text().split("\n", 1)[1]  # after the header comment
        assert not {"<", ">", "&"} & set(body)
        literal = body[body.index("JSON.parse(") + 11 : body.rindex("));")]
        shown |= json.loads(json.loads(literal))["v"]
    assert shown[first] == "<!--" and shown[second] == "<script>"


def test_incomplete_cache_inspect_says_how_to_finish(tiny_model, tokens, tmp_path, capsys):
    from interp_bench.cli import build_parser

    out = tmp_path / "acts"
    run_killed(
        kill_on_replace("manifest", 3, after=True),
        lambda: cache_activations(tiny_model, tokens, HOOKS, out, meta={"split": "train"}, **KW),
    )
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "incomplete: finish it with `interp-bench cache " in text
    command = text.split("finish it with `")[1].split("`")[0]
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.hooks, args.context_len, args.dtype, args.out) == (
        ",".join(HOOKS),
        CTX,
        "float32",
        str(out),
    )
    assert args.tokens == tokens.numel() and args.shard_tokens == 64 and args.split == "train"
