"""Spiking VGG16-BN, as used by u-Ticket (Yin et al., IEEE TETCI 2024) and its LTH-SNN base.

13 3x3 convs `64, 64, M, 128, 128, M, 256x3, M, 512x3, M, 512x3, M`, each conv (no bias) -> BN ->
LIF, 2x2 max-pooling at every `M` (as the authors' code, which pools with `nn.MaxPool2d(2, 2)`),
then flatten (1x1x512 for 32x32 images) and one linear layer to the classes.

Direct encoding: `conv0 -> bn0` runs once on the images; its output is the input current of the
first LIF layer at each of the `T` steps. Everything after runs on `[T*B, ...]` (time folded into
the batch); the LIF layers scan over `T`. Output: logits per step, `[T, B, classes]`.

Params (hwio kernels): `features/conv{i}/kernel`, `features/bn{i}/{scale,bias}` for i = 0..12,
`classifier/{kernel,bias}`; BN running statistics in the `batch_stats` collection.
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

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)  # fmt: skip


class VGGFeatures(nn.Module):
    """The conv stack: images `[B, H, W, C]` -> folded spikes `[T*B, H/32, W/32, 512]`."""

    cfg: tuple[int | str, ...]
    timesteps: int
    neuron: LIFConfig
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y, i = x, 0
        for v in self.cfg:
            if v == "M":
                y = max_pool(y, 2)  # same values and grads as nn.max_pool, faster backward
                continue
            y = conv(v, 3, 1, 1, f"conv{i}", self.conv_impl)(y)
            y = batch_norm(train, f"bn{i}")(y)
            if i == 0:
                y = encode(y, self.timesteps, self.neuron)  # [B, H, W, 64] -> [T*B, H, W, 64]
            else:
                y = spiking(y, self.timesteps, self.neuron)
            i += 1
        return y


class VGG16(SpikingNet):
    """Spiking VGG16-BN with direct encoding (see the module docstring).

    Fields: those of `SpikingNet`.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x images `[B, H, W, C]` (H, W >= 32); train: batch statistics and their update.

        Returns: logits per step `[T, B, num_classes]`.
        """
        check_call(x, self.timesteps, self.num_classes, min_hw=32)
        y = VGGFeatures(VGG16_CFG, self.timesteps, self.neuron, self.conv_impl, name="features")(
            x, train
        )  # [T*B, h, w, 512]
        y = y.reshape((y.shape[0], -1))
        y = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier")(
            y
        )
        return unfold_logits(y, self.timesteps)
