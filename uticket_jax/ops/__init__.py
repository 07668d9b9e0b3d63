"""CPU-tuned array kernels of the models: convolution (`conv`), max pooling (`pool`) and the
measured thresholds that choose between implementations (`tuning`)."""

from uticket_jax.ops.conv import IMPLS, Conv, ConvImpl, choose_impl, conv2d, explicit_padding
from uticket_jax.ops.pool import max_pool

__all__ = ["IMPLS", "Conv", "ConvImpl", "choose_impl", "conv2d", "explicit_padding", "max_pool"]
