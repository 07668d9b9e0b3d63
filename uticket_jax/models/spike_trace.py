"""Recorded inputs of a model's analysed layers: the spike traces of event-driven hardware figures.

An event-driven accelerator skips zero inputs, so its per-PE work depends on which inputs of a
layer fire at each step (`hardware.simulate_spikes`). `record_inputs` runs a Flax SNN in eval mode
over images and keeps, for every analysed conv/dense layer, its input at every step as events:
`[T, B, H, W, C_in]` (convs, unpadded: zero padding never spikes) or `[T, B, C_in]` (dense, the
flattened features), bool, keyed by kernel path in network order (the keys of mask files). The
inputs are caught by the same interception as the spike rates (`spike_rates.layer_inputs`), with
no change to the model.

Two cases are reported by rule rather than measured spike by spike:

- A layer that sees the same input at every step has `B` input rows instead of `T * B` (the first
  conv under direct encoding, whose input is the image); its input is repeated over the `T` steps,
  which is what the hardware does when it runs the layer at each step. That layer is normally not
  analysed (`workload.metrics.analysed_layers` leaves it out).
- An input that is not 0/1 (the analog image; values after average pooling) is not event-driven
  in the strict sense: it is recorded as `x != 0`, an event wherever the input is non-zero, which
  is what a zero-skipping accelerator skips on. The models' analysed layers (fed by LIF spikes or
  max-pooled spikes) see 0/1 inputs, for which `x != 0` is the spike itself.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.models.describe import describe_layers
from uticket_jax.models.spike_rates import layer_inputs
from uticket_jax.workload.metrics import analysed_layers


def analysed_paths(
    model: nn.Module,
    image_shape: Sequence[int],
    *,
    among: Collection[str] | None = None,
    skip_first: bool = True,
) -> tuple[str, ...]:
    """Kernel paths of the layers the hardware figures analyse, in network order.

    The project's rule (`workload.metrics.analysed_layers`, as `hardware.specs_from_layers`
    applies it): conv layers only, the first conv left out unless `skip_first` is False.

    Args:
      model: a Flax SNN from `uticket_jax.models`.
      image_shape: one image `(H, W, C)`.
      among: only these kernel paths count as layers (a run's prunable ones, e.g. its mask keys);
        None: every conv/dense layer of the model.
      skip_first: leave the first conv out (`LTHConfig.skip_first_layer`).

    Returns:
      The analysed kernel paths.
    """
    infos = describe_layers(model, tuple(image_shape))
    if among is not None:
        infos = [i for i in infos if i.path in among]
    shapes = {i.path: i.kernel_shape for i in infos}
    keep = analysed_layers(shapes, skip_first=skip_first)
    return tuple(i.path for i, k in zip(infos, keep, strict=True) if k)


def _events(x: jax.Array, timesteps: int, batch: int, path: str) -> jax.Array:
    """A layer input `[T*B, ...]` or `[B, ...]` as events `[T, B, ...]` (`x != 0`)."""
    rows = x.shape[0]
    if rows == timesteps * batch:
        return x.reshape((timesteps, batch) + x.shape[1:]) != 0  # [T, B, ...]
    if rows == batch:  # the same input at every step (direct encoding)
        return jnp.broadcast_to((x != 0)[None], (timesteps,) + x.shape)  # [T, B, ...]
    raise ValueError(
        f"layers: {path!r} has {rows} input rows, neither the batch's {batch} nor T*B ="
        f" {timesteps * batch}"
    )


def trace_inputs(
    model: nn.Module, variables: Any, images: jax.Array, layers: Sequence[str]
) -> dict[str, jax.Array]:
    """The events of `layers`' inputs in one eval-mode forward pass over `images` (traceable).

    Args:
      model: a Flax SNN (its `timesteps` is `T`).
      variables: `{"params", "batch_stats"}` (nested, as `model.apply` takes them).
      images: `[B, H, W, C]`.
      layers: kernel paths of the layers to record.

    Returns:
      `{path: bool [T, B, H, W, C_in] or [T, B, C_in]}` in the order of `layers`.

    Raises:
      ValueError: naming `layers`, when one of them is not a conv/dense layer the model runs.
    """
    t, b = model.timesteps, images.shape[0]
    wanted, seen = set(layers), {}

    def keep(path: str, x: jax.Array) -> None:
        if path in wanted and path not in seen:  # each layer runs once per forward
            seen[path] = _events(x, t, b, path)

    with layer_inputs(keep):
        model.apply(variables, images, train=False)
    missing = [p for p in layers if p not in seen]
    if missing:
        raise ValueError(f"layers: {missing[0]!r} is not a conv/dense layer the model runs")
    return {p: seen[p] for p in layers}


@functools.cache
def _jitted(model: nn.Module, layers: tuple[str, ...]):
    """One compiled recorder per model and layer list (Flax modules hash by their fields)."""
    return jax.jit(functools.partial(trace_inputs, model, layers=layers))


def record_inputs(
    model: nn.Module,
    variables: Any,
    images: np.ndarray,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Records the inputs of a model's analysed layers over `images`, as events (see the module).

    Args:
      model: a Flax SNN from `uticket_jax.models` (its `timesteps` is the trace's `T`).
      variables: `{"params", "batch_stats"}` (nested, as `model.apply` takes them); masked
        weights are whatever the params hold (a trained ticket's are zero).
      images: `[N, H, W, C]`, N >= 1.
      layers: kernel paths to record; None: the analysed layers (`analysed_paths`: the convs but
        the first).
      batch_size: images per forward pass; a smaller last batch is padded, so one compilation
        serves every batch.

    Returns:
      `{kernel path: bool [T, N, H, W, C_in] (convs) or [T, N, C_in] (dense)}` in network order
      (`layers`' order when given), numpy arrays.

    Raises:
      ValueError: naming the argument: images not `[N, H, W, C]`, batch_size < 1, no layers, a
        path that is not a conv/dense layer of the model.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images: expected [N, H, W, C] with N >= 1, got shape {images.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    if layers is None:
        layers = analysed_paths(model, images.shape[1:])
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers: no layer to record (the model has no analysed layer)")
    fn = _jitted(model, layers)
    n = images.shape[0]
    size = min(batch_size, n)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in layers}
    for start in range(0, n, size):
        x = images[start : start + size]
        real = x.shape[0]
        if real < size:
            x = np.concatenate([x, np.zeros((size - real, *x.shape[1:]), x.dtype)])
        out = fn(variables, jnp.asarray(x))
        for p in layers:
            parts[p].append(np.asarray(out[p][:, :real]))
    return {p: np.concatenate(parts[p], axis=1) for p in layers}
