"""The u-Ticket selection on the host, in numpy: the compiled kernel's choice, nothing compiled.

What must differ between the one-shot host path (`rebalance(..., backend="numpy")`) and the
compiled kernels is only how the flips are chosen; loads, targets, priorities and reports are the
same code over `xp` (`rebalance.py`, `targets.py`, `priorities.py`). Per PE that moves, in the
slot layout `[G*n, C]` (`PEMapping.to_slots`, slots in increasing hwio flat index)::

  rank: the int32 preference of `selection.pref_ranks` (regrow: pruned valid slots by the float
    bits of the priority; drop: active slots by `0x7F800000 - bits`; -1 for no candidate);
  choice: per PE the `|delta|` largest ranks, ties to the lower slot: a `np.partition` to the
    `max |delta|` largest ranks of every row, a sort of those few, the `|delta|`-th value `v`,
    then every rank above `v` and the first `|delta| - #(rank > v)` equal to `v` in slot order.

Exact integer arithmetic throughout, so the masks are bit-identical to the kernel's.
"""

from __future__ import annotations

import numpy as np

_DROP_BASE = np.int32(0x7F800000)  # bits of +inf: drop ranks invert the priority's bits


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


def select_layer(mask: np.ndarray, prio: np.ndarray, delta: np.ndarray, m, n_pe: int):
    """The rebalanced bool mask of one layer (numpy `selection.apply_layer`).

    Args:
      mask: bool hwio kernel; prio: float32 priorities of its shape (non-negative, finite).
      delta: `[G, n]` int32 target - load; m: the `PEMapping`; n_pe: PEs per group.
    """
    shape = mask.shape
    g, c = m.geometry(shape, n_pe)
    d = np.asarray(delta).reshape(-1)  # [G*n], row g*n + j of the slot layout
    mask_s = m.to_slots(mask, n_pe, False, np).reshape(g * n_pe, c)
    flips = np.zeros_like(mask_s)
    bits = None
    for up in (True, False):
        rows = np.flatnonzero(d > 0 if up else d < 0)
        if not rows.size:
            continue
        if bits is None:
            bits = m.to_slots(prio, n_pe, np.float32(0), np).reshape(g * n_pe, c)
            bits = bits.view(np.int32)
        ms, bs = mask_s[rows], bits[rows]
        if up:
            valid = m.to_slots(np.ones(shape, bool), n_pe, False, np).reshape(g * n_pe, c)
            rank = np.where(valid[rows] & ~ms, bs, np.int32(-1))
        else:
            rank = np.where(ms, _DROP_BASE - bs, np.int32(-1))
        flips[rows] = select_rows(rank, np.abs(d[rows]))
    new_s = (mask_s ^ flips).reshape(g, n_pe, c)
    return m.from_slots(new_s, shape, n_pe, np)
