"""A small spiking conv net for 8x8x1 digits (the embedded default dataset).

`conv0` 3x3 32 -> BN -> LIF -> `conv1` 3x3 64 -> BN -> LIF -> `conv2` 3x3 64 -> BN -> LIF ->
2x2 max-pool -> flatten (4x4x64) -> `classifier`. Direct encoding (`conv0 -> bn0` runs once, its
output is the current at each of the `T` steps), time folded into the batch for the stateless
layers, LIF scanned over `T`, logits per step `[T, B, classes]`; the same structure as the
paper's VGG16, small enough to train to > 90% test accuracy on scikit-learn's digits in seconds
on a CPU, and wide enough (64-channel layers: 4 groups of 16 PEs) to show PE imbalance.

Params (hwio kernels): `features/conv{0,1,2}/kernel`, `features/bn{0,1,2}`,
`classifier/{kernel,bias}`.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from uticket_jax.models.common import (
    SpikingNet,
    batch_norm,
    check_call,
    conv,
    encode,
    spiking,
    unfold_logits,
)
from uticket_jax.ops.pool import max_pool
from uticket_jax.snn import LIFConfig


class DigitsFeatures(nn.Module):
    """conv0/bn0 (once) -> LIF -> (conv/bn -> LIF)... -> pool: `[B, 8, 8, 1] -> [T*B, 4, 4, C]`."""

    channels: tuple[int, ...]
    timesteps: int
    neuron: LIFConfig
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = x
        for i, c in enumerate(self.channels):
            y = conv(c, 3, 1, 1, f"conv{i}", self.conv_impl)(y)
            y = batch_norm(train, f"bn{i}")(y)
            if i == 0:
                y = encode(y, self.timesteps, self.neuron)  # [B, H, W, C0] -> [T*B, H, W, C0]
            else:
                y = spiking(y, self.timesteps, self.neuron)
        return max_pool(y, 2)


class DigitsSNN(SpikingNet):
    """Small spiking conv net for 8x8 single-channel images (see the module docstring).

    Attributes (besides `SpikingNet`'s):
      channels: output channels of the conv layers (`conv0`, `conv1`, ...).
    """

    channels: tuple[int, ...] = (32, 64, 64)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x images `[B, H, W, C]` (8x8x1 for digits); train: batch statistics.

        Returns: logits per step `[T, B, num_classes]`.
        """
        check_call(x, self.timesteps, self.num_classes, min_hw=2)
        if len(self.channels) < 1:
            raise ValueError(f"channels must name at least one conv layer, got {self.channels!r}")
        y = DigitsFeatures(
            tuple(self.channels), self.timesteps, self.neuron, self.conv_impl, name="features"
        )(x, train)  # [T*B, H/2, W/2, C]
        y = y.reshape((y.shape[0], -1))
        y = nn.Dense(self.num_classes, name="classifier")(y)
        return unfold_logits(y, self.timesteps)
