"""Benchmarks: one JSON line each, against a baseline run in the same process. Run from the
repository root as modules, e.g. `python -m benchmarks.bench_rebalance` (they import the loop
oracles of `tests/oracle.py`)."""
