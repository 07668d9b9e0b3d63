"""Kernel layouts against the network's geometry: refuse a file that only fits the other layout.

Mask and weight files hold kernels in Flax layout (`hwio`: `[kh, kw, c_in, c_out]`, dense
`[c_in, c_out]`) or PyTorch layout (`oihw`: `[c_out, c_in, kh, kw]`, dense `[out, in]`). Read
in the wrong one, a file still gives arrays of plausible ranks, and a tool would write a
plausible, wrong result. The geometry tells the two apart: read in its own layout, a network's
kernels are square (`kh == kw`) and its layers chain up (each layer's input channels are the
output channels of an earlier layer; a dense layer after convs takes a multiple of one, the
flattened feature map). A file that breaks this in the layout it was read with but keeps it in
the other one is refused, naming the layout that fits. Where neither fits (a network whose
layers do not chain, e.g. parts of one), nothing is refused: nothing is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
