"""Spiking models (Flax linen, direct encoding, logits per step `[T, B, classes]`) and a registry.

Every model is called as `model.apply(variables, x, train=...)` with images `x` `[B, H, W, C]`
and has a `batch_stats` collection (BatchNorm, PyTorch's momentum 0.1 / eps 1e-5).
"""

from __future__ import annotations

from typing import Any

from uticket_jax.models.common import SpikingNet
from uticket_jax.models.describe import LayerInfo, describe_layers
from uticket_jax.models.digits import DigitsSNN
from uticket_jax.models.fmnist import FashionSNN
from uticket_jax.models.resnet import ResNet19
from uticket_jax.models.spike_trace import analysed_paths, record_inputs, trace_inputs
from uticket_jax.models.vgg import VGG16
from uticket_jax.ops.conv import Conv

_MODELS: dict[str, type[SpikingNet]] = {
    "digits_snn": DigitsSNN,
    "vgg16": VGG16,
    "resnet19": ResNet19,
    "fmnist_snn": FashionSNN,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def get_model(name: str, *, num_classes: int, timesteps: int, **kw: Any) -> SpikingNet:
    """Builds a model by name.

    Args:
      name: one of `MODEL_NAMES` ("digits_snn", "vgg16", "resnet19", "fmnist_snn").
      num_classes: classifier outputs (>= 1).
      timesteps: simulation steps T (>= 1).
      **kw: further model attributes (`neuron=LIFConfig(...)`, `conv_impl=...`, and for
        digits_snn `channels=(...)`, for fmnist_snn `cfg=(...)`).

    Returns:
      The (unbound) Flax module.

    Raises:
      ValueError: unknown name, non-positive sizes, or an attribute the model does not have.
    """
    if name not in _MODELS:
        raise ValueError(f"model name must be one of {', '.join(MODEL_NAMES)}; got {name!r}")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not (isinstance(timesteps, int) and timesteps >= 1):
        raise ValueError(f"timesteps must be an int >= 1, got {timesteps!r}")
    cls = _MODELS[name]
    allowed = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name")}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"{name} has no attribute(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(num_classes=num_classes, timesteps=timesteps, **kw)


__all__ = [
    "MODEL_NAMES",
    "Conv",
    "DigitsSNN",
    "FashionSNN",
    "LayerInfo",
    "ResNet19",
    "SpikingNet",
    "VGG16",
    "analysed_paths",
    "describe_layers",
    "get_model",
    "record_inputs",
    "trace_inputs",
]
