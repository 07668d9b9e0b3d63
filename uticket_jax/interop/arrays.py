"""How the project's arrays become NIR's, and back: kernel layouts, flatten order, BN folding.

NIR follows PyTorch's conventions: images and feature maps are channel-first `(C, H, W)` (no
batch axis), conv weights `(c_out, c_in, kh, kw)` ("oihw"), dense weights `(out, in)`, and a
`Flatten` of a `(C, H, W)` map orders its entries channel-major (`c*H*W + h*W + w`). The project
is channel-last: kernels are hwio, and the models flatten `[H, W, C]` maps row-major
(`(h*W + w)*C + c`), so the first dense layer after a flatten has its input rows in HWC order.
Every conversion here is a transpose or a reshape: exact, and undone bit for bit by its inverse.

Batch norm at inference is an affine map per channel, `y = (x - mean) * mul + beta` with
`mul = gamma / sqrt(var + eps)` (Flax's `BatchNorm` with running averages), so a bias-free conv
followed by BN is one conv with kernel `w * mul[c_out]` and bias `beta - mean * mul`. The folded
network computes the same function; its float32 results differ from the unfolded one's only in
rounding (the product `w * mul` is rounded before the convolution instead of after it).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Folded(NamedTuple):
    """A conv or dense layer with its batch norm folded in.

    Fields:
      kernel: hwio float32 kernel (`[kh, kw, c_in, c_out]` or `[c_in, c_out]`).
      bias: `[c_out]` float32.
      kept_zero: weights the mask keeps whose folded value is exactly 0 (a BN scale of 0 or a
        trained weight of 0): they vanish from the non-zero pattern a reader sees.
    """

    kernel: np.ndarray
    bias: np.ndarray
    kept_zero: int


def fold_batch_norm(
    kernel: np.ndarray,
    mask: np.ndarray | None,
    *,
    bias: np.ndarray | None = None,
    bn: dict[str, np.ndarray] | None = None,
    epsilon: float = 1e-5,
) -> Folded:
    """The masked kernel with the BN that follows it folded in (float32, exact at inference).

    Args:
      kernel: hwio kernel (conv 4-D or dense 2-D).
      mask: boolean array of the kernel's shape (pruned entries become 0), or None (dense).
      bias: the layer's own bias `[c_out]`, or None (bias-free conv).
      bn: `{"scale", "bias", "mean", "var"}` of the BN after the layer (Flax names), or None.
      epsilon: the BN's epsilon.

    Returns:
      `Folded(kernel * mask * mul, (bias - mean) * mul + beta, kept_zero)`; without `bn`, `mul = 1`
      and `beta = 0`.
    """
    kernel = np.asarray(kernel, np.float32)
    c_out = kernel.shape[-1]
    if mask is not None:
        if np.shape(mask) != kernel.shape:
            raise ValueError(
                f"mask: shape {np.shape(mask)} differs from the kernel's {kernel.shape}"
            )
        kernel = np.where(np.asarray(mask, bool), kernel, np.float32(0))
    b = np.zeros(c_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    if bn is not None:
        for name in ("scale", "bias", "mean", "var"):
            if np.shape(bn[name]) != (c_out,):
                raise ValueError(f"bn: {name} has shape {np.shape(bn[name])}, expected ({c_out},)")
        var = np.asarray(bn["var"], np.float32)
        # Flax's order: mul = rsqrt(var + eps) * scale.
        mul = (np.float32(1) / np.sqrt(var + np.float32(epsilon))) * np.asarray(
            bn["scale"], np.float32
        )
        kernel = kernel * mul  # [..., c_out] * [c_out]
        b = (b - np.asarray(bn["mean"], np.float32)) * mul + np.asarray(bn["bias"], np.float32)
    kept = 0 if mask is None else int(np.sum(np.asarray(mask, bool) & (kernel == 0)))
    return Folded(kernel.astype(np.float32), b.astype(np.float32), kept)


def conv_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """hwio `[kh, kw, c_in, c_out]` -> NIR's `[c_out, c_in, kh, kw]`."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def conv_from_oihw(weight: np.ndarray) -> np.ndarray:
    """NIR's `[c_out, c_in, kh, kw]` -> hwio `[kh, kw, c_in, c_out]` (inverse of `conv_to_oihw`)."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def dense_to_nir(kernel: np.ndarray, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """A dense kernel `[c_in, c_out]` as NIR's `[out, in]`.

    Args:
      kernel: hwio dense kernel; when `chw` is given its rows are a flattened `[H, W, C]` map.
      chw: `(C, H, W)` of the map flattened before this layer, or None (rows are features).

    Returns:
      `[c_out, c_in]`, columns in NIR's channel-major flatten order when `chw` is given.
    """
    if chw is None:
        return np.ascontiguousarray(kernel.T)
    c, h, w = chw
    _check_rows(kernel.shape[0], chw)
    k = kernel.reshape(h, w, c, kernel.shape[1])  # [H, W, C, out]
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1).reshape(kernel.shape[1], c * h * w))


def dense_from_nir(weight: np.ndarray, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """NIR's `[out, in]` as an hwio dense kernel `[c_in, c_out]` (inverse of `dense_to_nir`).

    With `chw` (the `(C, H, W)` map a `Flatten` gave this layer), the rows come back in the
    project's HWC flatten order.
    """
    if chw is None:
        return np.ascontiguousarray(weight.T)
    c, h, w = chw
    _check_rows(weight.shape[1], chw)
    k = weight.reshape(weight.shape[0], c, h, w)  # [out, C, H, W]
    return np.ascontiguousarray(k.transpose(2, 3, 1, 0).reshape(h * w * c, weight.shape[0]))


def _check_rows(rows: int, chw: tuple[int, int, int]) -> None:
    if rows != int(np.prod(chw)):
        raise ValueError(
            f"dense layer: {rows} inputs, but the flattened map {chw} has {np.prod(chw)}"
        )


__all__ = [
    "Folded",
    "conv_from_oihw",
    "conv_to_oihw",
    "dense_from_nir",
    "dense_to_nir",
    "fold_batch_norm",
]
