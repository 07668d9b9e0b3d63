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
`G * n / c_out` forward convolutions. Two derived fast paths cost about one each, for every `n`
of a sweep together, chosen from the assignment (host, cached):

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

PATHS = ("auto", "generic")
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


def _flags(m, shape: Hwio, ns: Sequence[int], path: str) -> str:
    """The layer's path for every `n` of `ns` together: "output", "input" or "generic"."""
    kinds = [_kind(m, shape, n) for n in ns]
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


def _build(m, shape: Hwio, ns, geometry, path: str, tb: int, pixels: int, nnz: int):
    """The static `_Plan` and the host arrays of one layer's kernel call."""
    kind = _flags(m, shape, ns, path)
    kh, kw, c_in, c_out = shape
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
    chunk = max(1, min(tb, _CHUNK_BYTES // (4 * pixels * width)))
    if pixels * max(nnz, 1) > _INT32_MAX:
        raise ValueError(f"mask: {nnz} non-zeros x {pixels} positions overflow the int32 sums")
    chunk = min(chunk, _INT32_MAX // (pixels * max(nnz, 1)))
    plan = _Plan(kind, shape, geometry, bases, tuple(outs), chunk, -(-tb // chunk))
    return plan, arrays


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


def _reduce(work, n: int):
    """`[3, G]` int32 sums over positions of the PE work `[M, G, n]`: work, max, ceil(mean)."""
    total = work.sum(-1)
    ceil = (total + n - 1) // n
    return jnp.stack([total.sum(0), work.max(-1).sum(0), ceil.sum(0)])


def _to_targets(x, gather: bool, idx, axis: int):
    """Sources along `axis` of `x` summed into targets: a gather (`idx`, -1 none) or a one-hot
    product (`idx [sources, targets]`)."""
    if gather:
        x = jnp.concatenate([x, jnp.zeros_like(jnp.take(x, jnp.array([0]), axis))], axis)
        return jnp.take(x, jnp.where(idx < 0, x.shape[axis] - 1, idx), axis)
    x = jnp.moveaxis(x, axis, -1)
    return jnp.moveaxis(jnp.matmul(x, idx, precision=_HIGHEST), -1, axis)


def _chunk_work(plan: _Plan, arrays, xc):
    """Every `n`'s `[3, G]` sums of one chunk `xc [chunk, H, W, C]` (bool)."""
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
      path: "auto" (the derived fast path the assignment allows) or "generic".
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
    nnz = int(mk.sum())
    if nnz >= _F32_EXACT:
        raise ValueError(f"mask: {nnz} non-zeros; float32 sums are exact below 2**24 only")
    xs = _as_nhwc(x)
    out_hw = _out_hw(xs.shape[1:3], shape, geometry)
    plan, arrays = _build(m, shape, ns, geometry, path, xs.shape[0], out_hw, nnz)
    if plan.kind == "input":
        k3 = mk.reshape(-1, shape.c_in, shape.c_out)
        k3 = np.concatenate([k3, np.zeros_like(k3[:, :1])], 1)  # input channel -1: zeros
        arrays["kernels"] = [k3[:, order] for order in arrays["order"]]
    elif plan.kind == "output":
        arrays["kernel"] = mk
    else:
        arrays["mask"] = mk
    sums = _layer_kernel(jnp.asarray(xs), jax.tree.map(jnp.asarray, arrays), plan=plan)
    out = {}
    for n, s in zip(ns, sums, strict=True):
        s = np.asarray(s, np.int64).sum(0)  # over chunks, int64
        out[n] = SpikeWork(s[0], s[1], s[2])
    return out


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
      path: "auto" (derived fast path) or "generic" (the per-PE count kernel, any mapping).
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
