"""Benchmarks, each run from the repository root as ``python -m benchmarks.NAME`` (``--help``
says what it measures); results go to benchmarks/out/ and the recorded ones to RESULTS.md."""
