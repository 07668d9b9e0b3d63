"""Spike-driven per-PE work of one layer: recorded 0/1 inputs x a mask, split by a PE mapping.

At time step `t`, example `b` and output position `p`, PE `(g, q)` does one accumulate for each
of its non-zero weights whose input at that position spiked (zero padding never spikes); the PEs
of a group advance in lock step, so the group spends its busiest PE's work there. Over a trace
this module returns, per group, three exact integer sums over every `(t, b, p)` (`SpikeWork`):
the work of its PEs, the lock-step cycles (the busiest PE's work) and `ceil(work / n)`.

Kernel: per-PE counts `K[kh, kw, c_in, (g, q)]` (the mask's non-zeros at `(kh, kw, c_in, *)`
assigned to `(g, q)`, a segment sum of the mask by PE id) convolved with the 0/1 spikes give
every PE's work at every position; float32 is exact for these integer sums (< 2**24, checked),
converted to int32, reshaped `[..., G, n]`, reduced. That generic path (`path="generic"`) costs
`G * n / c_out` forward convolutions. Faster paths, each tested equal to it:

  sparse       (`path="auto"` at mask density <= 25 %, <= 2.5 % for output-side mappings, where
               one convolution is faster above it on XLA:CPU; any mapping): every non-zero weight's
               input row is gathered from the input windows and summed into its PE (a segment sum
               over the non-zeros, once per `c_out` for output-side mappings, else at the largest
               `n`; a smaller `n` whose PEs it refines sums its PEs), in the narrowest integer type
               that holds a PE's non-zeros: work proportional to the non-zeros, not to the kernel.
               The non-zeros are padded (8 steps per power of two), so masks of the same shape and
               a similar count share one compilation.

The dense paths (`path="dense"`, or "auto" above those densities) cost about one forward convolution each, for
every `n` of a sweep together, chosen from the assignment (host, cached):

  output side  the group and PE depend on `c_out` only (output_channel): one convolution of the
               spikes with the mask gives every output channel's work; each `n` gathers (or sums)
               channels into PEs.
  input side   the group depends on `c_out` only and the PE on `c_in` only (input_split, the
               interleaved test mapping): one grouped product over the input channels sorted by PE
               (the same FLOPs as a forward convolution) gives work per `(PE, c_out)` at the
               largest `n`; a smaller `n` whose PE partition of `c_in` it refines is summed from it.

Geometry: the models' convolutions (`models.common.conv`) pad symmetrically by `(k - 1) // 2`
(PyTorch-style: 3x3 pad 1, 1x1 pad 0); the stride is the smallest one that maps the input size
to the layer's output size (`conv_geometry`). Dense layers are 1x1 convolutions of a 1x1 input.
The trace is processed in chunks of the `T*B` axis (zero chunks add nothing) so a large trace
does not blow memory; the per-chunk int32 sums are added on the host in int64.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.ops.conv import conv2d
from uticket_jax.workload import mappings as wm
from uticket_jax.workload.kernel import Hwio, as_hwio4, coords

PATHS = ("auto", "dense", "sparse", "generic")
_SPARSE_DENSITY = 0.25  # "auto": the sparse path at or below this mask density
_CHUNK_BYTES = 1 << 27  # float32 intermediates of one chunk stay below ~128 MB
_INT32_MAX = 2**31 - 1
_F32_EXACT = 1 << 24
_HIGHEST = jax.lax.Precision.HIGHEST


class SpikeWork(NamedTuple):
    """Spike-driven work of one layer's groups over a whole trace, int64 `[G]` each.

    Fields:
      work: sum over `(t, b, p)` of the group's PEs' work (spike-weight products).
      cycles: sum over `(t, b, p)` of the busiest PE's work (the group's lock-step cycles).
      ceil_mean: sum over `(t, b, p)` of `ceil(work of the group / n)`.
    """

    work: np.ndarray
    cycles: np.ndarray
    ceil_mean: np.ndarray


class Geometry(NamedTuple):
    """Strides `(sh, sw)` and symmetric paddings `((ph, ph), (pw, pw))` of a layer."""

    strides: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]


def conv_geometry(kernel_hw, in_hw, out_hw) -> Geometry | None:
    """The stride and padding mapping `in_hw` to `out_hw` (padding `(k - 1) // 2`), or None.

    The stride per axis is the smallest `s >= 1` with `(h + 2 p - k) // s + 1 == out`.
    """
    strides, pads = [], []
    for k, h, o in zip(kernel_hw, in_hw, out_hw, strict=True):
        p = (int(k) - 1) // 2
        span = int(h) + 2 * p - int(k)
        fit = [s for s in range(1, max(int(h), 1) + 1) if span >= 0 and span // s + 1 == o]
        if not fit:
            return None
        strides.append(fit[0])
        pads.append((p, p))
    return Geometry(tuple(strides), tuple(pads))


# ---- host plans, derived from the assignment ----------------------------------------------------


@functools.lru_cache(maxsize=512)
def _assignment(m: wm.PEMapping, shape: Hwio, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`(group, pe)` int64 broadcast over the whole kernel, and the number of groups."""
    group, pe = m.assign(coords(shape, np), shape, n)
    group = np.broadcast_to(np.asarray(group, np.int64), shape)
    pe = np.broadcast_to(np.asarray(pe, np.int64), shape)
    return group, pe, int(group.max()) + 1 if group.size else 0


@functools.lru_cache(maxsize=512)
def _kind(m: wm.PEMapping, shape: Hwio, n: int) -> str:
    """ "output" (group and PE by c_out only), "input" (group by c_out, PE by c_in), "both" (PE
    constant) or "generic"."""
    group, pe, _ = _assignment(m, shape, n)
    if not (group == group[:1, :1, :1, :]).all():
        return "generic"
    by_out, by_in = (pe == pe[:1, :1, :1, :]).all(), (pe == pe[:1, :1, :, :1]).all()
    return {(True, True): "both", (True, False): "output", (False, True): "input"}.get(
        (bool(by_out), bool(by_in)), "generic"
    )


def _pe_of_cin(m, shape: Hwio, n: int) -> np.ndarray:
    return _assignment(m, shape, n)[1][0, 0, :, 0]


def _refines(m, shape: Hwio, big: int, small: int) -> bool:
    """Whether every PE of `big` holds input channels of one PE of `small` only."""
    pb, ps = _pe_of_cin(m, shape, big), _pe_of_cin(m, shape, small)
    first = np.full(big, -1, np.int64)
    first[pb[::-1]] = ps[::-1]  # the small PE of each big PE's first channel
    return bool((first[pb] == ps).all())


class _Out(NamedTuple):
    """Static: how one `n` is read off a base product."""

    n: int
    groups: int
    base: int  # index of the base product
    fold: bool  # input side: sum base PEs into this n's PEs (one-hot product)
    gather: bool  # channels to PEs / groups by a gather (True) or a one-hot product


class _Plan(NamedTuple):
    """Static facts of one layer's kernel call (shapes and settings only)."""

    kind: str
    shape: Hwio
    geometry: Geometry
    bases: tuple[int, ...]  # the n of each base product (input side); () otherwise
    outs: tuple[_Out, ...]
    chunk: int
    chunks: int
    dtype: str = "int32"  # sparse path: per-PE work fits (from the per-PE non-zero counts)


def _index(dst: np.ndarray, size: int) -> tuple[bool, np.ndarray]:
    """Sources to `size` targets: `(True, src [size])` (-1: none) when each target has at most
    one source, else `(False, one-hot [len(dst), size] float32)`."""
    counts = np.bincount(dst, minlength=size)
    if counts.max(initial=0) <= 1:
        src = np.full(size, -1, np.int64)
        src[dst] = np.arange(len(dst))
        return True, src.astype(np.int32)
    onehot = np.zeros((len(dst), size), np.float32)
    onehot[np.arange(len(dst)), dst] = 1.0
    return False, onehot


def _flags(m, shape: Hwio, ns: Sequence[int], path: str, density: float) -> str:
    """The layer's path for every `n` of `ns` together: "sparse", "output", "input" or
    "generic". "auto" takes the sparse path at density <= 25 %, except for output-side mappings
    above 2.5 %, where one convolution is faster (measured on XLA:CPU, VGG16 layers)."""
    kinds = [_kind(m, shape, n) for n in ns]
    output_side = all(k in ("output", "both") for k in kinds)
    limit = _SPARSE_DENSITY / 10 if output_side else _SPARSE_DENSITY
    if path == "sparse" or (path == "auto" and density <= limit):
        return "sparse"
    if path == "generic":
        return "generic"
    if all(k == "output" or k == "both" for k in kinds):
        return "output"
    if all(k in ("input", "both") for k in kinds):
        return "input"
    return "generic"


def _input_bases(m, shape: Hwio, ns: Sequence[int]) -> tuple[tuple[int, ...], list[int]]:
    """The base `n`s of the input-side products and, per `n` of `ns`, the index of its base
    (the largest base whose PE partition of `c_in` refines it)."""
    bases: list[int] = []
    which = {}
    for n in sorted(set(ns), reverse=True):
        hit = next((i for i, b in enumerate(bases) if _refines(m, shape, b, n)), None)
        if hit is None:
            bases.append(n)
            hit = len(bases) - 1
        which[n] = hit
    return tuple(bases), [which[n] for n in ns]


def _channel_order(m, shape: Hwio, n: int) -> np.ndarray:
    """`[n, s]` input channels of each PE (ascending), -1 padding; `s` the most of any PE."""
    pe = _pe_of_cin(m, shape, n)
    members = [np.flatnonzero(pe == q) for q in range(n)]
    s = max(1, max(len(c) for c in members))
    out = np.full((n, s), -1, np.int64)
    for q, c in enumerate(members):
        out[q, : len(c)] = c
    return out


def _bucket(count: int) -> int:
    """`count` rounded up to 8 steps per power of two (>= 64): few compilations, <= 1/8 waste."""
    step = max(8, 1 << max(count - 1, 0).bit_length() - 3)
    return max(64, -(-count // step) * step)


@functools.lru_cache(maxsize=512)
def _pid_map(m, shape: Hwio, big: int, small: int) -> np.ndarray | None:
    """The `small`-PE id of every `big`-PE id when the assignment makes it a function (its PEs
    refine), else None; unused big PEs map to the dropped id `G * small`."""
    gb, qb, n_gb = _assignment(m, shape, big)
    gs, qs, n_gs = _assignment(m, shape, small)
    pid_b, pid_s = (gb * big + qb).ravel(), (gs * small + qs).ravel()
    out = np.full(n_gb * big, n_gs * small, np.int64)
    out[pid_b] = pid_s
    return out.astype(np.int32) if (out[pid_b] == pid_s).all() else None


def _sparse_build(m, shape: Hwio, ns, mask: np.ndarray):
    """Sparse path: the input row of every non-zero weight (`[cap]`, padded to `_bucket`: padding
    reads a zero row into a dropped PE), and per `n` either its PE ids (a base) or the map onto its
    PEs from a base's: the per-`c_out` work when PEs depend on `c_out` only, else a larger `n`
    whose PEs refine it. Returns `cap`, the bases, the outs, the arrays and the work's dtype."""
    nz = np.flatnonzero(mask.reshape(-1))
    cap = _bucket(len(nz))
    a, b, i, o = np.unravel_index(nz, shape)
    cols = np.full(cap, shape.kh * shape.kw * shape.c_in, np.int32)
    cols[: len(nz)] = (a * shape.kw + b) * shape.c_in + i
    arrays: dict[str, Any] = {"cols": cols}
    per_out = all(_kind(m, shape, n) in ("output", "both") for n in ns)
    if per_out:
        arrays["base"] = np.pad(o.astype(np.int32), (0, cap - len(nz)), constant_values=shape.c_out)
    outs, ids, most = {}, {}, np.bincount(o, minlength=1).max()
    order = sorted(set(ns), reverse=True)
    for k, n in enumerate(order):
        group, pe, g = _assignment(m, shape, n)
        pid = (group * n + pe)[a, b, i, o]
        most = max(most, np.bincount(pid, minlength=1).max())
        base = next((j for j in range(k) if _pid_map(m, shape, order[j], n) is not None), None)
        if per_out:
            pid_of_out = np.append((group * n + pe)[0, 0, 0], g * n).astype(np.int32)
            outs[n], ids[n] = _Out(n, g, -1, True, True), (pid_of_out, None)
        elif base is None:
            pid = np.pad(pid.astype(np.int32), (0, cap - len(nz)), constant_values=g * n)
            outs[n], ids[n] = _Out(n, g, k, False, True), (pid, None)
        else:
            outs[n], ids[n] = (
                _Out(n, g, base, True, True),
                (_pid_map(m, shape, order[base], n), None),
            )
    arrays["outs"] = [ids[n] for n in order]
    dtype = "int8" if most < 2**7 else "int16" if most < 2**15 else "int32"
    bases = (shape.c_out,) if per_out else ()
    return cap, bases, tuple(outs[n] for n in order), arrays, dtype


def _build(m, shape: Hwio, ns, geometry, path: str, tb: int, pixels: int, mask: np.ndarray):
    """The static `_Plan` and the host arrays of one layer's kernel call."""
    nnz = int(np.count_nonzero(mask))
    kind = _flags(m, shape, ns, path, nnz / max(mask.size, 1))
    kh, kw, c_in, c_out = shape
    if kind == "sparse":
        cap, bases, outs, arrays, dtype = _sparse_build(m, shape, ns, mask)
        width = kh * kw * c_in + cap + 2 * max(o.groups * o.n for o in outs) + c_out
        plan = _plan(kind, shape, geometry, bases, outs, (tb, pixels, nnz, width))
        return plan._replace(dtype=dtype), arrays
    bases, base_of = (), [0] * len(ns)
    arrays: dict[str, Any] = {"outs": []}
    if kind == "input":
        bases, base_of = _input_bases(m, shape, ns)
        arrays["order"] = [_channel_order(m, shape, b) for b in bases]
    outs, widest = [], 1
    for n, b in zip(ns, base_of, strict=True):
        group, pe, g = _assignment(m, shape, n)
        fold = False
        if kind == "output":
            gather, idx = _index(group[0, 0, 0] * n + pe[0, 0, 0], g * n)
            arrays["outs"].append((idx, None))
        elif kind == "input":
            q_big = _pe_of_cin(m, shape, bases[b])
            fold = bases[b] != n
            onehot = np.zeros((bases[b], n), np.float32)
            onehot[q_big, _pe_of_cin(m, shape, n)] = 1.0
            gather, idx = _index(group[0, 0, 0], g)
            arrays["outs"].append((idx, onehot if fold else None))
        else:
            gather, idx = True, (group * n + pe).astype(np.int32)
            arrays["outs"].append((idx, None))
        outs.append(_Out(int(n), g, b, fold, gather))
        widest = max(widest, g * n * (c_out if kind == "input" else 1))
    width = kh * kw * (c_in + sum(b for b in bases)) + c_out * (1 + sum(bases)) + widest
    return _plan(kind, shape, geometry, bases, tuple(outs), (tb, pixels, nnz, width)), arrays


def _plan(kind, shape, geometry, bases, outs, sizes) -> _Plan:
    """The plan with its chunking: float32 intermediates of `width` per position under
    `_CHUNK_BYTES`, and no group's int32 sum over a chunk past 2**31 - 1."""
    tb, pixels, nnz, width = sizes
    chunk = max(1, min(tb, _CHUNK_BYTES // (4 * pixels * width)))
    if pixels * max(nnz, 1) > _INT32_MAX:
        raise ValueError(f"mask: {nnz} non-zeros x {pixels} positions overflow the int32 sums")
    chunk = min(chunk, _INT32_MAX // (pixels * max(nnz, 1)))
    return _Plan(kind, shape, geometry, bases, outs, chunk, -(-tb // chunk))


def _patches(x, shape: Hwio, geometry: Geometry):
    """`[N, Ho, Wo, kh*kw, C]` input windows of every output position (zero padding)."""
    (sh, sw), pads = geometry
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho = (xp.shape[1] - shape.kh) // sh + 1
    wo = (xp.shape[2] - shape.kw) // sw + 1
    taps = [
        xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        for i in range(shape.kh)
        for j in range(shape.kw)
    ]
    return jnp.stack(taps, axis=3)


def _reduce(work, n: int, pe_axis: int = -1, pos_axis: int = 0):
    """`[3, G]` int32 sums over positions of the PE work (`[M, G, n]`, or `[G, n, M]` with
    `pe_axis=1, pos_axis=-1`): work, max, ceil(mean)."""
    total = work.sum(pe_axis, dtype=jnp.int32)
    ceil = (total + n - 1) // n
    most = work.max(pe_axis).astype(jnp.int32)
    return jnp.stack([x.sum(pos_axis, dtype=jnp.int32) for x in (total, most, ceil)])


def _to_targets(x, gather: bool, idx, axis: int):
    """Sources along `axis` of `x` summed into targets: a gather (`idx`, -1 none) or a one-hot
    product (`idx [sources, targets]`)."""
    if gather:
        x = jnp.concatenate([x, jnp.zeros_like(jnp.take(x, jnp.array([0]), axis))], axis)
        return jnp.take(x, jnp.where(idx < 0, x.shape[axis] - 1, idx), axis)
    x = jnp.moveaxis(x, axis, -1)
    return jnp.moveaxis(jnp.matmul(x, idx, precision=_HIGHEST), -1, axis)


def _sparse_work(plan: _Plan, arrays, xc):
    """Sparse path: each non-zero weight's input row gathered from the patches, summed per PE
    (a segment sum over the non-zeros), for every `n`."""
    shape, ((sh, sw), pads) = plan.shape, plan.geometry
    xp = jnp.pad(jnp.moveaxis(xc, -1, 0), ((0, 0), (0, 0), *pads))  # [C, N, Hp, Wp]
    ho, wo = (xp.shape[2] - shape.kh) // sh + 1, (xp.shape[3] - shape.kw) // sw + 1
    taps = [
        xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        for i in range(shape.kh)
        for j in range(shape.kw)
    ]
    rows = jnp.stack(taps).reshape(len(taps) * shape.c_in, -1)  # [K*C, M], row (k, c)
    rows = jnp.concatenate([rows, jnp.zeros_like(rows[:1])])  # row K*C: zeros (padding)
    inputs = jnp.take(rows, arrays["cols"], axis=0).astype(plan.dtype)  # [cap, M]
    if plan.bases:  # per output channel
        per_out = jax.ops.segment_sum(inputs, arrays["base"], num_segments=plan.bases[0] + 1)
    out, per_pe = [], []
    for o, (pid, _) in zip(plan.outs, arrays["outs"], strict=True):  # bases before their folds
        size = o.groups * o.n
        src = (per_out if o.base < 0 else per_pe[o.base]) if o.fold else inputs
        per_pe.append(jax.ops.segment_sum(src, pid, num_segments=size + 1)[:size])  # [G*n, M]
        out.append(_reduce(per_pe[-1].reshape(o.groups, o.n, -1), o.n, 1, -1))
    return out


def _chunk_work(plan: _Plan, arrays, xc):
    """Every `n`'s `[3, G]` sums of one chunk `xc [chunk, H, W, C]` (bool)."""
    if plan.kind == "sparse":
        return _sparse_work(plan, arrays, xc)
    xf = xc.astype(jnp.float32)
    geo, shape = plan.geometry, plan.shape
    out = []
    if plan.kind == "input":
        bases = []
        for order, kern in zip(arrays["order"], arrays["kernels"], strict=True):
            xz = jnp.concatenate([xf, jnp.zeros_like(xf[..., :1])], -1)  # channel -1: zeros
            pat = _patches(jnp.take(xz, order.reshape(-1), axis=-1), shape, geo)
            pat = pat.reshape(-1, shape.kh * shape.kw, *order.shape)  # [M, K, nb, s]
            bases.append(jnp.einsum("mkqs,kqso->mqo", pat, kern, precision=_HIGHEST))
        for o, (idx, fold) in zip(plan.outs, arrays["outs"], strict=True):
            base = bases[o.base]  # [M, nb, c_out]
            if o.fold:
                base = jnp.einsum("mqo,qr->mro", base, fold, precision=_HIGHEST)
            work = _to_targets(base, o.gather, idx, 2).astype(jnp.int32)  # [M, n, G]
            out.append(_reduce(jnp.swapaxes(work, 1, 2), o.n))
        return out
    if plan.kind == "output":
        base = conv2d(xf, arrays["kernel"], geo.strides, geo.pads)
        base = base.reshape(-1, shape.c_out)  # [M, c_out]
    for o, (idx, _) in zip(plan.outs, arrays["outs"], strict=True):
        if plan.kind == "output":
            work = _to_targets(base, o.gather, idx, 1)
        else:
            kern = jax.ops.segment_sum(
                arrays["mask"].ravel(), _flat_targets(idx, o), num_segments=_k_size(shape, o)
            ).reshape(shape.kh, shape.kw, shape.c_in, o.groups * o.n)
            work = conv2d(xf, kern, geo.strides, geo.pads).reshape(-1, o.groups * o.n)
        out.append(_reduce(work.astype(jnp.int32).reshape(-1, o.groups, o.n), o.n))
    return out


def _k_size(shape: Hwio, o: _Out) -> int:
    return shape.kh * shape.kw * shape.c_in * o.groups * o.n


def _flat_targets(pid, o: _Out):
    """Index of `K[kh, kw, c_in, pid]` for every weight (generic path)."""
    kh, kw, c_in, c_out = pid.shape
    cell = jnp.arange(kh * kw * c_in, dtype=jnp.int32).reshape(kh, kw, c_in, 1)
    return (cell * (o.groups * o.n) + pid).ravel()


# Static: the plan (mapping-derived structure: kind, kernel shape, geometry, per-n group counts and
# reductions, chunking), all from shapes and settings. Invariant: exact integer sums per group.
@functools.partial(jax.jit, static_argnames=("plan",))
def _layer_kernel(x, arrays, *, plan: _Plan):
    pad = plan.chunk * plan.chunks - x.shape[0]
    x = jnp.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0)))  # zero spikes: no work
    x = x.reshape(plan.chunks, plan.chunk, *x.shape[1:])
    return jax.lax.map(lambda xc: _chunk_work(plan, arrays, xc), x)  # per n: [chunks, 3, G]


def _as_nhwc(x) -> np.ndarray:
    """A trace `[T, B, H, W, C]` or `[T, B, C]` as `[T*B, H, W, C]` bool."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, :, None, None, :]
    return x.reshape(-1, *x.shape[2:]).astype(bool, copy=False)


def spike_work(x, mask, mapping, ns: Sequence[int], geometry: Geometry, path: str = "auto"):
    """`{n: SpikeWork}` of one layer for every `n` of `ns` (one compiled call; see the module).

    Args:
      x: the layer's inputs `[T, B, H, W, C_in]` (dense: `[T, B, C_in]`), bool or 0/1.
      mask: the layer's hwio mask (conv 4-D, dense 2-D).
      mapping: a registered mapping name or `PEMapping`.
      ns: PEs per group, static ints >= 1.
      geometry: strides and paddings (`conv_geometry`).
      path: "auto", "dense", "sparse" or "generic" (see the module docstring).
    Returns:
      `{n: SpikeWork}` with int64 `[G]` sums over the whole trace (all `T * B` steps).
    """
    if path not in PATHS:
        raise ValueError(f"path: unknown {path!r}; allowed: {', '.join(PATHS)}")
    m = wm.get_mapping(mapping)
    shape = as_hwio4(np.shape(mask))
    ns = tuple(int(n) for n in ns)
    if not ns or min(ns) < 1:
        raise ValueError(f"ns: need PE counts >= 1, got {ns}")
    mk = np.asarray(mask).reshape(shape).astype(np.float32)
    if mk.sum() >= _F32_EXACT:
        raise ValueError(f"mask: {mk.sum():.0f} non-zeros; float32 sums are exact below 2**24")
    xs = _as_nhwc(x)
    out_hw = _out_hw(xs.shape[1:3], shape, geometry)
    plan, arrays = _build(m, shape, ns, geometry, path, xs.shape[0], out_hw, mk != 0)
    if plan.kind == "input":
        k3 = mk.reshape(-1, shape.c_in, shape.c_out)
        k3 = np.concatenate([k3, np.zeros_like(k3[:, :1])], 1)  # input channel -1: zeros
        arrays["kernels"] = [k3[:, order] for order in arrays["order"]]
    elif plan.kind == "output":
        arrays["kernel"] = mk
    elif plan.kind == "generic":
        arrays["mask"] = mk
    sums = _layer_kernel(jnp.asarray(xs), jax.tree.map(jnp.asarray, arrays), plan=plan)
    out = {}
    for o, s in zip(plan.outs, sums, strict=True):
        s = np.asarray(s, np.int64).sum(0)  # over chunks, int64
        out[o.n] = SpikeWork(s[0], s[1], s[2])
    return {n: out[n] for n in ns}


def _out_hw(in_hw, shape: Hwio, geometry: Geometry) -> int:
    """Output positions of one step."""
    (sh, sw), ((ph, _), (pw, _)) = geometry
    return ((in_hw[0] + 2 * ph - shape.kh) // sh + 1) * ((in_hw[1] + 2 * pw - shape.kw) // sw + 1)


def layer_spike_work(
    x, mask, *, mapping: str, n_pe: int, stride: int | tuple[int, int] = 1, path: str = "auto"
) -> SpikeWork:
    """Spike-driven work of one layer's groups of `n_pe` PEs over a recorded trace.

    Args:
      x: inputs `[T, B, H, W, C_in]` (dense: `[T, B, C_in]`), bool or 0/1.
      mask: hwio mask, conv `[kh, kw, C_in, C_out]` or dense `[C_in, C_out]`.
      mapping: a registered mapping name.
      n_pe: PEs per group (>= 1).
      stride: the convolution's stride; padding is `(k - 1) // 2` on each side (the models').
      path: "auto" (sparse at mask density <= 25 %, else dense), "dense" (the assignment's
        output- or input-side convolution, else generic), "sparse" or "generic" (the per-PE
        count kernel); every path gives the same sums.
    Returns:
      `SpikeWork` int64 `[G]`: per group, the work, lock-step cycles and ceil-mean sums over all
      `(t, b, p)` of the trace (divide by `B` for per-example figures).
    """
    shape = as_hwio4(np.shape(mask))
    st = (stride, stride) if np.ndim(stride) == 0 else tuple(stride)
    if len(st) != 2 or min(int(s) for s in st) < 1:
        raise ValueError(f"stride: must be >= 1, got {stride}")
    pads = tuple(((k - 1) // 2, (k - 1) // 2) for k in (shape.kh, shape.kw))
    geo = Geometry((int(st[0]), int(st[1])), pads)
    return spike_work(x, mask, mapping, (int(n_pe),), geo, path)[int(n_pe)]
