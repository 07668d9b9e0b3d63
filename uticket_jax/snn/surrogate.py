"""Heaviside spike function with surrogate gradients (`jax.custom_vjp`).

The forward pass is the exact step function `H(x) = 1 if x >= 0 else 0` (so a membrane potential
exactly at threshold fires, as in SpikingJelly). Its true derivative is zero almost everywhere, so
the backward pass substitutes the derivative of a smooth stand-in `g(x)`:

- `ATan(alpha)`:    g(x) = arctan(pi/2 * alpha * x) / pi + 1/2,
                    g'(x) = (alpha/2) / (1 + (pi/2 * alpha * x)^2)
- `Sigmoid(alpha)`: g(x) = sigmoid(alpha * x),
                    g'(x) = alpha * sigmoid(alpha * x) * (1 - sigmoid(alpha * x))

These are SpikingJelly's `surrogate.ATan` (default alpha 2) and `surrogate.Sigmoid` (default
alpha 4) (Fang et al., "SpikingJelly", Science Advances 2023; Neftci et al., "Surrogate gradient
learning in SNNs", IEEE SPM 2019). Surrogates are frozen dataclasses: hashable, so they can be
static arguments of `jax.jit` and fields of Flax modules.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp


def _check_alpha(name: str, alpha: float) -> None:
    if not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{name}.alpha must be a finite number > 0, got {alpha!r}")


@dataclasses.dataclass(frozen=True)
class ATan:
    """Arctangent surrogate: g'(x) = (alpha/2) / (1 + (pi/2 * alpha * x)^2)."""

    alpha: float = 2.0

    def __post_init__(self) -> None:
        _check_alpha("ATan", self.alpha)

    def grad(self, x: jax.Array) -> jax.Array:
        """The surrogate derivative g'(x), elementwise, in x's dtype."""
        a = jnp.asarray(self.alpha, x.dtype)
        return (a / 2) / (1 + jnp.square((jnp.pi / 2) * a * x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Heaviside spike of `x` with this surrogate's gradient."""
        return spike(x, self)


@dataclasses.dataclass(frozen=True)
class Sigmoid:
    """Sigmoid surrogate: g'(x) = alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x))."""

    alpha: float = 4.0

    def __post_init__(self) -> None:
        _check_alpha("Sigmoid", self.alpha)

    def grad(self, x: jax.Array) -> jax.Array:
        """The surrogate derivative g'(x), elementwise, in x's dtype."""
        a = jnp.asarray(self.alpha, x.dtype)
        s = jax.nn.sigmoid(a * x)
        return a * s * (1 - s)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Heaviside spike of `x` with this surrogate's gradient."""
        return spike(x, self)


Surrogate = ATan | Sigmoid
SURROGATES = {"atan": ATan, "sigmoid": Sigmoid}


def heaviside(x: jax.Array) -> jax.Array:
    """The forward step function: 1 where x >= 0, else 0, in x's dtype (no custom gradient)."""
    return (x >= 0).astype(x.dtype)


# `surrogate` is static (hashable dataclass): it picks the backward formula, not a traced value.
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def spike(x: jax.Array, surrogate: Surrogate) -> jax.Array:
    """Heaviside spike `H(x)` (x >= 0 fires) whose VJP uses `surrogate.grad`.

    Args:
      x: float array (membrane potential minus threshold), any shape.
      surrogate: an `ATan` or `Sigmoid` instance.

    Returns:
      0/1 array of x's shape and dtype. Gradient: `d spike / dx := surrogate.grad(x)`.
    """
    return heaviside(x)


def _spike_fwd(x: jax.Array, surrogate: Surrogate) -> tuple[jax.Array, jax.Array]:
    return heaviside(x), x


def _spike_bwd(surrogate: Surrogate, x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * surrogate.grad(x),)


spike.defvjp(_spike_fwd, _spike_bwd)


def get_surrogate(name: str, alpha: float | None = None) -> Surrogate:
    """Builds a surrogate by name ("atan" or "sigmoid"), with its default alpha unless given."""
    if name not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {name!r}")
    cls = SURROGATES[name]
    return cls() if alpha is None else cls(alpha=alpha)


__all__ = ["ATan", "SURROGATES", "Sigmoid", "Surrogate", "get_surrogate", "heaviside", "spike"]
