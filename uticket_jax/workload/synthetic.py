"""Synthetic sparse networks with uneven per-channel density, for benchmarks and tests.

Magnitude-pruned deep nets keep very different fractions of each output channel (and of each input
channel), which is what unbalances the PEs. This generator reproduces that: the keep probability of
weight `(o, i)` is `density * a_o * b_i` with log-normal channel factors `a`, `b`, so layer density
is about `density` while loads per output channel and per input slice vary widely.
"""

from __future__ import annotations

import numpy as np

# The paper's VGG16 for 32x32 inputs: 13 3x3 convs then a single linear classifier.
VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def vgg16_shapes(num_classes: int = 10, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Kernel shapes (hwio) of the paper's VGG16-BN, keyed like the project's VGG16 params."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = in_channels
    for i, c_out in enumerate(VGG16_CHANNELS):
        shapes[f"features/conv{i}/kernel"] = (3, 3, c_in, c_out)
        c_in = c_out
    shapes["classifier/kernel"] = (c_in, num_classes)
    return shapes


def uneven_sparse_layer(
    rng: np.random.Generator, shape: tuple[int, ...], density: float, spread: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's `(mask, weights)`: bool mask of about `density`, float32 normal weights.

    Args:
      rng: numpy generator (the caller owns the seed).
      shape: hwio kernel shape (4-D conv or 2-D dense).
      density: target fraction of kept weights, in (0, 1].
      spread: sigma of the log-normal per-channel factors; 0 gives uniform density.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density: must be in (0, 1], got {density}")
    c_in, c_out = shape[-2], shape[-1]
    a = rng.lognormal(0.0, spread, size=c_out)
    b = rng.lognormal(0.0, spread, size=c_in)
    p = density * np.outer(b, a) / (a.mean() * b.mean())  # [c_in, c_out]
    p = np.clip(p, 0.0, 1.0)
    mask = rng.random(shape, dtype=np.float32) < p.astype(np.float32)
    weights = rng.standard_normal(shape, dtype=np.float32)
    return mask, weights


def vgg16_sparse(
    seed: int = 0, sparsity: float = 0.98, spread: float = 0.5, num_classes: int = 10
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A VGG16-shaped network (~14.7M weights) at about `sparsity`, as `(masks, weights)` dicts.

    Same seed, same arrays. Keys and order follow `vgg16_shapes`.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: must be in [0, 1), got {sparsity}")
    rng = np.random.default_rng(seed)
    masks, weights = {}, {}
    for name, shape in vgg16_shapes(num_classes).items():
        masks[name], weights[name] = uneven_sparse_layer(rng, shape, 1.0 - sparsity, spread)
    return masks, weights
