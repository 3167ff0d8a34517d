"""What tests/test_torchrun.py launches under `torchrun`: the real CLI, with `--model tiny` the
tiny random GPT-2 of conftest.py (no weights to load).

Test knobs, all from the environment: `TORCHRUN_TEST_SLOW` (seconds added to every forward, so a
test can kill a rank mid-run) and `TORCHRUN_TEST_PIDS` (a folder: each rank writes its pid to
`rank<RANK>` there, so the test can kill one rank).
"""

from __future__ import annotations

import os
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


if __name__ == "__main__":
    models.load_model = load_model
    if delay := float(os.environ.get("TORCHRUN_TEST_SLOW", "0")):
        hooks.capturing = cache.capturing = slowed(hooks.capturing, delay)
    if pids := os.environ.get("TORCHRUN_TEST_PIDS"):
        (Path(pids) / f"rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    sys.exit(cli.main())
