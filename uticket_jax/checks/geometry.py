"""Network geometry at the boundary: layer descriptions, and kernel layouts against the chain.

Layer specs (`hardware.LayerSpec`) are built by `specs_from_shapes` / `specs_from_layers`, but
`LayerSpec` is a public NamedTuple anyone can fill in by hand, and the simulator multiplies by its
sizes: a negative output size would subtract work, a zero one hide a layer, a size beyond int32
wrap in the count tables. `check_specs` checks each field (duck-typed: `name`, `kernel_shape`,
`out_hw`, `analysed`).

Layouts: mask and weight files hold kernels in Flax layout (`hwio`: `[kh, kw, c_in, c_out]`,
dense `[c_in, c_out]`) or PyTorch layout (`oihw`: `[c_out, c_in, kh, kw]`, dense `[out, in]`).
Read in the wrong one, a file still gives arrays of plausible ranks, and a tool would write a
plausible, wrong result. The geometry tells the two apart: read in its own layout, a network's
kernels are square (`kh == kw`) and its layers chain up (each layer's input channels are the
output channels of an earlier layer; a dense layer after convs takes a multiple of one, the
flattened feature map). `check_layout` refuses a file that breaks this in the layout it was read
with but keeps it in the other one, naming the layout that fits. Where neither fits (a network
whose layers do not chain, e.g. parts of one), nothing is refused: nothing is known.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
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


# ---- layouts ------------------------------------------------------------------------------------

LAYOUTS = ("hwio", "oihw")


def hwio_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """The hwio shape of a kernel stored as `shape` in `layout` (2-D and 4-D; others unchanged)."""
    shape = tuple(int(d) for d in shape)
    if layout == "hwio" or len(shape) not in (2, 4):
        return shape
    if len(shape) == 4:
        o, i, h, w = shape
        return (h, w, i, o)
    return (shape[1], shape[0])


def other_reading(hwio: Sequence[int], layout: str) -> tuple[int, ...]:
    """The hwio shape of a kernel read as `layout`, had its file been read in the other layout."""
    hwio = tuple(int(d) for d in hwio)
    if layout == "hwio":  # stored as hwio, read as oihw
        return hwio_shape(hwio, "oihw")
    if len(hwio) == 4:  # stored as oihw, read as hwio: the stored shape itself
        return (hwio[3], hwio[2], hwio[0], hwio[1])
    return (hwio[1], hwio[0]) if len(hwio) == 2 else hwio


def first_break(shapes: Sequence[tuple[int, ...]], names: Sequence[str]) -> str | None:
    """Why hwio `shapes` (network order) are not one network's kernels, or None when they are."""
    produced: list[int] = []  # c_out of every layer so far
    conv_out: list[int] = []  # c_out of every conv so far
    for k, (name, shape) in enumerate(zip(names, shapes, strict=True)):
        if len(shape) == 4 and shape[0] != shape[1]:
            return f"{name!r} would have a {shape[0]}x{shape[1]} kernel"
        c_in, c_out = shape[-2], shape[-1]
        if k > 0:
            chained = c_in in produced
            flattened = len(shape) == 2 and any(c_in % c == 0 for c in conv_out)
            if not (chained or flattened):
                return (
                    f"{name!r} would take {c_in} input channels, which no earlier layer gives"
                    f" (they give {sorted(set(produced))})"
                )
        produced.append(c_out)
        if len(shape) == 4:
            conv_out.append(c_out)
    return None


def check_layout(shapes: Mapping[str, Sequence[int]], layout: str, what: str) -> None:
    """Raises ValueError when kernels stored as `shapes` fit only the layout other than `layout`.

    Args:
      shapes: `{layer path: shape as stored}` in network order (2-D and 4-D kernels).
      layout: the layout the caller reads them in ("hwio" or "oihw").
      what: what the message names (`masks: 'run/m.npz'`).

    Raises:
      ValueError: naming the layer that does not fit `layout` and the layout that fits.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    names = list(shapes)
    if not names or any(len(tuple(s)) not in (2, 4) for s in shapes.values()):
        return  # other checks name these
    other = LAYOUTS[1 - LAYOUTS.index(layout)]
    given = first_break([hwio_shape(s, layout) for s in shapes.values()], names)
    if given is None:
        return
    if first_break([hwio_shape(s, other) for s in shapes.values()], names) is None:
        raise ValueError(
            f"{what}: read as {layout}, {given}; the kernels fit together only in {other} layout"
            f" (pass layout {other}: --layout {other})"
        )
