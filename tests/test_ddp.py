"""DDP: two gloo processes on CPU, each on half of every batch, match one process on the whole."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

from test_trainer import HOOK, planted, relu_cfg, tcfg, topk_cfg  # noqa: E402

from interp_bench.training.trainer import Trainer, run_names  # noqa: E402

WORLD = 2
STEPS = 12
ROWS = 128  # global batch; each rank reads ROWS // WORLD


def cfgs():
    return [topk_cfg(), relu_cfg()]


def _worker(rank: int, tmp: str, port: int) -> None:
    import torch.distributed as dist

    from interp_bench.training import ddp

    torch.set_num_threads(1)
    # The environment torchrun sets; init_from_env is what `interp-bench train` calls.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    assert ddp.init_from_env() is None  # gloo on CPU
    assert ddp.rank() == rank and ddp.world_size() == WORLD
    try:
        half = ROWS // WORLD
        data = [{HOOK: b[HOOK][rank * half : (rank + 1) * half]} for b in planted(STEPS, ROWS)]
        tc = tcfg(batch_size=half, tokens=ROWS * STEPS, checkpoint_every=5, weight_average=0.3)
        t = Trainer(cfgs(), tc, out_dir=Path(tmp) / "ddp")
        t.fit(data)
        torch.save([d.state_dict() for d in t.dicts], Path(tmp) / f"rank{rank}.pt")
        torch.save(t.averages, Path(tmp) / f"average{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.long
def test_ddp_matches_single_process(tmp_path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(str(tmp_path), port), nprocs=WORLD, join=True)

    tc = tcfg(batch_size=ROWS, tokens=ROWS * STEPS, weight_average=0.3)
    single = Trainer(cfgs(), tc, out_dir=tmp_path / "one")
    single.fit(planted(STEPS, ROWS))

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # Every rank keeps its own average of the iterates, identical without communication.
    a0 = torch.load(tmp_path / "average0.pt", weights_only=True)
    a1 = torch.load(tmp_path / "average1.pt", weights_only=True)
    for a, b, s in zip(a0, a1, single.averages, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=f"averages differ on {k}")
            torch.testing.assert_close(a[k], s[k], atol=1e-5, rtol=1e-4, msg=k)
    for a, b, d in zip(r0, r1, single.dicts, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=f"ranks differ on {k}")
            torch.testing.assert_close(a[k], d.state_dict()[k], atol=1e-5, rtol=1e-4, msg=k)
    # Rank 0 wrote one set of artifacts, with the same step count as the single run.
    for name in run_names(cfgs()):
        assert (tmp_path / "ddp" / name / "sae_weights.safetensors").exists()
        lines = (tmp_path / "ddp" / name / "metrics.jsonl").read_text().splitlines()
        assert '"step": 12' in lines[-1] and f'"tokens": {ROWS * STEPS}' in lines[-1]
