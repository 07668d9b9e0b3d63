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

The dense paths (`path="dense"`, or "auto" above those densities) cost about one forward
convolution each, for every `n` of a sweep together, chosen from the assignment (host, cached,
`spike_plans.py`):

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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.hardware.spike_plans import (
    CHUNK_BYTES,
    CPU_SPARSE_CHUNK_BYTES,
    PATHS,
    Geometry,
    Plan,
    PlanOut,
    build_plan,
    conv_geometry,
)
from uticket_jax.ops.conv import conv2d
from uticket_jax.workload import mappings as wm
from uticket_jax.workload.kernel import Hwio, as_hwio4

_F32_EXACT = 1 << 24
_HIGHEST = jax.lax.Precision.HIGHEST
__all__ = ["PATHS", "Geometry", "SpikeWork", "conv_geometry", "layer_spike_work", "spike_work"]


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


def _sparse_work(plan: Plan, arrays, xc):
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


def _chunk_work(plan: Plan, arrays, xc):
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


def _k_size(shape: Hwio, o: PlanOut) -> int:
    return shape.kh * shape.kw * shape.c_in * o.groups * o.n


def _flat_targets(pid, o: PlanOut):
    """Index of `K[kh, kw, c_in, pid]` for every weight (generic path)."""
    kh, kw, c_in, c_out = pid.shape
    cell = jnp.arange(kh * kw * c_in, dtype=jnp.int32).reshape(kh, kw, c_in, 1)
    return (cell * (o.groups * o.n) + pid).ravel()


# Static: the plan (mapping-derived structure: kind, kernel shape, geometry, per-n group counts and
# reductions, chunking), all from shapes and settings. Invariant: exact integer sums per group.
@functools.partial(jax.jit, static_argnames=("plan",))
def _layer_kernel(x, arrays, *, plan: Plan):
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
    budget = CPU_SPARSE_CHUNK_BYTES if jax.default_backend() == "cpu" else CHUNK_BYTES
    plan, arrays = build_plan(m, shape, ns, geometry, path, xs.shape[0], out_hw, mk != 0, budget)
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
