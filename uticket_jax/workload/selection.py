"""u-Ticket selection, compiled: which slots of every PE regrow or drop, exactly the top-`|delta|`.

The priorities come from `priorities.py`; ties go to the lower hwio flat index. The numpy host
path makes the same choice with a partition and a sort (`host_select.py`).

How the choice is made (exactly the top-`|delta|` of each PE, without a top-k over whole slices,
which costs ~5 ns per weight on CPU): the kernel works in the slot-major layout `[C, P]` of
`PEMapping.to_cols` (a reshape for output_channel), gives every slot an int32 preference
rank that orders like the priority (-1 for non-candidates), then per PE (1) bisects the maxima of
8-slot chunks for a threshold `t` that at least `|delta|` slots reach and bit-packs the slots
`>= t` (its candidates: usually little more than `|delta|`), (2) joins the narrowest row class
(`row_classes`) that holds its candidates and, there, has them compacted in slot order into a
`[rows, cols]` table (the widest, direct class takes the PE's whole column instead), (3) bisects
those ranks for the exact `|delta|`-th rank and then the candidates for the last equal rank to
take, in slot order; one elementwise pass then flips. Every PE fits some class, so there is no
fallback: masses of equal weights only send more PEs to the wider classes.

Compiled programs. Nothing static depends on the masks or their moves: the row classes (at most
four: 8, 64, 512 candidate rows and the direct class, each with its columns per loop step) follow
from the layer shape, `n_pe` and the mapping; the PEs are grouped into the classes at run time
and each class runs as a `fori_loop` over its column tiles with a traced step count (none for an
empty class). So one program per layer shape serves every mask of that shape. Each class is a
loop body of its own in the program, with its own XLA:CPU compile time (BUILD_NOTES.md), hence
the few, wide classes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

_WORD = 32  # slots per bit-packed word of the compaction step
_CHUNK = 8  # slots per chunk whose maximum bounds the per-PE threshold
_ONEHOT_W = 8  # layers with at most this many words per PE compact without gathers
_T_STEPS = 20  # bisection steps for the chunk threshold (any step count is exact; more = fewer
# candidates); the exact selection among candidates always runs 31 steps (the int32 rank range).


def pref_ranks(mask_c, prio_c, valid_c, delta_p):
    """`[C, P]` int32 preference rank of every slot for its PE's move; -1 where it is no candidate.

    Regrow (`delta > 0`): pruned valid slots ranked by the float bits of `prio` (non-negative
    finite floats order like their bits); drop (`delta < 0`): active slots ranked by
    `0x7F800000 - bits(prio)` (smaller `prio` first). Equal ranks <=> equal priorities.
    """
    bits = lax.bitcast_convert_type(prio_c, jnp.int32)  # [C, P], >= 0
    up = delta_p > 0  # [P]
    down = delta_p < 0
    grow = jnp.where(up & valid_c & ~mask_c, bits, -1)
    drop = jnp.where(down & mask_c, jnp.int32(0x7F800000) - bits, -1)
    return jnp.maximum(grow, drop)  # [C, P]


def _bisect_ge(x, lo, hi, need, steps: int):
    """Per column, the largest `v` in `[lo, hi)` with `count(x >= v) >= need` (`steps` static).

    `x: [R, P]`; `lo, hi, need: [P]`; requires `count(x >= lo) >= need`. With `steps >=
    log2(hi - lo)` the answer is exact, fewer steps give a lower (still valid) bound.
    """

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = (x >= mid[None]).sum(0, dtype=jnp.int32) >= need
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = lax.fori_loop(0, steps, body, (lo, hi))
    return lo


def _inclusive_cumsum0(x):
    """Cumulative sum over axis 0 (a parallel prefix scan; exact for integers).

    `lax.associative_scan` measured 2-4x faster on XLA:CPU than `jnp.cumsum` or a Hillis-Steele
    loop of padded shifted adds (BUILD_NOTES.md has the figures).
    """
    return lax.associative_scan(jnp.add, x, axis=0)


def _nth_set_bit(word, r):
    """Bit position of the `r`-th (0-based) set bit of every uint32 `word` (binary lifting)."""
    pos = jnp.zeros(word.shape, jnp.uint32)
    for b in (16, 8, 4, 2, 1):
        low = (jnp.uint32(1) << (pos + b)) - jnp.uint32(1)
        below = lax.population_count(word & low).astype(jnp.int32)
        pos = jnp.where(below <= r, pos + b, pos)
    return pos.astype(jnp.int32)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_ROWS = (8, 64, 512)  # candidate rows of the compacted row classes (each at most half the slots)
_TILE = 1 << 15  # table entries (rows x columns) per loop step of a row class


class RowClass(NamedTuple):
    """One static row class of a layer (`row_classes`): the PEs with at most `rows` candidates,
    `cols` PE columns per loop step; `direct`: the table is the PE's whole column of slots."""

    rows: int
    cols: int
    direct: bool


def row_classes(c: int, p: int) -> tuple[RowClass, ...]:
    """The static row classes of a layer with `c` slots per PE and `p` PE columns.

    The compacted classes of `_ROWS` up to half the word-rounded slot count `Cp`, then one
    direct class of all `Cp` rows, which holds every PE (so no PE overflows its class). Each class
    takes `_TILE // rows` columns per loop step (at least 8, at most `p`). A function of the layer
    shape (through `c, p`: `n_pe` and the mapping) only; at most four classes, since each one is a
    loop body of its own in the compiled program (compile time on XLA:CPU: BUILD_NOTES.md).
    """
    cp = _cdiv(c, _WORD) * _WORD
    rows = [(r, False) for r in _ROWS if 2 * r <= cp] + [(cp, True)]
    return tuple(RowClass(r, min(p, max(8, _TILE // r)), d) for r, d in rows)


def _candidates(rank, need):
    """Per PE column of `rank: [Cp, P]`: the chunk threshold and its bit-packed candidates.

    The maxima of `_CHUNK`-slot chunks bound the `need`-th largest rank from below (`t`, `_T_STEPS`
    bisection steps); the slots with `rank >= t` (at least `need`, usually little more) are
    bit-packed per `_WORD` rows. Returns `(t [P], words [W, P] uint32, cs [W, P] inclusive prefix
    counts of candidates over the words, total [P] candidates)`.
    """
    cp, p = rank.shape
    mx = rank.reshape(cp // _CHUNK, _CHUNK, p).max(1)  # [Cp/8, P]
    t = _bisect_ge(mx, jnp.zeros((p,), jnp.int32), mx.max(0) + 1, need, _T_STEPS)  # [P]
    flag = (rank >= t[None]).reshape(cp // _WORD, _WORD, p)  # [W, 32, P]
    shifts = lax.broadcasted_iota(jnp.uint32, (1, _WORD, 1), 1)
    words = (flag.astype(jnp.uint32) << shifts).sum(1, dtype=jnp.uint32)  # [W, P]
    cs = _inclusive_cumsum0(lax.population_count(words).astype(jnp.int32))  # [W, P]
    return t, words, cs, cs[-1]


def _pick(crank, row, lo, need):
    """Exact `(v, slot)` per column of a candidate table `crank: [R, T]` (-1: none).

    `row: [R, T]` the slot row of every entry, increasing down each column; `lo, need: [T]`
    with `count(crank >= lo) >= need`. The chosen slots of a column are `rank > v | rank == v &
    row <= slot`: a bisection finds the exact `need`-th largest rank `v`, a second one the
    entry of the last equal rank still to take (ties: lower row = lower hwio index).
    """
    rows, n_col = crank.shape
    v = _bisect_ge(crank, lo, crank.max(0) + 1, need, 31)  # [T] the need-th largest rank
    r = need - (crank > v[None]).sum(0, dtype=jnp.int32)  # [T] ties at v still to take
    eq = crank == v[None]
    q = lax.broadcasted_iota(jnp.int32, (rows, n_col), 0)

    def body(_, lohi):  # the fewest leading entries holding r equal ranks (a prefix sum over
        lo, hi = lohi  # the rows compiles ~3x slower); count(eq, q < lo) < r <= count(q < hi)
        mid = (lo + hi) // 2
        ok = (eq & (q < mid[None])).sum(0, dtype=jnp.int32) >= r
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    init = (jnp.zeros((n_col,), jnp.int32), jnp.full((n_col,), rows, jnp.int32))
    _, hi = lax.fori_loop(0, rows.bit_length(), body, init)
    return v, jnp.where(q == hi[None] - 1, row, -1).max(0)


def _compact(rank, cols, words, cs, total, rows: int):
    """`(crank, row)`: the candidates of the PE columns `cols: [T]` (in range) in row order.

    `words, cs: [W, T]` and `total: [T]` are `_candidates`' for those columns; requires `total
    <= rows` (static). Returns `[rows, T]` candidate ranks (-1 past `total`) and their slot rows.
    """
    w_n, n_col = words.shape
    # Candidate q lives in word ch = #{w : cs[w] <= q}.
    q = lax.broadcasted_iota(jnp.int32, (rows, n_col), 0)  # [rows, T]
    if w_n <= _ONEHOT_W:
        # Few words: locate each candidate's word by reductions over the W words (no gathers).
        le = cs[:, None, :] <= q[None]  # [W, rows, T]
        ch = jnp.minimum(le.sum(0, dtype=jnp.int32), w_n - 1)  # [rows, T]
        before = jnp.where(le, cs[:, None, :], 0).max(0)  # [rows, T] (exact for live q)
        w_idx = lax.broadcasted_iota(jnp.int32, (w_n, 1, 1), 0)
        word = jnp.where(w_idx == ch[None], words[:, None, :], jnp.uint32(0)).max(0)
    else:
        top = 1 << (w_n.bit_length() - 1)

        def search(i, ch):  # binary lifting, step top >> i; a loop so each probe is materialized
            nxt = ch + (top >> i)
            probe = jnp.take_along_axis(cs, jnp.minimum(nxt, w_n) - 1, 0)  # [rows, T]
            return jnp.where((nxt <= w_n) & (probe <= q), nxt, ch)

        ch = lax.fori_loop(0, w_n.bit_length(), search, jnp.zeros((rows, n_col), jnp.int32))
        ch = jnp.minimum(ch, w_n - 1)
        cnt = lax.population_count(words).astype(jnp.int32)
        before = jnp.take_along_axis(cs - cnt, ch, 0)  # [rows, T] candidates in earlier words
        word = jnp.take_along_axis(words, ch, 0)  # [rows, T]
    bit = _nth_set_bit(word, q - before)
    row = ch * _WORD + bit  # [rows, T] slot row of candidate q, increasing in q
    live = q < total[None]
    crank = jnp.where(live, rank[jnp.where(live, row, 0), cols[None]], -1)  # [rows, T]
    return crank, row


def _group_columns(cls, n_cls: int, pad: int):
    """PE columns grouped by class: `(order, start, count)`.

    `cls: [P]` int32 class of every column (`n_cls`: none). `order: [P + pad]` lists the columns
    of class 0, then class 1, ..., then the out-of-range column `P`; class `i` holds
    `order[start[i] : start[i] + count[i]]` (columns in increasing order).
    """
    p = cls.shape[0]
    member = cls[None] == lax.broadcasted_iota(jnp.int32, (n_cls, 1), 0)  # [n_cls, P]
    # jnp.cumsum (XLA's reduce-window) compiles ~0.5 s faster than an associative scan here.
    within = jnp.cumsum(member, axis=1, dtype=jnp.int32)  # [n_cls, P]
    count = within[:, -1]  # [n_cls]
    start = jnp.cumsum(count) - count  # [n_cls]
    ci = jnp.minimum(cls, n_cls - 1)
    pos = start[ci] + jnp.take_along_axis(within, ci[None], 0)[0] - 1  # [P]
    pos = jnp.where(cls < n_cls, pos, p + pad)  # columns of no class: dropped
    order = jnp.full((p + pad,), p, jnp.int32).at[pos].set(lax.iota(jnp.int32, p), mode="drop")
    return order, start, count


def _pick_by_class(rank, need, t, words, cs, total, classes):
    """Per PE column: the exact `|delta|`-th rank `v` and the slot of the last equal rank to take,
    each PE in the narrowest row class that holds its candidates (a `fori_loop` per class over
    its column tiles, as many steps as it has PEs)."""
    p = rank.shape[1]
    bounds = jnp.array([k.rows for k in classes], jnp.int32)
    n_cls = len(classes)
    cls = jnp.where(need > 0, (total[None] > bounds[:, None]).sum(0, dtype=jnp.int32), n_cls)
    pad = max(k.cols for k in classes)
    order, start, count = _group_columns(cls, n_cls, pad)
    v = jnp.zeros((p,), jnp.int32)
    thr_slot = jnp.full((p,), -1, jnp.int32)
    for i, k in enumerate(classes):

        def step(j, carry, i=i, k=k):
            v, thr_slot = carry
            off = start[i] + j * k.cols
            cols = lax.dynamic_slice(order, (off,), (k.cols,))  # in bounds: order has `pad` more
            live = off + lax.iota(jnp.int32, k.cols) < start[i] + count[i]
            cols = jnp.where(live, cols, p)  # past the class: out of range, dropped below
            col = jnp.minimum(cols, p - 1)
            need_k = jnp.where(live, need[col], 0)  # padding columns move nothing
            if k.direct:
                crank = rank[:, col]  # [Cp, T]: every slot is a row
                row = lax.broadcasted_iota(jnp.int32, crank.shape, 0)
            else:
                crank, row = _compact(rank, col, words[:, col], cs[:, col], total[col], k.rows)
            v_k, thr_k = _pick(crank, row, t[col], need_k)
            return v.at[cols].set(v_k, mode="drop"), thr_slot.at[cols].set(thr_k, mode="drop")

        steps = (count[i] + k.cols - 1) // k.cols
        v, thr_slot = lax.fori_loop(0, steps, step, (v, thr_slot))
    return v, thr_slot


def apply_layer(mask, prio, delta, *, m, n_pe: int):
    """Traced body: the rebalanced hwio mask of one layer (`delta: [G, n]` target - load).

    Every static shape comes from the layer shape, `n_pe` and the mapping (`row_classes`), never
    from `delta`: one compiled program serves every mask of the shape. Each PE joins, at run
    time, the narrowest row class that holds its candidates; a class runs as a loop over `cols`
    columns at a time, as many steps as it has PEs (none for an empty class).
    Keeps: only the PE's own valid slots change; regrown were pruned, dropped were active;
    `|flips| = |delta|`; ties to the lower slot row (= lower hwio flat index).

    Args:
      mask: bool hwio kernel; prio: float32 priorities of its shape (`layer_priorities`);
      delta: `[G, n]` int32 target - load.
      m: the `mappings.PEMapping`; n_pe: PEs per group.

    Returns:
      The new bool mask of `mask`'s shape.
    """
    delta_p = m.pe_cols(delta)  # [P]
    need = jnp.abs(delta_p)  # [P]
    mask_c = m.to_cols(mask, n_pe, False)  # [C, P]
    valid_c = m.to_cols(jnp.ones(mask.shape, bool), n_pe, False)  # [C, P]
    rank = pref_ranks(mask_c, m.to_cols(prio, n_pe, 0.0), valid_c, delta_p)  # [C, P]
    c, p = rank.shape
    rank = jnp.pad(rank, ((0, _cdiv(c, _WORD) * _WORD - c), (0, 0)), constant_values=-1)
    # Materialize the ranks once: every consumer below would otherwise re-read the (transposed)
    # inputs inside its own fusion.
    rank = lax.optimization_barrier(rank)  # [Cp, P]
    t, words, cs, total = _candidates(rank, need)
    v, thr_slot = _pick_by_class(rank, need, t, words, cs, total, row_classes(c, p))
    rows = lax.broadcasted_iota(jnp.int32, (c, p), 0)
    rc = rank[:c]
    chosen = (rc > v[None]) | ((rc == v[None]) & (rows <= thr_slot[None]))
    flips = chosen & (rc >= 0) & (need > 0)[None]  # [C, P]
    return mask ^ m.from_cols(flips, mask.shape, n_pe)
