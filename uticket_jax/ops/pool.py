"""Non-overlapping max pooling (NHWC) with a fast CPU backward."""

import functools

import jax
import jax.numpy as jnp


def _pool_windows(x, window: int):
    """[N, H, W, C] -> [N, H//k, W//k, k*k, C] non-overlapping windows (row-major in a window)."""
    n, h, w, c = x.shape
    ho, wo = h // window, w // window
    x = x[:, : ho * window, : wo * window, :]  # VALID: a partial last window is dropped
    win = x.reshape(n, ho, window, wo, window, c).transpose(0, 1, 3, 2, 4, 5)
    return win.reshape(n, ho, wo, window * window, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, window):
    return jnp.max(_pool_windows(x, window), axis=3)


def _max_pool_fwd(x, window):
    win = _pool_windows(x, window)  # [N, Ho, Wo, k*k, C]
    first = jnp.argmax(win, axis=3).astype(jnp.int8)  # first maximum of each window
    return jnp.take_along_axis(win, first[:, :, :, None].astype(jnp.int32), 3)[:, :, :, 0], (
        first,
        x.shape,
    )


def _max_pool_bwd(window, res, dy):
    first, x_shape = res
    n, h, w, c = x_shape
    ho, wo = dy.shape[1:3]
    taps = jnp.arange(window * window, dtype=jnp.int8)[:, None]  # [k*k, 1]
    dwin = jnp.where(taps == first[:, :, :, None, :], dy[:, :, :, None, :], 0)  # [N,Ho,Wo,k*k,C]
    dwin = dwin.reshape(n, ho, wo, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    dx = dwin.reshape(n, ho * window, wo * window, c)
    return (jnp.pad(dx, ((0, 0), (0, h - ho * window), (0, w - wo * window), (0, 0))),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping max pooling (stride = window, VALID), NHWC, with a fast CPU backward.

    Same values as `flax.linen.max_pool(x, (k, k), strides=(k, k))` and the same gradient: each
    window's cotangent goes to its first maximum in row-major order (XLA's select-and-scatter and
    PyTorch's `max_pool2d` tie rule, which matters for binary spike inputs). XLA:CPU's
    select-and-scatter is slow; this backward is a one-hot select over reshaped windows, several
    times faster (BUILD_NOTES.md, "Training step").

    Args:
      x: [N, H, W, C].
      window: k, the window side and stride.

    Returns:
      [N, H // k, W // k, C].
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [N, H, W, C], got shape {x.shape}")
    if not (isinstance(window, int) and 1 <= window <= min(x.shape[1:3])):
        raise ValueError(f"window must be an int in [1, min(H, W)], got {window!r}")
    if window * window > 127:
        raise ValueError(f"window must be at most 11 (int8 argmax), got {window}")
    return _max_pool(x, window)


__all__ = ["max_pool"]
