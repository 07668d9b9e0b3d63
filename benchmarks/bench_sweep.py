r"""Benchmark of the vectorized hardware sweep against the project's loop oracle (one JSON line).

  python -m benchmarks.bench_sweep            # ~70 s on a 2-core CPU (~35 s of it cold runs)

A VGG16-shaped network at 98% sparsity (`workload.synthetic.vgg16_sparse`, uneven per-channel
density), 4,096 configs per mapping (n_pe 1..64 x 8 clocks x 8 accumulate energies; the largest
n_pe is --max_n_pe), warm (compiled) timings, best of --repeats. Per mapping it reports:
  configs_per_s            the default path (workload once per distinct n_pe, then every config),
  configs_per_s_per_config the same sweep with the workload evaluated separately for every config
                           (dedupe=False: what one-config-at-a-time vmapping costs),
  sweep_ms_first_call      the first call of that sweep in the process (compilation included),
                           beside its warm `sweep_ms`,
  numpy_sweep_ms, numpy_sweep_ms_first_call, numpy_configs_per_s
                           the same sweep on the numpy backend (`simulate(..., backend="numpy")`,
                           nothing compiled), warm and first call,
  oracle_ms_per_config     one config (n_pe=16) through the plain-loop oracle (tests/), and
  speedup_vs_oracle        oracle time per config / vectorized time per config.
`cold_sweep_cli` is the time to a first result: the whole-process wall time of
`experiments/sweep.py` on the same masks, 100 configs (n_pe 1..50 x both mappings), a fresh
process each (no compilation cache), median of --cold_runs, per backend.
Targets on a 2-core CPU: >= 10,000 configs/s (output_channel), >= 2,000 (input_split); the cold
numpy run <= 3 s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from tests.oracle import simulator_oracle as oracle
from uticket_jax import hardware
from uticket_jax.workload.synthetic import vgg16_sparse

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (best is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic masks.")
_MAX_N_PE = flags.DEFINE_integer(
    "max_n_pe", 64, "Largest n_pe of the warm sweeps (n_pe 1..max x 64 variants; >= 16)."
)
_COLD_RUNS = flags.DEFINE_integer(
    "cold_runs", 3, "Fresh sweep.py processes per backend for cold_sweep_cli (0: skip)."
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLD_N_PE = ",".join(str(n) for n in range(1, 51))  # x 2 mappings = 100 configs


def _first_and_best(fn, repeats: int) -> tuple[float, float]:
    """Seconds of the first call (compilation included) and the best of `repeats` after it."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, min(times)


def _cold_cli(masks: dict, runs: int) -> dict:
    """Median whole-process wall time of experiments/sweep.py (100 configs) per backend."""
    out: dict = {
        "command": "python experiments/sweep.py --masks MASKS.npz --n_pe 1,...,50 "
        "--mapping output_channel,input_split --out DIR --backend B",
        "configs": 100,
        "runs": runs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "masks.npz")
        np.savez(path, **masks)
        for backend in ("numpy", "jax"):
            times = []
            for i in range(runs):
                cmd = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py")]
                cmd += ["--masks", path, "--n_pe", COLD_N_PE, "--print_rows=0"]
                cmd += ["--mapping", "output_channel,input_split", "--backend", backend]
                cmd += ["--out", os.path.join(tmp, f"{backend}{i}")]
                t = time.perf_counter()
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
                times.append(time.perf_counter() - t)
                if r.returncode != 0:
                    raise AssertionError(f"sweep.py --backend {backend}: {r.stderr[-500:]}")
            out[f"{backend}_wall_s"] = round(float(np.median(times)), 2)
    return out


def run() -> dict:
    if _REPEATS.value < 1:
        raise ValueError(f"--repeats: must be >= 1, got {_REPEATS.value}")
    if _MAX_N_PE.value < 16:
        raise ValueError(f"--max_n_pe: must be >= 16 (the oracle's config), got {_MAX_N_PE.value}")
    if _COLD_RUNS.value < 0:
        raise ValueError(f"--cold_runs: must be >= 0, got {_COLD_RUNS.value}")
    masks, _ = vgg16_sparse(_SEED.value, sparsity=0.98)
    # First, in fresh processes: nothing of this one is warm for them anyway.
    cold = _cold_cli(masks, _COLD_RUNS.value) if _COLD_RUNS.value else None
    specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=32)
    t = time.perf_counter()
    tables = hardware.network_tables(masks, specs)
    jax.block_until_ready(tables)
    tables_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    host_tables = hardware.network_tables(masks, specs, backend="numpy")
    host_tables_ms = (time.perf_counter() - t) * 1e3
    out: dict = {
        "network": f"vgg16_sparse(seed={_SEED.value}, sparsity=0.98)",
        "nonzeros": int(sum(int(m.sum()) for m in masks.values())),
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "count_tables_ms_first_call": round(tables_ms, 1),
        "count_tables_ms_numpy": round(host_tables_ms, 1),
    }
    for mapping in hardware.MAPPINGS:
        configs = hardware.config_grid(
            n_pe=list(range(1, _MAX_N_PE.value + 1)),
            mapping=[mapping],
            clock_hz=[float(c) * 1e6 for c in (100, 200, 300, 400, 500, 600, 800, 1000)],
        )
        # Each config with 8 accumulate energies (config-major, as sweep.py orders them).
        e_acc = np.linspace(0.05, 0.4, 8, dtype=np.float32)
        configs = hardware.take_configs(configs, np.repeat(np.arange(len(configs.n_pe)), 8))
        consts = hardware.make_constants(
            "horowitz45", e_acc_pj=np.tile(e_acc, len(configs.n_pe) // 8)
        )
        n = hardware.num_configs(configs)
        first, fast = _first_and_best(
            lambda c=configs, consts=consts: hardware.simulate(
                tables, specs, c, energy_model="horowitz45", energy_constants=consts
            ),
            _REPEATS.value,
        )
        _, per_cfg = _first_and_best(
            lambda c=configs, consts=consts: hardware.simulate(
                tables, specs, c, dedupe=False, energy_model="horowitz45", energy_constants=consts
            ),
            _REPEATS.value,
        )
        host_first, host = _first_and_best(
            lambda c=configs, consts=consts: hardware.simulate(
                host_tables,
                specs,
                c,
                backend="numpy",
                energy_model="horowitz45",
                energy_constants=consts,
            ),
            _REPEATS.value,
        )
        res = hardware.simulate(
            tables, specs, configs, energy_model="horowitz45", energy_constants=consts
        )
        i = int(np.flatnonzero(configs.n_pe == 16)[0])
        cfg = hardware.config_rows(configs)[i]
        t = time.perf_counter()
        picked = {k: float(np.broadcast_to(v, (n,))[i]) for k, v in consts._asdict().items()}
        want = oracle(masks, specs, cfg, constants=picked)
        oracle_s = time.perf_counter() - t
        got = float(res.network.energy_total[i])
        if not math.isclose(got, want["network"]["energy_total"], rel_tol=1e-5):
            raise AssertionError(f"{mapping}: simulator {got} != oracle {want['network']}")
        out[mapping] = {
            "configs": n,
            "sweep_ms": round(fast * 1e3, 2),
            "sweep_ms_first_call": round(first * 1e3, 1),
            "configs_per_s": round(n / fast),
            "numpy_sweep_ms": round(host * 1e3, 1),
            "numpy_sweep_ms_first_call": round(host_first * 1e3, 1),
            "numpy_configs_per_s": round(n / host),
            "sweep_ms_per_config_workload": round(per_cfg * 1e3, 1),
            "configs_per_s_per_config": round(n / per_cfg),
            "oracle_ms_per_config": round(oracle_s * 1e3, 1),
            "speedup_vs_oracle": round(oracle_s / (fast / n)),
        }
    if cold is not None:
        out["cold_sweep_cli"] = cold
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        print(json.dumps(run()))
    except ValueError as e:
        print(f"bench_sweep: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
