"""Every view of a PE mapping, derived from its assignment alone (see `mapping.PEMapping`).

Given `assign(coords, shape, n) -> (group, pe)`::

  table shape   the broadcast shape of `(group, pe)` over the coordinate grids: the axes the
                assignment reads keep their size, the others are 1;
  count table   the mask summed over the axes the assignment does not read, `[table shape]` int32
                (a weight's PE depends only on the coordinates kept);
  segments      `group * n + pe` over the table, and `G = max(group) + 1` (static `n`, numpy);
  loads         the count table summed per segment, `[G, n]`; capacities the same for all-true;
  slot layout   per PE, its weights in increasing hwio flat index (a stable sort of the PE ids),
                as host index tables: `src [G*n, C]` (flat index, -1 in padding) and its inverse;
  group loads   for a TRACED `n <= n_cap`: the segments `group * n_cap + pe` over `B * n_cap`,
                `B` the most groups of any `n <= n_cap` (host), then sums and maxima per group.

Host tables depend on the mapping, the kernel shape and `n` only, and are cached.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.workload.kernel import Hwio, as_hwio4, coords


@functools.lru_cache(maxsize=1024)
def table_shape(m, shape: Hwio) -> tuple[int, int, int, int]:
    """The broadcast shape of the assignment: the kernel's size on the axes it reads, else 1."""
    group, pe = m.assign(coords(shape), shape, 2)
    return tuple(int(d) for d in np.broadcast_shapes(np.shape(group), np.shape(pe), (1,) * 4))


def count_table(m, mask, xp=jnp):
    """The mask summed over the axes the assignment does not read, int32 `[table shape]`."""
    shape = as_hwio4(mask.shape)
    kept = table_shape(m, shape)
    axes = tuple(a for a in range(4) if kept[a] == 1 and shape[a] != 1)
    return mask.reshape(shape).sum(axis=axes, keepdims=True, dtype=np.int32)


def _assignment(m, shape: Hwio, n, xp):
    """`(group, pe)` int32 broadcast over the table (`n` static or traced)."""
    kept = table_shape(m, shape)
    group, pe = m.assign(coords(kept, xp), shape, n)
    cast = lambda v: xp.broadcast_to(xp.asarray(v).astype(np.int32), kept)  # noqa: E731
    return cast(group), cast(pe)


@functools.lru_cache(maxsize=1024)
def _segments(m, shape: Hwio, n: int) -> tuple[np.ndarray, int]:
    """Host `group * n + pe` over the table (int64) and the number of groups `G`."""
    group, pe = _assignment(m, shape, n, np)
    g = int(group.max()) + 1 if group.size else 0
    return group.astype(np.int64) * n + pe, g


def _host_sum(seg: np.ndarray, table, size: int) -> np.ndarray:
    """`[size]` int32: `table` summed per segment (exact: counts stay far below 2**53)."""
    w = np.broadcast_to(np.asarray(table, np.float64), seg.shape).ravel()
    return np.bincount(seg.ravel(), weights=w, minlength=size).astype(np.int32)


@functools.lru_cache(maxsize=1024)
def _capacity(m, shape: Hwio, n: int) -> np.ndarray:
    seg, g = _segments(m, shape, n)
    kept = table_shape(m, shape)
    per_cell = int(np.prod([s for s, k in zip(shape, kept, strict=True) if k == 1]))
    cap = _host_sum(seg, per_cell, g * n).reshape(g, n)
    cap.setflags(write=False)
    return cap


def capacity(m, shape: Hwio, n: int) -> np.ndarray:
    """`[G, n]` int32 weight slots per PE (read-only numpy)."""
    return _capacity(m, shape, n)


def geometry(m, shape: Hwio, n: int) -> tuple[int, int]:
    """`(G, C)`: groups and slots per PE (`C` = the largest capacity)."""
    cap = _capacity(m, shape, n)
    return cap.shape[0], int(cap.max(initial=0))


def loads(m, mask, n: int, xp=jnp):
    """`[G, n]` int32 PE loads (segment sums of the count table)."""
    shape = as_hwio4(mask.shape)
    table = count_table(m, mask, xp)
    seg, g = _segments(m, shape, n)
    if xp is np:
        return _host_sum(seg, table, g * n).reshape(g, n)
    group, pe = _assignment(m, shape, n, jnp)
    out = jax.ops.segment_sum(table.ravel(), (group * n + pe).ravel(), num_segments=g * n)
    return out.reshape(g, n)


@functools.lru_cache(maxsize=256)
def _slot_index(m, shape: Hwio, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`src [G*n, C]` hwio flat index of every slot (-1: padding) and `dst [size]`, the slot of
    every weight in the flattened `[G*n*C]` layout."""
    seg, g = _segments(m, shape, n)
    pid = np.broadcast_to(seg, shape).ravel()  # [size] PE of every weight, hwio flat order
    cap = _capacity(m, shape, n).ravel()
    c = int(cap.max(initial=0))
    order = np.argsort(pid, kind="stable")  # weights grouped by PE, flat index ascending
    start = np.cumsum(cap) - cap
    slot = np.arange(pid.size) - start[pid[order]]
    dst = np.empty(pid.size, np.int64)
    dst[order] = pid[order] * c + slot
    src = np.full(g * n * c, -1, np.int64)
    src[dst] = np.arange(pid.size)
    for a in (src, dst):
        a.setflags(write=False)
    return src.reshape(g * n, c), dst


def to_slots(m, x, n: int, fill, xp=jnp):
    """`[G, n, C]` slot layout through the host index table."""
    shape = as_hwio4(x.shape)
    src, _ = _slot_index(m, shape, n)
    g, c = geometry(m, shape, n)
    flat = x.reshape(-1)
    out = xp.where(src >= 0, flat[np.maximum(src, 0)], xp.asarray(fill, flat.dtype))
    return out.reshape(g, n, c)


def from_slots(m, slots, shape: tuple[int, ...], n: int, xp=jnp):
    """The kernel of `shape` from its slot layout."""
    _, dst = _slot_index(m, as_hwio4(shape), n)
    return slots.reshape(-1)[dst].reshape(shape)


def to_cols(m, x, n: int, fill):
    """`[C, P]`: the slot layout with PE `g * n + j` as column."""
    g, c = geometry(m, as_hwio4(x.shape), n)
    return to_slots(m, x, n, fill).reshape(g * n, c).T


def from_cols(m, cols, shape: tuple[int, ...], n: int):
    """The kernel of `shape` from its column layout."""
    return from_slots(m, cols.T, shape, n)


@functools.lru_cache(maxsize=1024)
def group_bound(m, shape: Hwio, n_cap: int) -> int:
    """The most groups of any `n` in `[1, n_cap]` (host; the static size of `group_loads`)."""
    return max(_segments(m, shape, n)[1] for n in range(1, n_cap + 1))


def group_loads(m, table, shape: Hwio, n, n_cap: int):
    """`(group_sum, group_max)` `[B]` int32 for a traced `n <= n_cap` (zeros past `G`)."""
    group, pe = _assignment(m, shape, n, jnp)
    b = group_bound(m, shape, n_cap)
    seg = (group * n_cap + pe).ravel()
    per_pe = jax.ops.segment_sum(jnp.ravel(table), seg, num_segments=b * n_cap)
    per_pe = per_pe.reshape(b, n_cap)
    return per_pe.sum(1, dtype=jnp.int32), per_pe.max(1)


def host_group_loads(m, table, shape: Hwio, n: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy `group_loads` for a static `n`: `[G]` sums and maxima."""
    seg, g = _segments(m, shape, n)
    per_pe = _host_sum(seg, np.asarray(table), g * n).reshape(g, n)
    return per_pe.sum(1, dtype=np.int32), per_pe.max(1, initial=0)


def load_bound(m, shape: Hwio, table: Any, n_max: int) -> int:
    """`n_max` times the non-zeros: `sum_g max_j load[g, j]` never exceeds the total load."""
    del m, shape
    return int(n_max) * int(np.sum(np.asarray(table), dtype=np.int64))
