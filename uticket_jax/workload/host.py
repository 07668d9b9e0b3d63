"""The u-Ticket rebalance on the host, in numpy: the JAX kernels' masks, no kernel compiled.

A tool that rebalances one mask file in a fresh process (`experiments/rebalance.py`) would spend
its life compiling: the JAX pipeline (`rebalance.py`) compiles a plan, a selection and a report
program per layer shape, ~20 s for VGG16 on a 2-core CPU against a warm call of 30-60 ms. This
module is the one-shot path, `rebalance_network(..., backend="numpy")`: the same steps on numpy
arrays (the random policy's key words are one tiny jitted call; nothing else compiles), exact
integer arithmetic throughout, so the new masks are bit-identical to the JAX
path's (tests compare both with the loop oracle and with each other).

Per analysed layer: PE loads (`PEMapping.host_loads`), capacities and targets
(`targets.host_targets`, the JAX bisection step for step), then for every PE that moves, in the
slot layout `[G*n, C]` (`PEMapping.host_to_slots`, slots in increasing hwio flat index):
  rank: the int32 preference of `selection.pref_ranks` (regrow: pruned valid slots by the float
    bits of the priority; drop: active slots by `0x7F800000 - bits`; -1 for no candidate);
  choice: per PE the `|delta|` largest ranks, ties to the lower slot: a `np.partition` to the
    `max |delta|` largest ranks of every row, a sort of those few, the `|delta|`-th value `v`,
    then every rank above `v` and the first `|delta| - #(rank > v)` equal to `v` in slot order.
Priorities are `selection.magnitude_priorities` (|w| as float32) or the counter hash of
`selection.counter_priorities` with the same two key words (`jax.random.bits` of the layer's key,
one small jitted call for all layers), so the random policy matches too.

The report holds numpy arrays; its integer figures equal the JAX report's, its float32 means
(utilizations) may differ in the last bit (summation order).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.workload import mappings as mp
from uticket_jax.workload import selection, targets
from uticket_jax.workload.metrics import loads_metrics

_DROP_BASE = np.int32(0x7F800000)  # bits of +inf: drop ranks invert the priority's bits


def magnitude_priorities(weights: np.ndarray) -> np.ndarray:
    """numpy `selection.magnitude_priorities`: `|w|` as float32, non-finite as the largest float."""
    a = np.abs(np.asarray(weights).astype(np.float32))
    return np.where(np.isfinite(a), a, np.finfo(np.float32).max)


def counter_priorities(words: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """numpy `selection.counter_priorities` from the key's two uint32 words (`key_words`)."""
    idx = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(tuple(shape))
    with np.errstate(over="ignore"):
        h = selection._mix32(selection._mix32(idx ^ words[0]) + words[1])
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


@jax.jit
def _folded_words(key, layers):
    return jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (2,), jnp.uint32))(layers)


def key_words(key: Any, layers: Sequence[int] | None) -> np.ndarray:
    """`[L, 2]` uint32: the words `selection.counter_priorities` draws from the key of each layer.

    `layers`: the positions folded into `key` (`rebalance_network`), or None for `key` itself
    (`rebalance_layer`, one row).
    """
    if layers is None:
        return np.asarray(jax.random.bits(key, (2,), jnp.uint32))[None]
    return np.asarray(_folded_words(key, jnp.asarray(list(layers), jnp.int32)))


@functools.lru_cache(maxsize=256)
def _capacity(shape: tuple[int, ...], n_pe: int, mapping: str) -> np.ndarray:
    """`[G, n]` slots per PE, on the host."""
    m = mp.get_mapping(mapping)
    if m.host_loads is None:
        return mp.pe_capacity(shape, n_pe, mapping)
    return m.host_loads(np.ones(shape, bool), n_pe)


def select_rows(rank: np.ndarray, need: np.ndarray) -> np.ndarray:
    """`[R, C]` bool: per row the `need` largest ranks, ties to the lower column.

    `rank: [R, C]` int32 (-1: no candidate), `need: [R]` >= 1 and at most the row's candidates.
    """
    r, c = rank.shape
    k = int(need.max())
    top = np.partition(rank, c - k, axis=1)[:, c - k :] if k < c else rank
    top = np.sort(top, axis=1)  # ascending: the need-th largest sits at column -need
    v = top[np.arange(r), top.shape[1] - need]  # [R]
    gt = rank > v[:, None]
    eq = rank == v[:, None]
    rem = need - gt.sum(1)
    tied = np.flatnonzero(eq.sum(1) > rem)
    if tied.size:
        e = eq[tied]
        eq[tied] = e & (np.cumsum(e, axis=1) <= rem[tied, None])
    flips = gt | eq
    if (v < 0).any():  # more moves than candidates: never flip a non-candidate (as the kernel)
        flips &= rank >= 0
    return flips


def select_layer(mask, prio, delta, m: mp.PEMapping, n_pe: int) -> np.ndarray:
    """The rebalanced bool mask of one layer (numpy `selection.apply_layer`).

    Args:
      mask: bool hwio kernel; prio: float32 priorities of its shape (non-negative, finite).
      delta: `[G, n]` int32 target - load; m: the mapping; n_pe: PEs per group.
    """
    shape = mask.shape
    g, c = m.geometry(shape, n_pe)
    d = np.asarray(delta).reshape(-1)  # [G*n], row g*n + j of the slot layout
    mask_s = mp.host_to_slots(m, mask, n_pe, False).reshape(g * n_pe, c)
    flips = np.zeros_like(mask_s)
    bits = None
    for up in (True, False):
        rows = np.flatnonzero(d > 0 if up else d < 0)
        if not rows.size:
            continue
        if bits is None:
            bits = mp.host_to_slots(m, prio, n_pe, np.float32(0)).reshape(g * n_pe, c)
            bits = bits.view(np.int32)
        ms, bs = mask_s[rows], bits[rows]
        if up:
            valid = mp.host_to_slots(m, np.ones(shape, bool), n_pe, False).reshape(g * n_pe, c)
            rank = np.where(valid[rows] & ~ms, bs, np.int32(-1))
        else:
            rank = np.where(ms, _DROP_BASE - bs, np.int32(-1))
        flips[rows] = select_rows(rank, np.abs(d[rows]))
    new_s = (mask_s ^ flips).reshape(g, n_pe, c)
    return mp.host_from_slots(m, new_s, shape, n_pe)


def _report(loads: np.ndarray, tgt: np.ndarray, cap: np.ndarray):
    """numpy `rebalance._report`."""
    from uticket_jax.workload.rebalance import RebalanceReport  # circular at import time

    delta = tgt - loads
    capped = (cap > 0) & (cap == tgt) & (tgt < tgt.max(-1, keepdims=True))
    return RebalanceReport(
        loads_before=loads,
        loads_after=tgt,
        regrown=np.maximum(delta, 0).sum(dtype=np.int32),
        dropped=np.maximum(-delta, 0).sum(dtype=np.int32),
        capped=capped.sum(dtype=np.int32),
        before=loads_metrics(loads, xp=np),
        after=loads_metrics(tgt, xp=np),
    )


def bad_weight_count(weights: np.ndarray) -> int:
    """Number of non-finite entries (the magnitude policy refuses them)."""
    return int(weights.size - np.count_nonzero(np.isfinite(weights)))


def rebalance(
    masks,
    weights,
    keep,
    *,
    n_pe: int,
    m: mp.PEMapping,
    policy: str,
    target: str,
    key: Any,
    fold: bool,
):
    """The host pipeline over checked layers; returns `(new_masks, reports)` in layer order.

    Args:
      masks: bool numpy kernels in network order; weights: float kernels (magnitude) or Nones.
      keep: which layers are analysed (rebalanced); the others pass through unchanged.
      n_pe, m, policy, target: the checked setup; key: the `jax.random` key (random policy).
      fold: layer `i` ranks with `fold_in(key, i)` (`rebalance_network`), else `key` itself.
    """
    words = None
    if policy == "random" and any(keep):
        words = key_words(key, range(len(masks)) if fold else None)
    new, reports = [], []
    for i, (mask, w, a) in enumerate(zip(masks, weights, keep, strict=True)):
        shape = tuple(mask.shape)
        cap = _capacity(shape, n_pe, m.name)
        loads = mp.host_loads(m, mask, n_pe).astype(np.int32)
        if not a:
            new.append(mask)
            reports.append(_report(loads, loads, cap))
            continue
        tgt = targets.host_targets(loads, cap, target=target, c_max=m.geometry(shape, n_pe)[1])
        delta = tgt - loads
        if delta.any():
            if policy == "magnitude":
                prio = magnitude_priorities(w)
            else:
                prio = counter_priorities(words[i if fold else 0], shape)
            mask = select_layer(mask, prio, delta, m, n_pe)
        new.append(mask)
        reports.append(_report(loads, tgt, cap))
    return tuple(new), tuple(reports)
