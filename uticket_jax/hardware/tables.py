"""Mask -> count tables for the analytical PE-array simulator, one table per mapping.

The simulator never touches a full mask: each layer is reduced once, for every mapping a sweep
uses, to that mapping's small integer table (`PEMapping.count_table`), from which the mapping's
`group_loads` gives the PE loads for any traced `n_pe` (see `simulator.py`). The built-ins::

  output_channel: counts[o]  = non-zeros of output channel o over (kh, kw, c_in)        `[c_out]`
  input_split:    prefix[o, i] = non-zeros of output channel o over (kh, kw, input ch < i)
                  `[c_out, c_in + 1]`
  any other:      the mask summed over the axes its assignment does not read (`derive.py`).

A layer's tables are a dict `{mapping name: table}` (`LayerTables`).

Backends (`backend=`): "jax" (default) builds every layer's tables in one compiled call per layer
shape; "numpy" builds them on the host (`count_table(mask, numpy)`, nothing compiled). Both give
the same integers, so tables of either backend feed either simulator backend.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import checks
from uticket_jax.hardware.layers import LayerSpec, as_hwio4
from uticket_jax.workload import mappings as wm

#: Count tables of one layer: `{mapping name: that mapping's count_table(mask)}`.
LayerTables = dict[str, Any]
BACKENDS = ("jax", "numpy")


def check_backend(backend: Any) -> str:
    """Returns `backend`, or raises ValueError unless it is one of `BACKENDS`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


@functools.partial(jax.jit, static_argnums=(1,))
def _count_tables(mask, ms: tuple[wm.PEMapping, ...]):
    """Every mapping's count table of one mask, in one compiled call (`ms` static)."""
    return {m.name: m.count_table(mask) for m in ms}


def _resolve(mappings: Sequence[str | wm.PEMapping] | None) -> tuple[wm.PEMapping, ...]:
    """The mappings to build tables for (default: every registered one), deduplicated."""
    names = list(wm.MAPPINGS) if mappings is None else list(mappings)
    if not names:
        raise ValueError("mappings: need at least one mapping")
    return tuple(dict.fromkeys(wm.get_mapping(x) for x in names))


def count_tables(
    mask, mappings: Sequence[str | wm.PEMapping] | None = None, *, backend: str = "jax"
) -> LayerTables:
    """Count tables of one layer's boolean mask, one per mapping (`PEMapping.count_table`).

    Args:
      mask: `[kh, kw, c_in, c_out]` or dense `[c_in, c_out]` boolean (or 0/1) array.
      mappings: registered mapping names (default: every mapping in `workload.MAPPINGS`).
      backend: "jax" (one compiled call, jax arrays) or "numpy" (host arrays, nothing compiled).
    Returns:
      `{mapping name: table}`; output_channel's is `[c_out]`, input_split's `[c_out, c_in + 1]`.
    """
    check_backend(backend)
    mask = checks.bool_mask(mask, "mask")  # boolean or exactly 0/1, never 0.3 "kept"
    ms = _resolve(mappings)
    if backend == "numpy":
        mask = np.asarray(mask)
        if mask.ndim not in (2, 4):
            raise ValueError(f"mask: must be 4-D hwio or 2-D dense, got shape {mask.shape}")
        mask = mask.astype(bool, copy=False)
        return {m.name: m.count_table(mask, np) for m in ms}
    mask = jnp.asarray(mask)
    if mask.ndim not in (2, 4):
        raise ValueError(f"mask: must be 4-D hwio or 2-D dense, got shape {mask.shape}")
    return _count_tables(mask.astype(bool), ms)


def network_tables(
    masks: Mapping[str, np.ndarray],
    specs: Sequence[LayerSpec],
    mappings: Sequence[str | wm.PEMapping] | None = None,
    *,
    backend: str = "jax",
) -> list[LayerTables]:
    """Count tables of every layer of `specs`, read from `masks` (same names and shapes).

    Args:
      masks: `{path: hwio mask}`.
      specs: the layer descriptions.
      mappings: registered mapping names (default: every registered one).
      backend: "jax" or "numpy" (see `count_tables`).
    Returns:
      One `LayerTables` per spec, in order.
    """
    check_backend(backend)
    ms = _resolve(mappings)
    out = []
    for spec in specs:
        if spec.name not in masks:
            raise ValueError(f"masks: no mask for layer {spec.name!r}")
        if as_hwio4(np.shape(masks[spec.name])) != spec.kernel_shape:
            raise ValueError(
                f"masks: {spec.name!r} has shape {np.shape(masks[spec.name])}, "
                f"the layer description says {spec.kernel_shape}"
            )
        mask = checks.bool_mask(masks[spec.name], f"masks[{spec.name!r}]")
        out.append(count_tables(mask, ms, backend=backend))
    return out
