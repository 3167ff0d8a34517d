"""The reliability table of RESULTS.md, counted by running the fault-injection suite.

Runs tests/test_faults.py (each case appends its measured outcome to a JSON-lines log) and the
earlier crash-resume tests of test_cache.py / test_trainer.py (counted by pass or fail: each
asserts zero tokens lost or duplicated), then prints a markdown section.

    python benchmarks/reliability.py >> benchmarks/RESULTS.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EARLIER_KILLS = [
    "tests/test_cache.py::test_resume_after_injected_crash",
    "tests/test_cache.py::test_resume_after_sigkill",
    "tests/test_trainer.py::test_resume_equivalence",
    "tests/test_trainer.py::test_checkpoint_write_is_atomic",
    "tests/test_trainer.py::test_resume_uses_step_every_dictionary_has",
]


def run_suite(log: Path, junit: Path) -> tuple[int, float]:
    env = dict(os.environ, INTERP_BENCH_FAULT_LOG=str(log), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           "tests/test_faults.py", *EARLIER_KILLS]  # fmt: skip
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL).returncode
    return rc, time.perf_counter() - t0


def earlier(junit: Path) -> list[tuple[str, bool]]:
    out = []
    for case in ET.parse(junit).iter("testcase"):
        if not case.get("classname", "").endswith("test_faults"):
            failed = any(c.tag in ("failure", "error", "skipped") for c in case)
            out.append((f"{case.get('classname')}::{case.get('name')}", not failed))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log, junit = Path(tmp) / "faults.jsonl", Path(tmp) / "junit.xml"
        rc, wall = run_suite(log, junit)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        old = earlier(junit)
        skipped = sum(1 for c in ET.parse(junit).iter("testcase") if c.find("skipped") is not None)
    by = defaultdict(list)
    for r in records:
        by[r["kind"]].append(r)
    kills = by["kill"]
    lost = sum(r["lost"] for r in kills)
    dup = sum(r["duplicated"] for r in kills)
    same = sum(r["identical"] for r in kills)
    old_ok = sum(ok for _, ok in old)
    seen = {}
    for r in by["bad_input"]:  # one row per distinct input; the last outcome counts
        seen[r["name"]] = r["one_line"]
    rows = [
        ("kill points (SIGKILL of a forked child at an exact call, or disk full) resumed",
         f"{same} / {len(kills)} identical to an uninterrupted run; tokens lost {lost}, "
         f"duplicated {dup}"),
        ("earlier crash-resume tests (test_cache.py, test_trainer.py)",
         f"{old_ok} / {len(old)} pass (each asserts 0 lost / 0 duplicated)"),
        ("corruptions detected before use, naming the file",
         f"{sum(r['detected'] for r in by['corruption'])} / {len(by['corruption'])}"),
        ("foreign files and folders left untouched",
         f"{sum(r['untouched'] for r in by['foreign'])} / {len(by['foreign'])}"),
        ("bad inputs answered with one error line (no traceback)",
         f"{sum(seen.values())} / {len(seen)}"),
    ]  # fmt: skip
    print("\n## Reliability (`reliability.py`, issue 11)\n")
    print(f"Counted from one run of `tests/test_faults.py` plus the earlier kill tests: pytest rc "
          f"{rc}, {skipped} skipped, {wall:.0f} s wall on {os.cpu_count()} busy cores, "
          f"load {os.getloadavg()[0]:.1f}.\n")  # fmt: skip
    print("| fault class | outcome |\n|---|---|")
    for a, b in rows:
        print(f"| {a} | {b} |")
    print("\nCases:\n")
    for r in kills:
        print(f"- kill, {r['name']}: lost {r['lost']}, duplicated {r['duplicated']}, "
              f"identical {r['identical']}")  # fmt: skip
    for name, ok in old:
        print(f"- earlier kill test {name.split('.')[-1]}: {'pass' if ok else 'FAIL'}")
    for r in by["corruption"]:
        print(f"- corruption, {r['name']}: {'detected' if r['detected'] else 'MISSED'}")
    for r in by["foreign"]:
        print(f"- foreign, {r['name']}: {'untouched' if r['untouched'] else 'CHANGED'}")
    for name, ok in seen.items():
        print(f"- bad input `{name}`: {'one line' if ok else 'NOT one line'}")


if __name__ == "__main__":
    main()
