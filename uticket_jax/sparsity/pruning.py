"""Magnitude pruning for iterative magnitude pruning (IMP), global or per layer, on any pytree.

Each call removes `percent` % of the *surviving* weights (those whose mask is True) with the
smallest `|w|`, so after `r` rounds the density is `(1 - p/100)^r` (the lottery-ticket schedule of
Frankle & Carbin 2019, as in the u-Ticket code: 25 % per round). `global` scope ranks all prunable
weights of the network together (one threshold); `layer` scope prunes each layer by `percent`.
The count removed is exact (`round(p/100 * survivors)`), ties at the threshold are broken by
position (the leaves in `jax.tree_util` order, then the flat index), so the result is deterministic
bit for bit. A pure transform: it runs eagerly, under `jax.jit` and inside a training step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from uticket_jax import trees

SCOPES = ("global", "layer")
PyTree = Any


@jax.jit
def _prune_flat(scores: jnp.ndarray, keep: jnp.ndarray, fraction: jnp.ndarray) -> jnp.ndarray:
    """Drops `round(fraction * sum(keep))` kept entries with the smallest score; ties by index.

    Keeps: the result is a subset of `keep` and removes exactly that many entries.
    """
    n_drop = jnp.round(fraction * keep.sum()).astype(jnp.int32)
    key = jnp.where(keep, scores, jnp.inf)  # pruned entries sort last and are never picked
    order = jnp.argsort(key, stable=True)  # stable: equal |w| ordered by position
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return keep & (rank >= n_drop)


def check_prune_args(percent: Any, scope: Any) -> float:
    """`percent` as a float, checked with `scope` (ValueError naming the argument)."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise ValueError(f"percent: must be a number in (0, 100), got {percent!r}")
    if not (math.isfinite(percent) and 0.0 < percent < 100.0):
        raise ValueError(f"percent: must be in (0, 100), got {percent}")
    if scope not in SCOPES:
        raise ValueError(f"scope: unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    return float(percent)


def prune_magnitude(
    params: PyTree, masks: PyTree, percent: float, *, scope: str = "global"
) -> PyTree:
    """New masks with `percent` % of the surviving prunable weights removed by magnitude.

    Args:
      params: the trained weights, a pytree with the masks' structure (params work: their extra
        leaves where the masks hold `None` are ignored); scores are `|w|`.
      masks: the current masks, boolean arrays on prunable leaves, `None` elsewhere.
      percent: share of the surviving weights to remove, in (0, 100) (static).
      scope: `global` (one threshold over all prunable layers) or `layer` (each layer alike).

    Returns:
      Masks of the same structure; every new mask is a subset of the old one.

    Example:
      >>> import jax.numpy as jnp
      >>> from uticket_jax import sparsity
      >>> params = {"w": jnp.array([[0.1, -2.0], [0.5, 3.0]]), "b": jnp.zeros(2)}
      >>> masks = {"w": jnp.ones((2, 2), bool), "b": None}  # the bias is not prunable
      >>> masks = sparsity.prune_magnitude(params, masks, 50.0)  # 2 of 4: the smallest |w|
      >>> masks["w"].tolist(), masks["b"]
      ([[False, True], [False, True]], None)
      >>> sparsity.prune_magnitude(params, masks, 50.0)["w"].tolist()  # 1 of the 2 survivors
      [[False, False], [False, True]]
    """
    fraction = jnp.float32(check_prune_args(percent, scope) / 100.0)
    names, leaves, treedef = trees.named_leaves(masks)
    weights = trees.leaves_like(masks, params, "params")
    for name, m, w in zip(names, leaves, weights, strict=True):
        if jnp.shape(m) != jnp.shape(w):
            raise ValueError(
                f"params[{name!r}]: shape {jnp.shape(w)} does not match the mask's {jnp.shape(m)}"
            )
    if scope == "layer":
        new = [
            _prune_flat(jnp.abs(w).ravel(), jnp.asarray(m).ravel(), fraction).reshape(m.shape)
            for m, w in zip(leaves, weights, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, new)
    scores = jnp.concatenate([jnp.abs(w).ravel() for w in weights])
    keep = jnp.concatenate([jnp.asarray(m).ravel() for m in leaves])
    kept = _prune_flat(scores, keep, fraction)
    new, start = [], 0
    for m in leaves:
        new.append(kept[start : start + m.size].reshape(m.shape))
        start += m.size
    return jax.tree_util.tree_unflatten(treedef, new)
