"""The `expected_work` rebalance target: equal *expected* work per PE, not equal non-zero counts.

On an event-driven accelerator a weight costs a cycle only when its input spikes, so a PE's
expected work is the sum, over its non-zero weights, of the firing rate of each weight's input
channel (a per-weight *cost* in `[0, 1]`). This target (beyond the paper) balances that sum:

  units       costs are resolved to `1/COST_UNITS`: `u = clip(round(c * COST_UNITS), 1,
              COST_UNITS)` int32, so a weight on a silent channel still costs one unit (the floor:
              an under-loaded PE cannot hoard free weights) and every sum below is exact integer
              arithmetic, the same on both backends and in the loop oracle;
  work        `E[g, j]` = units of PE `(g, j)`'s non-zero weights; `W[g, j]` = units of all its
              weights (its capacity in units); `S[g]` = the group's total;
  level       `L*` = the smallest integer `L` with `sum_j min(W_j, L) >= S` (the capacity-aware
              mean, `targets.py`'s ceil_mean level in units);
  target      `T[g] = min(max_j E[g, j], q * ceil(L* / q))`, `q` the layer's largest weight cost
              in units (a PE can always come within one weight of `T`), never above the group's
              busiest PE, so the largest expected work never grows;
  moves       a PE with `E > T` drops its active weights lowest priority first until `E <= T`; a
              PE with `E < T` regrows its pruned weights highest priority first while `E <= T`
              and its non-zero count stays at most the group's largest count (the *count room*:
              the weight-only latency never grows either, and cheap weights are not hoarded);
              priorities are the policy's (`priorities.py`), ties to the lower hwio flat index,
              and the stops are prefix rules on one stable sort per PE (a cumulative sum).

With every cost 1 (`u = COST_UNITS`) this is exactly `ceil_mean`: the same masks bit for bit
(tested). Invariants (tested against a loop oracle): only a layer's own weights change, each PE
only regrows or only drops, every PE ends at `E <= T`, `max E` and `max count` per group never
increase. The non-zero count can grow or shrink (weights move from PEs of busy inputs to PEs of
quiet ones); the report gives the counts before and after.

One implementation over `xp` (`plan_select`) serves the compiled (`jax`) and host (`numpy`)
backends; each PE's slots are sorted once (`argsort`, a full sort: slower than the count
targets' threshold selection, fine for a once-per-round transform).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uticket_jax.workload import priorities
from uticket_jax.workload.mapping import PEMapping
from uticket_jax.workload.mappings import check_mask, get_mapping
from uticket_jax.workload.targets import level_search

EXPECTED_WORK = "expected_work"
COST_UNITS = 256  # costs resolved to 1/256; the floor of a weight's cost is one unit
_DROP_BASE = 0x7F800000  # bits of +inf: drop ranks invert the priority's bits (as selection.py)
_CONFIGS_KEPT = 4


def check_costs(label: str, mask: Any, costs: Any, n_pe: int, m: PEMapping) -> None:
    """Raises ValueError (naming `label`) unless `costs` broadcasts to the mask's kernel with the
    same rank, is floating point, and (on the host) finite in `[0, 1]`; and the group sums fit
    int32."""
    shape, cshape = tuple(np.shape(mask)), tuple(np.shape(costs))
    fits = len(cshape) == len(shape)
    if not fits or any(c not in (1, s) for c, s in zip(cshape, shape, strict=True)):
        raise ValueError(
            f"{label}: shape {cshape} does not broadcast to the mask's {shape} (same rank, "
            "e.g. [1, 1, c_in, 1] or [c_in, 1] for per-input-channel rates)"
        )
    if not jnp.issubdtype(jnp.result_type(costs), jnp.floating):
        raise ValueError(f"{label}: must be floating point, got {jnp.result_type(costs)}")
    if not isinstance(costs, jax.core.Tracer):
        c = np.asarray(costs)
        if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c > 1):
            raise ValueError(f"{label}: must be finite rates in [0, 1]")
    if n_pe * m.geometry(shape, n_pe)[1] * COST_UNITS >= 2**31:
        raise ValueError(f"{label}: a group of {n_pe} PEs of this layer overflows int32 units")


def cost_units(costs, shape, xp=jnp):
    """int32 units of every weight of a kernel of `shape`: `clip(round(c * 256), 1, 256)`
    (under a trace, unchecked NaN counts as a full cost)."""
    c = xp.asarray(costs).astype(np.float32)
    c = xp.where(xp.isnan(c), np.float32(1), c)
    u = xp.clip(xp.round(c * np.float32(COST_UNITS)), 1, COST_UNITS).astype(np.int32)
    return xp.broadcast_to(u, tuple(shape))


def work_tables(mask, units, m: PEMapping, n_pe: int, xp=jnp):
    """`(E, W, N)` `[G, n]` int32: units of each PE's non-zeros, of all its weights, and its
    non-zero count."""
    g, c = m.geometry(mask.shape, n_pe)
    mask_s = m.to_slots(mask, n_pe, False, xp)  # [G, n, C]
    units_s = m.to_slots(units, n_pe, 0, xp)  # [G, n, C], 0 in padding
    work = xp.where(mask_s, units_s, 0).sum(-1, dtype=np.int32)
    return work, units_s.sum(-1, dtype=np.int32), mask_s.sum(-1, dtype=np.int32)


def group_targets(work, cap_units, q, c_max: int, xp=jnp):
    """`[G]` int32 `T = min(max_j E, q * ceil(L* / q))` (see the module docstring; `c_max`
    static, at least `cap_units.max()`)."""
    s = work.sum(-1, dtype=np.int32)  # [G]
    level = level_search(cap_units, s, c_max, strict=False, xp=xp)  # [G]
    rounded = (level + q - 1) // q * q
    return xp.minimum(work.max(-1), rounded).astype(np.int32)


def _bits(prio, xp):
    """The int32 bits of float32 priorities (non-negative finite floats order like them)."""
    prio = prio.astype(np.float32)
    return prio.view(np.int32) if xp is np else lax.bitcast_convert_type(prio, jnp.int32)


def _take(x, idx, xp):
    """`x` gathered along the last axis by `idx` (same shape)."""
    return xp.take_along_axis(x, idx, axis=-1)


def plan_select(mask, prio, units, m: PEMapping, n_pe: int, xp=jnp):
    """The rebalanced mask of one layer and its `(E, T)` before: THE algorithm, over `xp`.

    Args:
      mask: bool hwio kernel; prio: float32 non-negative priorities of its shape; units: int32
        costs of its shape (`cost_units`).
      m: the `PEMapping`; n_pe: PEs per group (static); xp: `jax.numpy` or `numpy`.

    Returns:
      `(new_mask, work [G, n], target [G])` int32 units.
    Keeps: each PE changes only its own slots, only regrows (E < T) or only drops (E > T).
    """
    g, c = m.geometry(mask.shape, n_pe)
    work, cap_units, count = work_tables(mask, units, m, n_pe, xp)
    q = xp.max(units).astype(np.int32)
    tgt = group_targets(work, cap_units, q, c * COST_UNITS, xp)  # [G]
    mask_s = m.to_slots(mask, n_pe, False, xp).reshape(g * n_pe, c)
    valid_s = m.to_slots(xp.ones(mask.shape, bool), n_pe, False, xp).reshape(g * n_pe, c)
    units_s = m.to_slots(units, n_pe, 0, xp).reshape(g * n_pe, c)
    bits = _bits(m.to_slots(prio, n_pe, np.float32(0), xp).reshape(g * n_pe, c), xp)
    e = work.reshape(-1, 1)  # [P, 1]
    t = xp.repeat(tgt, n_pe).reshape(-1, 1)
    room = xp.repeat(count.max(-1), n_pe).reshape(-1, 1) - count.reshape(-1, 1)
    up, down = e < t, e > t
    grow = xp.where(up & valid_s & ~mask_s, bits, -1)
    drop = xp.where(down & mask_s, np.int32(_DROP_BASE) - bits, -1)
    rank = xp.maximum(grow, drop)  # [P, C]: preference, -1 no candidate
    order = xp.argsort(-rank, axis=-1, stable=True)  # best first, ties to the lower slot
    cand = _take(rank, order, xp) >= 0
    cost = xp.where(cand, _take(units_s, order, xp), 0)
    cs = xp.cumsum(cost, axis=-1, dtype=np.int32)  # [P, C] inclusive
    pos = xp.arange(c, dtype=np.int32)[None]
    regrow = up & (cs <= t - e) & (pos < room)
    dropped = down & (cs - cost < e - t)
    chosen = cand & (regrow | dropped)  # in sorted order
    flips = _take(chosen, xp.argsort(order, axis=-1), xp).reshape(g, n_pe, c)
    new_s = mask_s.reshape(g, n_pe, c) ^ flips
    return m.from_slots(new_s, mask.shape, n_pe, xp), work, tgt


def _select_body(mask, weights, costs, key, layer, *, n_pe: int, m: PEMapping, policy: str):
    # Static: the PE array and the policy; every shape follows from the layer's. `layer` is the
    # traced position folded into `key` (None: `key` as given), as rebalance.py's select step.
    k = key if layer is None else jax.random.fold_in(key, layer)
    prio = priorities.layer_priorities(policy, weights, k, mask.shape)
    new, _, _ = plan_select(mask, prio, cost_units(costs, mask.shape), m, n_pe)
    return new


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _select_program(n_pe: int, m: PEMapping, policy: str):
    """The jitted expected-work step of one configuration (a fresh jit object per entry)."""
    return jax.jit(functools.partial(_select_body, n_pe=n_pe, m=m, policy=policy))


def select_layer(mask, weights, costs, key, layer, *, n_pe, m, policy, words=None, xp=jnp):
    """The rebalanced mask of one layer on either backend (`words`: the host's key words of the
    layer for the random policy)."""
    if xp is not np:
        return _select_program(n_pe, m, policy)(mask, weights, costs, key, layer)
    if policy == "magnitude":
        prio = priorities.magnitude_priorities(weights, np)
    else:
        prio = priorities.hashed_priorities(words, mask.shape, np)
    return plan_select(mask, prio, cost_units(costs, mask.shape, np), m, n_pe, np)[0]


def expected_work(mask, costs, n_pe: int, mapping: Any = "output_channel") -> np.ndarray:
    """Expected work of every PE: the summed costs of its non-zero weights (resolved as the
    target resolves them, to `1/COST_UNITS` with a floor of one unit).

    Args:
      mask: bool hwio kernel; costs: float rates in `[0, 1]` broadcasting to it (same rank).
      n_pe: PEs per group; mapping: a registered mapping name or `PEMapping`.

    Returns:
      `[G, n]` float64 numpy (exact multiples of `1/COST_UNITS`).
    """
    m = get_mapping(mapping) if isinstance(mapping, str) else mapping
    check_mask(mask)
    check_costs("costs", mask, costs, n_pe, m)
    mask = np.asarray(mask)
    units = cost_units(np.asarray(costs), mask.shape, np)
    return work_tables(mask, units, m, n_pe, np)[0] / COST_UNITS
