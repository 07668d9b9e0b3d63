"""Masks at the boundary: boolean, or numbers that are exactly 0 or 1; 2-D or 4-D kernels.

One rule for every public function and file that takes masks (`hardware.simulate_masks`,
`hardware.count_tables`, `workload.rebalance_network`, the mask files): a boolean array is taken
as it is; an integer or float array whose every value is 0 or 1 becomes boolean; anything else
(0.3, 2, NaN, strings) is refused, never "counted as kept". Inside a trace the values cannot be
looked at, so a traced mask must already be boolean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RANKS = (2, 4)


def check_rank(mask: Any, name: str) -> None:
    """Raises ValueError naming `name` unless `mask` is a 2-D or 4-D kernel."""
    if np.ndim(mask) not in RANKS:
        raise ValueError(
            f"{name}: must be a 4-D conv [kh, kw, c_in, c_out] or 2-D dense [c_in, c_out] kernel, "
            f"got shape {np.shape(mask)}"
        )


def check_bool_mask(mask: Any, name: str = "mask") -> None:
    """Raises ValueError unless `mask` is a boolean 2-D or 4-D kernel (arrays and tracers).

    The strict rule of the per-layer kernels, which may run inside a trace.
    """
    check_rank(mask, name)
    dtype = jnp.result_type(mask)
    if dtype != jnp.bool_:
        raise ValueError(f"{name}: must be boolean, got dtype {dtype}")


def _is_traced(mask: Any) -> bool:
    return isinstance(mask, jax.core.Tracer)


def bool_mask(mask: Any, name: str = "mask") -> Any:
    """`mask` as a boolean kernel: booleans unchanged, exact 0/1 numbers converted.

    Args:
      mask: a numpy or jax array (or nested list) of rank 2 or 4.
      name: what a message names (`masks['features/conv1/kernel']`).

    Returns:
      The same object when it is already boolean; otherwise a boolean array of the same kind
      (numpy in, numpy out; jax in, jax out).

    Raises:
      ValueError: a rank other than 2 and 4, a dtype that is not boolean or numeric, a value
        other than 0 and 1, or a traced non-boolean mask.
    """
    if not hasattr(mask, "dtype"):
        mask = np.asarray(mask)
    check_rank(mask, name)
    dtype = np.dtype(mask.dtype)
    if dtype == np.bool_:
        return mask
    if _is_traced(mask):
        raise ValueError(f"{name}: a traced mask must be boolean, got dtype {dtype}")
    if dtype.kind not in "iuf":
        raise ValueError(f"{name}: not boolean or 0/1 numbers (dtype {dtype})")
    values = np.asarray(mask)
    ok = (values == 0) | (values == 1)
    if not ok.all():
        bad = values[~ok].ravel()[0]
        raise ValueError(
            f"{name}: not boolean or exactly 0/1 (the value {bad!r}; {int((~ok).sum())} values"
            " are neither 0 nor 1)"
        )
    return mask.astype(bool) if isinstance(mask, jax.Array) else values.astype(bool)


def bool_masks(masks: Mapping[str, Any], what: str = "masks") -> dict[str, Any]:
    """`{path: bool_mask(mask)}` of a flat mask dict, in order (messages name each layer)."""
    if not isinstance(masks, Mapping):
        raise ValueError(f"{what}: expected a {{layer path: mask}} mapping, got {type(masks)}")
    return {k: bool_mask(v, f"{what}[{k!r}]") for k, v in masks.items()}
