"""Benchmark: workload count, metrics and u-Ticket rebalance over a VGG16-shaped net (98% sparse).

  python -m benchmarks.bench_rebalance [--n_pe 8,16,32] [--repeats 5] [--oracle_n_pe 16]
      [--mappings output_channel,input_split] [--policies magnitude,random] [--nofresh] [--nocli]
Prints ONE JSON line: per mapping and n_pe, warm (compiled) minimum times in ms of
* `count_ms`: the load count of every layer (the reference of the issue's "<= 3x one vectorized
  pass that only counts the loads" target),
* `metrics_ms`: the network metrics from those loads,
* `rebalance_<policy>_ms`: `rebalance_network`, whole network (counting + selection + report), and
  its ratio to the count,
* `oracle_ms`: the tests' per-group loop oracle (magnitude policy), at `--oracle_n_pe` only (~5 s
  per mapping on 2 CPU cores; 0 skips it);
and once, `pass_ms`: one elementwise pass over every analysed layer that reads the mask and the
weights and writes a mask (`mask ^ (|w| > t)`). A magnitude rebalance must read the weights of
every PE that regrows (under `ceil_mean`, all but the fullest PEs of each group) after counting,
so `count_ms + pass_ms` is about the least a rebalance built from whole-array passes can take.

Per mapping, n_pe and policy, unless `--nofresh`: the first `rebalance_network` call in a fresh
process (one subprocess per configuration, compilation included): `first_<policy>_s` its wall
time, `compile_<policy>_s` the summed XLA backend compile time (`jax.monitoring` event
`/jax/core/compile/backend_compile_duration`) and `programs_<policy>` the number of programs it
compiled; unless `--nocli`, `cli_<policy>_s`: the whole-process wall time of
`experiments/rebalance.py` on the same masks and weights (written to a temporary directory as
.npz), interpreter start, imports and file writes included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from tests import oracle
from uticket_jax.launch import cli
from uticket_jax.sparsity.masks import save_mask_file
from uticket_jax.workload import MAPPINGS, POLICIES, network_loads, rebalance_network, synthetic
from uticket_jax.workload.metrics import analysed_layers, loads_metrics, network_metrics

_N_PE = flags.DEFINE_string("n_pe", "8,16,32", "Comma list of PEs per group.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (the minimum is reported).")
_ORACLE_N_PE = flags.DEFINE_integer(
    "oracle_n_pe", 16, "n_pe at which the loop oracle runs (0: skip)."
)
_MAPPINGS = flags.DEFINE_list("mappings", list(MAPPINGS), "Mappings to time.")
_POLICIES = flags.DEFINE_list("policies", list(POLICIES), "Rebalance policies to time.")
_FRESH = flags.DEFINE_bool(
    "fresh", True, "Time each configuration's first call in a fresh process (compile included)."
)
_CLI = flags.DEFINE_bool(
    "cli", True, "Time the whole experiments/rebalance.py process on the same masks."
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _choices(flag, allowed) -> list[str]:
    unknown = [v for v in flag.value if v not in allowed]
    if unknown or not flag.value:
        raise ValueError(f"--{flag.name}: got {flag.value}; allowed: {', '.join(allowed)}")
    return list(flag.value)


def _settings() -> tuple[list[int], list[str], list[str]]:
    """`(n_pes, mappings, policies)` from the flags; ValueError naming the flag when bad."""
    n_pes = cli.int_list(_N_PE)
    if _REPEATS.value < 1:
        raise ValueError(f"--repeats: must be a positive integer, got {_REPEATS.value}")
    if _ORACLE_N_PE.value < 0:
        raise ValueError(f"--oracle_n_pe: must be >= 0 (0 skips), got {_ORACLE_N_PE.value}")
    return n_pes, _choices(_MAPPINGS, MAPPINGS), _choices(_POLICIES, POLICIES)


@jax.jit
def _flip_pass(mask, weights, threshold):
    return mask ^ (jnp.abs(weights) > threshold)


def pass_ms(masks: dict, weights: dict, keep: list[bool], repeats: int) -> float:
    """ms of one `_flip_pass` over every analysed layer, one call per layer (as the rebalance)."""
    names = [k for k, a in zip(masks, keep, strict=True) if a]
    t = jnp.float32(1.0)
    return _time(lambda: [_flip_pass(masks[k], weights[k], t) for k in names], repeats)


def first_call(mapping: str, n_pe: int, policy: str) -> dict:
    """In this (fresh) process: the first `rebalance_network` call on the benchmark net.

    Returns `{"first_s", "compile_s", "programs"}`: the call's wall time (until its masks are
    ready), the summed backend compile time and the number of programs compiled during it.
    """
    masks, weights = synthetic.vgg16_sparse(seed=0, sparsity=0.98)
    masks = jax.block_until_ready({k: jnp.asarray(v) for k, v in masks.items()})
    weights = jax.block_until_ready({k: jnp.asarray(v) for k, v in weights.items()})
    key = jax.block_until_ready(jax.random.key(0))
    compiles = []

    def listen(event, duration, **kwargs):
        del kwargs
        if event == _COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    t = time.perf_counter()
    jax.block_until_ready(
        rebalance_network(masks, weights, n_pe=n_pe, mapping=mapping, policy=policy, key=key)[0]
    )
    first = time.perf_counter() - t
    jax.monitoring.unregister_event_duration_listener(listen)
    return {"first_s": first, "compile_s": sum(compiles), "programs": len(compiles)}


def _subprocess(args: list[str]) -> tuple[float, str]:
    """`(wall seconds, stdout)` of `python *args` in the repository root; raises on failure."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, *args], cwd=_ROOT, capture_output=True, text=True, env=dict(os.environ)
    )
    wall = time.perf_counter() - t
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{' '.join(args[:2])}: exit status {r.returncode}: {tail}")
    return wall, r.stdout


def fresh_first_call(mapping: str, n_pe: int, policy: str) -> dict:
    """`first_call` in a subprocess of its own."""
    code = (
        "import json; from benchmarks import bench_rebalance as b; "
        f"print(json.dumps(b.first_call({mapping!r}, {n_pe}, {policy!r})))"
    )
    _, out = _subprocess(["-c", code])
    return json.loads(out.strip().splitlines()[-1])


def cli_seconds(files: tuple[str, str], mapping: str, n_pe: int, policy: str, tmp: str) -> float:
    """Whole-process wall time of `experiments/rebalance.py` on the mask and weight files."""
    out = os.path.join(tmp, "out.npz")
    args = [os.path.join("experiments", "rebalance.py"), f"--masks={files[0]}"]
    args += [f"--weights={files[1]}", f"--n_pe={n_pe}", f"--mapping={mapping}"]
    args += [f"--policy={policy}", f"--out={out}", "--overwrite"]
    wall, _ = _subprocess(args)
    return wall


def main() -> None:
    n_pes, mappings, policies = _settings()
    masks, weights = synthetic.vgg16_sparse(seed=0, sparsity=0.98)
    masks = {k: jnp.asarray(v) for k, v in masks.items()}
    weights = {k: jnp.asarray(v) for k, v in weights.items()}
    keep = analysed_layers({k: v.shape for k, v in masks.items()})
    key = jax.random.key(0)
    tmp = tempfile.TemporaryDirectory(prefix="bench_rebalance_")
    files = (os.path.join(tmp.name, "masks.npz"), os.path.join(tmp.name, "weights.npz"))
    if _CLI.value:
        save_mask_file(files[0], masks)
        np.savez(files[1], **{k: np.asarray(v) for k, v in weights.items()})
    results = {}
    for mapping in mappings:
        for n in n_pes:
            loads = network_loads(masks, n, mapping)
            count = _time(lambda n=n, m=mapping: network_loads(masks, n, m), _REPEATS.value)

            def metrics(loads=loads):
                per = [loads_metrics(v) for v, a in zip(loads.values(), keep, strict=True) if a]
                return network_metrics(per)

            row = {"count_ms": count, "metrics_ms": _time(metrics, _REPEATS.value)}
            for policy in policies:
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
                if "rebalance_magnitude_ms" in row:
                    row["oracle_over_rebalance"] = row["oracle_ms"] / row["rebalance_magnitude_ms"]
            for policy in policies:
                if _FRESH.value:
                    first = fresh_first_call(mapping, n, policy)
                    row[f"first_{policy}_s"] = first["first_s"]
                    row[f"compile_{policy}_s"] = first["compile_s"]
                    row[f"programs_{policy}"] = first["programs"]
                if _CLI.value:
                    row[f"cli_{policy}_s"] = cli_seconds(files, mapping, n, policy, tmp.name)
            results[f"{mapping}/n{n}"] = {k: round(v, 3) for k, v in row.items()}
    tmp.cleanup()
    print(
        json.dumps(
            {
                "bench": "rebalance",
                "net": "vgg16 98% sparse",
                "device": jax.devices()[0].platform,
                "cores": os.cpu_count(),
                "pass_ms": round(pass_ms(masks, weights, keep, _REPEATS.value), 3),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    cli.run(main, name="bench_rebalance")
