"""PE loads, capacities and layouts of a kernel under a registered mapping, checked at the boundary.

A mapping (`mapping.PEMapping`) is declared by where every weight coordinate lands, `(group, PE)`;
everything here is a view of that assignment (`derive.py`), or of a built-in's hand-written fast
version (`builtin_mappings.py`). Mappings are looked up by name in the one registry
(`registry.MAPPINGS`, re-exported here with the registry's functions).

`pe_loads` is the definition of the per-PE workload; the simulator, which needs a traced `n`,
reduces masks with `PEMapping.count_table` / `group_loads` instead and agrees with it exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import checks
from uticket_jax.workload.builtin_mappings import INPUT_SPLIT, OUTPUT_CHANNEL
from uticket_jax.workload.kernel import Coords, Hwio, as_hwio4, kernel_dims
from uticket_jax.workload.mapping import ColPaths, FastPaths, PEMapping, SlotPaths, TablePaths
from uticket_jax.workload.registry import (
    MAPPINGS,
    check_mapping,
    get_mapping,
    register_mapping,
    registered_mapping,
    unregister_mapping,
)

__all__ = [
    "INPUT_SPLIT",
    "MAPPINGS",
    "OUTPUT_CHANNEL",
    "ColPaths",
    "Coords",
    "FastPaths",
    "Hwio",
    "PEMapping",
    "SlotPaths",
    "TablePaths",
    "as_hwio4",
    "check_mapping",
    "check_mask",
    "check_n_pe",
    "count_table",
    "from_slots",
    "get_mapping",
    "kernel_dims",
    "pe_capacity",
    "pe_loads",
    "register_mapping",
    "registered_mapping",
    "slot_valid",
    "to_slots",
    "unregister_mapping",
]


def check_n_pe(n_pe: Any) -> int:
    """Returns `n_pe` as an int, or raises ValueError unless an integer in [1, `MAX_N_PE`]."""
    return checks.check_int("n_pe", n_pe, minimum=1, maximum=checks.MAX_N_PE)


def check_mask(mask: Any, name: str = "mask") -> None:
    """Raises ValueError unless `mask` is a boolean 2-D or 4-D hwio kernel (array or tracer)."""
    checks.check_bool_mask(mask, name)


@functools.partial(jax.jit, static_argnames=("n_pe", "m"))
def _pe_loads(mask, n_pe: int, m: PEMapping):
    # n_pe and the mapping fix the output shape [G, n] and the reduction, so they are static.
    return m.loads(mask, n_pe)


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

    Example:
      >>> import numpy as np
      >>> from uticket_jax import workload
      >>> mask = np.zeros((3, 3, 4, 8), bool)  # [kh, kw, c_in, c_out]
      >>> mask[..., 0] = True  # output channel 0: all 36 weights
      >>> mask[:, :, :2, 5] = True  # output channel 5: its first 2 input channels, 18 weights
      >>> workload.pe_loads(mask, 4).tolist()  # channel 4 * g + j on PE j of group g
      [[36, 0, 0, 0], [0, 18, 0, 0]]
      >>> loads = workload.pe_loads(mask, 4, "input_split")  # one group per output channel
      >>> loads.shape, loads[0].tolist(), loads[5].tolist()  # input channel j on PE j
      ((8, 4), [9, 9, 9, 9], [9, 9, 0, 0])
    """
    n_pe = check_n_pe(n_pe)
    m = get_mapping(mapping)
    check_mask(mask)
    return _pe_loads(mask, n_pe, m)


def count_table(mask, mapping: str = "output_channel") -> Any:
    """The mapping's count table of a boolean mask (`PEMapping.count_table`), e.g. `[c_out]`.

    Args:
      mask: boolean hwio kernel.
      mapping: a registered mapping name.
    Returns:
      The table (int32 arrays) from which `group_loads` gives the loads for any `n`.
    """
    m = get_mapping(mapping)
    check_mask(mask)
    return jax.jit(m.count_table)(mask)


def pe_capacity(shape: Sequence[int], n_pe: int, mapping: str = "output_channel") -> np.ndarray:
    """`[G, n]` int32 number of weight slots per PE (0 for idle PEs), computed on the host."""
    n_pe = check_n_pe(n_pe)
    return get_mapping(mapping).capacity(shape, n_pe).copy()


def slot_valid(shape: Sequence[int], n_pe: int, mapping: str = "output_channel") -> jax.Array:
    """`[G, n, C]` bool: which slots of the slot layout hold a real weight (not padding)."""
    n_pe = check_n_pe(n_pe)
    return get_mapping(mapping).to_slots(jnp.ones(tuple(shape), bool), n_pe, False)


def to_slots(x, n_pe: int, mapping: str = "output_channel", fill: Any = 0) -> jax.Array:
    """A kernel's entries in slot layout `[G, n, C]` (PE `j` of group `g` holds row `[g, j]`)."""
    n_pe = check_n_pe(n_pe)
    return get_mapping(mapping).to_slots(jnp.asarray(x), n_pe, fill)


def from_slots(slots, shape: Sequence[int], n_pe: int, mapping: str = "output_channel"):
    """Inverse of `to_slots`: the hwio kernel of `shape` from its `[G, n, C]` slot layout."""
    n_pe = check_n_pe(n_pe)
    return get_mapping(mapping).from_slots(jnp.asarray(slots), tuple(shape), n_pe)
