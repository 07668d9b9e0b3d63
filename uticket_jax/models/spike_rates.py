"""Measured input activity of each conv/dense layer, for activity-aware energy.

An event-driven accelerator only accumulates a weight when its input is non-zero, so the work of a
layer scales with the fraction of non-zero inputs: the input spike rate (for a layer fed by LIF
spikes, the firing rate of those neurons; after average pooling, the share of non-zero pooled
values). It is measured by intercepting every `Conv`/`Dense` call of a Flax model (no change to
the model), in eval mode, over all steps and examples.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.models.describe import LAYER_TYPES


def _counts(model: nn.Module, variables: Any, images: jax.Array) -> dict[str, jax.Array]:
    """`{kernel path: [non-zero inputs, inputs]}` of one batch (traced)."""
    counts: dict[str, jax.Array] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, LAYER_TYPES) and args:
            x = args[0]
            name = "/".join(module.path) + "/kernel"
            counts[name] = jnp.stack(
                [jnp.count_nonzero(x).astype(jnp.float32), jnp.float32(x.size)]
            )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, images, train=False)
    return counts


@functools.cache
def _jitted_counts(model: nn.Module):
    """One compiled counter per model (Flax modules hash by their fields)."""
    return jax.jit(functools.partial(_counts, model))


def input_spike_rates(
    model: nn.Module, variables: Any, images: np.ndarray, *, batch_size: int = 256
) -> dict[str, float]:
    """Fraction of non-zero inputs of every conv/dense layer over `images`, keyed by kernel path.

    The first conv sees the analog image (direct encoding), so its "rate" is its input density
    (about 1); the simulator leaves that layer out by default.

    Args:
      model: a Flax SNN from `uticket_jax.models`.
      variables: `{"params", "batch_stats"}`.
      images: `[N, H, W, C]` test images.
      batch_size: rows per forward pass (the last, smaller batch compiles once more).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    fn = _jitted_counts(model)
    totals: dict[str, np.ndarray] = {}
    for start in range(0, images.shape[0], batch_size):
        out = fn(variables, jnp.asarray(images[start : start + batch_size]))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
    return {k: float(v[0] / v[1]) if v[1] else 0.0 for k, v in totals.items()}
