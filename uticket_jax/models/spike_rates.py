"""Measured input activity of each conv/dense layer, for activity-aware energy.

An event-driven accelerator only accumulates a weight when its input is non-zero, so the work of a
layer scales with the fraction of non-zero inputs: the input spike rate (for a layer fed by LIF
spikes, the firing rate of those neurons; after average pooling, the share of non-zero pooled
values). It is measured by intercepting every `Conv`/`Dense` call of a Flax model (no change to
the model), in eval mode, over all steps and examples: on its own (`input_spike_rates`), or inside
another jitted computation (`count_inputs`; the training loop's final evaluation measures the
rates in the same pass as the test accuracy, `loop.evaluate(..., spike_rates=True)`). The same
pass also counts per input channel (`count_inputs(channels=True)`, `channel_rates_of`): the
firing rate of each input channel of a layer, which the `expected_work` rebalance target weighs
the layer's weights with.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.models.describe import LAYER_TYPES


@contextlib.contextmanager
def layer_inputs(on_input: Callable[[str, jax.Array], None]) -> Iterator[None]:
    """Calls `on_input(kernel path, x)` with the input `x` of every `Conv`/`Dense` call of the Flax
    models applied inside (traced; the model is not changed).

    A layer's input has `B` rows (the images: the first conv under direct encoding) or `k * B`
    (time folded into the batch, row `t * B + b` is example `b`); convs see it unpadded.

    Args:
      on_input: called once per layer call, before the layer runs.
    """

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, LAYER_TYPES) and args:
            on_input("/".join(module.path) + "/kernel", args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
        yield


@contextlib.contextmanager
def count_inputs(
    valid: jax.Array | None = None, *, channels: bool = False
) -> Iterator[dict[str, jax.Array]]:
    """Counts the inputs of every `Conv`/`Dense` call of the Flax models applied inside (traced).

    Yields a dict that fills, as the model runs, with `{kernel path: [non-zero inputs, inputs]}`
    (float32 of exact int32 counts). With `valid` (`[B]` bool: the real rows of a padded batch)
    only the rows of real examples count: a layer's input has `B` rows (the images) or `k * B`
    (time folded into the batch, row `t * B + b` is example `b`).

    Args:
      valid: None (count every row), or the `[B]` mask of the batch's real examples.
      channels: append the non-zero inputs of every input channel (the last axis), so a value
        is `[non-zero inputs, inputs, non-zero of channel 0, ...]` (`channel_rates_of`); the
        first two entries are the same either way.
    """
    counts: dict[str, jax.Array] = {}

    def record(path: str, x: jax.Array) -> None:
        count = _count(x, valid)
        if channels:
            count = jnp.concatenate([count, _channel_count(x, valid)])
        counts[path] = count

    with layer_inputs(record):
        yield counts


def _count(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """`[non-zero entries, entries]` of `x` as float32, over its valid rows."""
    if valid is None:
        return jnp.stack([jnp.count_nonzero(x).astype(jnp.float32), jnp.float32(x.size)])
    rows, b = x.shape[0], valid.shape[0]
    if rows % b:
        raise ValueError(f"a layer input has {rows} rows, not a multiple of the batch's {b}")
    keep = jnp.tile(valid, rows // b)
    per_row = jnp.count_nonzero(x.reshape(rows, -1), axis=1)
    nonzero = jnp.sum(jnp.where(keep, per_row, 0))
    total = jnp.sum(keep.astype(jnp.int32)) * (x.size // rows)
    return jnp.stack([nonzero, total]).astype(jnp.float32)


def _channel_count(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """`[C]` float32 non-zero entries of each channel (last axis) of `x` over its valid rows."""
    per_row = jnp.count_nonzero(x.reshape(x.shape[0], -1, x.shape[-1]), axis=1)  # [rows, C]
    if valid is not None:
        per_row = jnp.where(jnp.tile(valid, x.shape[0] // valid.shape[0])[:, None], per_row, 0)
    return jnp.sum(per_row, axis=0).astype(jnp.float32)


def add_counts(totals: dict[str, np.ndarray], counts: dict[str, jax.Array]) -> None:
    """Adds one batch's `count_inputs` result into float64 `totals` (in place)."""
    for k, v in counts.items():
        totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)


def rates_of(totals: dict[str, np.ndarray]) -> dict[str, float]:
    """`{kernel path: non-zero / inputs}` of summed counts (0.0 for a layer that saw nothing)."""
    return {k: float(v[0] / v[1]) if v[1] else 0.0 for k, v in totals.items()}


def channel_rates_of(totals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{kernel path: [C] float32}` firing rate of every input channel, of counts summed with
    `channels=True` (each channel sees `inputs / C` entries; zeros for a layer that saw nothing)."""
    out = {}
    for k, v in totals.items():
        per_channel = v[1] / (v.shape[0] - 2) if v[1] else 0.0
        out[k] = (v[2:] / per_channel if per_channel else np.zeros(v.shape[0] - 2)).astype(
            np.float32
        )
    return out


def _counts(model: nn.Module, variables: Any, images: jax.Array) -> dict[str, jax.Array]:
    """`{kernel path: [non-zero inputs, inputs]}` of one batch (traced)."""
    with count_inputs() as counts:
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
        add_counts(totals, fn(variables, jnp.asarray(images[start : start + batch_size])))
    return rates_of(totals)
