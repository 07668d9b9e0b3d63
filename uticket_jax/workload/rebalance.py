"""u-Ticket rebalancing of one layer's mask: every PE of a group ends with the same load.

Per group (Yin et al., TETCI 2024, Sec. III; DESIGN.md): PEs under their target regrow
`target - load` pruned positions, PEs over it drop `load - target` active positions, only inside
their own slice of the kernel (see `mappings.py`).

Targets. With `f(L) = sum_j min(cap_j, L)` the load a group holds at level `L` when every PE `j`
is filled up to `L` but never past its capacity `cap_j` (idle PEs have `cap_j = 0`) and `S` the
group's current total:
  ceil_mean:  `L* = min{L : f(L) >= S}`, target_j = min(cap_j, L*). Without capacity limits
              `L* = ceil(S / n_active)` (`n_active` = PEs with a slot), the paper's target, so a
              full group ends at utilization 1.0; the count grows by `f(L*) - S < n`, never shrinks.
  keep_count: `L0 = max{L : f(L) <= S}`, target_j = min(cap_j, L0), plus one for the
              `r = S - f(L0)` PEs with `cap_j > L0` that have the largest current load (ties: lower
              PE index), so the group total is unchanged and uncapped loads lie within 1.
A PE is *capacity-capped* when `0 < cap_j = target_j <` the group's largest target (a short input
slice that cannot reach the level); the report counts them.

"Already balanced" means `loads == targets(loads)`: for ceil_mean every PE sits at
`min(cap_j, L*)` (so `[3, 3, 3, 2]` is not balanced: its last PE regrows one); for keep_count the
loads are the water-filled split above (uncapped loads within 1, capped PEs full). Such a mask comes
back unchanged, and rebalancing is idempotent.

Selection. `policy="magnitude"` ranks candidates by `|w|` (regrow largest, drop smallest;
non-finite `|w|` counts as the largest float), `policy="random"` by a uniform priority per weight
drawn from `key` (`random_priorities`). Ties go to the lower hwio flat index. The per-PE choice is a
`lax.top_k` over the PE's slots with a static bound `k >= max |target - load|` (rounded up to a
power of two to limit recompiles), not a sort of the whole slice.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uticket_jax.workload import mappings as mp
from uticket_jax.workload.metrics import Metrics, loads_metrics

POLICIES = ("magnitude", "random")
TARGETS = ("ceil_mean", "keep_count")


class RebalanceReport(NamedTuple):
    """What `rebalance` changed in one layer (arrays; `Metrics` in load units)."""

    loads_before: jax.Array  # [G, n] int32
    loads_after: jax.Array  # [G, n] int32
    regrown: jax.Array  # int32: pruned positions made active
    dropped: jax.Array  # int32: active positions pruned
    capped: jax.Array  # int32: PEs held below their group's level by their capacity
    before: Metrics
    after: Metrics


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def check_target(target: str) -> str:
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


@functools.partial(jax.jit, static_argnames=("target", "c_max"))
def _targets(loads, cap, *, target: str, c_max: int):
    # target picks the formula, c_max (slots per PE) bounds the bisection: both structural.
    # Keeps: 0 <= target <= cap; keep_count keeps every group total.
    s = loads.sum(-1)  # [G]
    if target == "ceil_mean":
        level = _level_search(cap, s, c_max, strict=False)  # [G]
        return jnp.minimum(cap, level[:, None]).astype(jnp.int32)
    l0 = _level_search(cap, s, c_max, strict=True) - 1  # [G] largest L with f(L) <= S
    base = jnp.minimum(cap, l0[:, None])  # [G, n]
    r = s - base.sum(-1)  # [G] PEs that get one more
    cand = cap > l0[:, None]  # [G, n]
    n = loads.shape[-1]
    # Rank candidates by current load, descending, ties by lower PE index (stable sort).
    key = jnp.where(cand, -loads, jnp.iinfo(jnp.int32).max)
    order = jnp.argsort(key, axis=-1, stable=True)  # [G, n]
    rank = (
        jnp.zeros_like(order)
        .at[jnp.arange(order.shape[0])[:, None], order]
        .set(jnp.broadcast_to(jnp.arange(n), order.shape))
    )
    return (base + (cand & (rank < r[:, None]))).astype(jnp.int32)


def pe_targets(loads, capacity, target: str = "ceil_mean") -> jax.Array:
    """Per-PE target loads `[G, n]` int32 of a `[G, n]` load table (see the module docstring).

    Args:
      loads: `[G, n]` current non-zeros per PE.
      capacity: `[G, n]` slots per PE (`mappings.pe_capacity`); idle PEs 0.
      target: "ceil_mean" or "keep_count".
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


def _mix32(x):
    """An invertible integer finaliser (xor-shift / multiply) that spreads every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


@functools.partial(jax.jit, static_argnames=("shape",))
def _random_priorities(key, shape: tuple[int, ...]):
    # shape is the output shape (static by nature).
    seed = jax.random.bits(key, (2,), jnp.uint32)
    idx = lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    h = _mix32(_mix32(idx ^ seed[0]) + seed[1])
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def random_priorities(key, shape) -> jax.Array:
    """Uniform priorities in `[0, 1)` (24-bit grid) for every weight of a kernel of `shape`.

    A counter-based hash of the weight's hwio flat index, keyed by two words drawn from `key`: one
    fused elementwise pass (threefry over 14.7M weights would cost ~0.4 s on 2 CPU cores). Same key,
    same priorities, independent of mapping and `n_pe`.
    """
    return _random_priorities(key, tuple(int(d) for d in shape))


def _bound(d_max: int, c: int) -> int:
    """Static top-k size: the next power of two >= d_max, at most the slots per PE."""
    return max(1, min(c, 1 << max(0, int(d_max) - 1).bit_length()))


def select_flips(mask_slots, prio_slots, valid, delta, k: int):
    """Per PE, the slots to flip: `[G, n, C]` bool (traced; `k` static).

    Regrow (`delta > 0`): the `delta` pruned valid slots of highest `prio`; drop (`delta < 0`): the
    `-delta` active slots of lowest `prio`. Ties: lower slot index (= lower hwio flat index).
    """
    up = (delta > 0)[..., None]  # [G, n, 1]
    neg_inf = jnp.float32(-jnp.inf)
    score = jnp.where(
        up,
        jnp.where(valid & ~mask_slots, prio_slots, neg_inf),
        jnp.where(mask_slots, -prio_slots, neg_inf),
    )  # [G, n, C]
    vals, idx = lax.top_k(score, k)  # [G, n, k], descending, ties by lower index
    need = jnp.abs(delta)  # [G, n]
    last = jnp.clip(need - 1, 0, k - 1)[..., None]  # position of the last chosen slot
    thr = jnp.take_along_axis(vals, last, -1)  # [G, n, 1]
    thr_idx = jnp.take_along_axis(idx, last, -1)  # [G, n, 1]
    slot = lax.broadcasted_iota(jnp.int32, score.shape, 2)
    chosen = (score > thr) | ((score == thr) & (slot <= thr_idx))
    return chosen & (score > neg_inf) & (need > 0)[..., None]


@functools.partial(jax.jit, static_argnames=("n_pe", "mapping", "k"))
def _apply(mask, prio, delta, *, n_pe: int, mapping: str, k: int):
    # n_pe / mapping fix the slot layout's shape and k the top-k width: structure, hence static.
    # Keeps: only slots of the PE change; regrown were pruned, dropped were active; |flips| = |d|.
    m = mp.MAPPINGS[mapping]
    mask_slots = m.to_slots(mask, n_pe, False)  # [G, n, C]
    prio_slots = m.to_slots(prio, n_pe, 0.0)  # [G, n, C]
    valid = m.to_slots(jnp.ones(mask.shape, bool), n_pe, False)  # [G, n, C]
    flips = select_flips(mask_slots, prio_slots, valid, delta, k)
    return m.from_slots(mask_slots ^ flips, mask.shape, n_pe)


@jax.jit
def _magnitude(weights):
    a = jnp.abs(weights.astype(jnp.float32))
    big = jnp.finfo(jnp.float32).max
    return jnp.where(jnp.isfinite(a), a, big)  # non-finite |w| ranks as the largest


def check_weights(mask, weights) -> None:
    if weights is None:
        return
    if np.shape(weights) != np.shape(mask):
        raise ValueError(
            f"weights: shape {np.shape(weights)} does not match the mask's {np.shape(mask)}"
        )
    if not jnp.issubdtype(jnp.result_type(weights), jnp.floating):
        raise ValueError(f"weights: must be floating point, got {jnp.result_type(weights)}")


def layer_priorities(mask, weights, policy: str, key):
    """The selection priority of every weight: `|w|` (magnitude) or uniform (random)."""
    if policy == "magnitude":
        if weights is None:
            raise ValueError("weights: required for policy='magnitude' (use policy='random')")
        return _magnitude(jnp.asarray(weights))
    if key is None:
        raise ValueError("key: required for policy='random' (a jax.random key)")
    return random_priorities(key, np.shape(mask))


def rebalance(
    mask,
    weights=None,
    *,
    n_pe: int,
    mapping: str = "output_channel",
    policy: str = "magnitude",
    target: str = "ceil_mean",
    key: Any = None,
) -> tuple[jax.Array, RebalanceReport]:
    """u-Ticket: moves non-zeros between the PEs of every group so their loads match the target.

    Args:
      mask: boolean hwio kernel `[kh, kw, c_in, c_out]` or `[c_in, c_out]`.
      weights: float array of the mask's shape; the trained weights from before pruning, so the
        ones that just fell below the threshold come back first. Required for "magnitude".
      n_pe: PEs per group (static).
      mapping: "output_channel" or "input_split" (`mappings.MAPPINGS`).
      policy: "magnitude" (regrow largest |w|, drop smallest |w|) or "random" (uniform, `key`).
      target: "ceil_mean" (every PE at min(cap, L*), L* = ceil(mean) without caps) or
        "keep_count" (group totals unchanged, loads within 1); see the module docstring.
      key: `jax.random` key, required for policy="random".

    Returns:
      `(new_mask, report)`: the bool mask (same shape) and a `RebalanceReport`.
    """
    n_pe = mp.check_n_pe(n_pe)
    m = mp.get_mapping(mapping)
    check_policy(policy)
    check_target(target)
    mp.check_mask(mask)
    check_weights(mask, weights)
    mask = jnp.asarray(mask)
    shape = tuple(mask.shape)
    cap = mp.pe_capacity(shape, n_pe, m.name)  # [G, n] host
    loads = mp.pe_loads(mask, n_pe, m.name)  # [G, n]
    tgt = _targets(loads, jnp.asarray(cap), target=target, c_max=m.geometry(shape, n_pe)[1])
    delta = tgt - loads  # [G, n]
    d_max = int(jnp.max(jnp.abs(delta), initial=0))
    prio = layer_priorities(mask, weights, policy, key)  # checks weights / key even if balanced
    if d_max == 0:
        new = mask
    else:
        k = _bound(d_max, m.geometry(shape, n_pe)[1])
        new = _apply(mask, prio, delta, n_pe=n_pe, mapping=m.name, k=k)
    return new, make_report(loads, tgt, cap)


def make_report(loads, tgt, cap) -> RebalanceReport:
    """The `RebalanceReport` of a layer from its loads before/after and PE capacities."""
    delta = tgt - loads
    cap = jnp.asarray(cap)
    capped = (cap > 0) & (cap == tgt) & (tgt < tgt.max(-1, keepdims=True))
    return RebalanceReport(
        loads_before=loads,
        loads_after=tgt,
        regrown=jnp.maximum(delta, 0).sum(),
        dropped=jnp.maximum(-delta, 0).sum(),
        capped=capped.sum(dtype=jnp.int32),
        before=loads_metrics(loads),
        after=loads_metrics(tgt),
    )
