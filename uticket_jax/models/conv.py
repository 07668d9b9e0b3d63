"""2-D convolution for the spiking models (NHWC input, HWIO kernel).

`Conv` is a drop-in for the subset of `flax.linen.Conv` the models use (param names `kernel`
and `bias`, same default initializers). The `impl` field selects how the convolution is
computed; "lax" is plain `lax.conv_general_dilated` with XLA's autodiff.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
from jax import lax

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")


def _pair(v, name: str) -> tuple[int, int]:
    """Normalises an int or a length-2 sequence to a pair of ints."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(a, int) for a in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def explicit_padding(
    padding: PaddingLike, in_hw: tuple[int, int], kernel_hw, strides
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Turns a padding spec ("SAME", "VALID", int, [int, int] or [(lo, hi)] * 2) into pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
        return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    padding = tuple(padding)
    if len(padding) != 2:
        raise ValueError(f"padding must have one entry per spatial dim (2), got {padding!r}")
    return tuple((p, p) if isinstance(p, int) else tuple(int(a) for a in p) for p in padding)


def conv2d_lax(x: jax.Array, w: jax.Array, strides=(1, 1), padding: PaddingLike = "SAME"):
    """Plain `lax.conv_general_dilated` (NHWC x HWIO -> NHWC), autodiff by XLA."""
    pads = explicit_padding(padding, x.shape[1:3], w.shape[:2], _pair(strides, "strides"))
    return lax.conv_general_dilated(x, w, _pair(strides, "strides"), pads, dimension_numbers=_DIMS)


class Conv(nn.Module):
    """2-D convolution, NHWC input, HWIO `kernel` param (drop-in for `flax.linen.Conv`).

    Attributes:
      features: output channels.
      kernel_size: (kh, kw) or an int.
      strides: (sh, sw) or an int.
      padding: "SAME", "VALID", an int, or ((lo, hi), (lo, hi)).
      use_bias: add a `bias` param of shape [features].
      kernel_init / bias_init: initializers (flax.linen.Conv's defaults).
      impl: "lax" (plain XLA convolution).
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = (1, 1)
    padding: PaddingLike = "SAME"
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    impl: str = "lax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC [N, H, W, C], got shape {x.shape}")
        kh, kw = _pair(self.kernel_size, "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        y = conv2d_lax(x, kernel.astype(x.dtype), self.strides, self.padding)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,))
            y = y + bias.astype(y.dtype)
        return y


__all__ = ["Conv", "conv2d_lax", "explicit_padding"]
