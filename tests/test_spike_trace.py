"""Spike traces: the recorded inputs of the analysed layers, against direct computations; files."""

import os
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uticket_jax import data, files, models
from uticket_jax.models import spike_rates
from uticket_jax.snn import LIFConfig
from uticket_jax.training import loop

T = 3


class Toy(nn.Module):
    """A first conv on the image (B rows), a conv and a dense layer on known 0/1 inputs (T*B rows):
    at step t the input is `image > t / T`."""

    timesteps: int = T

    @nn.compact
    def __call__(self, x, train):
        b = x.shape[0]
        steps = jnp.stack(
            [x > t / self.timesteps for t in range(self.timesteps)]
        )  # [T, B, H, W, C]
        folded = steps.astype(jnp.float32).reshape((self.timesteps * b,) + x.shape[1:])
        y = nn.Conv(2, (3, 3), name="conv0")(x)
        z = nn.Conv(4, (3, 3), name="conv1")(folded)
        flat = folded.reshape((folded.shape[0], -1))
        out = nn.Dense(3, name="dense")(flat) + 0.0 * (y.sum() + z.sum())
        return out.reshape((self.timesteps, b, 3))


def _toy_images(n=7):
    return np.random.default_rng(0).uniform(0.0, 1.0, (n, 5, 6, 1)).astype(np.float32)


def test_recorded_inputs_equal_a_direct_computation_on_a_toy_model():
    model, images = Toy(), _toy_images()
    variables = model.init(jax.random.key(0), jnp.asarray(images[:1]), train=False)
    assert models.analysed_paths(model, (5, 6, 1)) == ("conv1/kernel",)
    got = models.record_inputs(
        model,
        variables,
        images,
        layers=["conv0/kernel", "conv1/kernel", "dense/kernel"],
        batch_size=3,
    )
    assert list(got) == ["conv0/kernel", "conv1/kernel", "dense/kernel"]
    want = np.stack([images > t / T for t in range(T)])  # [T, N, H, W, C]
    assert got["conv1/kernel"].dtype == bool and got["conv1/kernel"].shape == (T, 7, 5, 6, 1)
    np.testing.assert_array_equal(got["conv1/kernel"], want)
    np.testing.assert_array_equal(got["dense/kernel"], want.reshape(T, 7, -1))
    # The first conv sees the analog image once: its events (x != 0) repeated over the steps.
    np.testing.assert_array_equal(
        got["conv0/kernel"], np.broadcast_to(images != 0, (T, *images.shape))
    )
    default = models.record_inputs(model, variables, images)
    assert list(default) == ["conv1/kernel"]
    np.testing.assert_array_equal(default["conv1/kernel"], want)


@pytest.fixture(scope="module")
def digits_net():
    ds = data.load_dataset("digits")
    model = models.get_model(
        "digits_snn", num_classes=10, timesteps=T, neuron=LIFConfig(v_threshold=0.3)
    )
    variables = loop.init_variables(model, ds.image_shape, jax.random.key(0))
    return model, variables, ds.test_images[:11]


def test_batched_recording_equals_one_image_at_a_time(digits_net):
    """Row `t*B + b` is step t of example b: one-image forwards (rows = steps) agree with batches
    of 4 (the last one padded), and the rates of the trace are the measured spike rates."""
    model, variables, images = digits_net
    got = models.record_inputs(model, variables, images, batch_size=4)
    assert list(got) == ["features/conv1/kernel", "features/conv2/kernel"]
    for i in range(images.shape[0]):
        seen: dict = {}
        with spike_rates.layer_inputs(lambda p, x, seen=seen: seen.setdefault(p, np.asarray(x))):
            model.apply(variables, jnp.asarray(images[i : i + 1]), train=False)
        for path, trace in got.items():
            x = seen[path]  # [T, H, W, C]: one image, its rows are the steps
            assert set(np.unique(x)) <= {0.0, 1.0}
            np.testing.assert_array_equal(trace[:, i], x != 0)
    rates = spike_rates.input_spike_rates(model, variables, images)
    for path, trace in got.items():
        assert trace.mean() == pytest.approx(rates[path], abs=1e-6)
        assert 0.0 < trace.mean() < 1.0


def test_a_second_recording_compiles_nothing(digits_net):
    model, variables, images = digits_net
    models.record_inputs(model, variables, images, batch_size=4)
    fn = models.spike_trace._jitted(model, models.analysed_paths(model, (8, 8, 1)))
    before = fn._cache_size()
    models.record_inputs(model, variables, images[::-1], batch_size=4)
    assert fn._cache_size() == before


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(images=np.zeros((8, 8, 1))), "images:"),
        (dict(images=np.zeros((0, 8, 8, 1))), "images:"),
        (dict(batch_size=0), "batch_size:"),
        (dict(layers=[]), "layers:"),
        (dict(layers=["features/nope/kernel"]), "layers:"),
    ],
)
def test_recorder_bad_arguments_name_the_argument(digits_net, kw, needle):
    model, variables, images = digits_net
    args = dict(images=images) | kw
    with pytest.raises(ValueError, match=needle):
        models.record_inputs(model, variables, args.pop("images"), **args)


def _trace():
    rng = np.random.default_rng(1)
    return {
        "features/conv1/kernel": rng.random((2, 3, 4, 4, 5)) < 0.3,
        "classifier/kernel": (rng.random((2, 3, 16)) < 0.5).astype(np.int8),
    }


def test_trace_file_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "trace.npz")
    trace = _trace()
    files.save_spike_trace(path, trace)
    with zipfile.ZipFile(path) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    back = files.load_spike_trace(path, "--spike_trace")
    assert list(back) == list(trace)
    for k, v in trace.items():
        assert back[k].dtype == bool
        np.testing.assert_array_equal(back[k], v != 0)
    assert os.listdir(tmp_path / "sub") == ["trace.npz"]  # no temporary file left


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda t: {}, "holds no layers"),
        (lambda t: {**t, "classifier/kernel": np.full((2, 3, 16), 2)}, "other than 0 and 1"),
        (lambda t: {**t, "classifier/kernel": np.full((2, 3, 16), np.nan)}, "other than 0 and 1"),
        (lambda t: {**t, "classifier/kernel": np.ones((3, 16), bool)}, "expected [T, B"),
        (lambda t: {**t, "classifier/kernel": np.ones((2, 4, 16), bool)}, "same steps"),
    ],
)
def test_bad_traces_are_refused_before_anything_is_written(tmp_path, change, needle):
    path = str(tmp_path / "trace.npz")
    with pytest.raises(ValueError) as e:
        files.save_spike_trace(path, change(_trace()))
    assert needle in str(e.value) and "trace.npz" in str(e.value)
    assert "\n" not in str(e.value)
    assert not os.listdir(tmp_path)


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


def _text(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p, "no such file"),
        (lambda p: _text(p, ""), "it is empty"),
        (lambda p: _text(p, "spikes"), "text file"),
        (lambda p: _write(p, {}), "holds no arrays; expected one array per analysed layer"),
        (lambda p: _write(p, {"a/kernel": np.full((2, 2, 3), 3)}), "'a/kernel' holds values"),
        (lambda p: _write(p, {"a/kernel": np.ones((2, 3), bool)}), "shape (2, 3) is not allowed"),
    ],
)
def test_bad_trace_files_fail_in_one_line_naming_the_file(tmp_path, make, needle):
    path = make(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError) as e:
        files.load_spike_trace(path, "--spike_trace")
    msg = str(e.value)
    assert msg.startswith("--spike_trace: ") and "bad.npz" in msg and needle in msg, msg
    assert "\n" not in msg
