"""Layer descriptions (`hardware.LayerSpec`) at the simulator's boundary.

A spec is built by `specs_from_shapes` / `specs_from_layers`, but `LayerSpec` is a public
NamedTuple anyone can fill in by hand, and the simulator multiplies by its sizes: a negative
output size would subtract work, a zero one hide a layer, a size beyond int32 wrap in the count
tables. Each field is checked here (duck-typed: `name`, `kernel_shape`, `out_hw`, `analysed`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from uticket_jax.checks.numbers import INT32_MAX


def _dims(value: Any, n: int) -> tuple[int, ...] | None:
    """`value` as a tuple of `n` Python ints >= 1 and <= int32, or None when it is not one."""
    try:
        items = tuple(value)
    except TypeError:
        return None
    if len(items) != n:
        return None
    for d in items:
        if isinstance(d, bool | np.bool_) or not isinstance(d, numbers.Integral):
            return None
        if not 1 <= int(d) <= INT32_MAX:
            return None
    return tuple(int(d) for d in items)


def check_spec(spec: Any, what: str = "specs") -> None:
    """Raises ValueError (naming `what` and the layer) unless `spec` is a valid layer description.

    name: a non-empty string; kernel_shape: 4 integers in [1, 2**31 - 1]; out_hw: 2 integers in
    [1, 2**31 - 1] whose product (the output positions) is <= 2**31 - 1; analysed: a bool.
    """
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: a layer spec needs a non-empty name, got {name!r}")
    label = f"{what}[{name!r}]"
    if _dims(getattr(spec, "kernel_shape", None), 4) is None:
        raise ValueError(
            f"{label}: kernel_shape must be 4 integers (kh, kw, c_in, c_out) in [1, {INT32_MAX}],"
            f" got {getattr(spec, 'kernel_shape', None)!r}"
        )
    hw = _dims(getattr(spec, "out_hw", None), 2)
    if hw is None:
        raise ValueError(
            f"{label}: out_hw must be 2 integers (height, width) in [1, {INT32_MAX}], got"
            f" {getattr(spec, 'out_hw', None)!r}"
        )
    if hw[0] * hw[1] > INT32_MAX:
        raise ValueError(
            f"{label}: {hw[0]}x{hw[1]} output positions exceed {INT32_MAX}; check the input size"
        )
    if not isinstance(getattr(spec, "analysed", None), bool | np.bool_):
        raise ValueError(f"{label}: analysed must be a bool, got {spec.analysed!r}")


def check_specs(specs: Sequence[Any], what: str = "specs") -> None:
    """`check_spec` on every spec; at least one, names unique."""
    if isinstance(specs, str | bytes) or not isinstance(specs, Sequence) or not specs:
        raise ValueError(f"{what}: need a non-empty sequence of layer specs, got {specs!r}")
    seen = set()
    for spec in specs:
        check_spec(spec, what)
        if spec.name in seen:
            raise ValueError(f"{what}: layer {spec.name!r} is described twice")
        seen.add(spec.name)
