r"""A trained, masked spiking model as a NIR graph (Neuromorphic Intermediate Representation).

The graph is a chain `input -> conv -> LIF -> ... -> pool -> ... -> flatten -> classifier ->
output` in NIR's continuous-time nodes; `interop.arrays` says how the arrays are laid out. What
each part of the model becomes:

- conv + BN: one `Conv2d` whose weight is the masked kernel with the BN folded in, and whose
  bias is the folded BN shift (exact at inference: `interop.arrays`).
- LIF: a `LIF` node whose forward-Euler step with `dt = 1` is our update (`lif_parameters`;
  `firing` says how its `v_threshold` is read: NIR's strict `v > v_threshold`, the default, or
  `v >= v_threshold` as SpikingJelly reads and writes NIR files).
- direct encoding: the graph's input is the image at every one of the `T` steps; the first conv
  sees the same image each step, so its LIF layer gets the same current each step, which is what
  our model computes once and repeats.
- 2x2 max-pool of spikes: spikes are 0/1, so the max of a window is its OR, `[sum > 0]`: a
  `SumPool2d` followed by a node that fires when the sum is positive. `pooling="threshold"`
  writes NIR's `Threshold(0.5)`; `pooling="if"` (the default) an `IF` neuron with `r = 1`,
  `v_threshold = 0.5`, `v_reset = 0`: its Euler step adds the window sum (an integer >= 0) to a
  potential that starts at 0, fires exactly when the sum is >= 1 and resets to 0, so it is the
  same OR at every step, and it is a node type that NIR readers without `Threshold` import
  (SpikingJelly's importer has no `Threshold`).
- flatten + classifier: `Flatten` of the `(C, H, W)` map, then `Affine` (the classifier's
  columns permuted from our HWC to NIR's CHW flatten order); the graph's output is the logits at
  each step, and the prediction is the class of their mean over the `T` steps, as ours.

Every conv and dense node carries in its metadata the layer's param path, whether BN was folded
in, whether the analysis covers it, and, for pruned layers, the PE mapping, `n_pe` and the PE
loads (`workload.pe_loads`, `[G, n]` non-zero weights per PE). The graph's metadata holds the
timing (`timesteps`, `dt = 1`), the encoding and readout, and whatever the caller adds.
Supported models: the VGG-style chains `digits_snn`, `fmnist_snn` and `vgg16` (not `resnet19`:
its residual sums are not part of this exporter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from uticket_jax import workload
from uticket_jax.interop import arrays
from uticket_jax.interop.requires import nir
from uticket_jax.models import VGG16, DigitsSNN, FashionSNN, describe_layers
from uticket_jax.models.common import BN_EPSILON
from uticket_jax.models.vgg import VGG16_CFG
from uticket_jax.snn import LIFConfig
from uticket_jax.sparsity.masks import flatten

POOLINGS = ("if", "threshold")
FIRINGS = ("strict", "inclusive")
POOL_WINDOW = 2  # the models' max_pool(y, 2): window 2, stride 2, no padding (floor)
FORMAT = "uticket_jax ticket"


def lif_parameters(neuron: LIFConfig, firing: str = "strict") -> dict[str, float]:
    r"""NIR `LIF` parameters whose forward-Euler step with `dt = 1` is our (SpikingJelly's) LIF.

    NIR's LIF is `tau dv/dt = (v_leak - v) + r I`; it fires `z = [v > v_threshold]` and then
    sets `v = v_reset`. One Euler step of length `dt`::

      v[t] = v[t-1] + (dt / tau) * ((v_leak - v[t-1]) + r * I[t])

    With `dt = 1`, `tau = neuron.tau`, `v_leak = v_reset` and::

      r = 1   (decay_input=True):  h[t] = v[t-1] + ((v_reset - v[t-1]) + I[t]) / tau
      r = tau (decay_input=False): h[t] = v[t-1] + ((v_reset - v[t-1]) + tau * I[t]) / tau

    which are our (and SpikingJelly's `LIFNode`) charge equations,
    `h = v + (I - (v - v_reset)) / tau` and `h = v - (v - v_reset) / tau + I`: for `r = 1` the
    same float32 operations (`a - (b - c)` is `(c - b) + a` exactly), for `r = tau` equal in exact
    arithmetic. Then the same hard reset to `v_reset`; both start from `v = v_reset`.

    Firing: ours (and SpikingJelly's) is `s = [h >= v_th]`; NIR's is strict, `[v > v_threshold]`.
    For float32 potentials `h >= v_th` holds exactly when `h > pred(v_th)`, `pred` the next
    float32 towards minus infinity, so `firing="strict"` writes `v_threshold = pred(v_th)`
    (0.99999994 for `v_th = 1`): a reader that follows NIR's definition fires where we do. A
    reader that fires on `>=` instead (SpikingJelly's importer: `spike = h >= threshold` in
    `spikingjelly/_ops/lif/cpu.py`) then also fires where `h == pred(v_th)` exactly; for such
    readers `firing="inclusive"` writes `v_threshold = v_th`, as SpikingJelly's own exporter does.

    Args:
      neuron: the model's LIF hyperparameters; NIR's LIF resets hard, so `v_reset` must be a
        number (not None, the soft reset).
      firing: "strict" (NIR's `v > v_threshold`) or "inclusive" (`v >= v_threshold`).

    Returns:
      `{"tau", "r", "v_leak", "v_threshold", "v_reset"}` as float32-representable floats.
    """
    if firing not in FIRINGS:
        raise ValueError(f"firing: got {firing!r}; allowed: {', '.join(FIRINGS)}")
    if neuron.v_reset is None:
        raise ValueError("neuron: NIR's LIF resets to v_reset (hard reset); got a soft reset")
    tau = float(np.float32(neuron.tau))
    v_reset = float(np.float32(neuron.v_reset))
    threshold = np.float32(neuron.v_threshold)
    if firing == "strict":
        threshold = np.nextafter(threshold, np.float32(-np.inf))
    return {
        "tau": tau,
        "r": 1.0 if neuron.decay_input else tau,
        "v_leak": v_reset,
        "v_threshold": float(threshold),
        "v_reset": v_reset,
    }


def layer_plan(model: Any) -> tuple[int | str, ...]:
    """The model's feature stack in VGG notation: conv widths and "M" (2x2 max-pool of spikes).

    Raises:
      ValueError: a model this exporter does not describe (e.g. `ResNet19`).
    """
    if isinstance(model, DigitsSNN):
        return (*model.channels, "M")
    if isinstance(model, FashionSNN):
        return tuple(model.cfg)
    if isinstance(model, VGG16):
        return VGG16_CFG
    raise ValueError(
        f"model: NIR export supports digits_snn, fmnist_snn and vgg16; got {type(model).__name__}"
    )


class _Settings(NamedTuple):
    """What every node of one export needs besides its own layer."""

    params: dict[str, Any]
    stats: dict[str, Any]
    masks: dict[str, Any]
    analysed: dict[str, bool]
    n_pe: int | None
    mapping: str
    pooling: str
    firing: str
    neuron: LIFConfig


class _Layer(NamedTuple):
    """One conv/dense layer, masked, with its BN folded in."""

    kernel: np.ndarray  # hwio
    bias: np.ndarray  # [c_out]
    kept_zero: int
    bn: bool


def _full(shape: tuple[int, ...], value: float) -> np.ndarray:
    return np.full(shape, value, np.float32)


class _Builder:
    """Accumulates the chain of nodes and the current `(C, H, W)` (or `(F,)`) shape."""

    def __init__(self, shape: tuple[int, ...]):
        self.nodes: dict[str, nir.NIRNode] = {"input": nir.Input({"input": np.array(shape)})}
        self.order = ["input"]
        self.shape = shape
        self.pools = 0

    def add(self, name: str, node: nir.NIRNode, shape: tuple[int, ...]) -> None:
        self.nodes[name] = node
        self.order.append(name)
        self.shape = tuple(int(d) for d in shape)

    def graph(self, metadata: dict[str, Any]) -> nir.NIRGraph:
        self.add("output", nir.Output({"output": np.array(self.shape)}), self.shape)
        edges = list(zip(self.order[:-1], self.order[1:], strict=True))
        return nir.NIRGraph(nodes=self.nodes, edges=edges, metadata=metadata)


def _fold(path: str, s: _Settings) -> _Layer:
    """The layer at `path` (a kernel path), masked, with its BN (sibling `bn{i}`) folded in."""
    parent = path.rsplit("/", 1)[0]  # the module, e.g. features/conv3 or classifier
    module = parent.rsplit("/", 1)[-1]
    bn = None
    if module.startswith("conv"):
        b = f"{parent[: -len(module)]}bn{module[4:]}"
        src = {**s.params, **s.stats}
        names = {k: f"{b}/{k}" for k in ("scale", "bias", "mean", "var")}
        missing = [v for v in names.values() if v not in src]
        if missing:
            raise ValueError(f"variables: no {missing[0]!r} (the BN after {path!r})")
        bn = {k: np.asarray(src[v]) for k, v in names.items()}
    bias = s.params.get(f"{parent}/bias")
    f = arrays.fold_batch_norm(
        np.asarray(s.params[path]), s.masks.get(path), bias=bias, bn=bn, epsilon=BN_EPSILON
    )
    return _Layer(f.kernel, f.bias, f.kept_zero, bn is not None)


def _layer_meta(path: str, layer: _Layer, s: _Settings) -> dict[str, Any]:
    """A conv/dense node's metadata: param path, folding, analysis, PE mapping and loads."""
    mask = s.masks.get(path)
    meta: dict[str, Any] = {
        "param_path": path,
        "bn_folded": int(layer.bn),
        "analysed": int(s.analysed[path]),
        "pruned": int(mask is not None),
    }
    if mask is not None:
        meta["kept_zero"] = layer.kept_zero
        if s.n_pe is not None:
            loads = workload.pe_loads(np.asarray(mask, bool), s.n_pe, s.mapping)  # [G, n]
            meta.update(mapping=s.mapping, n_pe=int(s.n_pe), loads=np.asarray(loads, np.int32))
    return meta


def _add_pool(b: _Builder, s: _Settings) -> None:
    """`SumPool2d` and the node firing on a positive window sum (see the module docstring)."""
    c, h, w = b.shape
    out = (c, h // POOL_WINDOW, w // POOL_WINDOW)
    two = np.array([POOL_WINDOW, POOL_WINDOW])
    b.add(
        f"pool{b.pools}", nir.SumPool2d(kernel_size=two, stride=two, padding=np.array([0, 0])), out
    )
    if s.pooling == "threshold":
        fire = nir.Threshold(threshold=_full(out, 0.5))
    else:
        fire = nir.IF(r=_full(out, 1.0), v_threshold=_full(out, 0.5), v_reset=_full(out, 0.0))
    b.add(f"pool{b.pools}_or", fire, out)
    b.pools += 1


def _add_conv(b: _Builder, x: Any, s: _Settings) -> None:
    """The conv (BN folded) and its LIF layer."""
    layer = _fold(x.path, s)
    pads = [
        ((o - 1) * st + k - i + 1) // 2
        for i, o, k, st in zip(x.in_hw, x.out_hw, x.kernel_shape[:2], x.strides, strict=True)
    ]
    node = nir.Conv2d(
        input_shape=tuple(x.in_hw),
        weight=arrays.conv_to_oihw(layer.kernel),
        stride=tuple(x.strides),
        padding=tuple(max(0, p) for p in pads),  # the models pad symmetrically, PyTorch-style
        dilation=(1, 1),
        groups=1,
        bias=layer.bias,
        metadata=_layer_meta(x.path, layer, s),
    )
    name = x.path.split("/")[-2]
    out = (x.kernel_shape[3], *x.out_hw)
    b.add(name, node, out)
    p = lif_parameters(s.neuron, s.firing)
    b.add(f"lif{name[4:]}", nir.LIF(**{k: _full(out, v) for k, v in p.items()}), out)


def _add_classifier(b: _Builder, x: Any, s: _Settings) -> None:
    """`Flatten` of the `(C, H, W)` map and the classifier as `Affine` (CHW column order)."""
    chw = b.shape
    flat = nir.Flatten({"input": np.array(chw)}, start_dim=0, end_dim=-1)
    b.add("flatten", flat, (int(np.prod(chw)),))
    layer = _fold(x.path, s)
    node = nir.Affine(
        weight=arrays.dense_to_nir(layer.kernel, chw),
        bias=layer.bias,
        metadata=_layer_meta(x.path, layer, s),
    )
    b.add(x.path.split("/")[-2], node, (x.kernel_shape[1],))


def _check_inputs(layers, params, masks, pooling) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: got {pooling!r}; allowed: {', '.join(POOLINGS)}")
    known = {x.path: x.kernel_shape for x in layers}
    for x in layers:
        if x.path not in params:
            raise ValueError(f"variables: no {x.path!r} (the model's layer)")
        if tuple(np.shape(params[x.path])) != tuple(x.kernel_shape):
            raise ValueError(
                f"variables: {x.path!r} has shape {np.shape(params[x.path])}, the model's layer"
                f" has {tuple(x.kernel_shape)}"
            )
    for k, m in masks.items():
        if k not in known:
            raise ValueError(f"masks: {k!r} is not a conv or dense layer of the model")
        if tuple(np.shape(m)) != tuple(known[k]):
            raise ValueError(f"masks: {k!r} has shape {np.shape(m)}, the layer has {known[k]}")
    if sum(x.kind == "dense" for x in layers) != 1:
        raise ValueError("model: expected exactly one dense layer (the classifier)")


def export_nir(
    model: Any,
    variables: Mapping[str, Any],
    masks: Mapping[str, Any],
    *,
    input_shape: tuple[int, int, int],
    n_pe: int | None = None,
    mapping: str = "output_channel",
    pooling: str = "if",
    firing: str = "strict",
    conv_only: bool = True,
    skip_first: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> nir.NIRGraph:
    """A trained, masked model as a NIR graph (see the module docstring for each node).

    Args:
      model: the Flax model (`digits_snn`, `fmnist_snn` or `vgg16`), as `models.get_model`
        builds it; its `timesteps` and `neuron` go into the graph.
      variables: `{"params": ..., "batch_stats": ...}` of the trained model (nested or flat).
      masks: `{kernel path: bool hwio mask}` (a mask file's content, or a mask tree); layers
        without a mask are exported unpruned.
      input_shape: one image `(H, W, C)`.
      n_pe, mapping: the ticket's PE array, for the loads in each pruned layer's metadata
        (`n_pe=None`: no loads).
      pooling: "if" or "threshold", the node after each `SumPool2d` (module docstring).
      firing: "strict" or "inclusive", how readers compare with `v_threshold` (`lif_parameters`).
      conv_only, skip_first: which layers the metadata marks as analysed
        (`workload.metrics.analysed_layers`).
      metadata: extra graph metadata (flat: str, int, float or arrays).

    Returns:
      The `nir.NIRGraph` (write it with `write_nir` or `nir.write`).
    """
    plan = layer_plan(model)
    lif_parameters(model.neuron, firing)  # checks firing and the reset before any work
    h, w, c = (int(d) for d in input_shape)
    layers = describe_layers(model, (h, w, c))
    params, masks = flatten(variables["params"]), flatten(masks)
    _check_inputs(layers, params, masks, pooling)
    shapes = {x.path: x.kernel_shape for x in layers}
    analysed = workload.analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    stats = flatten(variables.get("batch_stats", {}))
    flags = dict(zip(shapes, analysed, strict=True))
    s = _Settings(params, stats, masks, flags, n_pe, mapping, pooling, firing, model.neuron)
    convs = iter([x for x in layers if x.kind == "conv"])
    b = _Builder((c, h, w))
    for item in plan:
        if item == "M":
            _add_pool(b, s)
        else:
            _add_conv(b, next(convs), s)
    _add_classifier(b, next(x for x in layers if x.kind == "dense"), s)
    return b.graph(_graph_meta(model, pooling, firing, metadata))


def _graph_meta(model: Any, pooling: str, firing: str, extra: Mapping | None) -> dict:
    """The graph's metadata: how to run it, and what the caller adds."""
    return {
        "format": FORMAT,
        "timesteps": int(model.timesteps),
        "dt": 1.0,
        "encoding": "direct: the same image (C, H, W) is the input at each of the T steps",
        "readout": "the predicted class is the argmax of the output's mean over the T steps",
        "pooling": pooling,
        "firing": firing,
        "v_th": float(np.float32(model.neuron.v_threshold)),
        **dict(extra or {}),
    }


__all__ = ["FIRINGS", "FORMAT", "POOLINGS", "export_nir", "layer_plan", "lif_parameters"]
