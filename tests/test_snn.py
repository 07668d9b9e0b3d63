"""LIF neurons: against recorded and live SpikingJelly, a plain-loop oracle, and properties."""

from __future__ import annotations

import functools
import json
import math
import os

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from uticket_jax import snn
from uticket_jax.snn import lif as lif_mod

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "spikingjelly_lif.npz")
_DATA = np.load(FIXTURE)
_SETTINGS = json.loads(str(_DATA["settings_json"]))["settings"]


def _kwargs(s: dict) -> dict:
    return dict(
        tau=s["tau"],
        v_threshold=s["v_threshold"],
        v_reset=s["v_reset"],
        decay_input=s["decay_input"],
        detach_reset=s["detach_reset"],
        surrogate=snn.get_surrogate(s["surrogate"], s["alpha"]),
    )


def _spikes_and_grad(x: np.ndarray, w: np.ndarray, kw: dict) -> tuple[np.ndarray, np.ndarray]:
    loss = lambda x: jnp.sum(jnp.asarray(w) * snn.lif_multistep(x, **kw))
    spikes = snn.lif_multistep(jnp.asarray(x), **kw)
    grad = jax.grad(loss)(jnp.asarray(x))
    return np.asarray(spikes), np.asarray(grad)


# --- plain-Python oracle: forward and hand-written backprop through time ----------------------


def _sg_grad(name: str, alpha: float, u: np.ndarray) -> np.ndarray:
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * u) ** 2)
    sig = 1 / (1 + np.exp(-alpha * u))
    return alpha * sig * (1 - sig)


def _oracle(x: np.ndarray, w: np.ndarray, s: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loops over time and neurons; returns spikes, potentials and d(sum(w * spikes))/dx."""
    x = x.astype(np.float64)
    tau, th, vr = s["tau"], s["v_threshold"], s["v_reset"]
    v_rest = 0.0 if vr is None else vr
    n_t, n = x.shape
    spikes, hs, vs = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for i in range(n):
        v = v_rest
        for t in range(n_t):
            if s["decay_input"]:
                h = v + (x[t, i] - (v - v_rest)) / tau
            else:
                h = v - (v - v_rest) / tau + x[t, i]
            sp = 1.0 if h >= th else 0.0
            v = h - sp * th if vr is None else (vr if sp else h)
            spikes[t, i], hs[t, i], vs[t, i] = sp, h, v
    grad = np.zeros_like(x)
    sg = _sg_grad(s["surrogate"], s["alpha"], hs - th)
    for i in range(n):
        gv = 0.0  # dL/dv[t] flowing back from step t+1
        for t in reversed(range(n_t)):
            if vr is None:
                dv_ds, dv_dh = -th, 1.0
            else:
                dv_ds, dv_dh = vr - hs[t, i], 1.0 - spikes[t, i]
            gs = w[t, i] + (0.0 if s["detach_reset"] else gv * dv_ds)
            gh = gs * sg[t, i] + gv * dv_dh
            grad[t, i] = gh / tau if s["decay_input"] else gh
            gv = gh * (1 - 1 / tau)
    return spikes, vs, grad


# --- against SpikingJelly ------------------------------------------------------------------


@pytest.mark.parametrize("s", _SETTINGS, ids=[s["name"] for s in _SETTINGS])
def test_matches_recorded_spikingjelly(s):
    x, w = _DATA[f"{s['name']}/x"], _DATA[f"{s['name']}/w"]
    spikes, grad = _spikes_and_grad(x, w, _kwargs(s))
    np.testing.assert_array_equal(spikes, _DATA[f"{s['name']}/spikes"].astype(np.float32))
    np.testing.assert_allclose(grad, _DATA[f"{s['name']}/grad"], atol=1e-5, rtol=0)
    assert 0.05 < spikes.mean() < 0.95  # the fixture exercises both firing and silence


@pytest.mark.parametrize("s", _SETTINGS[::3], ids=[s["name"] for s in _SETTINGS[::3]])
def test_matches_live_spikingjelly(s):
    pytest.importorskip("torch")
    pytest.importorskip("spikingjelly.activation_based.neuron")
    from tests.fixtures.make_spikingjelly_fixture import run_spikingjelly

    rng = np.random.default_rng(7)
    x = rng.normal(0.7, 1.2, size=(6, 3, 5)).astype(np.float32)  # [T, B, C]
    w = rng.normal(size=x.shape).astype(np.float32)
    ref_spikes, ref_grad = run_spikingjelly(s, x, w)
    spikes, grad = _spikes_and_grad(x, w, _kwargs(s))
    np.testing.assert_array_equal(spikes, ref_spikes)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5, rtol=0)


# --- against the plain-loop oracle -----------------------------------------------------------


@pytest.mark.parametrize("s", _SETTINGS, ids=[s["name"] for s in _SETTINGS])
def test_matches_loop_oracle(s):
    rng = np.random.default_rng(3)
    x = rng.normal(0.6, 1.0, size=(8, 48)).astype(np.float32)  # fixture shape: reuses compiles
    w = rng.normal(size=x.shape).astype(np.float32)
    ref_spikes, ref_v, ref_grad = _oracle(x, w, s)
    spikes, grad = _spikes_and_grad(x, w, _kwargs(s))
    np.testing.assert_array_equal(spikes, ref_spikes)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5, rtol=1e-5)
    _, v = snn.lif_multistep_with_v(jnp.asarray(x), **_kwargs(s))
    np.testing.assert_allclose(np.asarray(v), ref_v, atol=1e-5, rtol=1e-5)


def test_step_scan_equals_multistep():
    """Python loop over `lif_step` (RNN-cell form) equals the scanned multi-step function."""
    x = jax.random.normal(jax.random.key(0), (5, 2, 3, 4)) + 0.8  # [T, B, H, C]
    kw = dict(tau=2.0, v_threshold=0.9, v_reset=None, decay_input=False, detach_reset=False)
    v = snn.lif_init(x.shape[1:], kw["v_reset"])
    step = jax.jit(functools.partial(snn.lif_step, **kw))
    outs = []
    for t in range(x.shape[0]):
        v, s = step(v, x[t])
        outs.append(s)
    np.testing.assert_array_equal(np.stack(outs), snn.lif_multistep(x, **kw))


# --- surrogates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sg, smooth",
    [
        (snn.ATan(2.0), lambda u, a: np.arctan(np.pi / 2 * a * u) / np.pi + 0.5),
        (snn.ATan(3.5), lambda u, a: np.arctan(np.pi / 2 * a * u) / np.pi + 0.5),
        (snn.Sigmoid(4.0), lambda u, a: 1 / (1 + np.exp(-a * u))),
        (snn.Sigmoid(1.5), lambda u, a: 1 / (1 + np.exp(-a * u))),
    ],
)
def test_surrogate_gradient_is_derivative_of_smooth_primitive(sg, smooth):
    u = np.linspace(-2, 2, 41)
    g = jax.vmap(jax.grad(lambda u: sg(u)))(jnp.asarray(u, jnp.float32))
    eps = 1e-5
    numeric = (smooth(u + eps, sg.alpha) - smooth(u - eps, sg.alpha)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sg(jnp.asarray(u))), (u >= 0).astype(np.float64))


def test_spike_fires_at_exact_threshold():
    x = jnp.ones((1, 3)) * 1.0  # one step with decay_input=False, tau irrelevant: h = x
    s = snn.lif_multistep(x, decay_input=False, v_threshold=1.0)
    np.testing.assert_array_equal(s, np.ones((1, 3)))


def test_surrogates_are_hashable_and_validated():
    assert hash(snn.ATan(2.0)) == hash(snn.ATan(2.0))
    assert snn.ATan() == snn.ATan(2.0) and snn.Sigmoid() == snn.Sigmoid(4.0)
    with pytest.raises(ValueError, match="alpha"):
        snn.ATan(0.0)
    with pytest.raises(ValueError, match="surrogate must be one of"):
        snn.get_surrogate("relu")


# --- properties ----------------------------------------------------------------------------

_inputs = hnp.arrays(
    np.float32,
    st.sampled_from([(6, 8), (3, 2, 4)]),  # few shapes: each new shape is a new compile
    elements=st.floats(-3, 5, width=32),
)
_configs = st.fixed_dictionaries(
    dict(
        tau=st.sampled_from([1.25, 4.0 / 3.0, 2.0, 5.0]),
        v_threshold=st.sampled_from([0.5, 1.0, 1.5]),
        v_reset=st.sampled_from([0.0, -0.5, 0.25, None]),
        decay_input=st.booleans(),
        detach_reset=st.booleans(),
        surrogate=st.sampled_from([snn.ATan(2.0), snn.Sigmoid(4.0)]),
    )
)


@settings(max_examples=15, deadline=None)
@given(x=_inputs, kw=_configs)
def test_spikes_binary_grads_finite(x, kw):
    s, v = snn.lif_multistep_with_v(jnp.asarray(x), **kw)
    assert s.shape == x.shape and s.dtype == jnp.float32
    assert set(np.unique(np.asarray(s))) <= {0.0, 1.0}
    g = jax.grad(
        lambda x: jnp.sum(snn.lif_multistep(x, **kw) * jnp.arange(x.size).reshape(x.shape))
    )(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g)))
    if kw["v_reset"] is not None:
        # Hard reset: after every step the potential is below threshold, or exactly v_reset.
        v = np.asarray(v)
        assert np.all((v < kw["v_threshold"]) | (v == np.float32(kw["v_reset"])))


@settings(max_examples=10, deadline=None)
@given(shape=st.sampled_from([(1,), (4, 3), (2, 3, 2, 2)]), kw=_configs)
def test_no_spikes_for_zero_input(shape, kw):
    s = snn.lif_multistep(jnp.zeros(shape), **kw)
    np.testing.assert_array_equal(np.asarray(s), np.zeros(shape))


@settings(max_examples=20, deadline=None)
@given(x=_inputs, kw=_configs)
def test_spikes_monotone_in_constant_drive(x, kw):
    """A stronger constant input never fires later for the first time."""
    drive = np.abs(x[:1]) + 0.1  # [1, ...]
    seq = np.broadcast_to(drive, x.shape)
    first = lambda s: np.where(s.any(0), s.argmax(0), s.shape[0])
    weak = first(np.asarray(snn.lif_multistep(jnp.asarray(seq), **kw)))
    strong = first(np.asarray(snn.lif_multistep(jnp.asarray(2 * seq), **kw)))
    assert np.all(strong <= weak)


# --- contract: jit, no retrace, dtypes, validation -------------------------------------------


def test_no_retrace_for_new_values():
    x = jax.random.normal(jax.random.key(1), (3, 11, 13))
    snn.lif_multistep(x, tau=2.0)
    n = lif_mod._lif_multistep_jit._cache_size()
    snn.lif_multistep(x + 1.0, tau=3.0, v_threshold=0.7)  # traced values change, no new trace
    assert lif_mod._lif_multistep_jit._cache_size() == n
    snn.lif_multistep(x, v_reset=None)  # a different reset equation is a new program
    assert lif_mod._lif_multistep_jit._cache_size() == n + 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_keeps_dtype(dtype):
    x = (jax.random.normal(jax.random.key(2), (4, 6)) + 1).astype(dtype)
    assert snn.lif_multistep(x).dtype == dtype
    s, v = snn.lif_multistep_with_v(x)
    assert s.dtype == dtype and v.dtype == dtype


def test_jittable_with_traced_tau_and_threshold():
    x = jax.random.normal(jax.random.key(3), (4, 6)) + 1
    f = jax.jit(lambda x, tau, th: snn.lif_multistep(x, tau=tau, v_threshold=th))
    np.testing.assert_array_equal(f(x, 2.0, 0.8), snn.lif_multistep(x, tau=2.0, v_threshold=0.8))


@pytest.mark.parametrize(
    "x, kw, match",
    [
        (jnp.float32(1.0), {}, "leading time axis"),
        (jnp.zeros((0, 3)), {}, "at least one time step"),
        (jnp.zeros((2, 3), jnp.int32), {}, "floating-point"),
        (jnp.zeros((2, 3)), {"tau": 1.0}, "tau must be"),
        (jnp.zeros((2, 3)), {"v_reset": float("nan")}, "v_reset"),
        (jnp.zeros((2, 3)), {"surrogate": "atan"}, "surrogate must be"),
        (jnp.zeros((2, 3)), {"decay_input": 1}, "decay_input"),
    ],
)
def test_bad_input_raises(x, kw, match):
    with pytest.raises(ValueError, match=match):
        snn.lif_multistep(x, **kw)


def test_flax_lif_module_and_config():
    x = jax.random.normal(jax.random.key(4), (5, 2, 7)) + 0.5
    cfg = snn.LIFConfig(tau=2.0, v_reset=None, surrogate=snn.Sigmoid())
    mod = snn.LIF(tau=2.0, v_reset=None, surrogate=snn.Sigmoid())
    variables = mod.init(jax.random.key(0), x)
    assert jax.tree.leaves(variables) == []
    ref = snn.lif_multistep(x, tau=2.0, v_reset=None, surrogate=snn.Sigmoid())
    np.testing.assert_array_equal(mod.apply(variables, x), ref)
    np.testing.assert_array_equal(cfg(x), ref)
    assert isinstance(mod, nn.Module) and hash(cfg) == hash(
        snn.LIFConfig(2.0, v_reset=None, surrogate=snn.Sigmoid())
    )
    with pytest.raises(ValueError, match="tau"):
        snn.LIFConfig(tau=0.5)
