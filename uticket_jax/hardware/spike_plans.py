"""Host plans of the spike-driven work kernels (`spike_work`), derived from a mapping's assignment.

Everything here runs on the host, once per layer shape, mapping and set of `n` (cached where it
depends on those only): the layer's geometry (stride and padding), which kernel path its
assignment allows (output side, input side, sparse, generic), the index tables each path reads
and the chunking of the trace. A `Plan` holds the static part (shapes and settings), the arrays
the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from uticket_jax.workload import mappings as wm
from uticket_jax.workload.kernel import Hwio, coords

PATHS = ("auto", "dense", "sparse", "generic")
_SPARSE_DENSITY = 0.25  # "auto": the sparse path at or below this mask density
CHUNK_BYTES = 1 << 27  # float32 intermediates of one chunk stay below ~128 MB
# The sparse path on a CPU: its gathers and segment sums are bound by memory traffic, so chunks
# whose intermediates stay near the caches are faster (VGG16 at 98 %, B = 32, T = 5, both
# mappings: ~0.45x the time of 128 MB chunks on a 2-core EPYC; BUILD_NOTES.md).
CPU_SPARSE_CHUNK_BYTES = 3 << 23
_INT32_MAX = 2**31 - 1


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


class PlanOut(NamedTuple):
    """Static: how one `n` is read off a base product."""

    n: int
    groups: int
    base: int  # index of the base product
    fold: bool  # input side: sum base PEs into this n's PEs (one-hot product)
    gather: bool  # channels to PEs / groups by a gather (True) or a one-hot product


class Plan(NamedTuple):
    """Static facts of one layer's kernel call (shapes and settings only)."""

    kind: str
    shape: Hwio
    geometry: Geometry
    bases: tuple[int, ...]  # the n of each base product (input side); () otherwise
    outs: tuple[PlanOut, ...]
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
    step = 1 << max(max(count - 1, 0).bit_length() - 3, 3)
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
        pid = group[a, b, i, o] * n + pe[a, b, i, o]  # at the non-zeros only
        most = max(most, np.bincount(pid, minlength=1).max())
        # A larger n's PE sums are folded into this n's PEs when they are fewer rows than the
        # non-zeros (else summing the non-zeros again reads less).
        base = next(
            (
                j
                for j in range(k)
                if outs[order[j]].groups * order[j] < cap
                and _pid_map(m, shape, order[j], n) is not None
            ),
            None,
        )
        if per_out:
            pid_of_out = np.append(group[0, 0, 0] * n + pe[0, 0, 0], g * n).astype(np.int32)
            outs[n], ids[n] = PlanOut(n, g, -1, True, True), (pid_of_out, None)
        elif base is None:
            pid = np.pad(pid.astype(np.int32), (0, cap - len(nz)), constant_values=g * n)
            outs[n], ids[n] = PlanOut(n, g, k, False, True), (pid, None)
        else:
            outs[n], ids[n] = (
                PlanOut(n, g, base, True, True),
                (_pid_map(m, shape, order[base], n), None),
            )
    arrays["outs"] = [ids[n] for n in order]
    dtype = "int8" if most < 2**7 else "int16" if most < 2**15 else "int32"
    bases = (shape.c_out,) if per_out else ()
    return cap, bases, tuple(outs[n] for n in order), arrays, dtype


def build_plan(
    m,
    shape: Hwio,
    ns,
    geometry,
    path: str,
    tb: int,
    pixels: int,
    mask: np.ndarray,
    sparse_chunk_bytes: int = CHUNK_BYTES,
):
    """The static `Plan` and the host arrays of one layer's kernel call (`sparse_chunk_bytes`:
    the sparse path's budget per chunk, `CPU_SPARSE_CHUNK_BYTES` on a CPU)."""
    nnz = int(np.count_nonzero(mask))
    kind = _flags(m, shape, ns, path, nnz / max(mask.size, 1))
    kh, kw, c_in, c_out = shape
    if kind == "sparse":
        cap, bases, outs, arrays, dtype = _sparse_build(m, shape, ns, mask)
        width = kh * kw * c_in + cap + 2 * max(o.groups * o.n for o in outs) + c_out
        plan = _plan(
            kind, shape, geometry, bases, outs, (tb, pixels, nnz, width), sparse_chunk_bytes
        )
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
        outs.append(PlanOut(int(n), g, b, fold, gather))
        widest = max(widest, g * n * (c_out if kind == "input" else 1))
    width = kh * kw * (c_in + sum(b for b in bases)) + c_out * (1 + sum(bases)) + widest
    return _plan(kind, shape, geometry, bases, tuple(outs), (tb, pixels, nnz, width)), arrays


def _plan(kind, shape, geometry, bases, outs, sizes, budget: int = CHUNK_BYTES) -> Plan:
    """The plan with its chunking: float32 intermediates of `width` per position under
    `budget` bytes, and no group's int32 sum over a chunk past 2**31 - 1."""
    tb, pixels, nnz, width = sizes
    chunk = max(1, min(tb, budget // (4 * pixels * width)))
    if pixels * max(nnz, 1) > _INT32_MAX:
        raise ValueError(f"mask: {nnz} non-zeros x {pixels} positions overflow the int32 sums")
    chunk = min(chunk, _INT32_MAX // (pixels * max(nnz, 1)))
    return Plan(kind, shape, geometry, bases, outs, chunk, -(-tb // chunk))
