"""Boolean weight masks as pytrees, and the project's `.npz` mask file format.

A mask tree has the structure of the params it masks: a boolean array of the kernel's shape for a
prunable leaf, `None` for a leaf that is never pruned (biases, BN scales, ...). `None` is a real
"not prunable", never an all-ones array that looks prunable.

Mask file format (shared by every tool of the project): an `.npz` with one boolean (or 0/1) array
per prunable layer, keyed by its param path joined with "/" (e.g. `features/conv3/kernel`), stored
in network order (the order of the arrays in the file is the order of the layers). 4-D arrays are
convs `[kh, kw, c_in, c_out]`, 2-D arrays dense `[c_in, c_out]` (Flax "hwio" layout). Files in
PyTorch layout (`[c_out, c_in, kh, kw]`, linear `[out, in]`, "oihw") are converted on load and on
save when `layout="oihw"` is given. Weight files use the same keys and layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import checks, files, trees

PyTree = Any
LAYOUTS = ("hwio", "oihw")


def default_prunable(path: str, leaf: Any) -> bool:
    """The default rule: every conv and dense kernel (a leaf named `kernel` of rank 2 or 4)."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) in (2, 4)


def flatten(tree: PyTree) -> dict[str, Any]:
    """`{"a/b/kernel": leaf}` of nested dicts in their insertion order, `None` leaves dropped.

    The path strings of files (`flax.traverse_util.flatten_dict`): a Flax params tree fresh from
    `init` flattens in network order, and a flat `{path: array}` dict comes back as it is. The
    library's transforms read pytrees by key path instead (`uticket_jax.trees`).
    """
    if isinstance(tree, Mapping) and not any(isinstance(v, Mapping) for v in tree.values()):
        return {str(k): v for k, v in tree.items() if v is not None}
    from flax import traverse_util  # nested trees only: the mask-file tools never pay for flax

    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {k: v for k, v in flat.items() if v is not None}


def _map_paths(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """`fn(path, leaf)` on every leaf; nested dicts keep their key order (the network order of a
    Flax params tree, which files need), other pytrees are mapped by `jax.tree_util` key path."""
    if not isinstance(tree, Mapping):
        return jax.tree_util.tree_map_with_path(lambda p, x: fn(trees.path_name(p), x), tree)
    from flax import traverse_util

    flat = traverse_util.flatten_dict(dict(tree), sep="/", keep_empty_nodes=True)
    empty = traverse_util.empty_node
    out = {k: v if v is empty else fn(k, v) for k, v in flat.items()}
    return traverse_util.unflatten_dict(out, sep="/")


def unflatten(flat: Mapping[str, Any], like: PyTree) -> PyTree:
    """A tree shaped like `like` with the leaves of `flat` by path, and `None` elsewhere.

    Raises:
      ValueError: if `flat` has a key that is not a leaf path of `like`.
    """
    names = set(trees.named_leaves(like)[0])
    unknown = [k for k in flat if k not in names]
    if unknown:
        raise ValueError(f"flat: unknown layer paths {unknown[:3]}; known: {sorted(names)[:6]}...")
    return _map_paths(lambda path, _: flat.get(path), like)


def make_masks(params: PyTree, prunable: Callable[[str, Any], bool] = default_prunable) -> PyTree:
    """All-true boolean masks for the prunable leaves of `params`, `None` for the others.

    `prunable(path, leaf)` decides per leaf, `path` its "/"-joined key path. Nested dicts keep
    their order, so `flatten(make_masks(params))` lists a Flax model's kernels in network order.

    Example:
      >>> import jax.numpy as jnp
      >>> from uticket_jax import sparsity
      >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
      ...           "dense": {"kernel": jnp.ones((36, 10)), "bias": jnp.zeros(10)}}
      >>> masks = sparsity.make_masks(params)  # every conv and dense kernel
      >>> masks["conv"]["kernel"].shape, masks["conv"]["kernel"].dtype, masks["conv"]["bias"]
      ((3, 3, 1, 4), dtype('bool'), None)
      >>> convs = sparsity.make_masks(params, lambda path, leaf: leaf.ndim == 4)
      >>> convs["conv"]["kernel"].all().item(), convs["dense"]["kernel"]
      (True, None)
      >>> list(sparsity.flatten(masks))  # the dict's own order
      ['conv/kernel', 'dense/kernel']
    """
    return _map_paths(
        lambda path, x: jnp.ones(jnp.shape(x), bool) if prunable(path, x) else None, params
    )


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the masked-out weights: `w * mask` on prunable leaves, other leaves unchanged.

    Also the lottery-ticket *rewind*: `apply_masks(params_at_rewind_epoch, masks)` is the ticket
    a pruning round retrains from.

    Example:
      >>> import jax.numpy as jnp
      >>> from uticket_jax import sparsity
      >>> params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.ones(1)}
      >>> ticket = sparsity.apply_masks(params, {"w": jnp.array([True, False, True]), "b": None})
      >>> ticket["w"].tolist(), ticket["b"].tolist()
      ([1.0, 0.0, 3.0], [1.0])
    """
    return jax.tree.map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
        masks,
        params,
        is_leaf=trees.is_none,
    )


def sparsity_report(masks: PyTree) -> dict[str, Any]:
    """Fraction of pruned weights, per layer path and over all prunable weights."""
    flat = flatten(masks)
    layers = {}
    total = kept = 0
    for name, m in flat.items():
        m = np.asarray(m)
        layers[name] = float(1.0 - m.mean()) if m.size else 0.0
        total += m.size
        kept += int(m.sum())
    return {"global": float(1.0 - kept / total) if total else 0.0, "layers": layers}


def to_hwio(array: np.ndarray, layout: str) -> np.ndarray:
    """Converts a kernel from `layout` ("hwio" or "oihw") to Flax's hwio layout."""
    _check_layout(layout)
    if layout == "hwio":
        return array
    if array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:
        return np.transpose(array, (1, 0))
    raise ValueError(f"layout: an oihw array must be 2-D or 4-D, got shape {array.shape}")


def from_hwio(array: np.ndarray, layout: str) -> np.ndarray:
    """Converts a Flax hwio kernel to `layout` ("hwio" or "oihw")."""
    _check_layout(layout)
    if layout == "hwio":
        return array
    if array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))
    if array.ndim == 2:
        return np.transpose(array, (1, 0))
    raise ValueError(f"layout: a kernel must be 2-D or 4-D, got shape {array.shape}")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def _read_npz(path: str, what: str, kinds: str, layout: str) -> dict[str, np.ndarray]:
    """The 2-D/4-D arrays of `path` (checked byte by byte, `files.read_npz`), their layout too."""
    arrays = files.read_npz(path, what, kinds=kinds, ranks=(2, 4))
    checks.check_layout({k: a.shape for k, a in arrays.items()}, layout, f"{what}: {path!r}")
    return arrays


def load_mask_file(path: str, layout: str = "hwio") -> dict[str, np.ndarray]:
    """Reads a mask `.npz` (boolean or 0/1 arrays) into `{path: bool hwio array}` in file order.

    The file is checked before anything is allocated (`files.read_npz`: a zip of `.npy` arrays,
    no pickles, headers whose shapes the data hold) and its kernels against the network's
    geometry (`checks.check_layout`: a file that fits only the other layout is refused).

    Raises:
      ValueError: missing/unreadable/empty file, arrays of the wrong rank or dtype, values other
        than 0/1, kernels that fit only the other layout.
    """
    _check_layout(layout)
    arrays = _read_npz(path, "masks", "biuf", layout)
    return {
        k: to_hwio(checks.bool_mask(a, f"masks: array {k!r} in {path!r}"), layout)
        for k, a in arrays.items()
    }


def load_weight_file(path: str, layout: str = "hwio") -> dict[str, np.ndarray]:
    """Reads a weights `.npz` (float arrays, same keys as the masks) into hwio float32 arrays."""
    _check_layout(layout)
    return {
        k: to_hwio(np.asarray(a, np.float32), layout)
        for k, a in _read_npz(path, "weights", "iuf", layout).items()
    }


def save_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes `arrays` to `path` in order, atomically (a reader never sees a half-written file),
    with the permissions of the user's umask; `files.WriteError` naming the path on failure."""
    files.write_npz(path, arrays)


def save_mask_file(path: str, masks: Mapping[str, Any] | PyTree, layout: str = "hwio") -> None:
    """Writes masks (a flat `{path: array}` dict or a mask tree) as a mask `.npz`, in order."""
    _check_layout(layout)
    flat = flatten(masks)
    save_npz_atomic(path, {k: from_hwio(np.asarray(v, bool), layout) for k, v in flat.items()})


def check_same_keys(masks: Mapping[str, Any], weights: Mapping[str, Any]) -> None:
    """Raises ValueError unless `weights` has the same layer keys and shapes as `masks`."""
    missing = [k for k in masks if k not in weights]
    if missing:
        raise ValueError(f"weights: no array for mask layers {missing[:3]}")
    for k, m in masks.items():
        if np.shape(weights[k]) != np.shape(m):
            raise ValueError(
                f"weights: {k!r} has shape {np.shape(weights[k])}, the mask has {np.shape(m)}"
            )
