"""A pruned network from a NIR graph: its masks, weights and layer descriptions.

Any NIR writer's graph (SpikingJelly, snnTorch, Norse, ..., or `export_nir`) becomes what the
rest of the library takes: masks = the non-zero pattern of every `Conv2d`, `Affine` and `Linear`
weight, the weights themselves (hwio, as `interop.arrays` converts them: the first dense layer
after a `Flatten` of a `(C, H, W)` map gets its rows in the project's HWC order), and one
`hardware.LayerSpec` per layer with its output size from the graph's own shapes, so no model
name or input size is needed. Layers come in network order (a topological order of the graph,
ties broken by the order of the edges). A layer is named by its `param_path` metadata (what
`export_nir` writes) or else by its node name.

Weights from `export_nir` have their batch norm folded in (`interop.arrays`): a weight the mask
kept whose folded value is exactly 0 is not in the non-zero pattern (the node's `kept_zero`
metadata counts them).

The graph is checked: every node type must be one this module maps (weighted layers, pooling,
flatten, and the elementwise neuron and threshold nodes, which leave shapes alone), the graph
must be acyclic (no recurrent edges), and the shapes must agree from the input node on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from uticket_jax.files import HDF5_SIGNATURE
from uticket_jax.hardware.layers import LayerSpec, as_hwio4
from uticket_jax.interop import arrays
from uticket_jax.interop.requires import nir
from uticket_jax.workload import analysed_layers

_ELEMENTWISE = (nir.LIF, nir.IF, nir.CubaLIF, nir.LI, nir.CubaLI, nir.I, nir.Threshold, nir.Scale)
_POOLS = (nir.SumPool2d, nir.AvgPool2d)
_WEIGHTED = (nir.Conv2d, nir.Affine, nir.Linear)
SUPPORTED = (nir.Input, nir.Output, nir.Flatten, *_WEIGHTED, *_POOLS, *_ELEMENTWISE)


class NIRTicket(NamedTuple):
    """What `import_nir` reads from a graph.

    Fields:
      masks: `{layer name: bool hwio mask}` in network order (the mask-file convention).
      weights: `{layer name: float32 hwio weights}`, same keys.
      specs: one `LayerSpec` per layer, same order (output sizes from the graph).
      nodes: `{layer name: NIR node name}`.
      metadata: the graph's metadata (e.g. `timesteps` of an `export_nir` graph).
    """

    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    specs: list[LayerSpec]
    nodes: dict[str, str]
    metadata: dict[str, Any]


def read_nir(path: str) -> nir.NIRGraph:
    """`nir.read(path)`, with a one-line ValueError naming the file when it cannot be read."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(8) != HDF5_SIGNATURE:
            raise ValueError(f"{path}: not a NIR file (NIR files are HDF5)")
    try:
        graph = nir.read(path)
    except Exception as e:  # h5py and nir raise many types for a malformed file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable NIR graph ({first})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"{path}: holds a single {type(graph).__name__}, not a graph")
    return graph


def _topological(graph: nir.NIRGraph, what: str) -> list[str]:
    """Node names in a topological order; ValueError for unknown nodes or a cycle."""
    names = list(graph.nodes)
    preds: dict[str, list[str]] = {n: [] for n in names}
    for a, b in graph.edges:
        for n in (a, b):
            if n not in preds:
                raise ValueError(f"{what}: edge {a!r} -> {b!r} names no node {n!r}")
        preds[b].append(a)
    rank = {n: i for i, n in enumerate(dict.fromkeys([x for e in graph.edges for x in e] + names))}
    done: list[str] = []
    ready = sorted((n for n in names if not preds[n]), key=rank.get)
    left = {n: len(p) for n, p in preds.items()}
    while ready:
        n = ready.pop(0)
        done.append(n)
        for a, b in graph.edges:
            if a == n:
                left[b] -= 1
                if left[b] == 0:
                    ready = sorted([*ready, b], key=rank.get)
    if len(done) < len(names):
        cyc = next((a, b) for a, b in graph.edges if a not in done and b not in done)
        raise ValueError(
            f"{what}: recurrent edge {cyc[0]!r} -> {cyc[1]!r} (a cycle); only feed-forward"
            " graphs have a static workload"
        )
    return done


def _pair(v: Any, name: str, what: str) -> tuple[int, int]:
    a = np.atleast_1d(np.asarray(v)).astype(int).ravel()
    if a.size == 1:
        return int(a[0]), int(a[0])
    if a.size != 2:
        raise ValueError(f"{what}: {name} {v!r} is not 1 or 2 integers")
    return int(a[0]), int(a[1])


def _window_out(hw, k, s, p, d=(1, 1)) -> tuple[int, int]:
    return tuple((hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))


def _conv_out(name: str, node: nir.Conv2d, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    w = np.asarray(node.weight)
    if int(np.asarray(node.groups)) != 1:
        raise ValueError(f"{what}: node {name!r} is a grouped Conv2d, which cannot be mapped")
    if len(shape) != 3 or shape[0] != w.shape[1]:
        raise ValueError(
            f"{what}: node {name!r} (Conv2d, weight {w.shape}) gets input of shape {shape}; it"
            f" needs ({w.shape[1]}, H, W)"
        )
    if node.input_shape is not None and tuple(np.asarray(node.input_shape).ravel()) != shape[1:]:
        raise ValueError(
            f"{what}: node {name!r} (Conv2d) says input_shape {tuple(node.input_shape)}, the"
            f" graph gives it {shape[1:]}"
        )
    k, s = w.shape[2:], _pair(node.stride, "stride", what)
    d = _pair(node.dilation, "dilation", what)
    if isinstance(node.padding, str):
        if node.padding not in ("same", "valid"):
            raise ValueError(f"{what}: node {name!r} has padding {node.padding!r}")
        if node.padding == "same":
            return (w.shape[0], *(-(-x // y) for x, y in zip(shape[1:], s, strict=True)))
        p = (0, 0)
    else:
        p = _pair(node.padding, "padding", what)
    return (w.shape[0], *_window_out(shape[1:], k, s, p, d))


def _dense_out(name: str, node: Any, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    w = np.asarray(node.weight)
    if w.ndim != 2 or shape != (w.shape[1],):
        raise ValueError(
            f"{what}: node {name!r} ({type(node).__name__}, weight {w.shape}) gets input of"
            f" shape {shape}; it needs ({w.shape[-1]},)"
        )
    return (w.shape[0],)


def _flatten_out(name: str, node: nir.Flatten, shape: tuple[int, ...], what: str):
    given = node.input_type.get("input") if node.input_type else None
    if given is not None and int(np.prod(given)) != int(np.prod(shape)):
        raise ValueError(f"{what}: node {name!r} (Flatten) says input {tuple(given)}, gets {shape}")
    n = len(shape)
    lo, hi = int(node.start_dim) % n, int(node.end_dim) % n
    return (*shape[:lo], int(np.prod(shape[lo : hi + 1])), *shape[hi + 1 :])


def _pool_out(name: str, node: Any, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    if len(shape) != 3:
        raise ValueError(f"{what}: node {name!r} ({type(node).__name__}) gets shape {shape}")
    k = _pair(node.kernel_size, "kernel_size", what)
    s = _pair(node.stride, "stride", what)
    p = _pair(node.padding, "padding", what)
    return (shape[0], *_window_out(shape[1:], k, s, p))


def _elementwise_out(name: str, node: Any, shape: tuple[int, ...], what: str):
    given = (node.input_type or {}).get("input")
    if given is not None and int(np.prod(given)) not in (1, int(np.prod(shape))):
        raise ValueError(
            f"{what}: node {name!r} ({type(node).__name__}) has {int(np.prod(given))} neurons"
            f" of shape {tuple(given)}; its input has shape {shape}"
        )
    return shape


def _node_out(name: str, node: Any, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """The output shape of `node` given its input shape (no batch axis)."""
    if isinstance(node, nir.Conv2d):
        return _conv_out(name, node, shape, what)
    if isinstance(node, nir.Affine | nir.Linear):
        return _dense_out(name, node, shape, what)
    if isinstance(node, nir.Flatten):
        return _flatten_out(name, node, shape, what)
    if isinstance(node, _POOLS):
        return _pool_out(name, node, shape, what)
    if isinstance(node, nir.Output):
        given = node.output_type.get("output")
        if given is not None and np.size(given) and int(np.prod(given)) != int(np.prod(shape)):
            raise ValueError(f"{what}: node {name!r} (Output) says {tuple(given)}, gets {shape}")
        return shape
    return _elementwise_out(name, node, shape, what)


def _check_types(graph: nir.NIRGraph, what: str) -> None:
    for name, node in graph.nodes.items():
        if not isinstance(node, SUPPORTED):
            allowed = ", ".join(sorted(t.__name__ for t in SUPPORTED))
            raise ValueError(
                f"{what}: node {name!r} has type {type(node).__name__}, which uticket_jax cannot"
                f" map; allowed: {allowed}"
            )
    inputs = [n for n, x in graph.nodes.items() if isinstance(x, nir.Input)]
    if len(inputs) != 1:
        raise ValueError(f"{what}: the graph must have one Input node, it has {len(inputs)}")


class _Walk(NamedTuple):
    """Per node: output shape, and the (C, H, W) a Flatten made it from (or None)."""

    shape: dict[str, tuple[int, ...]]
    flat_from: dict[str, tuple[int, int, int] | None]


def _walk(graph: nir.NIRGraph, order: list[str], what: str) -> _Walk:
    """Propagates shapes from the Input node, checking every node's input against its own."""
    preds: dict[str, list[str]] = {n: [] for n in order}
    for a, b in graph.edges:
        preds[b].append(a)
    w = _Walk({}, {})
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            w.shape[name] = tuple(int(d) for d in np.asarray(node.input_type["input"]).ravel())
            w.flat_from[name] = None
            continue
        ins = {w.shape[p] for p in preds[name]}
        if not ins:
            raise ValueError(f"{what}: node {name!r} has no input edge")
        if len(ins) > 1:
            raise ValueError(f"{what}: node {name!r} sums inputs of different shapes {sorted(ins)}")
        shape = ins.pop()
        out = _node_out(name, node, shape, what)
        w.shape[name] = tuple(int(d) for d in out)
        src = w.flat_from[preds[name][0]]
        if isinstance(node, nir.Flatten) and len(shape) == 3 and len(out) == 1:
            src = shape
        elif not isinstance(node, _ELEMENTWISE):
            src = None
        w.flat_from[name] = src
    return w


def _layer_name(name: str, node: Any, taken: set[str]) -> str:
    meta = getattr(node, "metadata", None) or {}
    path = meta.get("param_path")
    if isinstance(path, bytes):
        path = path.decode()
    key = str(path) if path else name
    return key if key not in taken else name


def import_nir(
    source: str | nir.NIRGraph, *, conv_only: bool = True, skip_first: bool = True
) -> NIRTicket:
    """Masks, weights and layer specs of a NIR graph (see the module docstring).

    Args:
      source: a NIR file's path, or a `nir.NIRGraph`.
      conv_only, skip_first: which layers the specs mark as analysed
        (`workload.metrics.analysed_layers`).

    Returns:
      The `NIRTicket`.

    Raises:
      ValueError: naming the file (or "nir") and the node: a node type that cannot be mapped,
        a recurrent edge, shapes that do not match, a file that is not NIR/HDF5.
    """
    what = str(source) if isinstance(source, str | os.PathLike) else "nir"
    graph = read_nir(str(source)) if isinstance(source, str | os.PathLike) else source
    _check_types(graph, what)
    order = _topological(graph, what)
    walk = _walk(graph, order, what)
    preds = {b: a for a, b in graph.edges}
    weights, nodes, specs_hw = {}, {}, {}
    for name in order:
        node = graph.nodes[name]
        if not isinstance(node, _WEIGHTED):
            continue
        key = _layer_name(name, node, set(weights))
        w = np.asarray(node.weight, np.float32)
        if isinstance(node, nir.Conv2d):
            weights[key] = arrays.conv_from_oihw(w)
            specs_hw[key] = walk.shape[name][1:]
        else:
            weights[key] = arrays.dense_from_nir(w, walk.flat_from[preds[name]])
            specs_hw[key] = (1, 1)
        nodes[key] = name
    if not weights:
        raise ValueError(f"{what}: the graph has no Conv2d, Affine or Linear node")
    shapes = {k: v.shape for k, v in weights.items()}
    analysed = analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    specs = [
        LayerSpec(k, as_hwio4(shapes[k]), specs_hw[k], bool(a))
        for k, a in zip(weights, analysed, strict=True)
    ]
    masks = {k: v != 0 for k, v in weights.items()}
    return NIRTicket(masks, weights, specs, nodes, _plain(graph.metadata))


def _plain(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata with HDF5's bytes decoded and numpy scalars as Python numbers."""
    out = {}
    for k, v in (meta or {}).items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


__all__ = ["NIRTicket", "SUPPORTED", "import_nir", "read_nir"]
