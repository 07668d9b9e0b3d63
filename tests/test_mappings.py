"""PE mappings and loads: loop-oracle equality, slot-layout round trips, contracts, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from uticket_jax.workload import mappings as mp
from uticket_jax.workload import metrics

SHAPES = [(3, 3, 5, 7), (1, 1, 2, 3), (3, 3, 16, 8), (2, 2, 3, 1), (6, 10), (1, 1), (4, 33)]
NS = [1, 3, 4, 40]


@pytest.mark.parametrize("mapping", list(mp.MAPPINGS))
@pytest.mark.parametrize("shape", SHAPES)
def test_loads_match_oracle(mapping, shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    mask = rng.random(shape) < 0.4
    for n in NS:
        loads = mp.pe_loads(mask, n, mapping)
        assert loads.dtype == jnp.int32
        np.testing.assert_array_equal(loads, oracle.loads_of(mask, n, mapping))
        m = mp.get_mapping(mapping)
        np.testing.assert_array_equal(m.derived().loads(mask, n, np), loads)  # the derived view
        np.testing.assert_array_equal(m.loads(mask, n, np), loads)  # the numpy fast path
        table = mp.count_table(mask, mapping)
        np.testing.assert_array_equal(
            m.host_group_loads(table, shape, n)[1][: len(loads)], np.asarray(loads).max(1)
        )
        caps = [[len(p) for p in pes] for pes in oracle.pe_slices(shape, n, mapping)]
        np.testing.assert_array_equal(mp.pe_capacity(shape, n, mapping), caps)


@settings(max_examples=12, deadline=None)
@given(
    dims=st.lists(st.integers(1, 9), min_size=2, max_size=4).filter(lambda d: len(d) != 3),
    n=st.integers(1, 12),
    p=st.floats(0.0, 1.0),
    mapping=st.sampled_from(list(mp.MAPPINGS)),
    seed=st.integers(0, 2**16),
)
def test_slots_round_trip_and_loads(dims, n, p, mapping, seed):
    shape = tuple(dims)
    mask = np.random.default_rng(seed).random(shape) < p
    slots = mp.to_slots(mask, n, mapping, False)
    valid = mp.slot_valid(shape, n, mapping)
    assert slots.shape == valid.shape
    assert not np.any(np.asarray(slots) & ~np.asarray(valid))  # padding holds nothing
    np.testing.assert_array_equal(mp.from_slots(slots, shape, n, mapping), mask)
    np.testing.assert_array_equal(slots.sum(-1), mp.pe_loads(mask, n, mapping))
    np.testing.assert_array_equal(mp.pe_loads(mask, n, mapping), oracle.loads_of(mask, n, mapping))
    # Slots of a PE are in increasing hwio flat index ("ties by index" is mapping-independent).
    idx = np.asarray(mp.to_slots(np.arange(mask.size).reshape(shape), n, mapping, -1))
    for row in idx.reshape(-1, idx.shape[-1]):
        row = row[row >= 0]
        assert np.all(np.diff(row) > 0)
    # Slot-major columns (the rebalance kernels' layout): column p is PE pe_cols(ids)[p]'s slots.
    m = mp.get_mapping(mapping)
    g, _, c = idx.shape
    cols = np.asarray(m.to_cols(jnp.asarray(np.arange(mask.size).reshape(shape)), n, -1))
    owner = np.asarray(m.pe_cols(jnp.arange(g * n).reshape(g, n)))
    np.testing.assert_array_equal(cols.T, idx.reshape(g * n, c)[owner])
    np.testing.assert_array_equal(
        m.from_cols(m.to_cols(jnp.asarray(mask), n, False), shape, n), mask
    )
    # Total load is the mask's non-zero count; capacity sums to the kernel size.
    assert int(mp.pe_loads(mask, n, mapping).sum()) == int(mask.sum())
    assert int(mp.pe_capacity(shape, n, mapping).sum()) == mask.size


@pytest.mark.parametrize("mapping", list(mp.MAPPINGS))
def test_metrics_match_oracle(mapping):
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        mask = rng.random(shape) < 0.3
        for n in NS:
            loads = mp.pe_loads(mask, n, mapping)
            got = metrics.loads_metrics(loads).to_dict()
            want = oracle.metrics_of(np.asarray(loads))
            for k, v in want.items():
                if v is None:
                    assert got[k] is None
                else:
                    assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, shape, n)


@given(st.integers(1, 40), st.integers(1, 500), st.data())
@settings(max_examples=200, deadline=None)
def test_normalized_utilization_is_the_exact_fraction(n, mx, data):
    # The paper's 1 - (max - ceil(mean)) / max * n / (n - 1), correctly rounded to float32: in
    # particular exactly 0 or 1 where the fraction is (float arithmetic gave -3e-8 for 3, 3, 3).
    total = data.draw(st.integers(mx, mx * n))  # a group whose busiest PE carries mx
    _, norm, _ = metrics.group_figures(jnp.array([total]), jnp.array([mx]), n)
    cm = -(-total // n)
    want = 1.0 if n == 1 else (mx * (n - 1) - (mx - cm) * n) / (mx * (n - 1))
    assert float(norm[0]) == float(np.float32(want)), (n, mx, total)


def test_idle_pes_and_edge_geometry():
    mask = np.ones((1, 1, 5, 5), bool)  # c_out = 5, n = 4: last group has 1 busy PE
    np.testing.assert_array_equal(mp.pe_loads(mask, 4), [[5, 5, 5, 5], [5, 0, 0, 0]])
    # input_split, c_in = 5, n = 4: slices of 2, 2, 1, 0 channels
    np.testing.assert_array_equal(mp.pe_loads(mask, 4, "input_split"), [[2, 2, 1, 0]] * 5)
    # c_in < n: trailing PEs idle
    np.testing.assert_array_equal(mp.pe_loads(mask, 8, "input_split")[0], [1, 1, 1, 1, 1, 0, 0, 0])
    assert mp.pe_loads(np.zeros((3, 3, 4, 4), bool), 2).sum() == 0


def test_jit_contract_no_retrace():
    mask = np.random.default_rng(0).random((3, 3, 8, 8)) < 0.5
    mp.pe_loads(mask, 4, "input_split")
    size = mp._pe_loads._cache_size()
    mp.pe_loads(~mask, 4, "input_split")
    assert mp._pe_loads._cache_size() == size
    # Usable inside a user's jit.
    out = jax.jit(lambda m: mp.pe_loads(m, 4))(jnp.asarray(mask))
    np.testing.assert_array_equal(out, mp.pe_loads(mask, 4))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: mp.pe_loads(m, 0), "n_pe"),
        (lambda m: mp.pe_loads(m, -2), "n_pe"),
        (lambda m: mp.pe_loads(m, 2.0), "n_pe"),
        (lambda m: mp.pe_loads(m, 2, "tiles"), "mapping.*output_channel"),
        (lambda m: mp.pe_loads(m.astype(np.int32), 2), "mask.*boolean"),
        (lambda m: mp.pe_loads(m[0], 2), "mask"),
        (lambda m: mp.get_mapping("nope"), "allowed: output_channel, input_split"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.ones((3, 3, 4, 4), bool))
