"""How a layer's weights are split over the processing elements (PEs) of an `n`-PE array.

A mapping assigns every weight of a kernel to one PE `j` of one group `g` of `n` PEs. The groups
run one after another; the PEs of a group run in lock-step. A PE's *load* is the number of non-zero
weights it holds; its *capacity* is the number of weights (zero or not) it holds.

Kernels are hwio: conv `[kh, kw, c_in, c_out]`, dense `[c_in, c_out]` (mapped as `kh = kw = 1`).
Internally every kernel is viewed as `[K, c_in, c_out]` with `K = kh * kw`.

Mappings (DESIGN.md, issue 3):
  output_channel (SATA-style, the paper's default): PE `j` of group `g` holds output channel
    `o = g*n + j`, `G = ceil(c_out / n)`; load = non-zeros over `(kh, kw, c_in)`. In the last group
    the PEs past `c_out` are idle (capacity 0).
  input_split (systolic-style): one group per output channel (`G = c_out`); `c_in` is cut into `n`
    contiguous slices of `s = ceil(c_in / n)` channels and PE `j` holds channels
    `[j*s, min((j+1)*s, c_in))` over `(kh, kw)`; trailing PEs may hold a short or empty slice.

Each mapping is a `PEMapping` entry of `MAPPINGS`: a new mapping (e.g. 2-D tiles) is a new entry
with the same five functions. The *slot layout* `[G, n, C]` lists, for every PE, the `C` weights it
could hold (padding slots are invalid) in increasing hwio flat index, so "ties broken by index"
means the same thing in every mapping: the lower flat index of the hwio kernel wins.

`pe_loads` is the definition of the per-PE workload; the simulator, which needs a traced `n`,
reduces masks with `channel_counts` instead and must agree with `pe_loads` exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]


def kernel_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    """`(K, c_in, c_out)` of an hwio conv (`K = kh*kw`) or dense (`K = 1`) kernel shape."""
    if len(shape) == 4:
        return int(shape[0]) * int(shape[1]), int(shape[2]), int(shape[3])
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    raise ValueError(f"mask: must be a 4-D conv or 2-D dense hwio kernel, got shape {tuple(shape)}")


def _as3(x):
    """Views a kernel as `[K, c_in, c_out]`."""
    return x.reshape(kernel_dims(x.shape))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class PEMapping(NamedTuple):
    """One mapping of kernels onto groups of PEs (all functions take hwio kernels, static `n`).

    Attributes:
      name: registry name.
      geometry: `(shape, n) -> (G, C)`: number of groups and slots per PE.
      channel_counts: `mask -> counts`, the small int32 table a traced-`n` caller (the simulator)
        groups into PE loads: `[c_out]` for output_channel, `[c_out, c_in]` for input_split.
      loads_from_counts: `(counts, n) -> [G, n]` int32 PE loads from `channel_counts`.
      to_slots: `(x, n, fill) -> [G, n, C]`, the kernel's entries in slot layout, `fill` in padding.
      from_slots: `(slots, shape, n) -> x`, the inverse of `to_slots` on valid slots.
      to_cols: `(x, n, fill) -> [C, P]`, slot-major view (row = slot, column = PE), `fill` in
        padding; a reshape (output_channel) or a copy that keeps the minor axis (input_split), so
        per-PE reductions run over axis 0 without transposing the kernel.
      from_cols: `(cols, shape, n) -> x`, the inverse of `to_cols` on valid slots.
      pe_cols: `[G, n] -> [P]`, a per-PE table in the column order of `to_cols`.
    """

    name: str
    geometry: Callable[[Shape, int], tuple[int, int]]
    channel_counts: Callable[[Any], Any]
    loads_from_counts: Callable[[Any, int], Any]
    to_slots: Callable[[Any, int, Any], Any]
    from_slots: Callable[[Any, Shape, int], Any]
    to_cols: Callable[[Any, int, Any], Any]
    from_cols: Callable[[Any, Shape, int], Any]
    pe_cols: Callable[[Any], Any]


# ---- output_channel: PE (g, j) <- output channel g*n + j -----------------------------------------


def _oc_geometry(shape: Shape, n: int) -> tuple[int, int]:
    k, c_in, c_out = kernel_dims(shape)
    return _cdiv(c_out, n), k * c_in


def _oc_counts(mask):
    k, c_in, c_out = kernel_dims(mask.shape)
    return mask.reshape(k * c_in, c_out).sum(0, dtype=jnp.int32)  # [c_out]


def _oc_loads(counts, n: int):
    c_out = counts.shape[0]
    g = _cdiv(c_out, n)
    return jnp.pad(counts, (0, g * n - c_out)).reshape(g, n).astype(jnp.int32)  # [G, n]


def _oc_to_slots(x, n: int, fill):
    k, c_in, c_out = kernel_dims(x.shape)
    g = _cdiv(c_out, n)
    x2 = jnp.pad(x.reshape(k * c_in, c_out), ((0, 0), (0, g * n - c_out)), constant_values=fill)
    return x2.T.reshape(g, n, k * c_in)  # [G, n, K*c_in], slot = k*c_in + i (hwio order)


def _oc_from_slots(slots, shape: Shape, n: int):
    k, c_in, c_out = kernel_dims(shape)
    x2 = slots.reshape(-1, k * c_in)[:c_out].T  # [K*c_in, c_out]
    return x2.reshape(shape)


def _oc_to_cols(x, n: int, fill):
    k, c_in, c_out = kernel_dims(x.shape)
    pad = _cdiv(c_out, n) * n - c_out
    return jnp.pad(x.reshape(k * c_in, c_out), ((0, 0), (0, pad)), constant_values=fill)


def _oc_from_cols(cols, shape: Shape, n: int):
    k, c_in, c_out = kernel_dims(shape)
    return cols[:, :c_out].reshape(shape)


def _oc_pe_cols(tbl):
    return tbl.reshape(-1)  # column p = g*n + j


# ---- input_split: PE j of group o <- input channels [j*s, (j+1)*s) of output channel o -----------


def _is_geometry(shape: Shape, n: int) -> tuple[int, int]:
    k, c_in, c_out = kernel_dims(shape)
    return c_out, k * _cdiv(c_in, n)


def _is_counts(mask):
    return _as3(mask).sum(0, dtype=jnp.int32).T  # [c_out, c_in]


def _is_loads(counts, n: int):
    c_out, c_in = counts.shape
    s = _cdiv(c_in, n)
    padded = jnp.pad(counts, ((0, 0), (0, n * s - c_in)))  # [c_out, n*s]
    return padded.reshape(c_out, n, s).sum(-1, dtype=jnp.int32)  # [G=c_out, n]


def _is_to_slots(x, n: int, fill):
    k, c_in, c_out = kernel_dims(x.shape)
    s = _cdiv(c_in, n)
    x3 = jnp.pad(_as3(x), ((0, 0), (0, n * s - c_in), (0, 0)), constant_values=fill)
    x4 = x3.reshape(k, n, s, c_out)  # [K, n, s, c_out]
    return x4.transpose(3, 1, 0, 2).reshape(c_out, n, k * s)  # [c_out, n, K*s], slot = k*s + i


def _is_from_slots(slots, shape: Shape, n: int):
    k, c_in, c_out = kernel_dims(shape)
    s = _cdiv(c_in, n)
    x4 = slots.reshape(c_out, n, k, s).transpose(2, 1, 3, 0)  # [K, n, s, c_out]
    return x4.reshape(k, n * s, c_out)[:, :c_in].reshape(shape)


def _is_to_cols(x, n: int, fill):
    k, c_in, c_out = kernel_dims(x.shape)
    s = _cdiv(c_in, n)
    x3 = jnp.pad(_as3(x), ((0, 0), (0, n * s - c_in), (0, 0)), constant_values=fill)
    x4 = x3.reshape(k, n, s, c_out).transpose(0, 2, 1, 3)  # [K, s, n, c_out]
    return x4.reshape(k * s, n * c_out)  # [K*s, n*c_out]: row k*s + i, column j*c_out + o


def _is_from_cols(cols, shape: Shape, n: int):
    k, c_in, c_out = kernel_dims(shape)
    s = _cdiv(c_in, n)
    x4 = cols.reshape(k, s, n, c_out).transpose(0, 2, 1, 3)  # [K, n, s, c_out]
    return x4.reshape(k, n * s, c_out)[:, :c_in].reshape(shape)


def _is_pe_cols(tbl):
    return tbl.T.reshape(-1)  # tbl [G=c_out, n] -> column j*c_out + o


OUTPUT_CHANNEL = PEMapping(
    "output_channel",
    _oc_geometry,
    _oc_counts,
    _oc_loads,
    _oc_to_slots,
    _oc_from_slots,
    _oc_to_cols,
    _oc_from_cols,
    _oc_pe_cols,
)
INPUT_SPLIT = PEMapping(
    "input_split",
    _is_geometry,
    _is_counts,
    _is_loads,
    _is_to_slots,
    _is_from_slots,
    _is_to_cols,
    _is_from_cols,
    _is_pe_cols,
)
MAPPINGS: dict[str, PEMapping] = {m.name: m for m in (OUTPUT_CHANNEL, INPUT_SPLIT)}


def get_mapping(mapping: str | PEMapping) -> PEMapping:
    """The registered `PEMapping` named `mapping` (a `PEMapping` passes through).

    Raises:
      ValueError: unknown name; the message lists the allowed ones.
    """
    if isinstance(mapping, PEMapping):
        return mapping
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping: unknown mapping {mapping!r}; allowed: {', '.join(MAPPINGS)}")
    return MAPPINGS[mapping]


def check_n_pe(n_pe: Any) -> int:
    """Returns `n_pe` as an int, or raises ValueError unless it is an integer >= 1."""
    if isinstance(n_pe, bool) or not isinstance(n_pe, int | np.integer) or n_pe < 1:
        raise ValueError(f"n_pe: must be an integer >= 1 (PEs per group), got {n_pe!r}")
    return int(n_pe)


def check_mask(mask: Any, name: str = "mask") -> None:
    """Raises ValueError unless `mask` is a boolean 2-D or 4-D hwio kernel (array or tracer)."""
    ndim = np.ndim(mask)
    if ndim not in (2, 4):
        raise ValueError(
            f"{name}: must be a 4-D conv [kh, kw, c_in, c_out] or 2-D dense [c_in, c_out] kernel, "
            f"got shape {np.shape(mask)}"
        )
    if jnp.result_type(mask) != jnp.bool_:
        raise ValueError(f"{name}: must be boolean, got dtype {jnp.result_type(mask)}")


def _is_direct_loads(mask, n: int):
    """input_split loads without the transposed `[c_out, c_in]` count table (same values).

    Sums over `(kh, kw)` in int8 (static choice; exact while `K < 128`), then over each input
    slice with a 0/1 `[n, c_in]` matmul in float32 (exact: every count is far below 2**24).
    Measured 4-5x faster on XLA:CPU than one reduction over the `[K, n, s, c_out]` view.
    """
    k, c_in, c_out = kernel_dims(mask.shape)
    s = _cdiv(c_in, n)
    small = jnp.int8 if k < 128 else jnp.int32
    per_in = _as3(mask).astype(small).sum(0, dtype=small)  # [c_in, c_out] counts <= K
    seg = (_iota(c_in)[None, :] // s == _iota(n)[:, None]).astype(jnp.float32)  # [n, c_in]
    loads = jnp.dot(seg, per_in.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return loads.astype(jnp.int32).T  # [c_out, n]


def _iota(size: int):
    """`[size]` int32 0, 1, ..., size - 1."""
    return jax.lax.iota(jnp.int32, size)


# Faster equivalents of `loads_from_counts(channel_counts(mask), n)` (tests check they agree).
_DIRECT_LOADS: dict[str, Callable[[Any, int], Any]] = {"input_split": _is_direct_loads}


def traced_loads(mask, n_pe: int, mapping: str):
    """`[G, n]` int32 PE loads inside a trace (`pe_loads` without the checks; static `n_pe`)."""
    m = MAPPINGS[mapping]
    if mapping in _DIRECT_LOADS:
        return _DIRECT_LOADS[mapping](mask, n_pe)
    return m.loads_from_counts(m.channel_counts(mask), n_pe)


@functools.partial(jax.jit, static_argnames=("n_pe", "mapping"))
def _pe_loads(mask, n_pe: int, mapping: str):
    # n_pe and mapping fix the output shape [G, n] and the reshape pattern, so they are static.
    return traced_loads(mask, n_pe, mapping)


def pe_loads(mask, n_pe: int, mapping: str = "output_channel") -> jax.Array:
    """Non-zero weights held by every PE: THE workload definition (simulator tests against it).

    Args:
      mask: boolean hwio kernel, `[kh, kw, c_in, c_out]` or `[c_in, c_out]`.
      n_pe: PEs per group `n` (static: it fixes the output shape).
      mapping: "output_channel" or "input_split" (see the module docstring).

    Returns:
      `[G, n]` int32 loads; idle PEs (past `c_out`, or an empty input slice) hold 0.
      output_channel: `load[g, j] = sum_{kh,kw,i} mask[..., i, g*n+j]`, `G = ceil(c_out/n)`;
      input_split: `load[o, j] = sum_{kh,kw} sum_{i in slice j} mask[..., i, o]`, `G = c_out`.
    """
    n_pe = check_n_pe(n_pe)
    name = get_mapping(mapping).name
    check_mask(mask)
    return _pe_loads(mask, n_pe, name)


def channel_counts(mask, mapping: str = "output_channel") -> jax.Array:
    """The mapping's count table for a traced-`n` consumer: `[c_out]` or `[c_out, c_in]` int32.

    `pe_loads(mask, n, mapping) == get_mapping(mapping).loads_from_counts(channel_counts(mask), n)`.
    """
    m = get_mapping(mapping)
    check_mask(mask)
    return jax.jit(m.channel_counts)(mask)


def pe_capacity(shape: Sequence[int], n_pe: int, mapping: str = "output_channel") -> np.ndarray:
    """`[G, n]` int32 number of weight slots per PE (0 for idle PEs), computed on the host."""
    n_pe = check_n_pe(n_pe)
    return _capacity(tuple(int(d) for d in shape), n_pe, get_mapping(mapping).name).copy()


@functools.lru_cache(maxsize=256)
def _capacity(shape: Shape, n_pe: int, mapping: str) -> np.ndarray:
    m = MAPPINGS[mapping]
    return np.asarray(m.loads_from_counts(_ones_counts(m, shape), n_pe))


def _ones_counts(m: PEMapping, shape: Sequence[int]):
    """`channel_counts` of an all-true kernel, without building it."""
    k, c_in, c_out = kernel_dims(shape)
    if m.name == "output_channel":
        return jnp.full((c_out,), k * c_in, jnp.int32)
    if m.name == "input_split":
        return jnp.full((c_out, c_in), k, jnp.int32)
    return m.channel_counts(jnp.ones(tuple(shape), bool))


def slot_valid(shape: Sequence[int], n_pe: int, mapping: str = "output_channel") -> jax.Array:
    """`[G, n, C]` bool: which slots of the slot layout hold a real weight (not padding)."""
    n_pe = check_n_pe(n_pe)
    m = get_mapping(mapping)
    return m.to_slots(jnp.ones(tuple(shape), bool), n_pe, False)


def to_slots(x, n_pe: int, mapping: str = "output_channel", fill: Any = 0) -> jax.Array:
    """A kernel's entries in slot layout `[G, n, C]` (PE `j` of group `g` holds row `[g, j]`)."""
    n_pe = check_n_pe(n_pe)
    return get_mapping(mapping).to_slots(jnp.asarray(x), n_pe, fill)


def from_slots(slots, shape: Sequence[int], n_pe: int, mapping: str = "output_channel"):
    """Inverse of `to_slots`: the hwio kernel of `shape` from its `[G, n, C]` slot layout."""
    n_pe = check_n_pe(n_pe)
    return get_mapping(mapping).from_slots(jnp.asarray(slots), tuple(shape), n_pe)
