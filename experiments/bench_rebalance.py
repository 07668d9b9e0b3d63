"""Benchmark: workload count, metrics and u-Ticket rebalance over a VGG16-shaped net (98% sparse).

  python experiments/bench_rebalance.py [--n_pe 8,16,32] [--repeats 5] [--oracle_n_pe 16]
Prints ONE JSON line: per mapping and n_pe, warm (compiled) minimum times in ms of the load count
(`count_ms`, the memory-bound floor), the metrics, the rebalance per policy (whole network, counting
+ selection + report), the tests' per-group loop oracle (`oracle_ms`, magnitude policy), and ratios.
The oracle runs at `--oracle_n_pe` only (~5 s per mapping on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import oracle  # noqa: E402
from uticket_jax.workload import MAPPINGS, network_loads, rebalance_network, synthetic  # noqa: E402
from uticket_jax.workload.metrics import analysed_layers, loads_metrics, network_metrics  # noqa: E402

_N_PE = flags.DEFINE_string("n_pe", "8,16,32", "Comma list of PEs per group.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (the minimum is reported).")
_ORACLE_N_PE = flags.DEFINE_integer(
    "oracle_n_pe", 16, "n_pe at which the loop oracle runs (0: skip)."
)


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv) -> None:
    del argv
    masks, weights = synthetic.vgg16_sparse(seed=0, sparsity=0.98)
    masks = {k: jnp.asarray(v) for k, v in masks.items()}
    weights = {k: jnp.asarray(v) for k, v in weights.items()}
    keep = analysed_layers({k: v.shape for k, v in masks.items()})
    key = jax.random.key(0)
    results = {}
    for mapping in MAPPINGS:
        for n in [int(v) for v in _N_PE.value.split(",")]:
            loads = network_loads(masks, n, mapping)
            count = _time(lambda n=n, m=mapping: network_loads(masks, n, m), _REPEATS.value)

            def metrics(loads=loads):
                per = [loads_metrics(v) for v, a in zip(loads.values(), keep, strict=True) if a]
                return network_metrics(per)

            row = {"count_ms": count, "metrics_ms": _time(metrics, _REPEATS.value)}
            for policy in ("magnitude", "random"):
                row[f"rebalance_{policy}_ms"] = _time(
                    lambda p=policy, m=mapping, n=n: rebalance_network(
                        masks, weights, n_pe=n, mapping=m, policy=p, key=key
                    )[0],
                    _REPEATS.value,
                )
                row[f"rebalance_{policy}_over_count"] = row[f"rebalance_{policy}_ms"] / count
            if n == _ORACLE_N_PE.value:
                t = time.perf_counter()
                for (name, m), a in zip(masks.items(), keep, strict=True):
                    if a:
                        oracle.rebalance(
                            np.asarray(m),
                            np.abs(np.asarray(weights[name])),
                            n,
                            mapping,
                            "ceil_mean",
                        )
                row["oracle_ms"] = (time.perf_counter() - t) * 1e3
                row["oracle_over_rebalance"] = row["oracle_ms"] / row["rebalance_magnitude_ms"]
            results[f"{mapping}/n{n}"] = {k: round(v, 3) for k, v in row.items()}
            # Each compiled program holds ~100 memory mappings on XLA:CPU; a long --n_pe list
            # would otherwise pass Linux's default vm.max_map_count (65530) and abort.
            jax.clear_caches()
    print(
        json.dumps(
            {
                "bench": "rebalance",
                "net": "vgg16 98% sparse",
                "device": jax.devices()[0].platform,
                "cores": os.cpu_count(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
