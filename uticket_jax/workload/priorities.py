"""Selection priorities of the u-Ticket rebalance: which weights regrow or drop first.

`policy="magnitude"` ranks candidates by `|w|` (regrow the largest, drop the smallest; non-finite
`|w|` counts as the largest float); `policy="random"` by a uniform priority per weight drawn from
a `jax.random` key. Ties go to the lower hwio flat index (the selection's rule, not a priority's).

Random priorities are a counter-based hash of the weight's hwio flat index, keyed by two uint32
words drawn from the key (`jax.random.bits`): one fused elementwise pass, far cheaper than
threefry over the 14.7M weights of VGG16 (BUILD_NOTES.md). Same key, same priorities, independent
of the mapping and `n_pe`. Every function takes `xp` (`jax.numpy`, traceable, or `numpy` for the
host path): the same integer and float32 operations, so both give the same priorities bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

POLICIES = ("magnitude", "random")


def check_policy(policy: str) -> str:
    """Returns `policy`, or raises ValueError unless it is one of `POLICIES`."""
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def magnitude_priorities(weights, xp=jnp):
    """`|w|` as float32, non-finite values ranked as the largest float."""
    a = xp.abs(weights.astype(np.float32))
    return xp.where(xp.isfinite(a), a, np.finfo(np.float32).max)


def mix32(x):
    """An invertible integer finaliser (xor-shift / multiply) that spreads every input bit.

    Traced or numpy uint32: numpy constants keep either in uint32 (wrapping multiplication).
    """
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def hashed_priorities(words, shape: Sequence[int], xp=jnp):
    """Uniform float32 priorities in `[0, 1)` (24-bit grid) from a key's two uint32 `words`."""
    idx = xp.arange(int(np.prod(shape)), dtype=np.uint32).reshape(tuple(shape))
    with np.errstate(over="ignore"):
        h = mix32(mix32(idx ^ words[0]) + words[1])
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def key_bits(key):
    """The two uint32 words of `key` that `hashed_priorities` takes (traceable)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def layer_priorities(policy: str, weights, key, shape: tuple[int, ...]):
    """Traced: the selection priority of every weight of a kernel of `shape` under `policy`."""
    if policy == "magnitude":
        return magnitude_priorities(weights)
    return hashed_priorities(key_bits(key), shape)


_random_priorities = jax.jit(
    lambda key, shape: hashed_priorities(key_bits(key), shape), static_argnames=("shape",)
)


def random_priorities(key, shape) -> jax.Array:
    """Uniform priorities in `[0, 1)` (24-bit grid) for every weight of a kernel of `shape`.

    Args:
      key: a `jax.random` key.
      shape: the kernel's shape.

    Returns:
      float32 array of `shape`.
    """
    return _random_priorities(key, tuple(int(d) for d in shape))


@jax.jit
def _folded_words(key, layers):
    return jax.vmap(lambda i: key_bits(jax.random.fold_in(key, i)))(layers)


def key_words(key: Any, layers: Sequence[int] | None) -> np.ndarray:
    """`[L, 2]` uint32 on the host: the words of the key of each layer (one small jitted call).

    `layers`: the positions folded into `key` (`jax.random.fold_in(key, i)`), or None for `key`
    itself (one row).
    """
    if layers is None:
        return np.asarray(key_bits(key))[None]
    return np.asarray(_folded_words(key, jnp.asarray(list(layers), jnp.int32)))
