"""A small VGG-style spiking net for 28x28x1 images (Fashion-MNIST on CPUs, preset `fmnist`).

Default layers (`cfg`, VGG notation: an int is a 3x3 conv with that many output channels, "M" a
2x2 max-pool with stride 2, as the project's VGG16 pools):

  conv0 16 @ 28x28 -> M -> conv1 64 @ 14x14 -> M -> conv2 64 @ 7x7 -> conv3 64 @ 7x7
  -> flatten (7x7x64 = 3136) -> classifier

Each conv (no bias, padding 1) -> BN -> LIF. Direct encoding: `conv0 -> bn0` runs once on the
images and its output is the input current of the first LIF layer at each of the `T` steps;
everything after runs on `[T*B, ...]` (time folded into the batch), the LIF layers scan over
`T`. Output: logits per step, `[T, B, classes]`. A pool after an odd size floors it (7 -> 3),
as PyTorch's `MaxPool2d(2, 2)`.

Pooling right after the first conv keeps the 64-channel layers at 14x14 and 7x7: about 5.4M
multiply-adds per image and step. The three 64-channel layers `conv1`..`conv3` (the analysed
layers: the first conv is left out of the hardware figures) have four groups of 16 PEs each
under the output-channel mapping. No pool before the classifier: in a measured 4-epoch run on
15,000 training images it reached 88.7 % test accuracy against 88.2 % with a last pool to 3x3
(BUILD_NOTES.md), at the same cost (the classifier is a 3136x10 matmul).

Params (hwio kernels): `features/conv{i}/kernel`, `features/bn{i}/{scale,bias}`,
`classifier/{kernel,bias}`; 114,448 kernel weights by default.
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

FMNIST_CFG: tuple[int | str, ...] = (16, "M", 64, "M", 64, 64)


def check_cfg(cfg: tuple[int | str, ...]) -> None:
    """Raises ValueError unless `cfg` is positive ints and "M"s, starting with a conv."""
    if not cfg or not isinstance(cfg[0], int) or isinstance(cfg[0], bool):
        raise ValueError(f"cfg must start with a conv width (an int), got {cfg!r}")
    for v in cfg:
        if v == "M":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"cfg entries must be ints >= 1 (conv widths) or 'M', got {v!r}")


class FashionFeatures(nn.Module):
    """The conv stack: images `[B, H, W, C]` -> folded spikes `[T*B, h, w, C_last]`."""

    cfg: tuple[int | str, ...]
    timesteps: int
    neuron: LIFConfig
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y, i = x, 0
        for v in self.cfg:
            if v == "M":
                y = max_pool(y, 2)
                continue
            y = conv(v, 3, 1, 1, f"conv{i}", self.conv_impl)(y)
            y = batch_norm(train, f"bn{i}")(y)
            if i == 0:
                y = encode(y, self.timesteps, self.neuron)  # [B, H, W, C0] -> [T*B, H, W, C0]
            else:
                y = spiking(y, self.timesteps, self.neuron)
            i += 1
        return y


class FashionSNN(SpikingNet):
    """VGG-style spiking net for 28x28 single-channel images (see the module docstring).

    Attributes (besides `SpikingNet`'s):
      cfg: the layer list, conv widths and "M" (2x2 max-pool); default `FMNIST_CFG`.
    """

    cfg: tuple[int | str, ...] = FMNIST_CFG

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x images `[B, H, W, C]` (28x28x1 for Fashion-MNIST); train: batch statistics.

        Returns: logits per step `[T, B, num_classes]`.
        """
        cfg = tuple(self.cfg)
        check_cfg(cfg)
        pools = sum(v == "M" for v in cfg)
        check_call(x, self.timesteps, self.num_classes, min_hw=2**pools)
        y = FashionFeatures(cfg, self.timesteps, self.neuron, self.conv_impl, name="features")(
            x, train
        )  # [T*B, h, w, C_last]
        y = y.reshape((y.shape[0], -1))
        y = nn.Dense(self.num_classes, name="classifier")(y)
        return unfold_logits(y, self.timesteps)
