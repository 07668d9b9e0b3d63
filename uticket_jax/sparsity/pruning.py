"""Magnitude pruning for iterative magnitude pruning (IMP), global or per layer.

Each call removes `percent` % of the *surviving* weights (those whose mask is True) with the
smallest |w|, so after `r` rounds the density is `(1 - p/100)^r` (the lottery-ticket schedule of
Frankle & Carbin 2019, as in the u-Ticket code: 25 % per round). `global` scope ranks all prunable
weights of the network together (one threshold); `layer` scope prunes each layer by `percent`.
The count removed is exact (`round(p/100 * survivors)`), ties at the threshold are broken by
position, so the result is deterministic bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from uticket_jax.sparsity.masks import flatten, unflatten

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


def prune_magnitude(
    params: PyTree, masks: PyTree, percent: float, *, scope: str = "global"
) -> PyTree:
    """New masks with `percent` % of the surviving prunable weights removed by magnitude.

    Args:
      params: the trained params (nested dicts); scores are `|w|`.
      masks: current mask tree (bool arrays on prunable leaves, `None` elsewhere).
      percent: share of the surviving weights to remove, in (0, 100).
      scope: `global` (one threshold over all prunable layers) or `layer` (each layer alike).

    Returns:
      A mask tree of the same structure; every new mask is a subset of the old one.
    """
    if not 0.0 < percent < 100.0:
        raise ValueError(f"percent: must be in (0, 100), got {percent}")
    if scope not in SCOPES:
        raise ValueError(f"scope: unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    flat_masks = flatten(masks)
    flat_params = flatten(params)
    fraction = jnp.float32(percent / 100.0)
    if scope == "layer":
        new = {
            k: _prune_flat(jnp.abs(flat_params[k]).ravel(), m.ravel(), fraction).reshape(m.shape)
            for k, m in flat_masks.items()
        }
        return unflatten(new, masks)
    names = list(flat_masks)
    scores = jnp.concatenate([jnp.abs(flat_params[k]).ravel() for k in names])
    keep = jnp.concatenate([jnp.asarray(flat_masks[k]).ravel() for k in names])
    kept = _prune_flat(scores, keep, fraction)
    new, start = {}, 0
    for k in names:
        size = flat_masks[k].size
        new[k] = kept[start : start + size].reshape(flat_masks[k].shape)
        start += size
    return unflatten(new, masks)
