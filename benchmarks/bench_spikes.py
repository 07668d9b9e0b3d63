r"""Benchmark of the spike-driven figures against one forward pass of the SNN (one JSON line).

  python -m benchmarks.bench_spikes          # VGG16, batch 32, T = 5, n_pe 8/16/32, both mappings

VGG16 at ~98 % sparsity (`workload.synthetic.vgg16_sparse`, uneven per-channel density) and a
random spike trace at --rate (18 % by default, Bernoulli per input) for every analysed layer
(`[T, B, H, W, C_in]`). It times `hardware.simulate_spikes` for the six configurations (both
mappings x n_pe 8/16/32) together: the first call in the process (`spikes_ms_first_call`,
compilation included) and the best of --repeats after it (`spikes_ms`), and one jitted forward
pass of the model on the same batch (`forward_ms`, warm, best of --repeats, inference mode). The
ratios `warm_ratio = spikes_ms / forward_ms` (goal <= 2) and `cold_ratio` are the figures.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from uticket_jax import hardware, models
from uticket_jax.workload.synthetic import vgg16_sparse

_MODEL = flags.DEFINE_string("model", "vgg16", "Project model (vgg16: synthetic 98% masks).")
_BATCH = flags.DEFINE_integer("batch", 32, "Examples B.")
_T = flags.DEFINE_integer("timesteps", 5, "Time steps T.")
_SIZE = flags.DEFINE_integer("input_size", 32, "Image height = width.")
_RATE = flags.DEFINE_float("rate", 0.18, "Firing rate of the random spike trace.")
_N_PE = flags.DEFINE_string("n_pe", "8,16,32", "Comma list of PEs per group.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (best is reported).")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _network(rng: np.random.Generator):
    """The model, its layer specs, masks (98 % sparse) and a random trace of its analysed layers."""
    model = models.get_model(_MODEL.value, num_classes=10, timesteps=_T.value)
    layers = models.describe_layers(model, (_SIZE.value, _SIZE.value, 3))
    specs = hardware.specs_from_layers(layers)
    if _MODEL.value == "vgg16":
        masks, _ = vgg16_sparse(0, sparsity=0.98)
    else:
        masks = {x.path: rng.random(x.kernel_shape) < 0.02 for x in layers}
    trace = {}
    for x, s in zip(layers, specs, strict=True):
        if s.analysed:
            shape = (_T.value, _BATCH.value, *x.in_hw, x.kernel_shape[-2])
            trace[x.path] = rng.random(shape, np.float32) < _RATE.value
    return model, specs, masks, trace


def run() -> dict:
    rng = np.random.default_rng(0)
    model, specs, masks, trace = _network(rng)
    images = jnp.asarray(rng.random((_BATCH.value, _SIZE.value, _SIZE.value, 3), np.float32))
    variables = model.init(jax.random.key(0), images, train=False)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    jax.block_until_ready(forward(variables, images))
    forward_s = _best(lambda: jax.block_until_ready(forward(variables, images)), _REPEATS.value)
    ns = [int(n) for n in _N_PE.value.split(",")]
    configs = hardware.config_grid(
        n_pe=ns, mapping=["output_channel", "input_split"], timesteps=_T.value
    )
    sim = lambda: hardware.simulate_spikes(masks, trace, specs, configs)  # noqa: E731
    t = time.perf_counter()
    result = sim()
    first_s = time.perf_counter() - t
    warm_s = _best(sim, _REPEATS.value)
    return {
        "model": _MODEL.value,
        "batch": _BATCH.value,
        "timesteps": _T.value,
        "rate": _RATE.value,
        "configs": hardware.num_configs(configs),
        "nonzeros": int(sum(int(np.sum(m)) for m in masks.values())),
        "device_kind": jax.devices()[0].device_kind,
        "forward_ms": round(forward_s * 1e3, 1),
        "spikes_ms": round(warm_s * 1e3, 1),
        "spikes_ms_first_call": round(first_s * 1e3, 1),
        "warm_ratio": round(warm_s / forward_s, 2),
        "cold_ratio": round(first_s / forward_s, 2),
        "network_utilization": [round(float(u), 4) for u in result.network.utilization],
    }


def main(argv) -> None:
    del argv
    print(json.dumps(run()))


if __name__ == "__main__":
    app.run(main)
