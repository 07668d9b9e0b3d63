"""Building blocks shared by the spiking models: multi-step folding, BN, initializers.

Multi-step form (as SpikingJelly's `SeqToANNContainer` + multi-step neurons): stateless layers
(conv, BN, dense, pooling) see the time axis folded into the batch, `[T*B, ...]` with row
`t*B + b`; only the LIF dynamics unfold it to `[T, B, ...]` and scan over `T`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from uticket_jax.ops.conv import Conv
from uticket_jax.snn import LIFConfig

# PyTorch's BatchNorm2d(momentum=0.1, eps=1e-5) in Flax's convention (running = m*running + ...).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu") (the authors' VGG convs).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv2d/Linear weight init, kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """BN over all but the channel axis (batch stats in training, running averages otherwise)."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def conv(
    features: int,
    kernel_size: int,
    strides: int,
    padding: int,
    name: str,
    conv_impl: str | None,
    kernel_init=kaiming_fan_out,
) -> Conv:
    """A bias-free square conv with PyTorch-style symmetric integer padding."""
    extra = {} if conv_impl is None else {"impl": conv_impl}
    return Conv(
        features,
        kernel_size=(kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        use_bias=False,
        kernel_init=kernel_init,
        name=name,
        **extra,
    )


def spiking(y: jax.Array, timesteps: int, neuron: LIFConfig) -> jax.Array:
    """LIF over time on a folded tensor: `[T*B, ...]` currents -> `[T*B, ...]` spikes."""
    tb = y.shape[0]
    seq = y.reshape((timesteps, tb // timesteps) + y.shape[1:])  # [T, B, ...]
    return neuron(seq).reshape(y.shape)


def encode(y: jax.Array, timesteps: int, neuron: LIFConfig) -> jax.Array:
    """Direct encoding: the same current `[B, ...]` at every step -> folded spikes `[T*B, ...]`."""
    seq = jnp.broadcast_to(y[None], (timesteps,) + y.shape)  # [T, B, ...]
    return neuron(seq).reshape((timesteps * y.shape[0],) + y.shape[1:])


def unfold_logits(y: jax.Array, timesteps: int) -> jax.Array:
    """`[T*B, classes]` -> `[T, B, classes]`."""
    return y.reshape((timesteps, y.shape[0] // timesteps) + y.shape[1:])


def check_call(x: jax.Array, timesteps: int, num_classes: int, min_hw: int = 1) -> None:
    """Shape and attribute checks shared by the models' `__call__`."""
    if not (isinstance(timesteps, int) and timesteps >= 1):
        raise ValueError(f"timesteps must be an int >= 1, got {timesteps!r}")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must be images [B, H, W, C] (NHWC), got shape {jnp.shape(x)}")
    if x.shape[1] < min_hw or x.shape[2] < min_hw:
        raise ValueError(f"x must be at least {min_hw}x{min_hw} pixels, got shape {x.shape}")


class SpikingNet(nn.Module):
    """Fields every spiking model of the project has (subclasses add theirs after these).

    Attributes:
      num_classes: classifier outputs.
      timesteps: simulation steps `T`.
      neuron: LIF hyperparameters (default: the authors' tau 4/3, v_th 1, hard reset to 0,
        detached reset, ATan(2)).
      conv_impl: `Conv.impl` to use (None: `Conv`'s default).
    """

    num_classes: int = 10
    timesteps: int = 4
    neuron: LIFConfig = LIFConfig()
    conv_impl: str | None = None

    @property
    def T(self) -> int:
        """Alias of `timesteps`."""
        return self.timesteps
