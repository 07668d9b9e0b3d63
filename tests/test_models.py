"""Spiking models: shapes, param paths, direct encoding, time folding vs a per-step loop."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from uticket_jax import snn
from uticket_jax.models import (
    MODEL_NAMES,
    VGG16,
    DigitsSNN,
    LayerInfo,
    ResNet19,
    describe_layers,
    get_model,
)
from uticket_jax.ops.conv import Conv
from uticket_jax.sparsity.masks import flatten

SHAPES = {
    "digits_snn": (3, 8, 8, 1),
    "vgg16": (2, 32, 32, 3),
    "resnet19": (2, 32, 32, 3),
    "fmnist_snn": (2, 28, 28, 1),
}


def _abstract_init(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _vgg_paths():
    return [f"features/conv{i}/kernel" for i in range(13)] + ["classifier/kernel"]


def _resnet_paths():
    out = ["stem/conv/kernel"]
    for s, blocks in zip((1, 2, 3), (3, 3, 2), strict=True):
        for b in range(blocks):
            out += [f"layer{s}/block{b}/conv1/kernel", f"layer{s}/block{b}/conv2/kernel"]
            if b == 0:
                out.append(f"layer{s}/block{b}/shortcut_conv/kernel")
    return out + ["fc1/kernel", "fc2/kernel"]


EXPECTED_KERNELS = {
    "digits_snn": [
        "features/conv0/kernel",
        "features/conv1/kernel",
        "features/conv2/kernel",
        "classifier/kernel",
    ],
    "vgg16": _vgg_paths(),
    "resnet19": _resnet_paths(),
    "fmnist_snn": [f"features/conv{i}/kernel" for i in range(4)] + ["classifier/kernel"],
}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("timesteps", [1, 3])
def test_output_shape_and_collections(name, timesteps):
    model = get_model(name, num_classes=7, timesteps=timesteps)
    shape = SHAPES[name]
    variables = _abstract_init(model, shape)
    assert set(variables) == {"params", "batch_stats"}
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros(shape, jnp.float32)
    )
    assert out.shape == (timesteps, shape[0], 7) and out.dtype == jnp.float32
    assert model.T == timesteps


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_paths(name):
    model = get_model(name, num_classes=10, timesteps=2)
    variables = _abstract_init(model, SHAPES[name])
    params = flatten(variables["params"])
    kernels = sorted(k for k in params if k.endswith("/kernel"))
    assert kernels == sorted(EXPECTED_KERNELS[name])
    # Every conv is followed by a BN of the same name pattern, with running stats.
    stats = flatten(variables["batch_stats"])
    for k in kernels:
        if params[k].ndim == 4:
            bn = (
                k.replace("/conv", "/bn").replace("shortcut_conv", "shortcut_bn")
                if name != "resnet19" or not k.startswith("stem")
                else "stem/bn/kernel"
            ).removesuffix("/kernel")
            assert f"{bn}/scale" in params and f"{bn}/bias" in params
            assert f"{bn}/mean" in stats and f"{bn}/var" in stats
            assert f"{k.removesuffix('/kernel')}/bias" not in params  # convs have no bias


def test_vgg_kernel_shapes():
    params = flatten(_abstract_init(VGG16(num_classes=10, timesteps=2), (1, 32, 32, 3))["params"])
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    c_in = 3
    for i, c in enumerate(widths):
        assert params[f"features/conv{i}/kernel"].shape == (3, 3, c_in, c)
        c_in = c
    assert params["classifier/kernel"].shape == (512, 10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_direct_encoding_first_conv_runs_once(name):
    """The first conv sees the B images once; every later conv sees T*B folded inputs, once."""
    timesteps, shape = 3, SHAPES[name]
    model = get_model(name, num_classes=10, timesteps=timesteps)
    seen: list[tuple[str, int]] = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, Conv):
            seen.append(("/".join(context.module.path), args[0].shape[0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _abstract_init(model, shape)
    first, rest = seen[0], seen[1:]
    assert first == (EXPECTED_KERNELS[name][0].removesuffix("/kernel"), shape[0])
    assert rest and all(b == timesteps * shape[0] for _, b in rest)
    assert len({p for p, _ in seen}) == len(seen)  # no layer is called per step


# --- time folding against a per-step reference loop ------------------------------------------


def _random_stats(variables, key):
    """Replaces the BN running stats by random ones so eval-mode BN is not the identity."""
    leaves, treedef = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(key, len(leaves))
    new = [
        jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
        if i % 2
        else 0.2 * jax.random.normal(k, x.shape)
        for i, (k, x) in enumerate(zip(keys, leaves, strict=True))
    ]
    return {**variables, "batch_stats": jax.tree.unflatten(treedef, new)}


def _init(model, x):
    """Compiled init (eager init of a deep net is slow)."""
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)


def _bn(y, p, s):
    return (y - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]


def _conv(y, k):
    return lax.conv_general_dilated(
        y, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_digits_folding_equals_per_step_loop():
    """Eval mode: the folded model equals a Python loop over steps carrying each LIF's state."""
    timesteps, batch = 4, 5
    model = DigitsSNN(num_classes=10, timesteps=timesteps, channels=(16, 32))  # two conv layers
    x = jax.random.normal(jax.random.key(1), (batch, 8, 8, 1)) * 1.5
    variables = _random_stats(_init(model, x), jax.random.key(2))
    out = model.apply(variables, x, train=False)  # [T, B, 10]

    p, s = variables["params"], variables["batch_stats"]
    f, fs = p["features"], s["features"]
    lif = jax.jit(lambda v, x: snn.lif_step(v, x))
    cur0 = _bn(_conv(x, f["conv0"]["kernel"]), f["bn0"], fs["bn0"])  # once: direct encoding
    v0 = snn.lif_init(cur0.shape)
    v1 = snn.lif_init(cur0.shape[:3] + (32,))
    ref = []
    for _ in range(timesteps):
        v0, s0 = lif(v0, cur0)
        v1, s1 = lif(v1, _bn(_conv(s0, f["conv1"]["kernel"]), f["bn1"], fs["bn1"]))
        pooled = nn.max_pool(s1, (2, 2), strides=(2, 2)).reshape(batch, -1)
        ref.append(pooled @ p["classifier"]["kernel"] + p["classifier"]["bias"])
    np.testing.assert_allclose(np.asarray(out), np.stack(ref), atol=1e-5, rtol=1e-5)


def test_lif_folding_helper_keeps_time_and_batch_apart():
    """`spiking` on `[T*B, ...]` equals the LIF on `[T, B, ...]` (row t*B + b: step t, sample b)."""
    from uticket_jax.models.common import spiking

    seq = jax.random.normal(jax.random.key(3), (4, 3, 5)) + 0.7  # [T, B, C]
    folded = spiking(seq.reshape(12, 5), 4, snn.LIFConfig())
    np.testing.assert_array_equal(folded.reshape(4, 3, 5), snn.lif_multistep(seq))


def test_resnet_batch_independent_in_eval_mode():
    """Folding must not mix samples or steps: permuting the images permutes the outputs."""
    # A low threshold so that spikes reach fc2 at this toy size (else all logits are fc2's bias).
    model = ResNet19(num_classes=4, timesteps=2, neuron=snn.LIFConfig(v_threshold=0.3))
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 3))
    variables = _random_stats(_init(model, x), jax.random.key(5))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply(variables, x)  # [T, B, 4]
    perm = jnp.array([2, 0, 1])
    np.testing.assert_allclose(apply(variables, x[perm]), out[:, perm], atol=1e-5)
    assert not np.allclose(out[:, 0], out[:, 1])


def test_train_mode_updates_batch_stats_and_grads_reach_every_kernel():
    model = DigitsSNN(num_classes=10, timesteps=3)
    x = jax.random.normal(jax.random.key(6), (8, 8, 8, 1)) * 2
    variables = _init(model, x)
    y = jnp.arange(8) % 10

    def loss(params):
        out, upd = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        ce = -jnp.take_along_axis(jax.nn.log_softmax(out), y[None, :, None], -1).mean()
        return ce, upd

    (_, upd), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    mean0 = upd["batch_stats"]["features"]["bn0"]["mean"]
    assert not np.allclose(mean0, variables["batch_stats"]["features"]["bn0"]["mean"])
    for path, g in flatten(grads).items():
        assert np.all(np.isfinite(g)), path
        if path.endswith("kernel"):
            assert np.abs(g).sum() > 0, path  # surrogate gradients flow through every LIF


def test_vgg16_real_forward_small():
    model = VGG16(num_classes=10, timesteps=2)
    x = jax.random.normal(jax.random.key(7), (2, 32, 32, 3))
    variables = _init(model, x)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert out.shape == (2, 2, 10) and np.all(np.isfinite(out))
    assert set(flatten(upd["batch_stats"])) == set(flatten(variables["batch_stats"]))


# --- describe_layers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_describe_layers_order_and_shapes(name):
    model = get_model(name, num_classes=10, timesteps=2)
    shape = SHAPES[name]
    layers = describe_layers(model, shape[1:])
    assert all(isinstance(layer, LayerInfo) for layer in layers)
    params = flatten(_abstract_init(model, shape)["params"])
    assert sorted(layer.path for layer in layers) == sorted(EXPECTED_KERNELS[name])
    for layer in layers:
        assert layer.kernel_shape == params[layer.path].shape
        assert layer.kind == ("conv" if len(layer.kernel_shape) == 4 else "dense")
        if layer.kind == "dense":
            assert layer.in_hw == layer.out_hw == (1, 1) and layer.strides == (1, 1)
        else:
            sh, sw = layer.strides
            assert layer.out_hw == (-(-layer.in_hw[0] // sh), -(-layer.in_hw[1] // sw))
    # Execution order: the input layer first, the classifier last, convs in index order.
    assert layers[0].path == EXPECTED_KERNELS[name][0] and layers[-1].kind == "dense"
    convs = [layer.path for layer in layers if layer.kind == "conv"]
    if name != "resnet19":
        assert convs == [p for p in EXPECTED_KERNELS[name] if "conv" in p]
    else:
        assert convs == [p for p in _resnet_paths() if "conv" in p]


def test_describe_layers_vgg_resolutions_and_batch_shape():
    layers = describe_layers(VGG16(num_classes=10, timesteps=4), (3, 32, 32, 3))
    out = [layer.out_hw[0] for layer in layers if layer.kind == "conv"]
    assert out == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    res = describe_layers(ResNet19(num_classes=10, timesteps=1), (32, 32, 3))
    by_path = {layer.path: layer for layer in res}
    assert by_path["layer1/block0/conv1/kernel"].strides == (2, 2)
    assert by_path["layer1/block0/conv1/kernel"].out_hw == (16, 16)
    assert by_path["layer3/block1/conv2/kernel"].out_hw == (4, 4)
    with pytest.raises(ValueError, match="input_shape"):
        describe_layers(VGG16(), (32, 32))


def test_fmnist_net_resolutions_widths_and_cfg_errors():
    """Pool after the first conv: the 64-channel convs run at 14x14 and 7x7, flatten 7x7x64."""
    model = get_model("fmnist_snn", num_classes=10, timesteps=4)
    layers = describe_layers(model, (28, 28, 1))
    convs = [layer for layer in layers if layer.kind == "conv"]
    assert [c.out_hw[0] for c in convs] == [28, 14, 7, 7]
    assert [c.kernel_shape for c in convs] == [
        (3, 3, 1, 16),
        (3, 3, 16, 64),
        (3, 3, 64, 64),
        (3, 3, 64, 64),
    ]
    assert sum(c.kernel_shape[-1] >= 64 for c in convs) >= 3  # groups of 16 PEs exist
    assert layers[-1].kernel_shape == (7 * 7 * 64, 10)
    params = flatten(_abstract_init(model, (1, 28, 28, 1))["params"])
    assert sum(v.size for k, v in params.items() if k.endswith("/kernel")) == 114_448
    narrow = get_model("fmnist_snn", num_classes=10, timesteps=1, cfg=(8, "M", 32, "M", 32, "M"))
    assert describe_layers(narrow, (28, 28, 1))[-1].kernel_shape == (3 * 3 * 32, 10)
    for bad in [("M", 16), (16, 0), (16, "pool"), ()]:
        with pytest.raises(ValueError, match="cfg"):
            _abstract_init(
                get_model("fmnist_snn", num_classes=10, timesteps=1, cfg=bad), (1, 28, 28, 1)
            )
    with pytest.raises(ValueError, match="at least 4x4"):  # two pools
        _abstract_init(model, (1, 3, 3, 1))


# --- registry and bad input ----------------------------------------------------------------


def test_registry():
    assert MODEL_NAMES == ("digits_snn", "vgg16", "resnet19", "fmnist_snn")
    m = get_model("digits_snn", num_classes=10, timesteps=4, channels=(8, 8))
    assert isinstance(m, DigitsSNN) and m.channels == (8, 8) and m.timesteps == 4
    with pytest.raises(ValueError, match="digits_snn, vgg16, resnet19, fmnist_snn"):
        get_model("vgg19", num_classes=10, timesteps=4)
    with pytest.raises(ValueError, match="timesteps"):
        get_model("vgg16", num_classes=10, timesteps=0)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("vgg16", num_classes=0, timesteps=2)
    with pytest.raises(ValueError, match="no attribute"):
        get_model("resnet19", num_classes=10, timesteps=2, channels=(4,))


@pytest.mark.parametrize(
    "model, shape, match",
    [
        (VGG16(), (2, 32, 32), "NHWC"),
        (VGG16(), (2, 16, 16, 3), "at least 32x32"),
        (ResNet19(), (1, 4, 4, 3), "at least 8x8"),
        (DigitsSNN(timesteps=0), (1, 8, 8, 1), "timesteps"),
    ],
)
def test_bad_input_raises(model, shape, match):
    with pytest.raises(ValueError, match=match):
        _abstract_init(model, shape)
