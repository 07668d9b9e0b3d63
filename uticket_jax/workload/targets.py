"""Per-PE target loads of u-Ticket: what every PE of a group should carry after rebalancing.

With `f(L) = sum_j min(cap_j, L)` the load a group holds at level `L` when every PE `j` is filled up
to `L` but never past its capacity `cap_j` (idle PEs have `cap_j = 0`) and `S` the group's current
total:
  ceil_mean:  `L* = min{L : f(L) >= S}`, target_j = min(cap_j, L*). Without capacity limits
              `L* = ceil(S / n_active)` (`n_active` = PEs with a slot), the paper's target, so a
              full group ends at utilization 1.0; the count grows by `f(L*) - S < n`, never shrinks.
  keep_count: `L0 = max{L : f(L) <= S}`, target_j = min(cap_j, L0), plus one for the
              `r = S - f(L0)` PEs with `cap_j > L0` that have the largest current load (ties: lower
              PE index), so the group total is unchanged and uncapped loads lie within 1.
A PE is *capacity-capped* when `0 < cap_j = target_j <` the group's largest target (a short input
slice that cannot reach the level); the rebalance report counts them.

"Already balanced" means `loads == targets(loads)`: for ceil_mean every PE sits at
`min(cap_j, L*)` (so `[3, 3, 3, 2]` is not balanced: its last PE regrows one); for keep_count the
loads are the water-filled split above (uncapped loads within 1, capped PEs full). Such a mask comes
back unchanged, and rebalancing is idempotent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TARGETS = ("ceil_mean", "keep_count")


def check_target(target: str) -> str:
    """Returns `target`, or raises ValueError unless it is one of `TARGETS`."""
    if target not in TARGETS:
        raise ValueError(f"target: unknown target {target!r}; allowed: {', '.join(TARGETS)}")
    return target


def _level_search(cap, s, c_max: int, strict: bool):
    """Per group, the smallest `L` in `[0, c_max + 1]` with `f(L) >= s` (`> s` if strict)."""
    # cap: [G, n], s: [G]. f is monotone, so a fixed-length bisection (static length) suffices.
    lo = jnp.zeros_like(s)
    hi = jnp.full_like(s, c_max + 1)

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) // 2
        f = jnp.minimum(cap, mid[:, None]).sum(-1)  # [G]
        ok = (f > s) if strict else (f >= s)
        # f(c_max + 1) counts as +inf, so a saturated group settles at c_max + 1.
        ok = ok | (mid > c_max)
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    lo, _ = lax.fori_loop(0, (c_max + 1).bit_length() + 1, body, (lo, hi))
    return lo


def _keep_count(loads, cap, s, c_max: int):
    """keep_count targets: the water level `L0` plus one for the `r` busiest PEs above it."""
    l0 = _level_search(cap, s, c_max, strict=True) - 1  # [G] largest L with f(L) <= S
    base = jnp.minimum(cap, l0[:, None])  # [G, n]
    r = s - base.sum(-1)  # [G] PEs that get one more
    cand = cap > l0[:, None]  # [G, n]
    n = loads.shape[-1]
    # Order candidates by current load, descending, ties by lower PE index (stable sort).
    order_by = jnp.where(cand, -loads, jnp.iinfo(jnp.int32).max)
    order = jnp.argsort(order_by, axis=-1, stable=True)  # [G, n]
    place = (
        jnp.zeros_like(order)
        .at[jnp.arange(order.shape[0])[:, None], order]
        .set(jnp.broadcast_to(jnp.arange(n), order.shape))
    )
    return (base + (cand & (place < r[:, None]))).astype(jnp.int32)


def traced_targets(loads, cap, *, target: str, c_max: int):
    """Traced body of `pe_targets`: `[G, n]` int32 targets (`target`, `c_max` static).

    Args:
      loads: `[G, n]` int32 current loads (traced).
      cap: `[G, n]` int32 PE capacities (traced).
      target: one of `TARGETS` (picks the formula).
      c_max: slots per PE, at least `cap.max()` (bounds the level bisection).

    Returns:
      `[G, n]` int32 with `0 <= target <= cap`; keep_count keeps every group total.
    """
    s = loads.sum(-1)  # [G]
    if target == "ceil_mean":
        level = _level_search(cap, s, c_max, strict=False)  # [G]
        return jnp.minimum(cap, level[:, None]).astype(jnp.int32)
    return _keep_count(loads, cap, s, c_max)


_targets = jax.jit(traced_targets, static_argnames=("target", "c_max"))


def pe_targets(loads, capacity, target: str = "ceil_mean") -> jax.Array:
    """Per-PE target loads of a `[G, n]` load table (see the module docstring).

    Args:
      loads: `[G, n]` current non-zeros per PE.
      capacity: `[G, n]` slots per PE (`mappings.pe_capacity`); idle PEs 0.
      target: "ceil_mean" or "keep_count".

    Returns:
      `[G, n]` int32 target loads.
    """
    check_target(target)
    loads = jnp.asarray(loads, jnp.int32)
    capacity = jnp.asarray(capacity, jnp.int32)
    if loads.ndim != 2 or capacity.shape != loads.shape:
        raise ValueError(
            f"capacity: must match loads' [G, n] shape {loads.shape}, got {capacity.shape}"
        )
    c_max = int(np.max(capacity, initial=0))
    return _targets(loads, capacity, target=target, c_max=c_max)


# ---- host (numpy) versions: the same bisection and tie rules, for the one-shot host path -------


def _host_level_search(cap: np.ndarray, s: np.ndarray, c_max: int, strict: bool) -> np.ndarray:
    """numpy `_level_search`: per group the smallest `L` in `[0, c_max + 1]` with `f(L) >= s`."""
    lo = np.zeros_like(s)
    hi = np.full_like(s, c_max + 1)
    for _ in range((c_max + 1).bit_length() + 1):
        mid = (lo + hi) // 2
        f = np.minimum(cap, mid[:, None]).sum(-1, dtype=s.dtype)
        ok = ((f > s) if strict else (f >= s)) | (mid > c_max)
        lo, hi = np.where(ok, lo, mid + 1), np.where(ok, mid, hi)
    return lo


def host_targets(loads: np.ndarray, cap: np.ndarray, *, target: str, c_max: int) -> np.ndarray:
    """numpy `traced_targets`: `[G, n]` int32 targets, equal to the JAX version element for element.

    Args:
      loads: `[G, n]` int32 current loads; cap: `[G, n]` int32 PE capacities.
      target: one of `TARGETS`; c_max: slots per PE, at least `cap.max()`.
    """
    loads = np.asarray(loads, np.int32)
    cap = np.asarray(cap, np.int32)
    s = loads.sum(-1, dtype=np.int32)
    if target == "ceil_mean":
        level = _host_level_search(cap, s, c_max, strict=False)
        return np.minimum(cap, level[:, None]).astype(np.int32)
    l0 = _host_level_search(cap, s, c_max, strict=True) - 1
    base = np.minimum(cap, l0[:, None])
    r = s - base.sum(-1, dtype=np.int32)
    cand = cap > l0[:, None]
    order = np.argsort(np.where(cand, -loads, np.iinfo(np.int32).max), axis=-1, kind="stable")
    place = np.empty_like(order)
    np.put_along_axis(place, order, np.broadcast_to(np.arange(loads.shape[-1]), order.shape), -1)
    return (base + (cand & (place < r[:, None]))).astype(np.int32)
