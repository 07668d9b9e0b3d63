"""uticket_jax.ops.conv: values and both gradients equal plain lax.conv + autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from uticket_jax.ops.conv import (
    Conv,
    ConvImpl,
    choose_impl,
    conv2d,
    explicit_padding,
)
from uticket_jax.ops.pool import max_pool

DIMS = ("NHWC", "HWIO", "NHWC")
MIXED_IMPLS = [
    ConvImpl("lax", "patches", "lax"),
    ConvImpl("patches", "lax", "patches"),
    ConvImpl("lax", "rotated", "lax"),
]
ROTATED = ConvImpl("patches", "rotated", "patches")


def _reference(x, w, strides, padding):
    pads = explicit_padding(padding, x.shape[1:3], w.shape[:2], strides)
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DIMS)


def _loss(conv):
    """A non-linear, position-weighted readout so the cotangent dY is not constant."""

    def loss(x, w):
        y = conv(x, w)
        return jnp.sum(jnp.sin(y) * jnp.linspace(0.5, 1.5, y.size).reshape(y.shape))

    return loss


def _check(shape_x, kernel, c_out, strides, padding, impl, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, shape_x, jnp.float32)
    w = jax.random.normal(kw, (*kernel, shape_x[-1], c_out), jnp.float32)
    ours = lambda x, w: conv2d(x, w, strides, padding, impl)
    ref = lambda x, w: _reference(x, w, strides, padding)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(_loss(ours), argnums=(0, 1))(x, w)
    g_ref = jax.grad(_loss(ref), argnums=(0, 1))(x, w)
    for name, a, b in zip(("dx", "dw"), g_ours, g_ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("impl", ["auto", "patches", ROTATED], ids=str)
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (1, 2)])
@pytest.mark.parametrize("padding", ["SAME", "VALID", 1, ((0, 2), (1, 0))])
@pytest.mark.parametrize("kernel", [(3, 3), (1, 1)])
def test_matches_lax_values_and_grads(impl, strides, padding, kernel):
    _check((3, 7, 6, 4), kernel, 5, strides, padding, impl)


@pytest.mark.parametrize("impl", MIXED_IMPLS, ids=str)
def test_mixed_impls(impl):
    _check((3, 7, 6, 4), (3, 3), 5, (2, 1), ((0, 2), (1, 0)), impl)


@pytest.mark.parametrize("impl", ["auto", "patches"])
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5)])
def test_tiny_spatial(impl, hw):
    _check((4, *hw, 6), (3, 3), 3, (1, 1), "SAME", impl)


def test_weight_grad_chunked_with_ragged_batch(monkeypatch):
    # Force several chunks and a batch that is not a multiple of the chunk size.
    from uticket_jax.ops import tuning

    # Three images a chunk: 7 images -> 3 chunks of 3, two zero images padded in.
    monkeypatch.setattr(tuning, "CHUNK_BYTES", 4 * 4 * 9 * 3 * 4 * 3)
    _check((7, 4, 4, 3), (3, 3), 2, (1, 1), "SAME", ROTATED)


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3]),
    s=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID", 0, 1, 2]),
    impl=st.sampled_from(["auto", "patches", ROTATED]),
)
def test_property_matches_lax(n, h, w, c_in, c_out, k, s, padding, impl):
    pads = explicit_padding(padding, (h, w), (k, k), (s, s))
    if h + sum(pads[0]) < k or w + sum(pads[1]) < k:
        with pytest.raises(ValueError, match="larger than padded input"):
            conv2d(jnp.zeros((n, h, w, c_in)), jnp.zeros((k, k, c_in, c_out)), s, padding, impl)
        return
    _check((n, h, w, c_in), (k, k), c_out, (s, s), padding, impl, seed=h * 7 + w)


def test_choose_impl_policy():
    # VGG16 at batch 128: tiny outputs leave XLA's conv; big wide layers use the patch dW.
    same = ((1, 1), (1, 1))
    assert choose_impl((128, 2, 2, 512), (3, 3, 512, 512), (1, 1), same) == ConvImpl(
        "patches", "patches", "lax"
    )
    # Few input channels: XLA's weight gradient is faster.
    assert choose_impl((128, 8, 8, 16), (3, 3, 16, 32), (1, 1), same) == ConvImpl(
        "lax", "lax", "lax"
    )
    assert choose_impl((128, 8, 8, 64), (3, 3, 64, 64), (1, 1), same).weight_grad == "lax"
    # Big images with a side of 16-64 channels: patch matmuls for all three products.
    for c_in, c_out, hw in ((64, 64, 32), (64, 128, 16), (128, 64, 16)):
        assert choose_impl((128, hw, hw, c_in), (3, 3, c_in, c_out), (1, 1), same) == ConvImpl(
            "patches", "rotated", "patches"
        )
    # Small images with wide layers: the patch forward, rotated input gradient, XLA's dW.
    assert choose_impl((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), same) == ConvImpl(
        "patches", "rotated", "lax"
    )
    # 128 channels on both sides of a 16x16 image, or 3 input channels: XLA's forward and
    # input gradient.
    assert choose_impl((128, 16, 16, 128), (3, 3, 128, 128), (1, 1), same)[:2] == ("lax", "lax")
    assert choose_impl((128, 32, 32, 3), (3, 3, 3, 64), (1, 1), same)[:2] == ("lax", "lax")
    # Stride 2: the patch forward, but XLA's input gradient (no rotated form; col2im is slower).
    strided = explicit_padding("SAME", (32, 32), (3, 3), (2, 2))
    assert choose_impl((128, 32, 32, 64), (3, 3, 64, 128), (2, 2), strided)[:2] == (
        "patches",
        "lax",
    )


def test_auto_is_xla_conv_off_cpu(monkeypatch):
    # The per-shape choice was measured on XLA:CPU; on another backend "auto" is XLA's own conv.
    x, w = jnp.ones((2, 2, 2, 8)), jnp.ones((3, 3, 8, 4))  # a tiny output: patches on the CPU

    def prims():  # a fresh function each time, so no trace is reused
        jaxpr = jax.make_jaxpr(lambda x, w: conv2d(x, w, 1, "SAME", "auto"))(x, w)
        return {e.primitive.name for e in jaxpr.jaxpr.eqns}

    assert "custom_vjp_call" in prims()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert prims() == {"conv_general_dilated"}


@pytest.mark.parametrize("impl", ["auto", "lax"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_module_params_match_flax_conv(impl, use_bias):
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
    ours = Conv(4, (3, 3), strides=2, padding=1, use_bias=use_bias, impl=impl)
    theirs = nn.Conv(4, (3, 3), strides=2, padding=1, use_bias=use_bias)
    p_ours = ours.init(jax.random.key(0), x)
    p_theirs = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, p_ours) == jax.tree.map(jnp.shape, p_theirs)
    # Same default initializers -> same params from the same key, and the same outputs.
    jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)
    np.testing.assert_allclose(
        ours.apply(p_ours, x), theirs.apply(p_theirs, x), rtol=1e-5, atol=1e-6
    )
    assert p_ours["params"]["kernel"].shape == (3, 3, 3, 4)


def test_jit_contract_no_retrace_and_dtype():
    traces = []

    @jax.jit
    def step(x, w):
        traces.append(1)
        return jax.value_and_grad(lambda w: jnp.sum(conv2d(x, w) ** 2))(w)

    x = jnp.ones((2, 4, 4, 3), jnp.float32)
    w = jnp.ones((3, 3, 3, 2), jnp.float32)
    v1, g1 = step(x, w)
    v2, g2 = step(x + 1, w)
    assert len(traces) == 1
    assert g1.dtype == jnp.float32 and conv2d(x, w).dtype == jnp.float32


def test_vmap_matches_loop():
    xs = jax.random.normal(jax.random.key(2), (3, 2, 4, 4, 3))  # [V, N, H, W, C]
    w = jax.random.normal(jax.random.key(3), (3, 3, 3, 2))
    grad = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv2d(x, w))), argnums=(0, 1))
    vmapped = jax.vmap(grad, in_axes=(0, None))(xs, w)
    for v in range(xs.shape[0]):
        for a, b in zip(vmapped, grad(xs[v], w), strict=True):
            np.testing.assert_allclose(a[v], b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(padding="CIRCULAR"), "padding"),
        (dict(padding=-1), "non-negative"),
        (dict(strides=0), "strides"),
        (dict(impl="fast"), "impl"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="x must be NHWC"):
        conv2d(jnp.zeros((4, 4, 2)), jnp.zeros((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="w must be HWIO"):
        conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 3, 2)))


def _check_max_pool(x, window):
    n, h, w, c = x.shape
    out_shape = (n, h // window, w // window, c)
    cot = jnp.linspace(-1.0, 2.0, int(np.prod(out_shape))).reshape(out_shape)
    ref = lambda x: jnp.sum(nn.max_pool(x, (window, window), strides=(window, window)) * cot)
    ours = lambda x: jnp.sum(max_pool(x, window) * cot)
    np.testing.assert_array_equal(
        max_pool(x, window), nn.max_pool(x, (window, window), strides=(window, window))
    )
    # Exactly the same gradient, ties (binary spikes) included: first maximum of each window.
    np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(ref)(x))


@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (1, 5, 7, 2), (3, 6, 3, 1)])
@pytest.mark.parametrize("binary", [True, False])
def test_max_pool_matches_flax(window, shape, binary):
    x = jax.random.uniform(jax.random.key(window), shape)
    x = (x > 0.6).astype(jnp.float32) if binary else x
    _check_max_pool(x, window)


@settings(max_examples=10, deadline=None)
@given(
    h=st.integers(2, 7),
    w=st.integers(2, 7),
    window=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_property_max_pool_ties(h, w, window, seed):
    x = jax.random.randint(jax.random.key(seed), (2, h, w, 2), 0, 2).astype(jnp.float32)
    _check_max_pool(x, window)


def test_max_pool_bad_arguments():
    with pytest.raises(ValueError, match="x must be NHWC"):
        max_pool(jnp.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="window"):
        max_pool(jnp.zeros((1, 4, 4, 2)), 5)
