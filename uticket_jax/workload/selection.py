"""u-Ticket selection: which slots of every PE regrow or drop, exactly the top-`|delta|`.

Priorities. `policy="magnitude"` ranks candidates by `|w|` (regrow largest, drop smallest;
non-finite `|w|` counts as the largest float; `rebalance` refuses such weights), `policy="random"`
by a uniform priority per weight drawn from a PRNG key (`random_priorities`). Ties go to the lower
hwio flat index.

How the choice is made (exactly the top-`|delta|` of each PE, without a top-k over whole slices,
which costs ~5 ns per weight on CPU): the kernel works in the slot-major layout `[C, P]` of
`mappings.PEMapping.to_cols` (a reshape for output_channel), gives every slot an int32 preference
rank that orders like the priority (-1 for non-candidates), then per PE (1) bisects the maxima of
8-slot chunks for a threshold `t` that at least `|delta|` slots reach, (2) bit-packs the slots
`>= t` (usually little more than `|delta|`) and compacts them in slot order into `[k2, P]`,
(3) bisects those few ranks for the exact `|delta|`-th rank and counts equal ranks in slot order
for the last chosen slot; one elementwise pass then flips. A PE with more than `k2` candidates
above `t` (e.g. masses of equal weights) sends the layer to the plain `lax.top_k` selection under
`lax.cond`; both give the same mask. The few PEs that need many more moves than the rest get a
wider call of their own (`plan_widths`) so the common PEs keep a narrow `k2`.

Compiled programs. The selection widths (`Widths`) are static: a layer compiles one program per
width class. Every width is a power of two (or the layer's whole slot count): `k2` from
`cand_bound`, the top-k width `k` derived from the widest `k2`, the heavy class's padded column
count from `padded_size`. So a new mask of the same shape reuses a program whenever its largest
moves fall in the same power-of-two classes (see `Widths`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

POLICIES = ("magnitude", "random")


def check_policy(policy: str) -> str:
    """Returns `policy`, or raises ValueError unless it is one of `POLICIES`."""
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def magnitude_priorities(weights):
    """Traced: `|w|` as float32, non-finite values ranked as the largest float."""
    a = jnp.abs(weights.astype(jnp.float32))
    big = jnp.finfo(jnp.float32).max
    return jnp.where(jnp.isfinite(a), a, big)


def _mix32(x):
    """An invertible integer finaliser (xor-shift / multiply) that spreads every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def counter_priorities(key, shape: tuple[int, ...]):
    """Traced body of `random_priorities` (`shape` static)."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    idx = lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    h = _mix32(_mix32(idx ^ seed[0]) + seed[1])
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


_random_priorities = jax.jit(counter_priorities, static_argnames=("shape",))


def random_priorities(key, shape) -> jax.Array:
    """Uniform priorities in `[0, 1)` (24-bit grid) for every weight of a kernel of `shape`.

    A counter-based hash of the weight's hwio flat index, keyed by two words drawn from `key`: one
    fused elementwise pass (threefry over 14.7M weights would cost ~0.4 s on 2 CPU cores). Same key,
    same priorities, independent of mapping and `n_pe`.

    Args:
      key: a `jax.random` key.
      shape: the kernel's shape.

    Returns:
      float32 array of `shape`.
    """
    return _random_priorities(key, tuple(int(d) for d in shape))


def layer_priorities(policy: str, weights, key, shape: tuple[int, ...]):
    """Traced: the selection priority of every weight of a kernel of `shape` under `policy`."""
    if policy == "magnitude":
        return magnitude_priorities(weights)
    return counter_priorities(key, shape)


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
    slot = lax.broadcasted_iota(jnp.int32, score.shape, score.ndim - 1)
    chosen = (score > thr) | ((score == thr) & (slot <= thr_idx))
    return chosen & (score > neg_inf) & (need > 0)[..., None]


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
    loop of padded shifted adds (the latter cost ~7 ms on a `[32, 16384]` table inside a fusion).
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


def _select_fast(rank, need, k2: int):
    """Exact `(v, slot)` per PE such that the chosen slots are `rank > v | rank == v & row <= slot`.

    `rank: [Cp, P]` (`Cp` a multiple of `_WORD`), `need: [P]`. Returns `(v, thr_slot, ok)`; `ok`
    is False when a PE has more than `k2` (static) candidates above its chunk threshold.
    Steps: (1) chunk maxima bound the `need`-th largest rank from below (`t`); (2) slots with
    `rank >= t` (at least `need`, usually few) are bit-packed per `_WORD` rows and compacted, in
    row order, into `[k2, P]`; (3) bisection finds the exact `need`-th rank `v` among them, and a
    prefix count over equal ranks the last chosen row (ties: lower row = lower hwio index).
    """
    cp, p = rank.shape
    mx = rank.reshape(cp // _CHUNK, _CHUNK, p).max(1)  # [Cp/8, P]
    t = _bisect_ge(mx, jnp.zeros((p,), jnp.int32), mx.max(0) + 1, need, _T_STEPS)  # [P]
    flag = (rank >= t[None]).reshape(cp // _WORD, _WORD, p)  # [W, 32, P]
    shifts = lax.broadcasted_iota(jnp.uint32, (1, _WORD, 1), 1)
    words = (flag.astype(jnp.uint32) << shifts).sum(1, dtype=jnp.uint32)  # [W, P]
    cnt = lax.population_count(words).astype(jnp.int32)  # [W, P]
    cs = _inclusive_cumsum0(cnt)  # [W, P]
    total = cs[-1]  # [P] candidates per PE (>= need)
    ok = jnp.all((total <= k2) | (need == 0))  # PEs with nothing to move do not count
    # Compaction: candidate q lives in word ch = #{w : cs[w] <= q} (binary search, W static).
    w_n = cs.shape[0]
    q = lax.broadcasted_iota(jnp.int32, (k2, p), 0)  # [k2, P]
    if w_n <= _ONEHOT_W:
        # Few words: locate each candidate's word by reductions over the W words (no gathers).
        le = cs[:, None, :] <= q[None]  # [W, k2, P]
        ch = jnp.minimum(le.sum(0, dtype=jnp.int32), w_n - 1)  # [k2, P]
        before = jnp.where(le, cs[:, None, :], 0).max(0)  # [k2, P] (exact for live q)
        w_idx = lax.broadcasted_iota(jnp.int32, (w_n, 1, 1), 0)
        word = jnp.where(w_idx == ch[None], words[:, None, :], jnp.uint32(0)).max(0)  # [k2, P]
    else:
        top = 1 << (w_n.bit_length() - 1)

        def search(i, ch):  # binary lifting, step top >> i; a loop so each probe is materialized
            nxt = ch + (top >> i)
            probe = jnp.take_along_axis(cs, jnp.minimum(nxt, w_n) - 1, 0)  # [k2, P]
            return jnp.where((nxt <= w_n) & (probe <= q), nxt, ch)

        ch = lax.fori_loop(0, w_n.bit_length(), search, jnp.zeros((k2, p), jnp.int32))
        ch = jnp.minimum(ch, w_n - 1)
        before = jnp.take_along_axis(cs - cnt, ch, 0)  # [k2, P] candidates in earlier words
        word = jnp.take_along_axis(words, ch, 0)  # [k2, P]
    bit = _nth_set_bit(word, q - before)
    row = ch * _WORD + bit  # [k2, P] slot row of candidate q, increasing in q
    live = q < total[None]
    crank = jnp.where(live, jnp.take_along_axis(rank, jnp.where(live, row, 0), 0), -1)  # [k2, P]
    v = _bisect_ge(crank, t, crank.max(0) + 1, need, 31)  # [P] the need-th largest rank
    r = need - (crank > v[None]).sum(0, dtype=jnp.int32)  # [P] ties at v still to take
    eq = crank == v[None]
    take = eq & (_inclusive_cumsum0(eq.astype(jnp.int32)) <= r[None])
    thr_slot = jnp.where(take, row, -1).max(0)  # [P]
    return v, thr_slot, ok


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cand_bound(d_max: int, c: int) -> int:
    """Static fast-path candidate bound per PE: a power of two >= 2 * d_max + 4, at most `c`
    rounded up to a whole word.

    The chunk threshold leaves `|delta|` candidates plus the few other slots of the chosen chunks
    that reach it, so twice the moves plus a little slack rarely overflows (an overflow only
    costs time: the layer takes the top-k path). A slack of 16 instead of 4 measured ~25 %
    slower for input_split at n = 32, where most PEs move one or two slots.
    """
    return min(_cdiv(c, _WORD) * _WORD, 1 << (2 * int(d_max) + 3).bit_length())


def topk_bound(d_max: int, c: int) -> int:
    """Static top-k fallback width: half the widest candidate bound `cand_bound(d_max, c)` (so at
    least `d_max + 2`, and one width class per candidate class), or all `c` slots once that bound
    is capped at the word-rounded `c`."""
    top = cand_bound(d_max, c)
    return c if top >= _cdiv(c, _WORD) * _WORD else min(c, top // 2)


class Widths(NamedTuple):
    """Static selection widths of one layer (`plan_widths`); `heavy` columns are traced.

    A layer compiles one selection program per distinct `Widths` and heavy column count, so per
    layer shape (and `n_pe`, mapping, policy) the programs are bounded by the power-of-two
    classes: `k2` and each `heavy_k2` take at most `log2(c / 8) + 2` values, `k` follows from the
    widest of them (`topk_bound`), and the heavy column count at most `log2(P / 8) + 2`.
    """

    k: int  # top-k fallback width (>= every |delta|)
    k2: int  # fast-path candidate bound of the PEs outside every heavy class
    heavy_k2: tuple[int, ...] = ()  # candidate bound of each heavy class (`apply_layer`)


def padded_size(n: int) -> int:
    """Length of a column list of `n` entries once padded: a power of two, at least 8 (so that
    similar layers share compiled shapes)."""
    return 1 << max(3, (n - 1).bit_length())


def plan_widths(delta, c: int) -> tuple[Widths, tuple[np.ndarray, ...]]:
    """Host-side selection widths of a layer from its `[G, n]` delta (numpy).

    PEs needing few moves share a narrow candidate bound `k2`; when a few PEs need many more (the
    tail of the distribution), they form a heavy class with its own wider call over their gathered
    columns, so only they pay for a wide candidate list. The class boundary (a power of two of
    moves, or none) minimises the modelled `[k2, P]` work: a gathered column costs about two dense
    ones, a call a fixed overhead. Each class's bound comes from the largest need inside it, not
    from the boundary (a class cut at 128 moves whose PEs need at most 126 gets 256 rows, not
    512). On the VGG16 benchmark the heavy class made the whole network 10-45 % faster than one
    class; a second heavy class measured no faster.

    Returns:
      `(widths, heavy)`: a `Widths`, and the heavy class's PE columns in `pe_cols` order padded
      with the out-of-range column `P` to `padded_size` (an empty tuple: one class).
    """
    need = np.abs(np.asarray(delta)).reshape(-1)
    d_max = int(need.max(initial=0))
    k, k2 = topk_bound(d_max, c), cand_bound(d_max, c)
    best, best_level, best_k2 = need.size * k2, None, k2
    level = 2
    while cand_bound(level, c) < k2:
        light_k2 = cand_bound(int(need[need <= level].max(initial=0)), c)
        n_heavy = int((need > level).sum())
        cost = need.size * light_k2 + 2 * padded_size(n_heavy) * k2 + 65536
        if cost < best:
            best, best_level, best_k2 = cost, level, light_k2
        level *= 2
    if best_level is None:
        return Widths(k, k2), ()
    idx = np.nonzero(need > best_level)[0]
    cols = np.full(padded_size(idx.size), need.size, np.int32)
    cols[: idx.size] = idx
    return Widths(k, best_k2, (k2,)), (cols,)


def apply_layer(mask, prio, delta, heavy=(), *, m, n_pe: int, widths: Widths):
    """Traced body: the rebalanced hwio mask of one layer (`delta: [G, n]` target - load).

    `widths` (static, see `plan_widths`) bounds `|delta|` for the top-k fallback (`k`) and the
    fast path's candidates per PE (`k2`); `heavy` (one `[ph]` int32 array of PE columns per
    entry of `widths.heavy_k2`, out-of-range = padding) lists PEs handled in separate fast-path
    calls with those wider bounds.
    Keeps: only the PE's own valid slots change; regrown were pruned, dropped were active;
    `|flips| = |delta|`; ties to the lower slot row (= lower hwio flat index).

    Args:
      mask: bool hwio kernel; prio: float32 priorities of its shape (`layer_priorities`);
      delta: `[G, n]` int32 target - load; heavy: the heavy classes' PE columns (`plan_widths`).
      m: the `mappings.PEMapping`; n_pe: PEs per group; widths: the static `Widths`.

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
    is_heavy = jnp.zeros((p,), bool)
    for cols in heavy:
        is_heavy = is_heavy.at[cols].set(True, mode="drop")  # [P]
    v, thr_slot, ok = _select_fast(rank, jnp.where(is_heavy, 0, need), widths.k2)
    for k2h, cols in zip(widths.heavy_k2, heavy, strict=True):
        col = jnp.minimum(cols, p - 1)
        need_h = jnp.where(cols < p, need[col], 0)  # [ph]; padding columns move nothing
        v_h, thr_h, ok_h = _select_fast(rank[:, col], need_h, k2h)  # [Cp, ph] columns
        v = v.at[cols].set(v_h, mode="drop")
        thr_slot = thr_slot.at[cols].set(thr_h, mode="drop")
        ok = ok & ok_h

    def fast(_):
        rows = lax.broadcasted_iota(jnp.int32, (c, p), 0)
        rc = rank[:c]
        chosen = (rc > v[None]) | ((rc == v[None]) & (rows <= thr_slot[None]))
        flips = chosen & (rc >= 0) & (need > 0)[None]  # [C, P]
        return mask ^ m.from_cols(flips, mask.shape, n_pe)

    def slow(_):  # a PE with many candidates at its threshold (e.g. heavy ties): full top-k
        mask_s = m.to_slots(mask, n_pe, False)  # [G, n, C]
        valid_s = m.to_slots(jnp.ones(mask.shape, bool), n_pe, False)  # [G, n, C]
        flips = select_flips(mask_s, m.to_slots(prio, n_pe, 0.0), valid_s, delta, widths.k)
        return m.from_slots(mask_s ^ flips, mask.shape, n_pe)

    return lax.cond(ok, fast, slow, None)
