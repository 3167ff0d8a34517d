"""Real `torchrun` launches on CPU (gloo): distributed caching equals one process, survives a
killed rank (clear error, no partial manifest, exact resume), and DDP training equals one
process on the same global batches. The ranks run tests/torchrun_entry.py (the CLI + tiny model).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from activation_cache import models
from activation_cache.shards import cache_tag, read_manifest, shard_name, temp_name, verify
from interp_bench import cli

TESTS = Path(__file__).parent
ENTRY = TESTS / "torchrun_entry.py"
CTX, N_SEQ, SHARD = 16, 40, 32  # 2 sequences a shard: 20 shards
HOOKS = "L0.mlp_in,L1.resid_post"


def write_corpus(path: Path) -> Path:
    words = "the king and queen spoke to their people about bread and war".split()  # noqa: SIM905
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(words), (6000,), generator=g).tolist()
    path.write_text(" ".join(words[i] for i in idx) + "\n")
    return path


def env(**extra: str) -> dict[str, str]:
    root = str(TESTS.parent)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: list[str],
    *,
    nproc: int = 2,
    nodes: tuple[int, int] | None = None,
    port: int | None = None,
    **extra: str,
) -> subprocess.Popen:
    """`torchrun --standalone` with `nproc` ranks, or one node of a static multi-node launch."""
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if nodes is None:
        run += ["--standalone"]
    else:
        run += [f"--nnodes={nodes[1]}", f"--node_rank={nodes[0]}", "--master_addr=127.0.0.1",
                f"--master_port={port}"]  # fmt: skip
    return subprocess.Popen(
        [*run, str(ENTRY), *args], env=env(**extra), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def cache_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["cache", "--model", "tiny", "--hooks", HOOKS, "--corpus", str(corpus),
            "--context-len", str(CTX), "--tokens", str(N_SEQ * CTX), "--dtype", "float32",
            "--batch-size", "2", "--shard-tokens", str(SHARD), "--out", str(out),
            "--device", "cpu", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_cache(tmp_path_factory, gpt2_tokenizer) -> tuple[Path, Path]:
    """(corpus, cache) written by one process through the same CLI: the reference."""
    from conftest import make_tiny_model

    base = tmp_path_factory.mktemp("torchrun")
    corpus = write_corpus(base / "corpus.txt")
    out = base / "single"
    real = models.load_model
    models.load_model = lambda name, device=None, dtype=None: make_tiny_model(gpt2_tokenizer)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank runs
    try:
        assert cli.main(cache_args(corpus, out)) == 0
    finally:
        models.load_model = real
        torch.set_num_threads(n)
    return corpus, out


def assert_same_cache(got: Path, want: Path) -> None:
    """File for file the same cache: same config, shards, sha256 (so the same values)."""
    a, b = read_manifest(got), read_manifest(want)
    assert a.complete and b.complete
    assert a.config == b.config and a.hooks == b.hooks
    assert [vars(s) for s in a.shards] == [vars(s) for s in b.shards]
    assert verify(got) == []
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())


@pytest.mark.long  # a real torchrun launch: every rank imports torch
def test_killed_rank_stops_the_other_then_resume_equals_one_process(one_process_cache, tmp_path):
    corpus, single = one_process_cache
    out, pids = tmp_path / "acts", tmp_path / "pids"
    pids.mkdir()
    port = free_port()
    slow = dict(TORCHRUN_TEST_SLOW="0.4", TORCHRUN_TEST_PIDS=str(pids))
    # Two "machines" (static rendezvous, one rank each): killing rank 1 leaves rank 0's torchrun
    # unaware, so only our heartbeat can stop rank 0.
    nodes = [
        launch(
            cache_args(corpus, out, "--dist-timeout", "3"), nproc=1, nodes=(i, 2), port=port, **slow
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            progress = out / "rank_00001.json"
            if progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 2:
                break
            assert all(p.poll() is None for p in nodes), nodes[0].communicate()[0][-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("rank 1 wrote no shard in 90 s")
        os.kill(int((pids / "rank1").read_text()), signal.SIGKILL)
        t0 = time.time()
        rc0, out0 = finish(nodes[0], timeout=60)
        waited = time.time() - t0
        finish(nodes[1], timeout=60)
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert rc0 != 0
    assert "rank 0: rank 1 stopped making progress for 3 s" in out0, out0[-3000:]
    assert waited < 30, f"rank 0 took {waited:.0f} s to stop"
    assert not (out / "manifest.json").exists()  # no partial manifest
    # Each rank wrote only its own share: shard i on rank i % 2.
    shares = [
        {
            int(sh["file"][6:11])
            for sh in json.loads((out / f"rank_0000{r}.json").read_text())["shards"]
        }
        for r in range(2)
    ]
    assert all(i % 2 == r for r in range(2) for i in shares[r]), shares
    assert len(shares[1]) >= 2 and 0 < len(shares[0] | shares[1]) < N_SEQ * CTX // SHARD

    rc, log = finish(launch(cache_args(corpus, out)))  # resume with torchrun --standalone
    assert rc == 0, log[-3000:]
    assert_same_cache(out, single)


class Zipped:
    """The global batches of a 2-rank run: rank 0's rows then rank 1's, step by step, ending
    when either rank's reader runs out (as the ranks do)."""

    def __init__(self, readers):
        self.readers = readers

    def batches(self, epoch: int = 0, start: int = 0):
        for parts in zip(*(r.batches(epoch, start) for r in self.readers), strict=False):
            yield {h: torch.cat([p[h] for p in parts]) for h in parts[0]}


PER_RANK = 32


@pytest.mark.long  # a real torchrun launch: every rank imports torch
@pytest.mark.parametrize("spread", ["data", "dicts"])
def test_training_equals_one_process_on_the_same_global_batches(
    one_process_cache, tmp_path, spread
):
    """`data`: both dictionaries on both ranks, gradients all-reduced. `dicts`: one dictionary
    per rank, trained on gathered batches. Either way each saved dictionary equals one process
    trained on the same global batches."""
    from activation_cache.reader import ActivationReader, hook_stats
    from interp_bench.config import DictionaryConfig, TrainConfig
    from interp_bench.dictionaries import load_dictionary
    from interp_bench.training.trainer import Trainer

    _, cache = one_process_cache
    out, hook = tmp_path / "run", "L1.resid_post"
    args = ["train", "--activations", str(cache), "--hook", hook, "--arch", "topk",
            "--k", "4,8", "--expansion", "2", "--tokens", "2048", "--batch-size",
            str(PER_RANK), "--checkpoint-every", "10", "--device", "cpu", "--out", str(out),
            "--spread", spread]  # fmt: skip
    rc, log = finish(launch(args))
    assert rc == 0, log[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2

    tc = TrainConfig.from_json(out / names[0] / "train_cfg.json")
    tc.batch_size = 2 * PER_RANK
    cfgs = [DictionaryConfig.from_json(out / n / "dict_cfg.json") for n in names]
    readers = [
        ActivationReader(
            cache, [hook], PER_RANK, seed=tc.seed, rank=r, world_size=2, drop_last=True
        )  # fmt: skip
        for r in range(2)
    ]
    one = Trainer(cfgs, tc, stats={hook: hook_stats(cache, hook)}, device="cpu",
                  out_dir=tmp_path / "one", names=names)  # fmt: skip
    want = one.fit(Zipped(readers))
    assert one.step_idx == 2048 // (2 * PER_RANK)
    for name, w in zip(names, want, strict=True):
        got = load_dictionary(out / name).state_dict()
        for k, v in w.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=2e-5, rtol=1e-4, msg=f"{name} {k}")
        lines = (out / name / "metrics.jsonl").read_text().splitlines()
        assert f'"step": {one.step_idx},' in lines[-1]


@pytest.mark.long  # a real torchrun launch: every rank imports torch
def test_training_rank_that_raises_stops_the_other_naming_it(one_process_cache, tmp_path):
    """Two "machines" (one rank each): rank 1 raises at step 4; rank 0, which torchrun would not
    stop, ends within the timeout with a line naming rank 1 and its error."""
    _, cache = one_process_cache
    port = free_port()
    args = ["train", "--activations", str(cache), "--hook", "L1.resid_post", "--k", "4",
            "--expansion", "2", "--tokens", "2048", "--batch-size", str(PER_RANK),
            "--device", "cpu", "--out", str(tmp_path / "run"), "--dist-timeout", "5"]  # fmt: skip
    nodes = [
        launch(args, nproc=1, nodes=(i, 2), port=port, TORCHRUN_TEST_FAIL="1:4:raise")
        for i in range(2)
    ]
    (rc0, out0), (rc1, out1) = finish(nodes[0], 90), finish(nodes[1], 90)
    assert rc0 != 0 and rc1 != 0
    want = "rank 0: training stopped, rank 1 failed: ValueError: injected failure at step 4"
    assert want in out0, out0[-3000:]
    assert "(rank 1 of 2): error: injected failure at step 4" in out1, out1[-3000:]


def test_one_process_finishes_what_killed_ranks_left(tiny_model, tmp_path):
    """No torchrun: a folder as a killed 2-rank run leaves it (rank 1 finished shards 1 and 3,
    a temp file half written) is finished by one process, reusing those shards untouched."""
    import shutil

    from activation_cache.cache import cache_activations

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50000, (12, CTX), generator=g)
    kw = dict(dtype="float32", batch_size=2, shard_tokens=SHARD, progress=False)
    ref = cache_activations(tiny_model, tokens, HOOKS, tmp_path / "ref", **kw)
    out = tmp_path / "acts"
    out.mkdir()
    kept = [ref.shards[1], ref.shards[3]]
    for s in kept:
        shutil.copy2(tmp_path / "ref" / s.file, out / s.file)
    left = read_manifest(tmp_path / "ref")
    half = out / temp_name(shard_name(5), cache_tag(left.config))  # a rank's, cut short
    half.write_bytes(b"half")
    left.shards, left.complete = kept, False
    (out / "rank_00001.json").write_text(left.to_json())
    before = {s.file: (out / s.file).stat().st_mtime_ns for s in kept}

    cache_activations(tiny_model, tokens, HOOKS, out, **kw)
    assert_same_cache(out, tmp_path / "ref")
    assert {f: (out / f).stat().st_mtime_ns for f in before} == before
    assert not half.exists() and not list(out.glob("rank_*"))


def test_leftovers_path_keeps_the_integrity_scheme(gpt2_tokenizer, tmp_path):
    """No torchrun: finishing a multi-process run's leftovers removes only files carrying this
    cache's tag, refuses a foreign file (untouched), fails at once on a locked folder, and stores
    each hook at its own width (`z` is n_heads * d_head wide, not d_model)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from activation_cache.cache import cache_activations, locked

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=32, n_heads=2, d_head=8, d_mlp=64, n_ctx=64,
        d_vocab=len(gpt2_tokenizer), act_fn="gelu_new", normalization_type="LNPre", seed=0,
        device="cpu",
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer).eval()  # z: 2 x 8 = 16 wide
    tokens = torch.randint(0, 50000, (6, CTX), generator=torch.Generator().manual_seed(0))
    hooks, kw = "L0.resid_post,L0.z", dict(dtype="float32", batch_size=2, shard_tokens=SHARD)
    cache_activations(model, tokens, hooks, tmp_path / "ref", progress=False, **kw)
    out = tmp_path / "acts"
    out.mkdir()
    left = read_manifest(tmp_path / "ref")
    left.shards, left.complete = [], False
    (out / "rank_00001.json").write_text(left.to_json())
    foreign = out / "shard_00002.safetensors.tmp"  # no tag: not ours
    foreign.write_bytes(b"someone else's")
    with pytest.raises(ValueError, match="holds no cache manifest"):
        cache_activations(model, tokens, hooks, out, progress=False, **kw)
    assert foreign.read_bytes() == b"someone else's"
    foreign.unlink()
    with locked(out), pytest.raises(ValueError, match="being written by another process"):
        cache_activations(model, tokens, hooks, out, progress=False, **kw)
    cache_activations(model, tokens, hooks, out, progress=False, **kw)
    assert_same_cache(out, tmp_path / "ref")
    assert [h["d"] for h in read_manifest(out).hooks] == [32, 16]


@pytest.mark.long  # a real torchrun launch: every rank imports torch
def test_streaming_training_runs_under_torchrun(one_process_cache, tmp_path):
    """`train --model M --corpus C` (no cache) under torchrun: each rank runs the model on its own
    sequences, the ranks train one dictionary together and rank 0 saves it."""
    from interp_bench.dictionaries import load_dictionary

    corpus, _ = one_process_cache
    out = tmp_path / "run"
    args = ["train", "--model", "tiny", "--corpus", str(corpus), "--context-len", str(CTX),
            "--hook", "L1.resid_post", "--arch", "topk", "--k", "4", "--expansion", "2",
            "--tokens", "1024", "--batch-size", str(PER_RANK), "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    rc, log = finish(launch(args))
    assert rc == 0, log[-3000:]
    (name,) = [p.name for p in out.iterdir()]
    assert load_dictionary(out / name).W_dec.shape[-1] == 64
    last = json.loads((out / name / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["tokens"] >= 1024
