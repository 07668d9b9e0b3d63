"""How a layer's weights are split over the processing elements (PEs) of an `n`-PE array.

A mapping assigns every weight of a kernel to one PE `j` of one group `g` of `n` PEs. The groups
run one after another; the PEs of a group run in lock-step. A PE's *load* is the number of non-zero
weights it holds; its *capacity* is the number of weights (zero or not) it holds.

Kernels are hwio: conv `[kh, kw, c_in, c_out]`, dense `[c_in, c_out]` (mapped as `kh = kw = 1`).
Internally every kernel is viewed as `[K, c_in, c_out]` with `K = kh * kw`.

Built-in mappings:
  output_channel (SATA-style, the paper's default): PE `j` of group `g` holds output channel
    `o = g*n + j`, `G = ceil(c_out / n)`; load = non-zeros over `(kh, kw, c_in)`. In the last group
    the PEs past `c_out` are idle (capacity 0).
  input_split (systolic-style): one group per output channel (`G = c_out`); `c_in` is cut into `n`
    contiguous slices of `s = ceil(c_in / n)` channels and PE `j` holds channels
    `[j*s, min((j+1)*s, c_in))` over `(kh, kw)`; trailing PEs may hold a short or empty slice.

A mapping is ONE `PEMapping` object, and `MAPPINGS` (name -> mapping, in registration order) is
the one registry: the workload model and the rebalance kernels (`pe_loads`, `rebalance`,
`rebalance_network`) look mappings up there by name, and the simulator's `HardwareConfig.mapping`
id is a mapping's position in it (output_channel = 0, input_split = 1). A `PEMapping` holds:
  - the static-`n` layout the workload model and the rebalance kernels use: `geometry`,
    `channel_counts` + `loads_from_counts` (PE loads), `to_slots`/`from_slots` (slot layout),
    `to_cols`/`from_cols`/`pe_cols` (slot-major columns);
  - what the simulator needs for a TRACED `n` (one compiled sweep over every `n_pe`):
    `count_table` (mask -> small int32 table pytree), `group_loads` (table, traced `n`, static
    bound `n_cap` -> per-group sum and max over a static number of groups), `load_bound` (the
    host-side int32 overflow bound) and `needs_n_cap` (whether `group_loads` uses `n_cap`);
  - optional shortcuts: `ones_counts` (counts of an all-true kernel, for capacities) and
    `direct_loads` (a faster `loads_from_counts(channel_counts(mask), n)`);
  - optional numpy versions for the host paths of one-shot tools (nothing to compile):
    `host_loads`, `host_to_slots`, `host_from_slots`, and for the simulator's numpy backend
    `host_count_table` + `host_group_loads` (without them those paths call the JAX functions
    on the host arrays: correct, slower to start).
See `PEMapping` for the exact contracts. `register_mapping` checks a new mapping against them on
small kernels before adding it; nothing else in the package needs an edit.

Worked example, "output_channel_rr" (output channel `o` on PE `o // G` of group `o % G`,
`G = ceil(c_out / n)`, i.e. channels dealt round-robin over the groups)::

    def counts(mask):  # non-zeros per output channel, [c_out]
        k, c_in, c_out = kernel_dims(mask.shape)
        return mask.reshape(k * c_in, c_out).sum(0, dtype=jnp.int32)

    def group_loads(counts, n, n_cap):  # traced n; c_out groups bound every n >= 1
        c_out = counts.shape[0]
        group = jnp.arange(c_out) % ((c_out + n - 1) // n)
        gsum = jax.ops.segment_sum(counts, group, num_segments=c_out)
        return gsum, jnp.maximum(jax.ops.segment_max(counts, group, num_segments=c_out), 0)

    register_mapping(PEMapping(
        name="output_channel_rr", geometry=..., channel_counts=counts, loads_from_counts=...,
        to_slots=..., from_slots=..., to_cols=..., from_cols=..., pe_cols=...,
        count_table=counts, group_loads=group_loads,
        load_bound=lambda shape, t, n_max: (shape[3] + n_max - 1) * int(np.max(t, initial=0))))

(`tests/test_mapping_registry.py` holds it in full.) After that, `pe_loads(mask, 8,
"output_channel_rr")`, `rebalance_network(..., mapping="output_channel_rr")` and
`hardware.config_grid(mapping=["output_channel_rr"])` sweeps work. `registered_mapping(m)` is the
same as a context manager that unregisters on exit (tests).

The *slot layout* `[G, n, C]` lists, for every PE, the `C` weights it could hold (padding slots
are invalid) in increasing hwio flat index, so "ties broken by index" means the same thing in every
mapping: the lower flat index of the hwio kernel wins.

`pe_loads` is the definition of the per-PE workload; the simulator, which needs a traced `n`,
reduces masks with `count_table` / `group_loads` instead and must agree with `pe_loads` exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import checks

Shape = tuple[int, ...]


def as_hwio4(shape: Sequence[int], what: str = "mask") -> tuple[int, int, int, int]:
    """`(kh, kw, c_in, c_out)` of an hwio conv or dense (`kh = kw = 1`) kernel shape.

    Raises:
      ValueError: naming `what`, for ranks other than 4 and 2.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) == 4:
        return dims  # type: ignore[return-value]
    if len(dims) == 2:
        return (1, 1, dims[0], dims[1])
    raise ValueError(f"{what}: must be a 4-D conv or 2-D dense hwio kernel, got shape {dims}")


def kernel_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    """`(K, c_in, c_out)` of an hwio conv (`K = kh*kw`) or dense (`K = 1`) kernel shape."""
    kh, kw, c_in, c_out = as_hwio4(shape)
    return kh * kw, c_in, c_out


def _as3(x):
    """Views a kernel as `[K, c_in, c_out]`."""
    return x.reshape(kernel_dims(x.shape))


def _cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


def _iota(size: int):
    """`[size]` int32 0, 1, ..., size - 1."""
    return jax.lax.iota(jnp.int32, size)


@dataclasses.dataclass(frozen=True)
class PEMapping:
    """One mapping of kernels onto groups of PEs: everything the workload model, the rebalance
    kernels and the simulator need. Functions take hwio kernels; `n` is static unless said.

    Attributes:
      name: registry name (letters, digits, underscores).
      geometry: `(shape, n) -> (G, C)`: number of groups and slots per PE.
      channel_counts: `mask -> counts`, a small int32 table that `loads_from_counts` groups into
        PE loads: `[c_out]` for output_channel, `[c_out, c_in]` for input_split.
      loads_from_counts: `(counts, n) -> [G, n]` int32 PE loads from `channel_counts`.
      to_slots: `(x, n, fill) -> [G, n, C]`, the kernel's entries in slot layout, `fill` in padding.
      from_slots: `(slots, shape, n) -> x`, the inverse of `to_slots` on valid slots.
      to_cols: `(x, n, fill) -> [C, P]`, slot-major view (row = slot, column = PE, `P = G*n`),
        `fill` in padding; a reshape (output_channel) or a copy that keeps the minor axis
        (input_split), so per-PE reductions run over axis 0 without transposing the kernel.
      from_cols: `(cols, shape, n) -> x`, the inverse of `to_cols` on valid slots.
      pe_cols: `[G, n] -> [P]`, a per-PE table in the column order of `to_cols`.
      count_table: `mask -> table`, a pytree of small int32 arrays from which `group_loads` gets
        the loads for any `n` (the simulator reduces each mask once, then sweeps `n`).
      group_loads: `(table, n, n_cap) -> (group_sum [B], group_max [B])` int32 for a TRACED `n`
        (`1 <= n <= n_cap`, `n_cap` static), `B` a static bound on `G` for every `n`: the real
        groups first (sum and max over their PEs), zeros after. Must agree with `pe_loads`.
      load_bound: `(kernel_shape (kh, kw, c_in, c_out), table, n_max) -> int`, a host-side upper
        bound of `sum_g n * max_j load[g, j]` for every `n <= n_max` (the largest int32 count
        the simulator forms); the simulator refuses configs whose layers sum past int32.
      needs_n_cap: whether `group_loads` uses `n_cap` (it then gets a power of two >= every
        `n_pe` of a sweep); False: it gets 0, so one compiled program serves every `n_pe`.
      ones_counts: optional `shape -> channel_counts` of an all-true kernel, without building it
        (capacities); None: `channel_counts` of an all-true kernel.
      direct_loads: optional `(mask, n) -> [G, n]`, a faster equivalent of
        `loads_from_counts(channel_counts(mask), n)` used by `pe_loads` and the rebalance kernels.
      host_loads, host_to_slots, host_from_slots: optional numpy versions (numpy arrays in and
        out, nothing compiled) of `loads_from_counts(channel_counts(mask), n)`, `to_slots` and
        `from_slots`, used by the host paths of the one-shot tools (`rebalance_network(...,
        backend="numpy")`, the numpy simulator). None: the JAX function, run on the host array
        (correct, but it compiles).
      host_count_table: optional numpy `mask -> table`, the same integers as `count_table`.
      host_group_loads: optional numpy `(table, n) -> (group_sum, group_max)` for a STATIC `n`:
        int32 `[B]` arrays, the real groups first (sum and max over their PEs), zeros after
        (any `B >= G`; the built-ins return `B = G`). The numpy simulator's per-n loads. None
        (either): `count_table` / `group_loads` in JAX on the host arrays (they compile).
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
    count_table: Callable[[Any], Any]
    group_loads: Callable[[Any, Any, int], tuple[Any, Any]]
    load_bound: Callable[[tuple[int, int, int, int], Any, int], int]
    needs_n_cap: bool = False
    ones_counts: Callable[[Shape], Any] | None = None
    direct_loads: Callable[[Any, int], Any] | None = None
    host_loads: Callable[[np.ndarray, int], np.ndarray] | None = None
    host_to_slots: Callable[[np.ndarray, int, Any], np.ndarray] | None = None
    host_from_slots: Callable[[np.ndarray, Shape, int], np.ndarray] | None = None
    host_count_table: Callable[[np.ndarray], Any] | None = None
    host_group_loads: Callable[[Any, int], tuple[np.ndarray, np.ndarray]] | None = None


_FUNCTIONS = tuple(
    f.name for f in dataclasses.fields(PEMapping) if f.name not in ("name", "needs_n_cap")
)
_OPTIONAL = (
    "ones_counts",
    "direct_loads",
    "host_loads",
    "host_to_slots",
    "host_from_slots",
    "host_count_table",
    "host_group_loads",
)


# ---- output_channel: PE (g, j) <- output channel g*n + j -----------------------------------------


def _oc_geometry(shape: Shape, n: int) -> tuple[int, int]:
    k, c_in, c_out = kernel_dims(shape)
    return _cdiv(c_out, n), k * c_in


# The layout functions take `xp` (jax.numpy, or numpy for the `host_*` fields: the same code).


def _oc_counts(mask, xp=jnp):
    k, c_in, c_out = kernel_dims(mask.shape)
    return mask.reshape(k * c_in, c_out).sum(0, dtype=np.int32)  # [c_out]


def _oc_loads(counts, n: int, xp=jnp):
    c_out = counts.shape[0]
    g = _cdiv(c_out, n)
    return xp.pad(counts, (0, g * n - c_out)).reshape(g, n).astype(np.int32)  # [G, n]


def _oc_to_slots(x, n: int, fill, xp=jnp):
    k, c_in, c_out = kernel_dims(x.shape)
    g = _cdiv(c_out, n)
    x2 = xp.pad(x.reshape(k * c_in, c_out), ((0, 0), (0, g * n - c_out)), constant_values=fill)
    return x2.T.reshape(g, n, k * c_in)  # [G, n, K*c_in], slot = k*c_in + i (hwio order)


def _oc_from_slots(slots, shape: Shape, n: int, xp=jnp):
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


def _oc_group_loads(counts, n, n_cap: int):
    """Traced `n`: group of channel o is o // n; `c_out` segments bound every n >= 1."""
    c_out = counts.shape[0]
    seg = jnp.arange(c_out, dtype=jnp.int32) // n  # group of each output channel
    gsum = jax.ops.segment_sum(counts, seg, num_segments=c_out, indices_are_sorted=True)
    gmax = jax.ops.segment_max(counts, seg, num_segments=c_out, indices_are_sorted=True)
    return gsum, jnp.maximum(gmax, 0)  # empty segments hold the dtype minimum


def _oc_host_group_loads(counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Static `n` on the host: the `[G, n]` loads' sums and maxima over the PEs, `[G]` each."""
    loads = _oc_loads(np.asarray(counts, np.int32), n, np)
    return loads.sum(1, dtype=np.int32), loads.max(1)


def _oc_load_bound(shape: tuple[int, int, int, int], counts, n_max: int) -> int:
    """`G * n <= c_out + n - 1` PEs, each at most the fullest channel."""
    return (shape[3] + n_max - 1) * int(np.max(np.asarray(counts), initial=0))


def _oc_ones_counts(shape: Shape):
    """All-true counts: every channel holds `K * c_in` weights."""
    k, c_in, c_out = kernel_dims(shape)
    return jnp.full((c_out,), k * c_in, jnp.int32)


# ---- input_split: PE j of group o <- input channels [j*s, (j+1)*s) of output channel o -----------


def _is_geometry(shape: Shape, n: int) -> tuple[int, int]:
    k, c_in, c_out = kernel_dims(shape)
    return c_out, k * _cdiv(c_in, n)


def _is_counts(mask, xp=jnp):
    return _as3(mask).sum(0, dtype=np.int32).T  # [c_out, c_in]


def _is_loads(counts, n: int, xp=jnp):
    c_out, c_in = counts.shape
    s = _cdiv(c_in, n)
    padded = xp.pad(counts, ((0, 0), (0, n * s - c_in)))  # [c_out, n*s]
    return padded.reshape(c_out, n, s).sum(-1, dtype=np.int32)  # [G=c_out, n]


def _is_to_slots(x, n: int, fill, xp=jnp):
    k, c_in, c_out = kernel_dims(x.shape)
    s = _cdiv(c_in, n)
    x3 = xp.pad(_as3(x), ((0, 0), (0, n * s - c_in), (0, 0)), constant_values=fill)
    x4 = x3.reshape(k, n, s, c_out)  # [K, n, s, c_out]
    return x4.transpose(3, 1, 0, 2).reshape(c_out, n, k * s)  # [c_out, n, K*s], slot = k*s + i


def _is_from_slots(slots, shape: Shape, n: int, xp=jnp):
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


def _is_prefix(mask, xp=jnp):
    """`[c_out, c_in + 1]` prefix sums over input channels: prefix[o, i] = non-zeros below i."""
    per_in = _is_counts(mask, xp)  # [c_out, c_in]
    zero = xp.zeros((per_in.shape[0], 1), np.int32)
    return xp.concatenate([zero, xp.cumsum(per_in, axis=1, dtype=np.int32)], axis=1)


def _is_group_loads(prefix, n, n_cap: int):
    """Traced `n`: PE j < n holds input channels [min(j s, c_in), min((j+1) s, c_in)).

    Loads are prefix differences; PEs are evaluated up to the static bound `min(c_in, n_cap)`
    and masked beyond `n`.
    """
    c_in = prefix.shape[1] - 1
    s = (c_in + n - 1) // n  # slice size ceil(c_in / n)
    j = jnp.arange(min(c_in, n_cap), dtype=jnp.int32)  # static bound on the non-empty slices
    start = jnp.minimum(j * s, c_in)
    stop = jnp.minimum(start + s, c_in)
    loads = prefix[:, stop] - prefix[:, start]  # [C, J]
    loads = jnp.where(j < n, loads, 0)
    return prefix[:, c_in], loads.max(axis=1)


def _is_host_group_loads(prefix: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Static `n` on the host: `_is_group_loads` over the `min(n, c_in)` PEs that can hold work."""
    prefix = np.asarray(prefix, np.int32)
    c_in = prefix.shape[1] - 1
    s = _cdiv(c_in, n)
    start = np.minimum(np.arange(min(n, c_in), dtype=np.int32) * s, c_in)
    stop = np.minimum(start + s, c_in)
    loads = prefix[:, stop] - prefix[:, start]  # [c_out, J]; PEs past c_in hold 0
    return prefix[:, c_in].copy(), loads.max(axis=1, initial=0)


def _is_load_bound(shape: tuple[int, int, int, int], prefix, n_max: int) -> int:
    """`c_out` groups of `n * s <= c_in + n - 1` slots of `kh * kw` weights each."""
    kh, kw, c_in, c_out = shape
    return c_out * kh * kw * (c_in + n_max - 1)


def _is_ones_counts(shape: Shape):
    """All-true counts: every (output, input) channel pair holds `K` weights."""
    k, c_in, c_out = kernel_dims(shape)
    return jnp.full((c_out, c_in), k, jnp.int32)


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


OUTPUT_CHANNEL = PEMapping(
    name="output_channel",
    geometry=_oc_geometry,
    channel_counts=_oc_counts,
    loads_from_counts=_oc_loads,
    to_slots=_oc_to_slots,
    from_slots=_oc_from_slots,
    to_cols=_oc_to_cols,
    from_cols=_oc_from_cols,
    pe_cols=_oc_pe_cols,
    count_table=_oc_counts,
    group_loads=_oc_group_loads,
    load_bound=_oc_load_bound,
    needs_n_cap=False,
    ones_counts=_oc_ones_counts,
    host_loads=lambda mask, n: _oc_loads(_oc_counts(mask, np), n, np),
    host_to_slots=functools.partial(_oc_to_slots, xp=np),
    host_from_slots=functools.partial(_oc_from_slots, xp=np),
    host_count_table=functools.partial(_oc_counts, xp=np),
    host_group_loads=_oc_host_group_loads,
)
INPUT_SPLIT = PEMapping(
    name="input_split",
    geometry=_is_geometry,
    channel_counts=_is_counts,
    loads_from_counts=_is_loads,
    to_slots=_is_to_slots,
    from_slots=_is_from_slots,
    to_cols=_is_to_cols,
    from_cols=_is_from_cols,
    pe_cols=_is_pe_cols,
    count_table=_is_prefix,
    group_loads=_is_group_loads,
    load_bound=_is_load_bound,
    needs_n_cap=True,
    ones_counts=_is_ones_counts,
    direct_loads=_is_direct_loads,
    host_loads=lambda mask, n: _is_loads(_is_counts(mask, np), n, np),
    host_to_slots=functools.partial(_is_to_slots, xp=np),
    host_from_slots=functools.partial(_is_from_slots, xp=np),
    host_count_table=functools.partial(_is_prefix, xp=np),
    host_group_loads=_is_host_group_loads,
)

_REGISTRY: dict[str, PEMapping] = {m.name: m for m in (OUTPUT_CHANNEL, INPUT_SPLIT)}
_BUILTIN = tuple(_REGISTRY)
# Every mapping ever registered under a name: compiled programs are cached by name, so a name
# that comes back must bring the same mapping.
_SEEN: dict[str, PEMapping] = dict(_REGISTRY)
# The one registry, read-only (change it with `register_mapping`); the order is the id order.
MAPPINGS: Mapping[str, PEMapping] = types.MappingProxyType(_REGISTRY)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def get_mapping(mapping: str | PEMapping) -> PEMapping:
    """The registered `PEMapping` named `mapping` (a registered `PEMapping` passes through).

    Raises:
      ValueError: unknown name, or a `PEMapping` that is not the registered one of its name;
        the message lists the allowed names.
    """
    if isinstance(mapping, PEMapping):
        if _REGISTRY.get(mapping.name) != mapping:
            raise ValueError(
                f"mapping: PEMapping {mapping.name!r} is not registered (register_mapping); "
                f"allowed: {', '.join(_REGISTRY)}"
            )
        return mapping
    if not isinstance(mapping, str) or mapping not in _REGISTRY:
        raise ValueError(f"mapping: unknown mapping {mapping!r}; allowed: {', '.join(_REGISTRY)}")
    return _REGISTRY[mapping]


def mapping_index(mapping: str | PEMapping) -> int:
    """Position of a registered mapping in `MAPPINGS` (its `HardwareConfig.mapping` id)."""
    return list(_REGISTRY).index(get_mapping(mapping).name)


def register_mapping(m: PEMapping, *, check: bool = True) -> PEMapping:
    """Adds a mapping to `MAPPINGS`; it gets the next id (`HardwareConfig.mapping`).

    Args:
      m: the mapping; every function attribute callable (optional ones may be None).
      check: also run `check_mapping` on small kernels (recommended; a few compilations).
    Returns:
      `m`.
    Raises:
      ValueError: not a `PEMapping`, a bad name or attribute, a name already registered (or
        registered earlier in this process with other functions), or a failed self-check.
    """
    if not isinstance(m, PEMapping):
        raise ValueError(f"mapping: must be a PEMapping, got {type(m).__name__}")
    if not isinstance(m.name, str) or not _NAME.fullmatch(m.name):
        raise ValueError(f"mapping: name must be letters, digits and underscores, got {m.name!r}")
    for f in _FUNCTIONS:
        v = getattr(m, f)
        if not (callable(v) or (v is None and f in _OPTIONAL)):
            raise ValueError(f"mapping: {m.name!r}.{f} must be callable, got {v!r}")
    if not isinstance(m.needs_n_cap, bool):
        raise ValueError(f"mapping: {m.name!r}.needs_n_cap must be a bool, got {m.needs_n_cap!r}")
    if m.name in _REGISTRY:
        raise ValueError(
            f"mapping: {m.name!r} is already registered; registered: {', '.join(_REGISTRY)}"
        )
    if _SEEN.get(m.name, m) != m:
        raise ValueError(
            f"mapping: {m.name!r} was registered before in this process with other functions "
            "(compiled programs are cached by name); choose another name"
        )
    if check:
        check_mapping(m)
    _REGISTRY[m.name] = m
    _SEEN[m.name] = m
    return m


def unregister_mapping(name: str) -> None:
    """Removes the LAST registered mapping (so no other id changes meaning); built-ins stay.

    Raises:
      ValueError: a built-in, or not the most recently registered mapping.
    """
    get_mapping(name)
    if name in _BUILTIN:
        raise ValueError(f"mapping: the built-in {name!r} cannot be unregistered")
    if list(_REGISTRY)[-1] != name:
        raise ValueError(
            f"mapping: only the last registered mapping ({list(_REGISTRY)[-1]!r}) can be "
            f"unregistered, got {name!r}"
        )
    del _REGISTRY[name]


@contextlib.contextmanager
def registered_mapping(m: PEMapping, *, check: bool = True) -> Iterator[PEMapping]:
    """`register_mapping(m)` for the `with` block, unregistered on exit (tests, experiments)."""
    register_mapping(m, check=check)
    try:
        yield m
    finally:
        unregister_mapping(m.name)


_CHECK_SHAPES = ((3, 3, 5, 7), (6, 5))
_CHECK_NS = (1, 3, 8)


def check_mapping(m: PEMapping) -> None:
    """Checks a mapping's functions against each other on small random kernels.

    On a conv and a dense kernel and several `n`: shapes agree with `geometry`, the slot and
    column layouts round-trip and sum to the PE loads, loads sum to the non-zeros and capacities
    to the kernel size, `direct_loads` equals the count path, and `group_loads` with a traced
    `n` equals the static loads' group sum and max (zeros past the real groups), within
    `load_bound`; the numpy `host_*` functions it has equal their JAX counterparts.

    Raises:
      ValueError: `mapping: 'name' fails its self-check: ...` naming the first mismatch.
    """
    rng = np.random.default_rng(0)
    for shape in _CHECK_SHAPES:
        mask = rng.random(shape) < 0.5
        for n in _CHECK_NS:
            try:
                problem = _check_one(m, mask, n)
            except Exception as e:  # a user function that fails outright
                first = str(e).splitlines()[0] if str(e) else ""
                problem = f"{type(e).__name__}: {first}"
            if problem:
                raise ValueError(
                    f"mapping: {m.name!r} fails its self-check: {problem} (shape {shape}, n {n})"
                )


def _check_outputs(m: PEMapping, mask, n: int, n_cap: int, n_traced):
    """The arrays `_check_one` compares (one jitted call per mapping, shape and n)."""
    ones = jnp.ones(mask.shape, bool)
    counts = m.ones_counts(mask.shape) if m.ones_counts is not None else m.channel_counts(ones)
    table = m.count_table(mask)
    gsum, gmax = m.group_loads(table, n_traced, n_cap)
    return {
        "loads": m.loads_from_counts(m.channel_counts(mask), n),
        "capacity": m.loads_from_counts(counts, n),
        "slots": m.to_slots(mask, n, False),
        "valid": m.to_slots(ones, n, False),
        "from_slots": m.from_slots(m.to_slots(mask, n, False), mask.shape, n),
        "cols": m.to_cols(mask, n, False),
        "from_cols": m.from_cols(m.to_cols(mask, n, False), mask.shape, n),
        "direct": m.direct_loads(mask, n) if m.direct_loads is not None else None,
        "gsum": gsum,
        "gmax": gmax,
        "table": table,
    }


_check_outputs_jit = jax.jit(_check_outputs, static_argnums=(0, 2, 3))


def _check_one(m: PEMapping, mask: np.ndarray, n: int) -> str:
    """The first contract `m` breaks on `mask` with `n` PEs per group, or ''."""
    g, c = m.geometry(mask.shape, n)
    n_cap = max(16, 1 << (n - 1).bit_length()) if m.needs_n_cap else 0
    out = jax.device_get(_check_outputs_jit(m, jnp.asarray(mask), n, n_cap, jnp.int32(n)))
    loads, cap = np.asarray(out["loads"]), np.asarray(out["capacity"])
    leaves = jax.tree.leaves(out["table"])
    checks = (
        (loads.shape == (g, n), f"loads shape {loads.shape} != geometry {(g, n)}"),
        (out["slots"].shape == (g, n, c), f"to_slots shape {out['slots'].shape} != {(g, n, c)}"),
        (out["cols"].shape == (c, g * n), f"to_cols shape {out['cols'].shape} != {(c, g * n)}"),
        (np.array_equal(out["from_slots"], mask), "from_slots(to_slots(mask)) != mask"),
        (np.array_equal(out["from_cols"], mask), "from_cols(to_cols(mask)) != mask"),
        (np.array_equal(out["slots"].sum(-1), loads), "to_slots row sums != loads"),
        (np.array_equal(out["valid"].sum(-1), cap), "capacity != valid slots per PE"),
        (
            np.array_equal(out["cols"].sum(0), np.asarray(m.pe_cols(loads))),
            "to_cols column sums != pe_cols(loads)",
        ),
        (int(loads.sum()) == int(mask.sum()), "loads do not sum to the non-zeros"),
        (int(cap.sum()) == mask.size, "capacities do not sum to the kernel size"),
        (out["direct"] is None or np.array_equal(out["direct"], loads), "direct_loads != loads"),
        (all(jnp.issubdtype(x.dtype, jnp.integer) for x in leaves), "count_table not integer"),
        (_groups_match(out["gsum"], out["gmax"], loads), "group_loads != static loads"),
        (np.array_equal(host_loads(m, mask, n), loads), "host_loads != loads"),
        (
            np.array_equal(host_to_slots(m, mask, n, False), out["slots"]),
            "host_to_slots != to_slots",
        ),
        (
            np.array_equal(host_from_slots(m, np.asarray(out["slots"]), mask.shape, n), mask),
            "host_from_slots(to_slots(mask)) != mask",
        ),
        (
            m.host_count_table is None
            or all(
                np.array_equal(a, b)
                for a, b in zip(jax.tree.leaves(m.host_count_table(mask)), leaves, strict=True)
            ),
            "host_count_table != count_table",
        ),
        (
            m.host_group_loads is None
            or _groups_match(*m.host_group_loads(jax.tree.map(np.asarray, out["table"]), n), loads),
            "host_group_loads != static loads",
        ),
        (
            m.load_bound(as_hwio4(mask.shape), out["table"], n) >= n * int(loads.max(1).sum()),
            "load_bound below sum_g n * max load",
        ),
    )
    return next((msg for ok, msg in checks if not ok), "")


def _groups_match(gsum, gmax, loads) -> bool:
    """Traced-n group sums/maxima equal the static loads' on real groups, zeros after."""
    gsum, gmax, g = np.asarray(gsum), np.asarray(gmax), loads.shape[0]
    if gsum.shape != gmax.shape or gsum.ndim != 1 or gsum.shape[0] < g:
        return False
    real = np.array_equal(gsum[:g], loads.sum(1)) and np.array_equal(gmax[:g], loads.max(1))
    return real and not gsum[g:].any() and not gmax[g:].any()


def host_loads(m: PEMapping, mask: np.ndarray, n: int) -> np.ndarray:
    """`[G, n]` int32 PE loads of a numpy mask on the host (`m.host_loads`, else the JAX count)."""
    if m.host_loads is not None:
        return m.host_loads(mask, n)
    return np.asarray(m.loads_from_counts(m.channel_counts(jnp.asarray(mask)), n))


def host_to_slots(m: PEMapping, x: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """`[G, n, C]` slot layout of a numpy kernel (`m.host_to_slots`, else `m.to_slots`)."""
    if m.host_to_slots is not None:
        return m.host_to_slots(x, n, fill)
    return np.asarray(m.to_slots(jnp.asarray(x), n, fill))


def host_from_slots(m: PEMapping, slots: np.ndarray, shape: Shape, n: int) -> np.ndarray:
    """The numpy kernel of `shape` from its slot layout (`m.host_from_slots`, else JAX's)."""
    if m.host_from_slots is not None:
        return m.host_from_slots(slots, shape, n)
    return np.asarray(m.from_slots(jnp.asarray(slots), shape, n))


@functools.partial(jax.jit, static_argnums=(0,))
def _count_table_jit(m: PEMapping, mask):
    return m.count_table(mask)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _group_loads_jit(m: PEMapping, table, n, n_cap: int):
    return m.group_loads(table, n, n_cap)


def host_count_table(m: PEMapping, mask: np.ndarray) -> Any:
    """The count table of a numpy mask as numpy arrays (`m.host_count_table`, else JAX's)."""
    if m.host_count_table is not None:
        return m.host_count_table(mask)
    return jax.tree.map(np.asarray, _count_table_jit(m, jnp.asarray(mask)))


def host_group_loads(m: PEMapping, table: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`(group_sum, group_max)` int32 `[B]` of a count table for a static `n`, on the host.

    `m.host_group_loads`, else the mapping's `group_loads` in JAX with a traced `n` (one
    compilation per mapping and power-of-two `n_cap`); either way the real groups first, zeros
    after.
    """
    if m.host_group_loads is not None:
        return m.host_group_loads(table, n)
    n_cap = max(16, 1 << (n - 1).bit_length()) if m.needs_n_cap else 0
    table = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), table)
    gsum, gmax = _group_loads_jit(m, table, jnp.int32(n), n_cap)
    return np.asarray(gsum), np.asarray(gmax)


def check_n_pe(n_pe: Any) -> int:
    """Returns `n_pe` as an int, or raises ValueError unless an integer in [1, `MAX_N_PE`]."""
    return checks.check_int("n_pe", n_pe, minimum=1, maximum=checks.MAX_N_PE)


def check_mask(mask: Any, name: str = "mask") -> None:
    """Raises ValueError unless `mask` is a boolean 2-D or 4-D hwio kernel (array or tracer)."""
    checks.check_bool_mask(mask, name)


def traced_loads(mask, n_pe: int, mapping: str | PEMapping):
    """`[G, n]` int32 PE loads inside a trace (`pe_loads` without the checks; static `n_pe`)."""
    m = get_mapping(mapping)
    if m.direct_loads is not None:
        return m.direct_loads(mask, n_pe)
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
      mapping: a registered mapping name (`MAPPINGS`), e.g. "output_channel" or "input_split".

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
    """The mapping's `channel_counts` table, e.g. `[c_out]` or `[c_out, c_in]` int32.

    Args:
      mask: boolean hwio kernel.
      mapping: a registered mapping name.
    Returns:
      The table: `pe_loads(mask, n, mapping) ==
      get_mapping(mapping).loads_from_counts(channel_counts(mask), n)`.
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
    """Cached `pe_capacity` (a name always means one mapping, see `register_mapping`)."""
    return np.asarray(traced_capacity(shape, n_pe, mapping))


def traced_capacity(shape: Sequence[int], n_pe: int, mapping: str | PEMapping):
    """`[G, n]` int32 weight slots per PE inside a trace (`pe_capacity`; static shape, `n_pe`)."""
    m = get_mapping(mapping)
    shape = tuple(int(d) for d in shape)
    if m.ones_counts is not None:
        ones = m.ones_counts(shape)
    else:
        ones = m.channel_counts(jnp.ones(shape, bool))
    return m.loads_from_counts(ones, n_pe)


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
