"""Pytrees of masks and weights: leaf names from `jax.tree_util` key paths, nothing else.

A mask tree has the structure of the params it masks, with `None` on leaves that are never
pruned; jax treats `None` as an empty subtree, so those leaves simply have no entry. Names are the
key paths joined with "/" (`features/conv3/kernel`, a flat `{"features/conv3/kernel": m}` dict
gives the same name) and the order is `jax.tree_util`'s: a dict's keys sorted, an
`OrderedDict`'s, a list's or a NamedTuple's in their own order. Every library transform reads
names and order from here, so a tree is converted once at the boundary, never by hand.
"""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def is_none(x: Any) -> bool:
    """`is_leaf` for `jax.tree.map` over a mask tree: `None` marks a leaf that is not prunable."""
    return x is None


def path_name(path: tuple) -> str:
    """A key path as its "/"-joined name (`('features', 'conv3', 'kernel')` style keys)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def named_leaves(tree: PyTree) -> tuple[tuple[str, ...], list[Any], Any]:
    """`(names, leaves, treedef)` of a tree's non-`None` leaves, in `jax.tree_util` order.

    Example:
      >>> from uticket_jax import trees
      >>> names, leaves, _ = trees.named_leaves({"b": {"kernel": 1}, "a": [2, None]})
      >>> names, leaves  # a dict's keys sorted, a list in its order, `None` skipped
      (('a/0', 'b/kernel'), [2, 1])
    """
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return tuple(path_name(p) for p, _ in pairs), [x for _, x in pairs], treedef


def leaves_like(masks: PyTree, other: PyTree, what: str) -> list[Any]:
    """The leaves of `other` at the positions of `masks`' leaves (`other` may hold more, e.g.
    params with biases where the masks hold `None`).

    Raises:
      ValueError: naming `what`, when `other` does not have `masks`' structure.
    """
    treedef = jax.tree_util.tree_structure(masks)
    try:
        picked = jax.tree.map(lambda m, x: None if m is None else x, masks, other, is_leaf=is_none)
        return treedef.flatten_up_to(picked)
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{what}: must have the masks' tree structure ({first})") from None


__all__ = ["PyTree", "is_none", "leaves_like", "named_leaves", "path_name"]
