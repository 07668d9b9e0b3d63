"""Benchmarks: one JSON line each, against a baseline run in the same process. Run from the
repository root as modules, e.g. `python -m benchmarks.bench_rebalance` (they import the loop
oracles of `tests/oracle.py`).

Cold figures are cold: importing this package turns JAX's persistent compilation cache off for
the benchmark and every process it starts (a cache configured in the environment would otherwise
serve compiled programs from disk and hide the compile time a first-time user waits for).
"""

import os

os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
