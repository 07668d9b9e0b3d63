"""Layer descriptions for the analytical PE-array simulator, and their output sizes.

A layer is described (`LayerSpec`) by its kernel shape, its output height x width (the number of
positions each weight is applied at) and whether the workload analysis covers it; per-layer
input spike rates (activity-aware configs) are given by layer path.

Output sizes of masks read from a file are derived from the input size for two network families::

  VGG-style (a chain of 3x3 "same" convs, a 2x2 max-pool closing each stage, then dense layers):
    stages are runs of equal output channels; when the last run is twice as long as the one
    before it, it is split in two (VGG11/13/16/19 all end with two 512-channel stages).
  ResNet-style (keys `.../block{b}/conv1|conv2|shortcut_conv/kernel`, CIFAR ResNet19/18): a
    block whose conv1 changes the channel count has stride 2 (output ceil(H/2)); the shortcut
    conv has the block's output size.

Any other network: pass the output sizes explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from uticket_jax import files
from uticket_jax.workload import mappings
from uticket_jax.workload.metrics import analysed_layers

ARCHS = ("auto", "vgg", "resnet")
_BLOCK = re.compile(r"(^|/)block\d+/")


class LayerSpec(NamedTuple):
    """Static facts of one layer.

    Fields:
      name: param path of the kernel (e.g. `features/conv3/kernel`).
      kernel_shape: `(kh, kw, c_in, c_out)`; dense `(c_in, c_out)` is `(1, 1, c_in, c_out)`.
      out_hw: output height and width (`(1, 1)` for dense layers).
      analysed: whether the layer counts in the network figures.
    """

    name: str
    kernel_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    analysed: bool

    @property
    def pixels(self) -> int:
        """Output positions at which every weight is applied."""
        return int(self.out_hw[0] * self.out_hw[1])


def as_hwio4(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A kernel shape as `(kh, kw, c_in, c_out)` (`workload.mappings.as_hwio4`, naming masks)."""
    return mappings.as_hwio4(shape, "masks")


def _vgg_sizes(shapes: Mapping[str, tuple[int, ...]], input_hw: tuple[int, int]) -> list:
    names = list(shapes)
    convs = [k for k in names if len(shapes[k]) == 4]
    # Stages = runs of equal c_out; VGG's last run of equal channels is two stages.
    runs: list[list[str]] = []
    for k in convs:
        if runs and shapes[runs[-1][-1]][3] == shapes[k][3]:
            runs[-1].append(k)
        else:
            runs.append([k])
    if len(runs) >= 2 and len(runs[-1]) == 2 * len(runs[-2]):
        half = len(runs[-1]) // 2
        runs[-1:] = [runs[-1][:half], runs[-1][half:]]
    size = {}
    h, w = input_hw
    prev_c = None
    for run in runs:
        for k in run:
            if prev_c is not None and shapes[k][2] != prev_c:
                raise ValueError(
                    f"masks: {k!r} has c_in={shapes[k][2]} but the layer before gives {prev_c} "
                    "channels; not a VGG-style chain (pass explicit output sizes)"
                )
            if h < 1 or w < 1:
                raise ValueError(
                    f"input_size: {input_hw} is too small for {len(runs)} pooling stages of "
                    f"this VGG-style network (layer {k!r} would have no output)"
                )
            size[k] = (h, w)
            prev_c = shapes[k][3]
        h, w = h // 2, w // 2
    _dense_sizes(shapes, names, size, prev_c, (h, w), global_pool=False)
    return [size[k] for k in names]


def _dense_sizes(shapes, names, size, prev_c, hw, global_pool: bool) -> None:
    """Dense layers: the first takes the flattened (ResNet: or globally pooled) feature map."""
    first = True
    for k in names:
        if len(shapes[k]) != 2:
            continue
        c_in = shapes[k][0]
        if first and prev_c is not None:
            allowed = {prev_c * hw[0] * hw[1]} | ({prev_c} if global_pool else set())
            if c_in not in allowed:
                raise ValueError(
                    f"masks: dense layer {k!r} has c_in={c_in}, but the conv stack ends with "
                    f"{prev_c} channels of {hw[0]}x{hw[1]} (allowed: {sorted(allowed)}); check "
                    "input_size or give the sizes (--out_sizes / --model)"
                )
        elif not first and c_in != prev_c:
            raise ValueError(f"masks: dense layer {k!r} has c_in={c_in}, expected {prev_c}")
        size[k] = (1, 1)
        prev_c = shapes[k][1]
        first = False


def _resnet_sizes(shapes: Mapping[str, tuple[int, ...]], input_hw: tuple[int, int]) -> list:
    names = list(shapes)
    size = {}
    h, w = input_hw
    c = None
    blocks: dict[str, dict[str, int]] = {}
    for k in names:
        shape = shapes[k]
        if len(shape) != 4:
            continue
        c_in, c_out = shape[2], shape[3]
        parts = k.split("/")
        leaf = parts[-2] if len(parts) >= 2 else ""
        block = "/".join(parts[:-2])
        if _BLOCK.search(k + "/") is None or leaf not in ("conv1", "conv2", "shortcut_conv"):
            if c is not None and c_in != c:
                raise ValueError(f"masks: {k!r} has c_in={c_in}, the layer before gives {c}")
            size[k], c = (h, w), c_out
            continue
        if leaf == "conv1":
            if c is not None and c_in != c:
                raise ValueError(f"masks: {k!r} has c_in={c_in}, the block input has {c}")
            stride = 2 if c_in != c_out else 1
            oh, ow = (h + stride - 1) // stride, (w + stride - 1) // stride
            blocks[block] = {"c_in": c_in, "c_out": c_out, "h": oh, "w": ow}
            size[k] = (oh, ow)
            continue
        if block not in blocks:
            raise ValueError(f"masks: {k!r} comes before its block's conv1; not ResNet-style")
        b = blocks[block]
        expect_in = b["c_out"] if leaf == "conv2" else b["c_in"]
        if c_in != expect_in or c_out != b["c_out"]:
            raise ValueError(
                f"masks: {k!r} has shape {shape}, expected c_in={expect_in}, c_out={b['c_out']}"
            )
        size[k] = (b["h"], b["w"])
        if leaf == "conv2":
            h, w, c = b["h"], b["w"], c_out
    _dense_sizes(shapes, names, size, c, (h, w), global_pool=True)
    return [size[k] for k in names]


def _given_sizes(names: list[str], out_sizes) -> list[tuple[int, int]]:
    """The `(h, w)` of each layer from `out_sizes` (a list in network order or a dict by path)."""
    if isinstance(out_sizes, Mapping):
        missing = [k for k in names if k not in out_sizes]
        if missing:
            raise ValueError(f"out_sizes: no size for layers {missing[:3]}")
        sizes = [out_sizes[k] for k in names]
    else:
        sizes = list(out_sizes)
        if len(sizes) != len(names):
            raise ValueError(
                f"out_sizes: got {len(sizes)} sizes for {len(names)} layers; give one per layer"
            )
    hw = [tuple(s) if isinstance(s, tuple | list) else (int(s), int(s)) for s in sizes]
    if any(len(x) != 2 or min(x) < 1 for x in hw):
        raise ValueError(f"out_sizes: sizes must be >= 1, got {sizes}")
    return hw


def _derived_sizes(shapes, input_size, arch: str) -> list[tuple[int, int]]:
    """The `(h, w)` of each layer from the input size by the VGG or ResNet rule."""
    if input_size is None:
        raise ValueError("input_size: needed to derive output sizes (or pass out_sizes)")
    in_hw = (input_size, input_size) if np.ndim(input_size) == 0 else tuple(input_size)
    if len(in_hw) != 2 or min(in_hw) < 1:
        raise ValueError(f"input_size: must be >= 1, got {input_size}")
    if arch not in ARCHS:
        raise ValueError(f"arch: unknown {arch!r}; allowed: {', '.join(ARCHS)}")
    if arch == "auto":
        arch = "resnet" if any(_BLOCK.search(k) for k in shapes) else "vgg"
    sizes = _resnet_sizes if arch == "resnet" else _vgg_sizes
    return sizes(shapes, (int(in_hw[0]), int(in_hw[1])))


def specs_from_shapes(
    shapes: Mapping[str, Sequence[int]],
    *,
    input_size: int | tuple[int, int] | None = None,
    out_sizes: Sequence[int | tuple[int, int]] | Mapping[str, int | tuple[int, int]] | None = None,
    arch: str = "auto",
    conv_only: bool = True,
    skip_first: bool = True,
) -> list[LayerSpec]:
    """Layer descriptions for kernels given in network order, output sizes inferred.

    The output sizes follow the architecture (see the module docstring) unless given; when the
    model itself is at hand, `specs_from_layers` reads them off its layer table instead.

    Args:
      shapes: `{path: hwio kernel shape}` in network order (4-D conv, 2-D dense).
      input_size: input height (= width) or `(h, w)`; used to derive output sizes (see module
        docstring) when `out_sizes` is not given.
      out_sizes: explicit output size per layer (int or `(h, w)`), a list in network order or a
        dict by path; dense layers may give 1.
      arch: "auto" (ResNet-style when keys hold `block{b}/`), "vgg" or "resnet".
      conv_only, skip_first: which layers are analysed (`workload.metrics.analysed_layers`).
    Returns:
      One `LayerSpec` per layer, in network order.
    """
    if not shapes:
        raise ValueError("masks: no layers given")
    shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
    for k, v in shapes.items():
        as_hwio4(v)
        if min(v) < 1:
            raise ValueError(f"masks: {k!r} has an empty dimension, shape {v}")
    names = list(shapes)
    if out_sizes is not None:
        hw = _given_sizes(names, out_sizes)
    else:
        hw = _derived_sizes(shapes, input_size, arch)
    analysed = analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    return [
        LayerSpec(k, as_hwio4(shapes[k]), (int(s[0]), int(s[1])), bool(a))
        for k, s, a in zip(names, hw, analysed, strict=True)
    ]


def specs_from_layers(
    layers: Sequence, *, conv_only: bool = True, skip_first: bool = True
) -> list[LayerSpec]:
    """Layer descriptions from a model's own layer table (exact output sizes).

    Args:
      layers: objects with `path`, `kernel_shape` and `out_hw` in network order, e.g. the
        `LayerInfo` list of `uticket_jax.models.describe_layers(model, input_shape)`.
      conv_only, skip_first: which layers are analysed (`workload.metrics.analysed_layers`).
    """
    if not layers:
        raise ValueError("layers: the model has no conv or dense layers")
    shapes = {x.path: tuple(int(s) for s in x.kernel_shape) for x in layers}
    analysed = analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    return [
        LayerSpec(x.path, as_hwio4(x.kernel_shape), (int(x.out_hw[0]), int(x.out_hw[1])), bool(a))
        for x, a in zip(layers, analysed, strict=True)
    ]


def spike_rate_vector(rates: Mapping[str, float] | None, specs: Sequence[LayerSpec]) -> np.ndarray:
    """Per-layer input spike rates `[L]` (float32) from `{layer_path: rate}`.

    Layers without an entry get rate 1 (every input position active), which is also what
    activity-unaware configs use.

    Raises:
      ValueError: a rate outside [0, 1] or not a number, or a path that is not a layer.
    """
    out = np.ones(len(specs), np.float32)
    if rates is None:
        return out
    index = {s.name: i for i, s in enumerate(specs)}
    for k, v in rates.items():
        if k not in index:
            raise ValueError(f"spike_rates: unknown layer {k!r}; known: {list(index)[:4]}...")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"spike_rates: rate of {k!r} must be a number in [0, 1], got {v!r}")
        out[index[k]] = float(v)
    return out


def load_spike_rates(path: str) -> dict[str, float]:
    """Reads a spike-rate JSON file `{layer_path: rate}`; ValueError when unreadable."""
    rates = files.read_json(path, "spike_rates")
    if not isinstance(rates, dict):
        raise ValueError(f"spike_rates: {path!r} must hold a JSON object {{layer_path: rate}}")
    return rates


def check_same_layers(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], what: str) -> None:
    """Raises ValueError (naming `what`) unless `b` has the layers and shapes of `a`, in order."""
    if list(a) != list(b):
        raise ValueError(f"{what}: layers {list(b)[:3]}... differ from the masks' {list(a)[:3]}...")
    for k in a:
        if np.shape(a[k]) != np.shape(b[k]):
            raise ValueError(
                f"{what}: {k!r} has shape {np.shape(b[k])}, the masks have {np.shape(a[k])}"
            )
