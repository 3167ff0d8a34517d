"""What tests/test_torchrun.py launches under `torchrun`: the real CLI, with `--model tiny` the
tiny random GPT-2 of conftest.py (no weights to load).

Test knobs, all from the environment: `TORCHRUN_TEST_SLOW` (seconds added to every forward, so a
test can kill a rank mid-run), `TORCHRUN_TEST_PIDS` (a folder: each rank writes its pid to
`rank<RANK>` there, so the test can kill one rank) and `TORCHRUN_TEST_FAIL=RANK:STEP:HOW` (that
rank's training step STEP raises, SIGKILLs itself, or hangs: HOW = raise | kill | hang).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_tiny_model  # noqa: E402

from activation_cache import cache, hooks, models  # noqa: E402
from interp_bench import cli  # noqa: E402

_load = models.load_model


def load_model(name: str = models.EMBEDDED, device=None, dtype=None):
    if name == "tiny":
        from activation_cache.tokenizers import gpt2_tokenizer

        return make_tiny_model(gpt2_tokenizer()).to(device or "cpu")
    return _load(name, device=device, dtype=dtype)


def slowed(real, delay: float):
    @contextmanager
    def capturing(*args):
        with real(*args) as run:
            yield lambda t: time.sleep(delay) or run(t)

    return capturing


def failing_step(real, step: int, how: str):
    def step_fn(self, batch):
        if self.step_idx + 1 == step:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "hang":
                time.sleep(3600)
            raise ValueError(f"injected failure at step {step}")
        return real(self, batch)

    return step_fn


if __name__ == "__main__":
    models.load_model = load_model
    if delay := float(os.environ.get("TORCHRUN_TEST_SLOW", "0")):
        hooks.capturing = cache.capturing = slowed(hooks.capturing, delay)
    if pids := os.environ.get("TORCHRUN_TEST_PIDS"):
        (Path(pids) / f"rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    if fail := os.environ.get("TORCHRUN_TEST_FAIL"):
        from interp_bench.training.trainer import Trainer

        rank, step, how = fail.split(":")
        if rank == os.environ.get("RANK", "0"):
            Trainer.step = failing_step(Trainer.step, int(step), how)
    sys.exit(cli.main())
