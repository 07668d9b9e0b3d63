"""Kernel shapes and coordinate grids: the vocabulary of PE mappings.

Kernels are hwio: conv `[kh, kw, c_in, c_out]`, dense `[c_in, c_out]` (viewed as `kh = kw = 1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class Hwio(NamedTuple):
    """A kernel shape as `(kh, kw, c_in, c_out)` Python ints."""

    kh: int
    kw: int
    c_in: int
    c_out: int


class Coords(NamedTuple):
    """Broadcastable integer index grids of a kernel's coordinates (`[kh, 1, 1, 1]`, ...)."""

    kh: Any
    kw: Any
    c_in: Any
    c_out: Any


def as_hwio4(shape: Sequence[int], what: str = "mask") -> Hwio:
    """`(kh, kw, c_in, c_out)` of an hwio conv or dense (`kh = kw = 1`) kernel shape.

    Raises:
      ValueError: naming `what`, for ranks other than 4 and 2.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) == 4:
        return Hwio(*dims)
    if len(dims) == 2:
        return Hwio(1, 1, dims[0], dims[1])
    raise ValueError(f"{what}: must be a 4-D conv or 2-D dense hwio kernel, got shape {dims}")


def kernel_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    """`(K, c_in, c_out)` of an hwio conv (`K = kh*kw`) or dense (`K = 1`) kernel shape."""
    kh, kw, c_in, c_out = as_hwio4(shape)
    return kh * kw, c_in, c_out


def coords(dims: Sequence[int], xp: Any = np) -> Coords:
    """int32 index grids of a `(kh, kw, c_in, c_out)` box, each broadcastable along its axis."""

    def axis(i: int):
        shape = [1, 1, 1, 1]
        shape[i] = int(dims[i])
        return xp.arange(int(dims[i]), dtype=np.int32).reshape(shape)

    return Coords(*(axis(i) for i in range(4)))
