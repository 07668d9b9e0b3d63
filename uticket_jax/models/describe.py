"""Describes a model's conv and dense layers in execution order, abstractly (no real compute).

The hardware simulator needs each layer's output pixels (`out_hw`) and kernel shape; the LTH
pipeline writes mask files in network order. Both come from tracing `model.init` under
`jax.eval_shape` while `flax.linen.intercept_methods` records every conv / dense call.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from uticket_jax.ops.conv import Conv
from uticket_jax.sparsity.masks import flatten

# The modules that hold a prunable kernel (the layers of the mask files and the simulator).
LAYER_TYPES = (Conv, nn.Conv, nn.Dense)


class LayerInfo(NamedTuple):
    """One conv or dense layer, as the network executes it.

    Attributes:
      path: param path of the kernel, e.g. `features/conv3/kernel` (the mask-file key).
      kind: "conv" or "dense".
      kernel_shape: hwio `(kh, kw, c_in, c_out)` for convs, `(c_in, c_out)` for dense layers.
      strides: `(sh, sw)`; `(1, 1)` for dense layers.
      in_hw: input spatial size `(H, W)`; `(1, 1)` for dense layers.
      out_hw: output spatial size `(H', W')` (output pixels per image and step); `(1, 1)` for dense.
    """

    path: str
    kind: str
    kernel_shape: tuple[int, ...]
    strides: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return tuple(int(a) for a in v)  # type: ignore[return-value]


def describe_layers(
    model: nn.Module, input_shape: tuple[int, ...], *, train: bool = False
) -> list[LayerInfo]:
    """Lists the model's conv and dense layers in execution (network) order.

    Each layer appears once, at its first call (the models run every layer once per forward,
    with time folded into the batch). Nothing is computed: shapes come from `jax.eval_shape`.

    Args:
      model: an unbound Flax module called as `model(x, train=...)`.
      input_shape: one image `(H, W, C)` or a batch `(B, H, W, C)`.
      train: the `train` flag to trace with (the layers are the same either way).

    Returns:
      A list of `LayerInfo`, in the order the layers run.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) == 3:
        input_shape = (1,) + input_shape
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ValueError(
            f"input_shape must be (H, W, C) or (B, H, W, C) with positive sizes, got {input_shape}"
        )
    calls: list[tuple[str, str, tuple[int, int], tuple[int, ...], tuple[int, ...]]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, LAYER_TYPES):
            kind = "dense" if isinstance(mod, nn.Dense) else "conv"
            strides = (1, 1) if kind == "dense" else _pair(mod.strides or 1)
            path = "/".join(mod.path)
            calls.append((path, kind, strides, tuple(args[0].shape), tuple(out.shape)))
        return out

    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=train), x)
    params = flatten(variables["params"])

    layers: list[LayerInfo] = []
    seen: set[str] = set()
    for path, kind, strides, in_shape, out_shape in calls:
        if path in seen:
            continue
        seen.add(path)
        hw = lambda s, k=kind: (1, 1) if k == "dense" else (int(s[1]), int(s[2]))
        key = f"{path}/kernel"
        layers.append(
            LayerInfo(key, kind, tuple(params[key].shape), strides, hw(in_shape), hw(out_shape))
        )
    return layers
