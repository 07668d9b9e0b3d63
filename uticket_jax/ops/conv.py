"""2-D convolution for the spiking models (NHWC input, HWIO kernel) with a fast CPU backward.

`Conv` covers the subset of `flax.linen.Conv` the models use (param names `kernel` and `bias`,
the same default initializers), with one difference: `use_bias` defaults to False, since every
conv of the models is followed by batch norm. Max pooling with the same CPU concern lives in
`ops/pool.py`; the measured thresholds of `choose_impl` in `ops/tuning.py`.

`conv2d` computes the same function as `lax.conv_general_dilated` but through a `jax.custom_vjp`
that picks, per static shape, how the forward pass, the input gradient and the weight gradient are
computed:

* "lax": XLA's own convolution (and its transposes for the gradients);
* "patches": a matmul over image patches (im2col), one chunk of the batch at a time so each
  chunk's patch matrix stays cache sized (~8 MB). The forward is y = P W with P = patches(x) of
  shape [N*Ho*Wo, kh*kw*c_in] (`lax.map` over chunks); the weight gradient dW = P^T dY, with
  P^T built directly and accumulated over chunks under `lax.scan`; the input gradient scatters
  dP = dY W^T back onto the image (col2im, one strided add per tap);
* "rotated" (input gradient only, stride 1): dX is the forward convolution of dY with the
  kernel rotated by 180 degrees and its channel axes swapped, computed as "patches" forward.

Why: on XLA:CPU (jax 0.10, 2 cores) the weight-gradient convolution runs 2-3x slower than the
forward convolution of the same layer, convolutions with 64 channels on 16x16 or 32x32 images
run at a third to a half of the matmul rate, and convolutions with a 2x2 (or smaller) output and
hundreds of channels hit a slow path (two orders of magnitude slower than the same product as a
matmul; BUILD_NOTES.md, "Training step"). `choose_impl` encodes those measurements; `impl="lax"`
turns everything back into plain `lax.conv_general_dilated` + autodiff (the reference the tests
compare to), and is what `impl="auto"` means on a GPU or TPU backend.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from uticket_jax.ops import tuning

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "lax", "patches")


class ConvImpl(NamedTuple):
    """How each of the three products of a convolution is computed.

    Every field is "lax" or "patches"; `input_grad` may also be "rotated" (the stride-1 input
    gradient as a forward patch convolution with the rotated kernel; where the stride or padding
    rules that out it falls back to "patches", the col2im scatter).
    """

    forward: str
    input_grad: str
    weight_grad: str


def _pair(v, name: str) -> tuple[int, int]:
    """Normalises an int or a length-2 sequence of ints to a pair of ints."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(a, int) for a in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def explicit_padding(padding: PaddingLike, in_hw, kernel_hw, strides) -> Pads:
    """Turns "SAME", "VALID", an int, [int, int] or [(lo, hi), (lo, hi)] into ((lo, hi),) * 2."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
        pads = lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    if isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    else:
        padding = tuple(padding)
        if len(padding) != 2:
            raise ValueError(f"padding must have one entry per spatial dim (2), got {padding!r}")
        pads = tuple((p, p) if isinstance(p, int) else tuple(int(a) for a in p) for p in padding)
    if any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ValueError(f"padding must be non-negative (lo, hi) pairs, got {padding!r}")
    return pads


def _out_hw(in_hw, kernel_hw, strides, pads) -> tuple[int, int]:
    """Output spatial size of a convolution."""
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads, strict=True)
    )


def _patch_matmul_wins(out_hw, c_in: int, c_out: int) -> bool:
    """Whether the chunked patch matmul beats XLA:CPU's convolution for a forward-type product
    (measured, see `choose_impl`): big images (Ho*Wo >= 256) with 16 to 64 channels on the
    narrower side, or small images (Ho*Wo <= 64) with more than 64 channels on both sides."""
    narrow, hw = min(c_in, c_out), out_hw[0] * out_hw[1]
    if narrow <= tuning.NARROW:
        return narrow >= tuning.MIN_PATCH_CHANNELS and hw >= tuning.BIG_SPATIAL_FWD
    return hw <= tuning.SMALL_SPATIAL


def choose_impl(x_shape, w_shape, strides, pads) -> ConvImpl:
    """The measured-fastest implementation on XLA:CPU for one static convolution shape.

    Measured by `python -m benchmarks.bench_train --layers` (its machine and per-layer times:
    BUILD_NOTES.md, "Training step"):

    * forward: the chunked patch matmul for tiny outputs (Ho*Wo <= 4, where XLA is ~100x
      slower), for big images with 16 to 64 channels on the narrower side (Ho*Wo >= 256:
      1.4-1.9x faster, e.g. 32x32x64 -> 64) and for small images with
      wider layers (Ho*Wo <= 64, > 64 channels on both sides: 1.0-1.25x faster); XLA's
      elsewhere (16x16 with 128 channels on both sides: up to 1.1x faster; 3 input channels: as
      fast; the digits net's 8x8 layers with 32-64 channels: the patch path made its training
      step ~3 % slower);
    * input gradient: "rotated" (`_input_grad_rotated`) for stride 1 where the same rule holds
      with C_in and C_out swapped; the col2im patch scatter for tiny outputs (where the rotated
      form measured ~35 % slower: it copies the rotated kernel); otherwise XLA's (the col2im
      measured up to 1.6x slower for strided layers);
    * weight gradient: the chunked patch matmul where it wins (Ho*Wo >= 64, C_in >= 64 and
      >= 2^30 multiply-adds: 1.1-2.7x faster than XLA's) and XLA's elsewhere (few channels, small
      images or little work, where XLA's is up to 1.6x faster).
    """
    kh, kw, ci, co = w_shape
    ho, wo = _out_hw(x_shape[1:3], (kh, kw), strides, pads)
    tiny = ho * wo <= tuning.TINY_SPATIAL
    forward = tiny or _patch_matmul_wins((ho, wo), ci, co)
    rotated = (
        not tiny
        and _rotation_applies(w_shape, strides, pads)
        and _patch_matmul_wins(x_shape[1:3], co, ci)  # the rotated conv's in/out channels
    )
    macs = x_shape[0] * ho * wo * kh * kw * ci * co
    big = ho * wo >= tuning.BIG_SPATIAL and ci >= tuning.WIDE_INPUT and macs >= tuning.MIN_MACS
    pick = lambda patches: "patches" if patches else "lax"  # noqa: E731
    input_grad = "rotated" if rotated else pick(tiny)
    return ConvImpl(pick(forward), input_grad, pick(big))


def _lax_conv(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DIMS)


def _tap_slices(kernel_hw, strides, out_hw):
    """For each kernel tap (i, j): the strided window of the padded input it multiplies."""
    (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
    return [
        (slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


def _patches(x, kernel_hw, strides, pads):
    """im2col: [N, H, W, C] -> [N, Ho, Wo, kh*kw*C], tap-major to match an HWIO kernel reshape."""
    out_hw = _out_hw(x.shape[1:3], kernel_hw, strides, pads)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))  # [N, H+lo+hi, W+lo+hi, C]
    cols = [xp[:, si, sj, :] for si, sj in _tap_slices(kernel_hw, strides, out_hw)]
    return jnp.concatenate(cols, axis=-1)


def _batch_chunks(n: int, per_image: int) -> tuple[int, int]:
    """`(n_chunks, chunk)`: `n` images split into chunks of about `tuning.CHUNK_BYTES` of patches.

    `per_image` is one image's patch-matrix bytes. A chunk count that divides `n` is preferred
    when one is close (no padding images); static, from shapes only.
    """
    n_chunks = -(-n // max(1, tuning.CHUNK_BYTES // max(per_image, 1)))
    n_chunks = next((k for k in range(n_chunks, 2 * n_chunks + 1) if n % k == 0), n_chunks)
    return n_chunks, -(-n // n_chunks)


def _split_batch(a, n_chunks: int, chunk: int):
    """`[N, ...] -> [n_chunks, chunk, ...]`, zero images appended when `n_chunks * chunk > N`."""
    extra = n_chunks * chunk - a.shape[0]
    if extra:
        a = jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape(n_chunks, chunk, *a.shape[1:])


def _forward_patches(x, w, strides, pads):
    """y = patches(x) W, one batch chunk at a time (`lax.map`) so each patch matrix stays
    cache sized (the whole batch's would be hundreds of MB for a 32x32x64 layer)."""
    kh, kw, ci, co = w.shape
    n = x.shape[0]
    ho, wo = _out_hw(x.shape[1:3], (kh, kw), strides, pads)
    w2 = w.reshape(-1, co)

    def chunk_out(xc):
        p = _patches(xc, (kh, kw), strides, pads)  # [chunk, Ho, Wo, kh*kw*ci]
        return (p.reshape(-1, kh * kw * ci) @ w2).reshape(xc.shape[0], ho, wo, co)

    n_chunks, chunk = _batch_chunks(n, ho * wo * kh * kw * ci * x.dtype.itemsize)
    if n_chunks == 1:
        return chunk_out(x)
    y = lax.map(chunk_out, _split_batch(x, n_chunks, chunk))  # [n_chunks, chunk, Ho, Wo, co]
    return y.reshape(-1, ho, wo, co)[:n]


def _input_grad_rotated(dy, w, pads):
    """Stride-1 input gradient as a forward convolution: dX = dY * rot180(W)^T, padded
    `(k - 1 - lo, k - 1 - hi)` per side, computed by `_forward_patches`."""
    kh, kw = w.shape[:2]
    rot = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, co, ci]
    (ph0, ph1), (pw0, pw1) = pads
    return _forward_patches(
        dy, rot, (1, 1), ((kh - 1 - ph0, kh - 1 - ph1), (kw - 1 - pw0, kw - 1 - pw1))
    )


def _rotation_applies(w_shape, strides, pads) -> bool:
    """Whether `_input_grad_rotated` computes this input gradient (stride 1, pads < kernel)."""
    return strides == (1, 1) and all(
        max(lo, hi) <= k - 1 for k, (lo, hi) in zip(w_shape[:2], pads, strict=True)
    )


def _input_grad_patches(dy, w, x_shape, strides, pads):
    """col2im of dP = dY W^T: each tap's [N, Ho, Wo, ci] slab added at its strided window."""
    kh, kw, ci, co = w.shape
    n, h, wd, _ = x_shape
    (ph0, ph1), (pw0, pw1) = pads
    ho, wo = dy.shape[1:3]
    dp = (dy.reshape(-1, co) @ w.reshape(-1, co).T).reshape(n, ho, wo, kh * kw, ci)
    dxp = jnp.zeros((n, h + ph0 + ph1, wd + pw0 + pw1, ci), dy.dtype)  # padded input grad
    for t, (si, sj) in enumerate(_tap_slices((kh, kw), strides, (ho, wo))):
        dxp = dxp.at[:, si, sj, :].add(dp[:, :, :, t, :])
    return dxp[:, ph0 : ph0 + h, pw0 : pw0 + wd, :]


def _weight_grad_patches(x, dy, w_shape, strides, pads):
    """dW = sum over batch chunks of P_chunk^T dY_chunk (`_batch_chunks`).

    Each chunk's patch matrix is built already transposed, `[kh*kw*c_in, chunk*Ho*Wo]` (rows in
    HWIO order), from the channel-major padded input: XLA:CPU's matmul runs 1.2-1.6x faster on
    that row-major operand than on the transpose of the `[chunk*Ho*Wo, kh*kw*c_in]` patches.
    """
    kh, kw, ci, co = w_shape
    ho, wo = dy.shape[1:3]
    n_chunks, chunk = _batch_chunks(x.shape[0], ho * wo * kh * kw * ci * x.dtype.itemsize)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0))).transpose(0, 3, 1, 2)  # [N, ci, Hp, Wp]
    taps = _tap_slices((kh, kw), strides, (ho, wo))

    def chunk_grad(xc, dc):  # xc: [chunk, ci, Hp, Wp]
        pt = jnp.stack([xc[:, :, si, sj] for si, sj in taps])  # [kh*kw, chunk, ci, Ho, Wo]
        pt = pt.transpose(0, 2, 1, 3, 4).reshape(kh * kw * ci, -1)
        return pt @ dc.reshape(-1, co)  # [kh*kw*ci, co]

    if n_chunks == 1:
        dw = chunk_grad(xp, dy)
    else:  # zero images padded into the last chunk add nothing to dW
        xs = _split_batch(xp, n_chunks, chunk)  # [n_chunks, chunk, ci, Hp, Wp]
        ds = _split_batch(dy, n_chunks, chunk)  # [n_chunks, chunk, Ho, Wo, co]
        acc0 = jnp.zeros((kh * kw * ci, co), jnp.result_type(x.dtype, dy.dtype))
        dw, _ = lax.scan(lambda acc, xd: (acc + chunk_grad(*xd), None), acc0, (xs, ds))
    return dw.reshape(kh, kw, ci, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, w, strides, pads, impl: ConvImpl):
    if impl.forward == "patches":
        return _forward_patches(x, w, strides, pads)
    return _lax_conv(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads, impl):
    return _conv2d(x, w, strides, pads, impl), (x, w)


def _conv2d_bwd(strides, pads, impl, res, dy):
    x, w = res
    if impl.input_grad == "rotated" and _rotation_applies(w.shape, strides, pads):
        dx = _input_grad_rotated(dy, w, pads)
    elif impl.input_grad in ("patches", "rotated"):
        dx = _input_grad_patches(dy, w, x.shape, strides, pads)
    else:
        dx = jax.vjp(lambda x_: _lax_conv(x_, w, strides, pads), x)[1](dy)[0]
    if impl.weight_grad == "patches":
        dw = _weight_grad_patches(x, dy, w.shape, strides, pads)
    else:
        dw = jax.vjp(lambda w_: _lax_conv(x, w_, strides, pads), w)[1](dy)[0]
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: int | Sequence[int] = (1, 1),
    padding: PaddingLike = "SAME",
    impl: str | ConvImpl = "auto",
) -> jax.Array:
    """2-D cross-correlation y = x * w, NHWC x HWIO -> NHWC, with a CPU-tuned backward pass.

    Same values as `lax.conv_general_dilated(x, w, strides, pads, ("NHWC", "HWIO", "NHWC"))`
    and (to float32 rounding) the same gradients; only how they are computed differs.

    Args:
      x: input [N, H, W, C_in].
      w: kernel [kh, kw, C_in, C_out].
      strides: int or (sh, sw).
      padding: "SAME", "VALID", int, (ph, pw) or ((lo, hi), (lo, hi)); non-negative.
      impl: "auto" (on the CPU backend the per-shape choice of `choose_impl`; on GPU/TPU
        XLA's own convolution, i.e. cuDNN on GPU, since the choice was measured on XLA:CPU only),
        "lax" (plain XLA conv and autodiff), "patches" (im2col matmuls for all three products)
        or an explicit `ConvImpl`.

    Returns:
      y: [N, Ho, Wo, C_out].
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [N, H, W, C], got shape {x.shape}")
    if w.ndim != 4 or w.shape[2] != x.shape[3]:
        raise ValueError(f"w must be HWIO [kh, kw, {x.shape[3]}, C_out], got shape {w.shape}")
    strides = _pair(strides, "strides")
    if min(strides) < 1:
        raise ValueError(f"strides must be positive, got {strides}")
    pads = explicit_padding(padding, x.shape[1:3], w.shape[:2], strides)
    if min(_out_hw(x.shape[1:3], w.shape[:2], strides, pads)) < 1:
        raise ValueError(f"kernel {w.shape[:2]} larger than padded input {x.shape[1:3]}")
    if isinstance(impl, str):
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS} or a ConvImpl, got {impl!r}")
        if impl == "lax" or (impl == "auto" and jax.default_backend() != "cpu"):
            return _lax_conv(x, w, strides, pads)  # "auto" is CPU-tuned; elsewhere XLA's own
        impl = (
            choose_impl(x.shape, w.shape, strides, pads)
            if impl == "auto"
            else ConvImpl("patches", "patches", "patches")
        )
    if impl == ConvImpl("lax", "lax", "lax"):
        return _lax_conv(x, w, strides, pads)  # XLA's own autodiff, no custom_vjp boundary
    return _conv2d(x, w, strides, pads, impl)


class Conv(nn.Module):
    """2-D convolution, NHWC input, HWIO `kernel` param (`flax.linen.Conv`'s names and inits;
    `use_bias` defaults to False).

    Attributes:
      features: output channels.
      kernel_size: (kh, kw) or an int.
      strides: (sh, sw) or an int.
      padding: "SAME", "VALID", an int, (ph, pw) or ((lo, hi), (lo, hi)).
      use_bias: add a `bias` param of shape [features].
      kernel_init, bias_init: initializers (flax.linen.Conv's defaults: LeCun normal, zeros).
      impl: "auto" (default: the CPU-tuned custom backward on the CPU backend, XLA's own
        convolution on GPU/TPU), "lax" (plain `lax.conv_general_dilated` with XLA autodiff, e.g.
        for comparison) or "patches"; see `conv2d`.
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = (1, 1)
    padding: PaddingLike = "SAME"
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, Ho, Wo, features]."""
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC [N, H, W, C], got shape {x.shape}")
        kh, kw = _pair(self.kernel_size, "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        y = conv2d(x, kernel.astype(x.dtype), self.strides, self.padding, self.impl)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,))
            y = y + bias.astype(y.dtype)
        return y


__all__ = ["Conv", "ConvImpl", "IMPLS", "choose_impl", "conv2d", "explicit_padding"]
