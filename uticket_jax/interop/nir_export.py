r"""A trained, masked spiking model as a NIR graph (Neuromorphic Intermediate Representation).

The graph is a chain `input -> conv -> LIF -> ... -> pool -> ... -> flatten -> classifier ->
output` in NIR's continuous-time nodes; `interop.arrays` says how the arrays are laid out. What
each part of the model becomes:

- conv + BN: one `Conv2d` whose weight is the masked kernel with the BN folded in, and whose
  bias is the folded BN shift (exact at inference: `interop.arrays`).
- LIF: a `LIF` node whose forward-Euler step with `dt = 1` is our update (`lif_parameters`).
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
from typing import Any

import nir
import numpy as np

from uticket_jax import workload
from uticket_jax.interop import arrays
from uticket_jax.models import VGG16, DigitsSNN, FashionSNN, describe_layers
from uticket_jax.models.common import BN_EPSILON
from uticket_jax.models.vgg import VGG16_CFG
from uticket_jax.snn import LIFConfig
from uticket_jax.sparsity.masks import flatten

POOLINGS = ("if", "threshold")
POOL_WINDOW = 2  # the models' max_pool(y, 2): window 2, stride 2, no padding (floor)
FORMAT = "uticket_jax ticket"


def lif_parameters(neuron: LIFConfig) -> dict[str, float]:
    r"""NIR `LIF` parameters whose forward-Euler step with `dt = 1` is our (SpikingJelly's) LIF.

    NIR's LIF is `tau dv/dt = (v_leak - v) + r I`, it fires `z = [v > v_threshold]` and then sets
    `v = v_reset`. One Euler step of length `dt`:

      v[t] = v[t-1] + (dt / tau) * ((v_leak - v[t-1]) + r * I[t])

    With `dt = 1`, `tau = neuron.tau` and `v_leak = v_reset`:
      r = 1   (decay_input=True):  h[t] = v[t-1] + (I[t] - (v[t-1] - v_reset)) / tau
      r = tau (decay_input=False): h[t] = v[t-1] - (v[t-1] - v_reset) / tau + I[t]
    which are our (and SpikingJelly's `LIFNode`) charge equations term for term, followed by
    the same hard reset to `v_reset`; both start from `v = v_reset`.

    Firing: ours (and SpikingJelly's) is `s = [h >= v_th]`, NIR's is strict, `[v > v_threshold]`.
    For float32 potentials, `h >= v_th` holds exactly when `h > pred(v_th)`, `pred` the next
    float32 towards minus infinity, so `v_threshold = pred(v_th)` (0.99999994 for `v_th = 1`).
    A reader that fires on `>=` (SpikingJelly's importer does) then also fires when `h` equals
    `pred(v_th)` exactly, and nowhere else.

    Args:
      neuron: the model's LIF hyperparameters; NIR's LIF resets hard, so `v_reset` must be a
        number (not None, the soft reset).

    Returns:
      `{"tau", "r", "v_leak", "v_threshold", "v_reset"}` as float32-representable floats.
    """
    if neuron.v_reset is None:
        raise ValueError("neuron: NIR's LIF resets to v_reset (hard reset); got a soft reset")
    tau = float(np.float32(neuron.tau))
    v_reset = float(np.float32(neuron.v_reset))
    threshold = np.nextafter(np.float32(neuron.v_threshold), np.float32(-np.inf))
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


def _full(shape: tuple[int, ...], value: float) -> np.ndarray:
    return np.full(shape, value, np.float32)


def _lif_node(neuron: LIFConfig, shape: tuple[int, ...]) -> nir.LIF:
    p = lif_parameters(neuron)
    return nir.LIF(**{k: _full(shape, v) for k, v in p.items()})


def _pool_nodes(chw: tuple[int, int, int], pooling: str) -> tuple[nir.NIRNode, nir.NIRNode]:
    """`SumPool2d` and the node firing on a positive window sum (see the module docstring)."""
    c, h, w = chw
    out = (c, h // POOL_WINDOW, w // POOL_WINDOW)
    pool = nir.SumPool2d(
        kernel_size=np.array([POOL_WINDOW, POOL_WINDOW]),
        stride=np.array([POOL_WINDOW, POOL_WINDOW]),
        padding=np.array([0, 0]),
    )
    if pooling == "threshold":
        return pool, nir.Threshold(threshold=_full(out, 0.5))
    return pool, nir.IF(r=_full(out, 1.0), v_threshold=_full(out, 0.5), v_reset=_full(out, 0.0))


def _padding(in_hw, out_hw, k, s) -> tuple[int, int]:
    """Symmetric padding that maps `in_hw` to `out_hw` (the models pad PyTorch-style)."""
    pads = []
    for i, o, kk, ss in zip(in_hw, out_hw, k, s, strict=True):
        total = (o - 1) * ss + kk - i
        pads.append(max(0, (total + 1) // 2))
    return pads[0], pads[1]


class _Builder:
    """Accumulates the chain of nodes and the current `(C, H, W)` (or `(F,)`) shape."""

    def __init__(self, shape: tuple[int, ...]):
        self.nodes: dict[str, nir.NIRNode] = {"input": nir.Input({"input": np.array(shape)})}
        self.order = ["input"]
        self.shape = shape

    def add(self, name: str, node: nir.NIRNode, shape: tuple[int, ...]) -> None:
        self.nodes[name] = node
        self.order.append(name)
        self.shape = shape

    def graph(self, metadata: dict[str, Any]) -> nir.NIRGraph:
        self.add("output", nir.Output({"output": np.array(self.shape)}), self.shape)
        edges = list(zip(self.order[:-1], self.order[1:], strict=True))
        return nir.NIRGraph(nodes=self.nodes, edges=edges, metadata=metadata)


def _layer_meta(path, mask, n_pe, mapping, analysed, folded) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "param_path": path,
        "bn_folded": int(folded.bn),
        "analysed": int(analysed),
        "pruned": int(mask is not None),
    }
    if mask is not None:
        meta["kept_zero"] = folded.kept_zero
        if n_pe is not None:
            loads = workload.pe_loads(np.asarray(mask, bool), n_pe, mapping)  # [G, n]
            meta.update(mapping=mapping, n_pe=int(n_pe), loads=np.asarray(loads, np.int32))
    return meta


class _FoldedLayer:
    """One conv/dense layer's folded arrays and whether a BN went into them."""

    def __init__(self, kernel, bias, kept_zero, bn):
        self.kernel, self.bias, self.kept_zero, self.bn = kernel, bias, kept_zero, bn


def _fold(path: str, params: Mapping, stats: Mapping, masks: Mapping) -> _FoldedLayer:
    """The layer at `path` (a kernel path), masked, with its BN (sibling `bn{i}`) folded in."""
    parent = path.rsplit("/", 1)[0]  # the module, e.g. features/conv3 or classifier
    module = parent.rsplit("/", 1)[-1]
    bn = None
    if module.startswith("conv"):
        b = f"{parent[: -len(module)]}bn{module[4:]}"
        names = {"scale": f"{b}/scale", "bias": f"{b}/bias"}
        names.update(mean=f"{b}/mean", var=f"{b}/var")
        src = {**params, **stats}
        missing = [v for v in names.values() if v not in src]
        if missing:
            raise ValueError(f"variables: no {missing[0]!r} (the BN after {path!r})")
        bn = {k: np.asarray(src[v]) for k, v in names.items()}
    bias_path = f"{parent}/bias"
    bias = np.asarray(params[bias_path]) if bias_path in params else None
    f = arrays.fold_batch_norm(
        np.asarray(params[path]), masks.get(path), bias=bias, bn=bn, epsilon=BN_EPSILON
    )
    return _FoldedLayer(f.kernel, f.bias, f.kept_zero, bn is not None)


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


def export_nir(
    model: Any,
    variables: Mapping[str, Any],
    masks: Mapping[str, Any],
    *,
    input_shape: tuple[int, int, int],
    n_pe: int | None = None,
    mapping: str = "output_channel",
    pooling: str = "if",
    conv_only: bool = True,
    skip_first: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> nir.NIRGraph:
    """A trained, masked model as a NIR graph (see the module docstring for each node).

    Args:
      model: the Flax model (`digits_snn`, `fmnist_snn` or `vgg16`), as `models.get_model`
        builds it; its `timesteps` and `neuron` go into the graph.
      variables: `{"params": ..., "batch_stats": ...}` of the trained model.
      masks: `{kernel path: bool hwio mask}` (a mask file's content, or a mask tree); layers
        without a mask are exported unpruned.
      input_shape: one image `(H, W, C)`.
      n_pe, mapping: the ticket's PE array, for the loads in each pruned layer's metadata
        (`n_pe=None`: no loads).
      pooling: "if" or "threshold", the node after each `SumPool2d` (module docstring).
      conv_only, skip_first: which layers the metadata marks as analysed
        (`workload.metrics.analysed_layers`).
      metadata: extra graph metadata (flat: str, int, float or arrays).

    Returns:
      The `nir.NIRGraph` (write it with `nir.write`).
    """
    plan = layer_plan(model)
    h, w, c = (int(d) for d in input_shape)
    layers = describe_layers(model, (h, w, c))
    params = flatten(variables["params"])
    stats = flatten(variables.get("batch_stats", {}))
    masks = flatten(masks)
    _check_inputs(layers, params, masks, pooling)
    shapes = {x.path: x.kernel_shape for x in layers}
    analysed = dict(
        zip(
            shapes,
            workload.analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first),
            strict=True,
        )
    )
    convs = iter([x for x in layers if x.kind == "conv"])
    b = _Builder((c, h, w))
    for item in plan:
        if item == "M":
            i = sum(1 for n in b.order if n.startswith("pool") and not n.endswith("_or"))
            pool, fire = _pool_nodes(b.shape, pooling)
            out = fire.output_type["output"]
            b.add(f"pool{i}", pool, tuple(int(d) for d in out))
            b.add(f"pool{i}_or", fire, tuple(int(d) for d in out))
            continue
        x = next(convs)
        f = _fold(x.path, params, stats, masks)
        name = x.path.split("/")[-2]
        pad = _padding(x.in_hw, x.out_hw, x.kernel_shape[:2], x.strides)
        node = nir.Conv2d(
            input_shape=tuple(x.in_hw),
            weight=arrays.conv_to_oihw(f.kernel),
            stride=tuple(x.strides),
            padding=pad,
            dilation=(1, 1),
            groups=1,
            bias=f.bias,
            metadata=_layer_meta(x.path, masks.get(x.path), n_pe, mapping, analysed[x.path], f),
        )
        out = (x.kernel_shape[3], *x.out_hw)
        b.add(name, node, out)
        b.add(f"lif{name[4:]}", _lif_node(model.neuron, out), out)
    dense = [x for x in layers if x.kind == "dense"]
    if len(dense) != 1:
        raise ValueError(f"model: expected one classifier layer, found {len(dense)}")
    chw = b.shape
    b.add(
        "flatten",
        nir.Flatten({"input": np.array(chw)}, start_dim=0, end_dim=-1),
        (int(np.prod(chw)),),
    )
    x = dense[0]
    f = _fold(x.path, params, stats, masks)
    node = nir.Affine(
        weight=arrays.dense_to_nir(f.kernel, chw),
        bias=f.bias,
        metadata=_layer_meta(x.path, masks.get(x.path), n_pe, mapping, analysed[x.path], f),
    )
    b.add(x.path.split("/")[-2], node, (x.kernel_shape[1],))
    meta = {
        "format": FORMAT,
        "timesteps": int(model.timesteps),
        "dt": 1.0,
        "encoding": "direct: the same image (C, H, W) is the input at each of the T steps",
        "readout": "the predicted class is the argmax of the output's mean over the T steps",
        "pooling": pooling,
        "v_threshold_inclusive": float(model.neuron.v_threshold),
        **dict(metadata or {}),
    }
    return b.graph(meta)


__all__ = ["FORMAT", "POOLINGS", "export_nir", "layer_plan", "lif_parameters"]
