"""Spiking ResNet19, as used by u-Ticket (Yin et al., IEEE TETCI 2024) and its LTH-SNN base.

Stem: 3x3 conv 64 -> BN -> LIF. Three stages of BasicBlocks `[3, 3, 2]` at 128, 256, 512
channels; every stage starts with stride 2 (the authors' `_make_layer(..., stride=2)` for all three
stages: 32x32 -> 16 -> 8 -> 4). A block: conv1 3x3 -> bn1 -> LIF -> conv2 3x3 -> bn2, plus the
shortcut (1x1 conv + BN where stride or width changes, identity otherwise), -> LIF on the sum.
Then global average pooling, `fc1` 512->256 -> LIF, `fc2` 256->classes.

Direct encoding: `stem/conv -> stem/bn` runs once on the images; its output feeds the first LIF at
each of the `T` steps. The rest runs with time folded into the batch, `[T*B, ...]`, and the LIF
layers scan over `T`. Output: logits per step, `[T, B, classes]`.

Params (hwio kernels): `stem/conv/kernel`, `stem/bn`, `layer{s}/block{b}/{conv1,bn1,conv2,bn2}`
and, where present, `layer{s}/block{b}/{shortcut_conv,shortcut_bn}` (s = 1..3, b from 0),
`fc1/{kernel,bias}`, `fc2/{kernel,bias}`. Weight init follows PyTorch's defaults, as the authors'
ResNet (which does not override them): U(+-1/sqrt(fan_in)) kernels; biases start at 0 here.
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
    torch_default,
    unfold_logits,
)
from uticket_jax.snn import LIFConfig

RESNET19_STAGES: tuple[tuple[int, int, int], ...] = ((128, 3, 2), (256, 3, 2), (512, 2, 2))
"""(channels, blocks, stride of the first block) per stage."""


class BasicBlock(nn.Module):
    """Spiking BasicBlock on folded spikes `[T*B, H, W, C_in]` -> `[T*B, H/s, W/s, features]`."""

    features: int
    strides: int
    timesteps: int
    neuron: LIFConfig
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        f, s, impl = self.features, self.strides, self.conv_impl
        y = conv(f, 3, s, 1, "conv1", impl, torch_default)(x)
        y = spiking(batch_norm(train, "bn1")(y), self.timesteps, self.neuron)
        y = conv(f, 3, 1, 1, "conv2", impl, torch_default)(y)
        y = batch_norm(train, "bn2")(y)
        if s != 1 or x.shape[-1] != f:
            shortcut = conv(f, 1, s, 0, "shortcut_conv", impl, torch_default)(x)
            shortcut = batch_norm(train, "shortcut_bn")(shortcut)
        else:
            shortcut = x
        return spiking(y + shortcut, self.timesteps, self.neuron)


class Stage(nn.Module):
    """`blocks` BasicBlocks named `block{b}`, the first with stride `strides`."""

    features: int
    blocks: int
    strides: int
    timesteps: int
    neuron: LIFConfig
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for b in range(self.blocks):
            s = self.strides if b == 0 else 1
            x = BasicBlock(
                self.features, s, self.timesteps, self.neuron, self.conv_impl, name=f"block{b}"
            )(x, train)
        return x


class Stem(nn.Module):
    """3x3 conv 64 + BN on the images, `[B, H, W, C] -> [B, H, W, 64]` (run once, not per step)."""

    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = conv(64, 3, 1, 1, "conv", self.conv_impl, torch_default)(x)
        return batch_norm(train, "bn")(y)


class ResNet19(SpikingNet):
    """Spiking ResNet19 with direct encoding (see the module docstring).

    Fields: those of `SpikingNet`.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Args: x images `[B, H, W, C]` (H, W >= 8); train: batch statistics and their update.

        Returns: logits per step `[T, B, num_classes]`.
        """
        check_call(x, self.timesteps, self.num_classes, min_hw=8)
        y = Stem(self.conv_impl, name="stem")(x, train)  # [B, H, W, 64]
        y = encode(y, self.timesteps, self.neuron)  # [T*B, H, W, 64]
        for s, (features, blocks, strides) in enumerate(RESNET19_STAGES, start=1):
            y = Stage(
                features,
                blocks,
                strides,
                self.timesteps,
                self.neuron,
                self.conv_impl,
                name=f"layer{s}",
            )(y, train)
        y = y.mean(axis=(1, 2))  # global average pool, [T*B, 512]
        y = nn.Dense(256, kernel_init=torch_default, name="fc1")(y)
        y = spiking(y, self.timesteps, self.neuron)
        y = nn.Dense(self.num_classes, kernel_init=torch_default, name="fc2")(y)
        return unfold_logits(y, self.timesteps)
