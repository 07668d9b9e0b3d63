"""Workload metrics of a PE array: one definition, shared by the rebalance report and the simulator.

A layer's work is split into groups of `n` processing elements (PEs) that run in lock-step; a group
finishes when its most loaded PE finishes. Everything here is a function of per-group sums and
maxima of the PE loads (load = non-zero weights held by a PE), so callers with a static `n`
(a `[G, n]` load table) and callers with a traced `n` (segment reductions in the simulator) share
the same formulas. `n` may be a traced array.

Per group (idle PEs count as load 0, so `mean = sum / n`)::

  utilization            = mean / max                                   (physical)
  utilization_normalized = 1 - (max - ceil(mean)) / max * n / (n - 1)  (the paper code's figure;
                           1 when balanced, 0 when one PE does everything; 1 for n = 1)
  wasted                 = n * max - sum   (PE-slots idle while the busiest PE works)

Per layer: utilizations are the mean over non-empty groups (max > 0); latency = sum of group max;
wasted = sum over groups; dynamic = total non-zeros. A layer with no non-zero weight has NaN
utilizations (undefined: there is no work), latency 0 and wasted 0.
Per network: utilizations are the mean over the analysed layers that have work; latency, wasted
and dynamic are sums.

Every function takes `xp`, the array module: `jax.numpy` (default; traceable) or `numpy` (the
host paths of the one-shot tools, which compile nothing). Both run the same float32 formulas;
means of several values may round differently in the last bit (reduction order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Metrics(NamedTuple):
    """Workload figures of a layer or a network, in load units (non-zero weights)."""

    utilization: jnp.ndarray
    utilization_normalized: jnp.ndarray
    latency: jnp.ndarray
    wasted: jnp.ndarray
    dynamic: jnp.ndarray

    def to_dict(self) -> dict[str, float | None]:
        """Python floats for JSON; NaN (a layer without work) becomes None."""
        return {k: float_or_none(v) for k, v in self._asdict().items()}


def float_or_none(x) -> float | None:
    """A scalar as a Python float for JSON; NaN or infinite (a layer without work) becomes None."""
    f = float(x)
    return f if math.isfinite(f) else None


def group_figures(group_sum, group_max, n, xp=jnp):
    """Per-group `(utilization, utilization_normalized, wasted)`; NaN utilizations where max == 0.

    Args:
      group_sum: `[..., G]` total load of each group (integers).
      group_max: `[..., G]` load of the busiest PE of each group.
      n: PEs per group (int or traced scalar), broadcastable against the groups.
      xp: the array module (`jax.numpy` or `numpy`).
    """
    group_sum = xp.asarray(group_sum)
    group_max = xp.asarray(group_max)
    n = xp.asarray(n, group_sum.dtype) if xp is np else xp.asarray(n)
    maxf = group_max.astype(xp.float32)
    safe_max = xp.where(group_max > 0, maxf, xp.float32(1.0))
    nf = n.astype(xp.float32)
    util = group_sum.astype(xp.float32) / (nf * safe_max)
    ceil_mean = (group_sum + n - 1) // n  # exact integer ceil(sum / n)
    # 1 - (max - ceil_mean) / max * n / (n - 1) as one division of exact integers,
    # (max (n - 1) - (max - ceil_mean) n) / (max (n - 1)): correctly rounded, and exactly 0 where
    # the figure is 0 (the float formula gave -3e-8 for max 3, ceil_mean 1, n 3).
    safe_max_i = xp.where(group_max > 0, group_max, 1)
    den = safe_max_i * xp.maximum(n - 1, 1)
    num = den - (safe_max_i - ceil_mean) * n
    util_norm = xp.where(n > 1, num.astype(xp.float32) / den.astype(xp.float32), xp.float32(1.0))
    empty = group_max <= 0
    util = xp.where(empty, xp.float32(xp.nan), util)
    util_norm = xp.where(empty, xp.float32(xp.nan), util_norm)
    wasted = n * group_max - group_sum
    return util, util_norm, wasted


def _nanmean(x, xp):
    """Mean over the non-NaN entries of the last axis (NaN where there are none), float32."""
    if xp is not np:
        return xp.nanmean(x, axis=-1)
    ok = ~np.isnan(x)
    total = np.where(ok, x, np.float32(0.0)).sum(-1, dtype=np.float32)
    count = ok.sum(-1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1).astype(np.float32), np.nan).astype(
            np.float32
        )


def layer_metrics(group_sum, group_max, n, xp=jnp) -> Metrics:
    """A layer's `Metrics` from its per-group sums and maxima `[G]` (see the module docstring)."""
    util, util_norm, wasted = group_figures(group_sum, group_max, n, xp)
    nan = xp.float32(xp.nan)
    return Metrics(
        utilization=_nanmean(util, xp) if util.size else nan,
        utilization_normalized=_nanmean(util_norm, xp) if util.size else nan,
        latency=xp.sum(group_max, axis=-1),
        wasted=xp.sum(wasted, axis=-1),
        dynamic=xp.sum(group_sum, axis=-1),
    )


def loads_metrics(loads, n: int | None = None, xp=jnp) -> Metrics:
    """A layer's `Metrics` from a static `[G, n]` table of PE loads (idle PEs hold 0)."""
    loads = xp.asarray(loads)
    return layer_metrics(loads.sum(-1), loads.max(-1), loads.shape[-1] if n is None else n, xp)


def network_metrics(layers: Sequence[Metrics], xp=jnp) -> Metrics:
    """Combines analysed layers: mean utilizations over layers with work, summed latency/waste."""
    if not layers:
        nan = xp.float32(xp.nan)
        zero = xp.int32(0)
        return Metrics(nan, nan, zero, zero, zero)
    stack = Metrics(*(xp.stack([xp.asarray(x) for x in col]) for col in zip(*layers, strict=True)))
    return Metrics(
        utilization=_nanmean_or_nan(stack.utilization, xp),
        utilization_normalized=_nanmean_or_nan(stack.utilization_normalized, xp),
        latency=stack.latency.sum(0),
        wasted=stack.wasted.sum(0),
        dynamic=stack.dynamic.sum(0),
    )


def _nanmean_or_nan(x, xp=jnp):
    ok = ~xp.isnan(x)
    total = xp.sum(xp.where(ok, x, xp.float32(0.0)), axis=0)
    count = xp.maximum(ok.sum(0), 1).astype(xp.float32) if xp is np else xp.maximum(ok.sum(0), 1)
    return xp.where(ok.any(0), total / count, xp.float32(xp.nan))


def analysed_layers(
    shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
    *,
    conv_only: bool = True,
    skip_first: bool = True,
) -> list[bool]:
    """Which layers the workload analysis covers, in network order.

    The paper's default: conv layers only (4-D kernels), the first conv left out (it sees the
    analog image, not spikes, and runs once under direct encoding).

    Args:
      shapes: kernel shapes in network order (a dict `{path: shape}` or a list).
      conv_only: leave dense (2-D) layers out.
      skip_first: leave the first conv layer out.
    """
    shape_list = list(shapes.values()) if isinstance(shapes, Mapping) else list(shapes)
    out = []
    seen_conv = False
    for shape in shape_list:
        is_conv = len(shape) == 4
        keep = is_conv or not conv_only
        if is_conv and not seen_conv:
            seen_conv = True
            keep = keep and not skip_first
        out.append(keep)
    return out
