"""Tests of the analytical PE-array simulator against the plain-loop oracle, and its invariants."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import simulator_oracle as oracle
from uticket_jax import hardware
from uticket_jax.hardware import assembly, simulator
from uticket_jax.workload.mappings import pe_loads
from uticket_jax.workload.synthetic import vgg16_shapes

FLOAT_FIELDS = ("cycles", "seconds", "wasted_pe_cycles", "energy_total", "energy_onchip")
FLOAT_FIELDS += ("energy_dram",)
INT_FIELDS = ("latency", "wasted", "dynamic")
UTIL_FIELDS = ("utilization", "utilization_normalized")


def _assert_close(got, want, where):
    for k in INT_FIELDS:
        assert int(got[k]) == want[k], (where, k, got[k], want[k])
    for k in UTIL_FIELDS:
        g, w = float(got[k]), want[k]
        assert (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=1e-5), (where, k)
    for k in FLOAT_FIELDS:
        assert math.isclose(float(got[k]), want[k], rel_tol=1e-5, abs_tol=1e-30), (where, k)
    for sub in ("counts", "energy_terms"):
        assert list(got[sub]) == list(want[sub]), (where, sub)
        for k, w in want[sub].items():
            g = float(got[sub][k])
            assert math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-30), (where, sub, k, g, w)


def _pick(fig, *index):
    """Config (and layer) `index` of `fig` as a dict of numbers, NaN kept."""
    at = lambda v: np.asarray(v)[index]  # noqa: E731
    d = {k: at(getattr(fig, k)) for k in fig._fields if k not in ("counts", "energy_terms")}
    d["counts"] = {k: at(v) for k, v in fig.counts._asdict().items()}
    d["energy_terms"] = {t: at(v) for t, v in fig.energy_terms.items()}
    return d


def _check_against_oracle(
    masks, specs, configs, rates=None, model="horowitz45", constants=None, **kwargs
):
    res = hardware.simulate_masks(
        masks,
        specs,
        configs,
        spike_rates=rates,
        energy_model=model,
        energy_constants=constants,
        **kwargs,
    )
    assert res.energy_model == model
    consts = hardware.get_energy_model(model).defaults if constants is None else constants
    n = hardware.num_configs(configs)
    for i, cfg in enumerate(hardware.config_rows(configs)):
        k = {f: float(np.broadcast_to(v, (n,))[i]) for f, v in consts._asdict().items()}
        want = oracle(masks, specs, cfg, rates, model=model, constants=k)
        _assert_close(_pick(res.network, i), want["network"], (cfg, "network"))
        for j, spec in enumerate(specs):
            _assert_close(_pick(res.layers, i, j), want["layers"][j], (cfg, spec.name))
    return res


def _random_mask(rng, shape, density):
    return rng.random(shape) < density


@pytest.mark.parametrize("mapping", hardware.MAPPINGS)
@pytest.mark.parametrize("shape", [(3, 3, 5, 7), (1, 1, 4, 3), (6, 5), (2, 2, 1, 9), (3, 3, 13, 2)])
def test_group_loads_match_pe_loads_for_every_n(shape, mapping):
    mask = _random_mask(np.random.default_rng(0), shape, 0.4)
    table = hardware.count_tables(mask)
    c_in, c_out = shape[-2], shape[-1]
    for n in range(1, max(c_in, c_out) + 3):
        gsum, gmax = hardware.group_loads(table, shape, n, mapping)
        loads = np.asarray(pe_loads(mask, n, mapping))  # [G, n], static-n definition
        g = loads.shape[0]
        np.testing.assert_array_equal(np.asarray(gsum)[:g], loads.sum(1), err_msg=f"n={n}")
        np.testing.assert_array_equal(np.asarray(gmax)[:g], loads.max(1), err_msg=f"n={n}")
        assert not np.asarray(gsum)[g:].any() and not np.asarray(gmax)[g:].any()


def test_group_loads_compile_once_for_traced_n():
    table = hardware.count_tables(np.ones((3, 3, 4, 6), bool))
    hardware.group_loads(table, (3, 3, 4, 6), 1, "output_channel")
    before = simulator._group_loads_jit._cache_size()
    for n in (2, 3, 5, 17):
        hardware.group_loads(table, (3, 3, 4, 6), n, "output_channel")
    assert simulator._group_loads_jit._cache_size() == before


# A few fixed layer structures (compiled once each); masks, sizes and configs vary freely.
ARCHS = (
    {"a/kernel": (3, 3, 3, 8), "b/kernel": (3, 3, 8, 5), "fc/kernel": (5, 4)},
    {"a/kernel": (1, 1, 1, 9), "b/kernel": (1, 1, 9, 2), "fc/kernel": (2, 7)},
    {"a/kernel": (3, 3, 4, 4), "b/kernel": (3, 3, 4, 12), "fc/kernel": (12, 3)},
)


def random_horowitz45(rng, n):
    """`n` random sets of horowitz45's constants (`[n]` leaves), one per config."""
    return hardware.make_constants(
        "horowitz45",
        e_acc_pj=rng.uniform(0, 1, n),
        e_fetch_pj=rng.uniform(0, 10, n),
        e_idle_pj=rng.uniform(0, 0.1, n),
        leak_w=rng.uniform(0, 1e-4, n),
    )


@st.composite
def networks(draw):
    """A small conv-conv-dense network with random masks, sizes and a batch of 6 configs."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shapes = draw(st.sampled_from(ARCHS))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    masks = {name: _random_mask(rng, s, density) for name, s in shapes.items()}
    sizes = [draw(st.integers(1, 6)), draw(st.integers(1, 6)), 1]
    skip_first = draw(st.booleans())
    conv_only = draw(st.booleans())
    specs = hardware.specs_from_shapes(
        shapes, out_sizes=sizes, skip_first=skip_first, conv_only=conv_only
    )
    cfgs = [
        hardware.make_config(
            n_pe=int(rng.integers(1, 12)),
            mapping=hardware.MAPPINGS[int(rng.integers(0, 2))],
            timesteps=int(rng.integers(1, 9)),
            clock_hz=float(rng.uniform(1e8, 2e9)),
            activity_aware=bool(rng.integers(0, 2)),
        )
        for _ in range(6)
    ]
    rates = rng.uniform(0, 1, size=3).astype(np.float32)
    consts = random_horowitz45(rng, 6)
    return masks, specs, hardware.stack_configs(cfgs), rates, consts


@settings(max_examples=15, deadline=None)
@given(networks())
def test_vmapped_matches_loop_oracle(net):
    masks, specs, configs, rates, consts = net
    res = _check_against_oracle(masks, specs, configs, rates, constants=consts)
    again = hardware.simulate_masks(
        masks,
        specs,
        configs,
        spike_rates=rates,
        dedupe=False,
        energy_model="horowitz45",
        energy_constants=consts,
    )
    jax.tree.map(np.testing.assert_array_equal, res, again)  # same figures without dedupe


@settings(max_examples=8, deadline=None)
@given(networks())
def test_sata_model_matches_loop_oracle(net):
    masks, specs, configs, rates, _ = net
    res = _check_against_oracle(masks, specs, configs, rates, model="sata")
    default = hardware.simulate_masks(masks, specs, configs, spike_rates=rates)
    jax.tree.map(np.testing.assert_array_equal, res, default)  # sata is the default
    plain = hardware.simulate_masks(
        masks, specs, configs, spike_rates=rates, energy_model="horowitz45"
    )
    for f in ("cycles", "seconds", "latency", "wasted", "utilization"):  # the model is energy only
        np.testing.assert_array_equal(getattr(res.network, f), getattr(plain.network, f))
    jax.tree.map(np.testing.assert_array_equal, res.network.counts, plain.network.counts)


@settings(max_examples=12, deadline=None)
@given(networks())
def test_energy_terms_nonnegative_and_add_up(net):
    masks, specs, configs, rates, _ = net
    for model in ("horowitz45", "sata"):
        res = hardware.simulate_masks(masks, specs, configs, spike_rates=rates, energy_model=model)
        for fig in (res.layers, res.network):
            terms = list(fig.energy_terms.values())
            assert list(fig.energy_terms) == list(hardware.get_energy_model(model).terms)
            assert all((t >= 0).all() for t in terms)
            np.testing.assert_allclose(sum(terms), fig.energy_total, rtol=1e-6, atol=0)
        c = res.layers.counts  # busy + idle PE-cycles = n_pe x cycles, exactly in float32 here
        np.testing.assert_allclose(c.pe_cycles_busy + c.pe_cycles_idle, c.n_pe * c.cycles)


@settings(max_examples=12, deadline=None)
@given(networks(), st.integers(1, 12))
def test_latency_never_below_balanced_bound(net, n):
    masks, specs, _, _, _ = net
    for mapping in hardware.MAPPINGS:
        cfg = hardware.make_config(n_pe=n, mapping=mapping, timesteps=3)
        res = hardware.simulate_masks(masks, specs, cfg)
        for j, spec in enumerate(specs):
            table = hardware.count_tables(masks[spec.name])
            gsum, gmax = hardware.group_loads(table, spec.kernel_shape, n, mapping)
            gsum = np.asarray(gsum)
            assert (np.asarray(gmax) >= -(-gsum // n)).all()
            bound = float(np.sum(-(-gsum // n))) * spec.pixels * 3
            assert res.layers.cycles[0, j] >= bound * (1 - 1e-6)


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from([1, 2, 3, 4, 6, 12]),
    st.integers(0, 9),
    st.sampled_from(hardware.MAPPINGS),
    st.integers(0, 2**31 - 1),
)
def test_balanced_mask_has_full_utilization(n, load, mapping, seed):
    """Every PE of every group holds the same `load`: utilization 1, zero waste."""
    rng = np.random.default_rng(seed)
    shape = (3, 3, 2, 12) if mapping == "output_channel" else (3, 3, 12, 3)
    mask = np.zeros(shape, bool)
    c_in, c_out = shape[2], shape[3]
    if mapping == "output_channel":  # every output channel holds `load` weights
        slices = [(o, 0, c_in) for o in range(c_out)]
    else:  # every input slice of every output channel holds `load` weights
        s = c_in // n
        slices = [(o, j * s, (j + 1) * s) for o in range(c_out) for j in range(n)]
    for o, lo, hi in slices:
        flat = np.zeros(9 * (hi - lo), bool)
        flat[rng.permutation(flat.size)[:load]] = True
        mask[:, :, lo:hi, o] = flat.reshape(3, 3, hi - lo)
    masks = {"x/kernel": mask}
    specs = hardware.specs_from_shapes({"x/kernel": shape}, out_sizes=[4], skip_first=False)
    cfg = hardware.make_config(n_pe=n, mapping=mapping)
    res = hardware.simulate_masks(masks, specs, cfg, energy_model="horowitz45")
    if load:
        assert res.network.utilization[0] == pytest.approx(1.0)
        assert res.network.utilization_normalized[0] == pytest.approx(1.0)
        assert res.network.wasted[0] == 0 and res.network.wasted_pe_cycles[0] == 0
        assert res.network.energy_terms["idle"][0] == 0
    else:
        assert math.isnan(res.network.utilization[0]) and res.network.cycles[0] == 0


def test_zero_layer_is_reported_not_a_crash():
    rng = np.random.default_rng(1)
    shapes = {"a/kernel": (3, 3, 2, 4), "b/kernel": (3, 3, 4, 8), "c/kernel": (3, 3, 8, 8)}
    masks = {k: _random_mask(rng, s, 0.3) for k, s in shapes.items()}
    masks["b/kernel"][:] = False
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 4, 2])
    configs = hardware.config_grid(n_pe=[1, 4, 16], mapping=list(hardware.MAPPINGS))
    res = _check_against_oracle(masks, specs, configs)
    assert np.isnan(res.layers.utilization[:, 1]).all()
    assert (res.layers.cycles[:, 1] == 0).all()
    rows = hardware.sweep_rows(res, configs, specs, "m")
    assert rows[0]["layers"][1]["utilization"] is None
    json.dumps(rows, allow_nan=False)  # NaN became None
    assert np.isfinite(res.network.utilization).all()  # the layers with work still count


def test_activity_aware_scales_accumulates_only():
    rng = np.random.default_rng(2)
    shapes = {"a/kernel": (3, 3, 3, 8), "b/kernel": (3, 3, 8, 8)}
    masks = {k: _random_mask(rng, s, 0.5) for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[8, 8], skip_first=False)
    on = hardware.make_config(n_pe=4, activity_aware=True)
    off = hardware.make_config(n_pe=4, activity_aware=False)
    rates = {"a/kernel": 1.0, "b/kernel": 0.25}
    kw = {"spike_rates": rates, "energy_model": "horowitz45"}
    r_on = hardware.simulate_masks(masks, specs, on, **kw)
    r_off = hardware.simulate_masks(masks, specs, off, **kw)
    on_terms, off_terms = r_on.layers.energy_terms, r_off.layers.energy_terms
    np.testing.assert_allclose(on_terms["accumulate"][0], off_terms["accumulate"][0] * [1.0, 0.25])
    np.testing.assert_array_equal(r_on.layers.cycles, r_off.layers.cycles)
    for t in ("weight_fetch", "idle", "leakage"):
        np.testing.assert_array_equal(on_terms[t], off_terms[t])


def test_vgg16_output_sizes():
    specs = hardware.specs_from_shapes(vgg16_shapes(), input_size=32)
    sizes = [s.out_hw[0] for s in specs]
    assert sizes == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1]
    assert [s.analysed for s in specs] == [False] + [True] * 12 + [False]


@pytest.mark.slow
def test_full_vgg16_sweep_against_oracle():
    shapes = vgg16_shapes()
    specs = hardware.specs_from_shapes(shapes, input_size=32)
    rng = np.random.default_rng(3)
    masks = {k: _random_mask(rng, s, 0.02) for k, s in shapes.items()}
    configs = hardware.config_grid(n_pe=[16], mapping=list(hardware.MAPPINGS), timesteps=[5])
    _check_against_oracle(masks, specs, configs)


def _resnet19_shapes():
    shapes = {"stem/conv/kernel": (3, 3, 3, 128)}
    c = 128
    for s, (width, blocks) in enumerate([(128, 3), (256, 3), (512, 2)], start=1):
        for b in range(blocks):
            pre = f"layer{s}/block{b}"
            shapes[f"{pre}/conv1/kernel"] = (3, 3, c, width)
            shapes[f"{pre}/conv2/kernel"] = (3, 3, width, width)
            if c != width:
                shapes[f"{pre}/shortcut_conv/kernel"] = (1, 1, c, width)
            c = width
    shapes["fc1/kernel"] = (512, 256)
    shapes["fc2/kernel"] = (256, 10)
    return shapes


def test_resnet19_output_sizes():
    specs = hardware.specs_from_shapes(_resnet19_shapes(), input_size=32)
    got = {s.name: s.out_hw[0] for s in specs}
    assert got["stem/conv/kernel"] == 32
    assert got["layer1/block2/conv2/kernel"] == 32
    assert got["layer2/block0/conv1/kernel"] == 16
    assert got["layer2/block0/shortcut_conv/kernel"] == 16
    assert got["layer3/block1/conv2/kernel"] == 8
    assert got["fc1/kernel"] == 1 and got["fc2/kernel"] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_pe": 0}, "n_pe"),
        ({"n_pe": -3}, "n_pe"),
        ({"mapping": "tiles"}, "mapping"),
        ({"n_pe": 2**32 + 16}, "n_pe"),
        ({"n_pe": 2.5}, "n_pe"),
        ({"e_acc_pj": 0.1}, "unknown fields"),  # energy constants belong to the energy model
        ({"clock_hz": 0.0}, "clock_hz"),
        ({"timesteps": 0}, "timesteps"),
        ({"bogus": 1}, "unknown fields"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hardware.make_config(**kwargs)


def test_bad_layer_descriptions_raise():
    shapes = vgg16_shapes()
    with pytest.raises(ValueError, match="dense layer"):
        hardware.specs_from_shapes(shapes, input_size=64)  # classifier expects 512 features
    with pytest.raises(ValueError, match="input_size"):
        hardware.specs_from_shapes(shapes, input_size=8)  # 5 pooling stages do not fit
    broken = dict(shapes)
    broken["features/conv3/kernel"] = (3, 3, 100, 128)
    with pytest.raises(ValueError, match="c_in"):
        hardware.specs_from_shapes(broken, input_size=32)
    with pytest.raises(ValueError, match="masks"):
        hardware.specs_from_shapes({}, input_size=32)
    with pytest.raises(ValueError, match="out_sizes"):
        hardware.specs_from_shapes(shapes, out_sizes=[32, 32])
    with pytest.raises(ValueError, match="arch"):
        hardware.specs_from_shapes(shapes, input_size=32, arch="alexnet")


def test_bad_spike_rates_raise():
    specs = hardware.specs_from_shapes({"a/kernel": (3, 3, 2, 4)}, out_sizes=[4])
    with pytest.raises(ValueError, match="spike_rates"):
        hardware.spike_rate_vector({"a/kernel": 1.5}, specs)
    with pytest.raises(ValueError, match="spike_rates"):
        hardware.spike_rate_vector({"a/kernel": -0.1}, specs)
    with pytest.raises(ValueError, match="unknown layer"):
        hardware.spike_rate_vector({"nope/kernel": 0.5}, specs)
    with pytest.raises(ValueError, match="spike_rates"):
        hardware.spike_rate_vector({"a/kernel": "high"}, specs)


def test_int32_overflow_is_refused():
    shapes = {"a/kernel": (3, 3, 4096, 4096)}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[1], skip_first=False)
    tables = [{"input_split": np.zeros((4096, 4097), np.int32)}]  # LayerTables: one per mapping
    cfg = hardware.make_config(n_pe=2**20, mapping="input_split")
    with pytest.raises(ValueError, match="n_pe"):
        hardware.simulate(tables, specs, cfg)


def test_ratios_against_baseline():
    rng = np.random.default_rng(4)
    shapes = {"a/kernel": (3, 3, 3, 8), "b/kernel": (3, 3, 8, 16)}
    sparse = {k: _random_mask(rng, s, 0.1) for k, s in shapes.items()}
    dense = {k: np.ones(s, bool) for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[8, 8], skip_first=False)
    configs = hardware.config_grid(n_pe=[2, 8], mapping=list(hardware.MAPPINGS))
    rows = hardware.sweep_networks(
        {"s": sparse, "d": dense}, specs, configs, baseline="d", energy_model="horowitz45"
    )
    assert len(rows) == 8 and all(("vs_baseline" in r) == (r["masks"] == "s") for r in rows)
    r = rows[0]
    assert r["vs_baseline"]["cycles"] == pytest.approx(
        r["network"]["cycles"] / rows[4]["network"]["cycles"]
    )
    flat = hardware.flat_row(r)
    assert flat["baseline"] == "d" and "vs_baseline_energy_total" in flat and "energy_idle" in flat


_SHARDED = textwrap.dedent(
    """
    import jax, numpy as np
    from uticket_jax import hardware
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(5)
    shapes = {"a/kernel": (3, 3, 3, 10), "b/kernel": (3, 3, 10, 7), "fc/kernel": (7, 4)}
    masks = {k: rng.random(s) < 0.3 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[6, 3, 1], skip_first=False)
    configs = hardware.config_grid(
        n_pe=[1, 2, 3, 5, 8, 13, 64], mapping=list(hardware.MAPPINGS),
        timesteps=[4], activity_aware=[True])
    n = hardware.num_configs(configs)
    configs = hardware.take_configs(configs, np.repeat(np.arange(n), 2))  # x 2 idle energies
    consts = hardware.make_constants("horowitz45", e_idle_pj=np.tile([0.0, 0.05], n))
    rates = {"b/kernel": 0.3}
    kw = dict(spike_rates=rates, energy_model="horowitz45", energy_constants=consts)
    one = hardware.simulate_masks(masks, specs, configs, devices=jax.devices()[:1], **kw)
    many = hardware.simulate_masks(masks, specs, configs, **kw)
    jax.tree.map(np.testing.assert_array_equal, one, many)
    print("SHARDED_OK", hardware.num_configs(configs))
    """
)


@pytest.mark.multidevice
def test_sharded_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED_OK 28" in out.stdout


@pytest.mark.parametrize("name", ["vgg16", "resnet19"])
def test_derived_sizes_match_the_project_models(name):
    models = pytest.importorskip("uticket_jax.models")
    layers = models.describe_layers(
        models.get_model(name, num_classes=10, timesteps=1), (32, 32, 3)
    )
    exact = hardware.specs_from_layers(layers)
    derived = hardware.specs_from_shapes({x.path: x.kernel_shape for x in layers}, input_size=32)
    assert exact == derived


def test_simulate_compiles_once_and_keeps_dtypes():
    shapes = ARCHS[0]
    rng = np.random.default_rng(6)
    masks = {k: _random_mask(rng, s, 0.4) for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 2, 1])
    tables = hardware.network_tables(masks, specs)
    first = hardware.config_grid(n_pe=[1, 2, 3], mapping=list(hardware.MAPPINGS))
    res = hardware.simulate(tables, specs, first)
    before = assembly._simulate_mapping._cache_size()
    second = hardware.config_grid(n_pe=[5, 7, 9, 11], mapping=list(hardware.MAPPINGS))
    hardware.simulate(tables, specs, second)  # other n, same buckets: no new compilation
    assert assembly._simulate_mapping._cache_size() == before
    assert res.layers.latency.dtype == np.int32 and res.network.wasted.dtype == np.int32
    assert res.layers.cycles.dtype == np.float32 and res.network.energy_total.dtype == np.float32
    assert res.layers.cycles.shape == (6, 3) and res.network.cycles.shape == (6,)
