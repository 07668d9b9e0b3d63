r"""Benchmark of the vectorized hardware sweep against the project's loop oracle (one JSON line).

  python -m benchmarks.bench_sweep            # ~30 s on a 2-core CPU

A VGG16-shaped network at 98% sparsity (`workload.synthetic.vgg16_sparse`, uneven per-channel
density), 4,096 configs per mapping (n_pe 1..64 x 8 clocks x 8 accumulate energies), warm
(compiled) timings, best of --repeats. Per mapping it reports:
  configs_per_s            the default path (workload once per distinct n_pe, then every config),
  configs_per_s_per_config the same sweep with the workload evaluated separately for every config
                           (dedupe=False: what one-config-at-a-time vmapping costs),
  oracle_ms_per_config     one config (n_pe=16) through the plain-loop oracle (tests/), and
  speedup_vs_oracle        oracle time per config / vectorized time per config.
Targets on a 2-core CPU: >= 10,000 configs/s (output_channel), >= 2,000 (input_split).
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import numpy as np
from absl import app, flags

from tests.oracle import simulator_oracle as oracle
from uticket_jax import hardware
from uticket_jax.workload.synthetic import vgg16_sparse

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (best is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic masks.")


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run() -> dict:
    if _REPEATS.value < 1:
        raise ValueError(f"--repeats: must be >= 1, got {_REPEATS.value}")
    masks, _ = vgg16_sparse(_SEED.value, sparsity=0.98)
    specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=32)
    t = time.perf_counter()
    tables = hardware.network_tables(masks, specs)
    jax.block_until_ready(tables)
    tables_ms = (time.perf_counter() - t) * 1e3
    out: dict = {
        "network": f"vgg16_sparse(seed={_SEED.value}, sparsity=0.98)",
        "nonzeros": int(sum(int(m.sum()) for m in masks.values())),
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "count_tables_ms_first_call": round(tables_ms, 1),
    }
    for mapping in hardware.MAPPINGS:
        configs = hardware.config_grid(
            n_pe=list(range(1, 65)),
            mapping=[mapping],
            clock_hz=[float(c) * 1e6 for c in (100, 200, 300, 400, 500, 600, 800, 1000)],
            e_acc_pj=[float(e) for e in np.linspace(0.05, 0.4, 8)],
        )
        n = hardware.num_configs(configs)
        fast = _best(lambda c=configs: hardware.simulate(tables, specs, c), _REPEATS.value)
        per_cfg = _best(
            lambda c=configs: hardware.simulate(tables, specs, c, dedupe=False), _REPEATS.value
        )
        res = hardware.simulate(tables, specs, configs)
        i = int(np.flatnonzero(configs.n_pe == 16)[0])
        cfg = hardware.config_rows(configs)[i]
        t = time.perf_counter()
        want = oracle(masks, specs, cfg)
        oracle_s = time.perf_counter() - t
        got = float(res.network.energy_total[i])
        if not math.isclose(got, want["network"]["energy_total"], rel_tol=1e-5):
            raise AssertionError(f"{mapping}: simulator {got} != oracle {want['network']}")
        out[mapping] = {
            "configs": n,
            "sweep_ms": round(fast * 1e3, 2),
            "configs_per_s": round(n / fast),
            "sweep_ms_per_config_workload": round(per_cfg * 1e3, 1),
            "configs_per_s_per_config": round(n / per_cfg),
            "oracle_ms_per_config": round(oracle_s * 1e3, 1),
            "speedup_vs_oracle": round(oracle_s / (fast / n)),
        }
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
