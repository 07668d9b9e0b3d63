"""Per-PE target loads of u-Ticket: what every PE of a group should carry after rebalancing.

With `f(L) = sum_j min(cap_j, L)` the load a group holds at level `L` when every PE `j` is filled up
to `L` but never past its capacity `cap_j` (idle PEs have `cap_j = 0`) and `S` the group's current
total::

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


def _fori(xp, steps: int, body, init):
    """`lax.fori_loop` for jax, a Python loop for numpy (the same steps either way)."""
    if xp is np:
        for i in range(steps):
            init = body(i, init)
        return init
    return lax.fori_loop(0, steps, body, init)


def level_search(cap, s, c_max: int, strict: bool, xp=jnp):
    """Per group, the smallest `L` in `[0, c_max + 1]` with `f(L) >= s` (`> s` if strict)."""
    # cap: [G, n], s: [G]. f is monotone, so a fixed-length bisection (static length) suffices.
    lo = xp.zeros_like(s)
    hi = xp.full_like(s, c_max + 1)

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) // 2
        f = xp.minimum(cap, mid[:, None]).sum(-1, dtype=s.dtype)  # [G]
        ok = (f > s) if strict else (f >= s)
        # f(c_max + 1) counts as +inf, so a saturated group settles at c_max + 1.
        ok = ok | (mid > c_max)
        return xp.where(ok, lo, mid + 1), xp.where(ok, mid, hi)

    lo, _ = _fori(xp, (c_max + 1).bit_length() + 1, body, (lo, hi))
    return lo


def _keep_count(loads, cap, s, c_max: int, xp=jnp):
    """keep_count targets: the water level `L0` plus one for the `r` busiest PEs above it."""
    l0 = level_search(cap, s, c_max, strict=True, xp=xp) - 1  # [G] largest L with f(L) <= S
    base = xp.minimum(cap, l0[:, None])  # [G, n]
    r = s - base.sum(-1, dtype=s.dtype)  # [G] PEs that get one more
    cand = cap > l0[:, None]  # [G, n]
    # Order candidates by current load, descending, ties by lower PE index (stable sort); the
    # inverse permutation (an argsort of the order) is each PE's place.
    order_by = xp.where(cand, -loads, np.iinfo(np.int32).max)
    order = xp.argsort(order_by, axis=-1, stable=True)  # [G, n]
    place = xp.argsort(order, axis=-1, stable=True)
    return (base + (cand & (place < r[:, None]))).astype(np.int32)


def traced_targets(loads, cap, *, target: str, c_max: int, xp=jnp):
    """`[G, n]` int32 targets (`target`, `c_max` static): the body of `pe_targets`, traceable
    with `xp=jax.numpy` and the same steps on the host with `xp=numpy`.

    Args:
      loads: `[G, n]` int32 current loads.
      cap: `[G, n]` int32 PE capacities.
      target: one of `TARGETS` (picks the formula).
      c_max: slots per PE, at least `cap.max()` (bounds the level bisection).
      xp: the array module.

    Returns:
      `[G, n]` int32 with `0 <= target <= cap`; keep_count keeps every group total.
    """
    loads = xp.asarray(loads).astype(np.int32)
    cap = xp.asarray(cap).astype(np.int32)
    s = loads.sum(-1, dtype=np.int32)  # [G]
    if target == "ceil_mean":
        level = level_search(cap, s, c_max, strict=False, xp=xp)  # [G]
        return xp.minimum(cap, level[:, None]).astype(np.int32)
    return _keep_count(loads, cap, s, c_max, xp)


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
