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
drawn from `key` (`random_priorities`). Ties go to the lower hwio flat index.

How the choice is made (exactly the top-`|delta|` of each PE, without a top-k over whole slices,
which costs ~5 ns per weight on CPU): the kernel works in the slot-major layout `[C, P]` of
`mappings.PEMapping.to_cols` (a reshape for output_channel), keys every slot with an int32 that
orders like the priority (-1 for non-candidates), then per PE (1) bisects the maxima of 8-slot
chunks for a threshold `t` that at least `|delta|` slots reach, (2) bit-packs the slots
`>= t` (usually little more than `|delta|`) and compacts them in slot order into `[k2, P]`,
(3) bisects those few keys for the exact `|delta|`-th key and counts equal keys in slot order
for the last chosen slot; one elementwise pass then flips. A PE with more than `k2` candidates
above `t` (e.g. masses of equal weights) sends the layer to the plain `lax.top_k` selection under
`lax.cond`; both give the same mask. The few PEs that need many more moves than the rest get a
wider call of their own (`plan_widths`) so the common PEs keep a narrow `k2`.
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
    slot = lax.broadcasted_iota(jnp.int32, score.shape, score.ndim - 1)
    chosen = (score > thr) | ((score == thr) & (slot <= thr_idx))
    return chosen & (score > neg_inf) & (need > 0)[..., None]


_WORD = 32  # slots per bit-packed word of the compaction step
_CHUNK = 8  # slots per chunk whose maximum bounds the per-PE threshold
_ONEHOT_W = 8  # layers with at most this many words per PE compact without gathers
_T_STEPS = 20  # bisection steps for the chunk threshold (any step count is exact; more = fewer
# candidates); the exact selection among candidates always runs 31 steps (the int32 key range).


def _pref_keys(mask_c, prio_c, valid_c, delta_p):
    """`[C, P]` int32 preference of every slot for its PE's move; -1 where it is no candidate.

    Regrow (`delta > 0`): pruned valid slots keyed by the float bits of `prio` (non-negative
    finite floats order like their bits); drop (`delta < 0`): active slots keyed by
    `0x7F800000 - bits(prio)` (smaller `prio` first). Equal keys <=> equal priorities.
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


def _select_fast(key, need, k2: int):
    """Exact `(v, slot)` per PE such that the chosen slots are `key > v | key == v & row <= slot`.

    `key: [Cp, P]` (`Cp` a multiple of `_WORD`), `need: [P]`. Returns `(v, thr_slot, ok)`; `ok`
    is False when a PE has more than `k2` (static) candidates above its chunk threshold.
    Steps: (1) chunk maxima bound the `need`-th largest key from below (`t`); (2) slots with
    `key >= t` (at least `need`, usually few) are bit-packed per `_WORD` rows and compacted, in
    row order, into `[k2, P]`; (3) bisection finds the exact `need`-th key `v` among them, and a
    prefix count over equal keys the last chosen row (ties: lower row = lower hwio index).
    """
    cp, p = key.shape
    mx = key.reshape(cp // _CHUNK, _CHUNK, p).max(1)  # [Cp/8, P]
    t = _bisect_ge(mx, jnp.zeros((p,), jnp.int32), mx.max(0) + 1, need, _T_STEPS)  # [P]
    flag = (key >= t[None]).reshape(cp // _WORD, _WORD, p)  # [W, 32, P]
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
    ckey = jnp.where(live, jnp.take_along_axis(key, jnp.where(live, row, 0), 0), -1)  # [k2, P]
    v = _bisect_ge(ckey, t, ckey.max(0) + 1, need, 31)  # [P] the need-th largest key
    r = need - (ckey > v[None]).sum(0, dtype=jnp.int32)  # [P] ties at v still to take
    eq = ckey == v[None]
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


class Widths(NamedTuple):
    """Static selection widths of one layer (`plan_widths`); `heavy` columns are traced."""

    k: int  # top-k fallback width (>= every |delta|)
    k2: int  # fast-path candidate bound of the PEs outside every heavy class
    heavy_k2: tuple[int, ...] = ()  # candidate bound of each heavy class (`apply_layer`)


def _padded_size(n: int) -> int:
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
      with the out-of-range column `P` to `_padded_size` (an empty tuple: one class).
    """
    need = np.abs(np.asarray(delta)).reshape(-1)
    d_max = int(need.max(initial=0))
    k, k2 = _bound(d_max, c), cand_bound(d_max, c)
    best, best_level, best_k2 = need.size * k2, None, k2
    level = 2
    while cand_bound(level, c) < k2:
        light_k2 = cand_bound(int(need[need <= level].max(initial=0)), c)
        n_heavy = int((need > level).sum())
        cost = need.size * light_k2 + 2 * _padded_size(n_heavy) * k2 + 65536
        if cost < best:
            best, best_level, best_k2 = cost, level, light_k2
        level *= 2
    if best_level is None:
        return Widths(k, k2), ()
    idx = np.nonzero(need > best_level)[0]
    cols = np.full(_padded_size(idx.size), need.size, np.int32)
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
    """
    delta_p = m.pe_cols(delta)  # [P]
    need = jnp.abs(delta_p)  # [P]
    mask_c = m.to_cols(mask, n_pe, False)  # [C, P]
    valid_c = m.to_cols(jnp.ones(mask.shape, bool), n_pe, False)  # [C, P]
    key = _pref_keys(mask_c, m.to_cols(prio, n_pe, 0.0), valid_c, delta_p)  # [C, P]
    c, p = key.shape
    key = jnp.pad(key, ((0, _cdiv(c, _WORD) * _WORD - c), (0, 0)), constant_values=-1)
    # Materialize the keys once: every consumer below would otherwise re-read the (transposed)
    # inputs inside its own fusion.
    key = lax.optimization_barrier(key)  # [Cp, P]
    is_heavy = jnp.zeros((p,), bool)
    for cols in heavy:
        is_heavy = is_heavy.at[cols].set(True, mode="drop")  # [P]
    v, thr_slot, ok = _select_fast(key, jnp.where(is_heavy, 0, need), widths.k2)
    for k2h, cols in zip(widths.heavy_k2, heavy, strict=True):
        col = jnp.minimum(cols, p - 1)
        need_h = jnp.where(cols < p, need[col], 0)  # [ph]; padding columns move nothing
        v_h, thr_h, ok_h = _select_fast(key[:, col], need_h, k2h)  # [Cp, ph] columns
        v = v.at[cols].set(v_h, mode="drop")
        thr_slot = thr_slot.at[cols].set(thr_h, mode="drop")
        ok = ok & ok_h

    def fast(_):
        rows = lax.broadcasted_iota(jnp.int32, (c, p), 0)
        kc = key[:c]
        chosen = (kc > v[None]) | ((kc == v[None]) & (rows <= thr_slot[None]))
        flips = chosen & (kc >= 0) & (need > 0)[None]  # [C, P]
        return mask ^ m.from_cols(flips, mask.shape, n_pe)

    def slow(_):  # a PE with many candidates at its threshold (e.g. heavy ties): full top-k
        mask_s = m.to_slots(mask, n_pe, False)  # [G, n, C]
        valid_s = m.to_slots(jnp.ones(mask.shape, bool), n_pe, False)  # [G, n, C]
        flips = select_flips(mask_s, m.to_slots(prio, n_pe, 0.0), valid_s, delta, widths.k)
        return m.from_slots(mask_s ^ flips, mask.shape, n_pe)

    return lax.cond(ok, fast, slow, None)


@functools.partial(jax.jit, static_argnames=("n_pe", "mapping", "widths"))
def _apply(mask, prio, delta, heavy=(), *, n_pe: int, mapping: str, widths: Widths):
    # n_pe / mapping fix the layout's shape, widths the selection sizes: structure, hence
    # static. Keeps: only slots of the PE change; regrown were pruned, dropped were active;
    # |flips| = |delta|.
    m = mp.MAPPINGS[mapping]
    return apply_layer(mask, prio, delta, heavy, m=m, n_pe=n_pe, widths=widths)


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
        c = m.geometry(shape, n_pe)[1]
        widths, heavy = plan_widths(m.pe_cols(np.asarray(delta)), c)
        new = _apply(mask, prio, delta, heavy, n_pe=n_pe, mapping=m.name, widths=widths)
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
