"""Spike-driven per-PE work and figures (`hardware.spike_work`, `hardware.spikes`).

A plain loop oracle written from the semantics (every time step, example, output position, PE
and weight, the PE's weights from the mapping's assignment via `tests/oracle.pe_slices`) against
both kernel paths for the two built-ins and the test file's third mapping; the all-spiking
equality with the weight-only simulator; the never-above property; the jit contract; the
trace checks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from tests.test_mapping_registry import INTERLEAVED
from uticket_jax import hardware, workload
from uticket_jax.hardware import spike_plans
from uticket_jax.hardware import spike_work as sw
from uticket_jax.workload.kernel import as_hwio4

MAPPINGS = ["output_channel", "input_split", INTERLEAVED.name]


@pytest.fixture(scope="module", autouse=True)
def _interleaved():
    with workload.registered_mapping(INTERLEAVED, check=False):
        yield


def oracle_work(x, mask, mapping, n, stride):
    """Per-group `(work, cycles, ceil_mean)` sums over the trace, one PE and weight at a time."""
    x = np.asarray(x, bool)
    if x.ndim == 3:
        x = x[:, :, None, None, :]
    shape = mask.shape if mask.ndim == 4 else (1, 1, *mask.shape)
    kh, kw, ci, co = shape
    t_, b_, h, w, _ = x.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    pes = oracle.pe_slices(shape, n, mapping)
    flat = np.asarray(mask).ravel()
    out = np.zeros((3, len(pes)), np.int64)
    for t in range(t_):
        for b in range(b_):
            for oy in range(ho):
                for ox in range(wo):
                    for g, group in enumerate(pes):
                        work = []
                        for weights in group:
                            s = 0
                            for f in weights:
                                a, r = divmod(f, kw * ci * co)
                                c, r = divmod(r, ci * co)
                                i = r // co
                                y, z = oy * stride + a - ph, ox * stride + c - pw
                                inside = 0 <= y < h and 0 <= z < w  # padding never spikes
                                s += bool(flat[f] and inside and x[t, b, y, z, i])
                            work.append(s)
                        out[:, g] += (sum(work), max(work), -(-sum(work) // n))
    return out


# (mask shape, input h x w or None for dense, stride): padding, stride 2, 1x1 stride 2, dense.
LAYERS = [
    ((3, 3, 5, 7), (5, 5), 1),
    ((3, 3, 6, 4), (6, 6), 2),
    ((1, 1, 6, 5), (4, 4), 2),
    ((6, 5), None, 1),
]


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda x: "x".join(map(str, x[0])))
def test_work_matches_the_loop_oracle(mapping, layer):
    shape, hw, stride = layer
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.5
    x = rng.random((2, 2, *(hw or ()), shape[-2])) < 0.3
    kh, kw = shape[:2] if len(shape) == 4 else (1, 1)
    geo = sw.Geometry((stride, stride), (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2))
    ns = (1, 3, 4)
    for path in ("dense", "sparse", "generic"):  # "auto": one of the first two, by density
        got = sw.spike_work(x, mask, mapping, ns, geo, path)
        for n in ns:
            want = oracle_work(x, mask, mapping, n, stride)
            np.testing.assert_array_equal(np.stack(got[n]), want, err_msg=f"{path} n={n}")
    one = hardware.layer_spike_work(x, mask, mapping=mapping, n_pe=3, stride=stride)
    np.testing.assert_array_equal(np.stack(one), oracle_work(x, mask, mapping, 3, stride))


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_fast_paths_equal_the_generic_path_and_refine(mapping):
    """Input-side products at the largest n give the smaller n's that it refines."""
    rng = np.random.default_rng(1)
    mask = rng.random((3, 3, 16, 6)) < 0.2
    x = rng.random((2, 3, 6, 6, 16)) < 0.2
    geo = sw.Geometry((1, 1), ((1, 1), (1, 1)))
    ns = (2, 4, 8, 3)
    generic = sw.spike_work(x, mask, mapping, ns, geo, "generic")
    for path in ("dense", "sparse", "auto"):
        fast = sw.spike_work(x, mask, mapping, ns, geo, path)
        for n in ns:
            np.testing.assert_array_equal(np.stack(fast[n]), np.stack(generic[n]), err_msg=path)
    m = workload.get_mapping(mapping)
    auto = spike_plans.build_plan(m, as_hwio4(mask.shape), ns, geo, "auto", 6, 36, mask)[0].kind
    assert auto == ("output" if mapping == "output_channel" else "sparse")
    plan, _ = spike_plans.build_plan(m, as_hwio4(mask.shape), ns, geo, "dense", 6, 36, mask)
    if mapping == "output_channel":
        assert plan.kind == "output"
    elif mapping == "input_split":  # slices of 2 channels refine those of 4, 8 and 6 (n = 3)
        assert plan.kind == "input" and plan.bases == (8,)
    else:  # c_in mod 8 refines mod 4 and mod 2, not mod 3
        assert plan.kind == "input" and plan.bases == (8, 3)


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_chunks_of_the_trace_add_up_to_the_whole(mapping, monkeypatch):
    # The sparse path's chunk budget (smaller on a CPU) only splits the T*B axis: the sums of
    # many one-step chunks (the last one padded with zero spikes) equal those of one chunk.
    rng = np.random.default_rng(5)
    mask = rng.random((3, 3, 8, 6)) < 0.2
    x = rng.random((3, 3, 5, 5, 8)) < 0.3  # T*B = 9
    geo = sw.Geometry((1, 1), ((1, 1), (1, 1)))
    ns = (2, 4, 3)
    whole = sw.spike_work(x, mask, mapping, ns, geo, "sparse")
    m = workload.get_mapping(mapping)
    plan, _ = spike_plans.build_plan(m, as_hwio4(mask.shape), ns, geo, "sparse", 9, 25, mask, 1)
    assert (plan.chunk, plan.chunks) == (1, 9)
    for budget in ("CHUNK_BYTES", "CPU_SPARSE_CHUNK_BYTES"):
        monkeypatch.setattr(sw, budget, 1)
    chunked = sw.spike_work(x, mask, mapping, ns, geo, "sparse")
    for n in ns:
        np.testing.assert_array_equal(np.stack(chunked[n]), np.stack(whole[n]))
    np.testing.assert_array_equal(np.stack(whole[4]), oracle_work(x, mask, mapping, 4, 1))


def _net(rng, p=0.4):
    shapes = {"c0": (3, 3, 3, 8), "c1": (1, 1, 8, 12), "c2": (1, 1, 12, 6), "d": (24, 5)}
    masks = {k: rng.random(s) < p for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 4, 2, 1], conv_only=False)
    return masks, specs


CONFIGS = dict(n_pe=[1, 3, 4, 16], mapping=MAPPINGS)


def _assert_figures(got, want, exact):
    for part in ("layers", "network"):
        g, w = getattr(got, part), getattr(want, part)
        for f in ("utilization", "utilization_normalized", "latency", "wasted", "dynamic"):
            a, b = (np.asarray(getattr(r, f), np.float64) for r in (g, w))
            np.testing.assert_allclose(a, b, rtol=0 if exact else 1e-6, err_msg=f"{part} {f}")
        for f in ("cycles", "seconds", "wasted_pe_cycles", "energy_total", "energy_onchip"):
            a, b = getattr(g, f), getattr(w, f)
            np.testing.assert_allclose(a, b, rtol=0 if exact else 1e-6, err_msg=f"{part} {f}")
        for k in g.counts._fields:
            np.testing.assert_array_equal(getattr(g.counts, k), getattr(w.counts, k), err_msg=k)
        assert list(g.energy_terms) == list(w.energy_terms)
        np.testing.assert_array_equal(g.energy_dram, w.energy_dram)
        for k in g.energy_terms:
            tol = 0 if exact else 1e-6
            np.testing.assert_allclose(g.energy_terms[k], w.energy_terms[k], rtol=tol, err_msg=k)


def _all_spiking(model):
    masks, specs = _net(np.random.default_rng(0))
    t, b = 3, 2
    spikes = {
        "c1": np.ones((t, b, 4, 4, 8)),
        "c2": np.ones((t, b, 4, 4, 12)),  # 1x1, stride 2
        "d": np.ones((t, b, 24)),
    }
    cfg = hardware.config_grid(timesteps=t, **CONFIGS)
    got = hardware.simulate_spikes(masks, spikes, specs, cfg, energy_model=model)
    assert got.energy_model == model
    return got, (masks, specs, cfg)


@pytest.mark.parametrize("model", ["horowitz45", "sata"])
def test_all_spiking_without_padding_equals_weight_only(model):
    got, (masks, specs, cfg) = _all_spiking(model)
    host = hardware.simulate_masks(masks, specs, cfg, backend="numpy", energy_model=model)
    _assert_figures(got, host, exact=True)  # bit for bit: the same host arithmetic


@pytest.mark.slow
def test_all_spiking_equals_the_compiled_weight_only_simulator():
    got, (masks, specs, cfg) = _all_spiking("horowitz45")
    compiled = hardware.simulate_masks(masks, specs, cfg, backend="jax", energy_model="horowitz45")
    _assert_figures(got, compiled, exact=False)  # XLA rounds sums in another order


COST = ("latency", "dynamic", "cycles", "seconds", "energy_total")


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rate=st.floats(0.0, 1.0),
    p=st.floats(0.05, 1.0),
    model=st.sampled_from(["horowitz45", "sata"]),
    mapping=st.sampled_from(MAPPINGS),
)
def test_spike_driven_cost_is_never_above_weight_only(seed, rate, p, model, mapping):
    rng = np.random.default_rng(seed)
    shapes = {"c0": (3, 3, 2, 4), "c1": (3, 3, 4, 6), "c2": (1, 1, 6, 5), "c3": (3, 3, 5, 4)}
    masks = {k: rng.random(s) < p for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[6, 6, 3, 2], skip_first=True)
    t, b = 2, 2
    spikes = {
        "c1": rng.random((t, b, 6, 6, 4)) < rate,
        "c2": rng.random((t, b, 6, 6, 6)) < rate,  # 1x1 stride 2
        "c3": rng.random((t, b, 3, 3, 5)) < rate,  # 3x3 stride 2, padded
    }
    cfg = hardware.config_grid(timesteps=t, n_pe=[1, 2, 4], mapping=mapping)
    got = hardware.simulate_spikes(masks, spikes, specs, cfg, energy_model=model)
    want = hardware.simulate_masks(masks, specs, cfg, backend="numpy", energy_model=model)
    for part in ("layers", "network"):
        for f in COST:
            a, w = getattr(getattr(got, part), f), getattr(getattr(want, part), f)
            assert (np.asarray(a, np.float64) <= np.asarray(w, np.float64) * (1 + 1e-6)).all(), f
        a, w = getattr(got, part).counts, getattr(want, part).counts
        assert (a.pe_cycles_busy <= w.pe_cycles_busy).all()
        assert (a.accumulates <= w.accumulates).all()


def test_kernel_does_not_recompile_on_new_data():
    rng = np.random.default_rng(2)
    mask = rng.random((3, 3, 4, 6)) < 0.4
    geo = sw.Geometry((1, 1), ((1, 1), (1, 1)))
    sw.spike_work(rng.random((2, 2, 5, 5, 4)) < 0.3, mask, "input_split", (2, 4), geo)
    before = sw._layer_kernel._cache_size()
    other = rng.random(mask.shape) < 0.6
    out = sw.spike_work(rng.random((2, 2, 5, 5, 4)) < 0.5, other, "input_split", (2, 4), geo)
    assert sw._layer_kernel._cache_size() == before
    assert all(a.dtype == np.int64 for a in out[2])


def _trace(specs, t=2, b=2):
    rng = np.random.default_rng(3)
    return {
        "c1": rng.random((t, b, 4, 4, 8)) < 0.5,
        "c2": rng.random((t, b, 4, 4, 12)) < 0.5,
        "d": (rng.random((t, b, 24)) < 0.5).astype(np.float32),
    }


BAD = {
    "the trace is empty": lambda s: {},
    "'nope' is not a layer": lambda s: {**s, "nope": s["d"]},
    "layer 'c0' is not analysed": lambda s: {**s, "c0": np.zeros((2, 2, 4, 4, 3))},
    "no inputs for analysed layer 'c2'": lambda s: {k: v for k, v in s.items() if k != "c2"},
    "layer 'c1' has shape (2, 2, 4, 4, 7); expected [T, B, H, W, C_in=8]": lambda s: {
        **s,
        "c1": np.zeros((2, 2, 4, 4, 7)),
    },
    "layer 'c1' has shape (2, 2, 8); expected": lambda s: {**s, "c1": np.zeros((2, 2, 8))},
    "layer 'c2' has 1x1 inputs, which no stride maps to its 2x2 output": lambda s: {
        **s,
        "c2": np.zeros((2, 2, 1, 1, 12)),
    },
    "layer 'c2' has T, B = (2, 3); layer 'c1' has (2, 2)": lambda s: {
        **s,
        "c2": np.zeros((2, 3, 4, 4, 12)),
    },
    "layer 'd' holds values other than 0/1 (e.g. 0.5)": lambda s: {**s, "d": s["d"] * 0.5},
    "layer 'd' has dtype <U1; expected bool or 0/1": lambda s: {**s, "d": np.full((2, 2, 24), "a")},
    "layer 'c1' has an empty trace": lambda s: {**s, "c1": np.zeros((0, 2, 4, 4, 8))},
}


@pytest.mark.parametrize("message", list(BAD))
def test_check_spikes_errors(message):
    _, specs = _net(np.random.default_rng(0))
    good = _trace(specs)
    out = hardware.check_spikes(good, specs, "t.npz")
    assert list(out) == ["c1", "c2", "d"] and all(v.dtype == bool for v in out.values())
    with pytest.raises(ValueError) as e:
        hardware.check_spikes(BAD[message](good), specs, "t.npz")
    line = str(e.value)
    assert line.startswith("t.npz: ") and message in line and "\n" not in line, line


def test_simulate_spikes_refuses_other_timesteps():
    masks, specs = _net(np.random.default_rng(0))
    cfg = hardware.config_grid(timesteps=[2, 3])
    with pytest.raises(
        ValueError, match=r"configs: timesteps \[2, 3\] differ from the trace's T = 2"
    ):
        hardware.simulate_spikes(masks, _trace(specs), specs, cfg)
