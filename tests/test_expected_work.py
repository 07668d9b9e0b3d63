"""The expected_work target: a per-PE loop oracle, invariants, the all-ones reduction, contracts.

The oracle knows a mapping only through its assignment (`oracle.pe_slices`), so the two built-in
mappings and the test mapping `input_interleaved` (`test_mapping_registry.INTERLEAVED`) are
checked alike, on both backends and both policies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from tests.test_mapping_registry import INTERLEAVED
from tests.test_rebalance_compile import CompileCounter
from uticket_jax import workload

U = workload.COST_UNITS
EW = workload.EXPECTED_WORK
ALL = ["output_channel", "input_split", INTERLEAVED.name]


@pytest.fixture(autouse=True, scope="module")
def _interleaved():
    with workload.registered_mapping(INTERLEAVED, check=False):
        yield


# ---- the loop oracle, from the definitions (expected.py's module docstring) ---------------------


def _units(costs, shape):
    c = np.broadcast_to(np.asarray(costs, np.float32), shape).ravel()
    return [min(max(int(np.round(x * np.float32(U))), 1), U) for x in c]


def oracle_rebalance(mask, prio, costs, n, mapping):
    """`(new_mask, work [G, n], target [G])`: one group, one PE at a time."""
    shape = np.shape(mask)
    flat = np.asarray(mask).ravel().copy()
    pr = np.asarray(prio, np.float32).ravel()
    u = _units(costs, shape)
    q = max(u)
    groups = oracle.pe_slices(shape, n, mapping)
    work = np.array([[sum(u[i] for i in idx if flat[i]) for idx in pes] for pes in groups])
    tgts = []
    for g, pes in enumerate(groups):
        e = [int(x) for x in work[g]]
        cap = [sum(u[i] for i in idx) for idx in pes]
        count = [sum(int(flat[i]) for i in idx) for idx in pes]
        level = 0
        while sum(min(c, level) for c in cap) < sum(e):
            level += 1
        t = min(max(e), -(-level // q) * q)
        tgts.append(t)
        for j, idx in enumerate(pes):
            if e[j] > t:  # drop the lowest priority first until E <= T
                for i in sorted((i for i in idx if flat[i]), key=lambda i: (pr[i], i)):
                    if e[j] <= t:
                        break
                    flat[i], e[j] = False, e[j] - u[i]
            elif e[j] < t:  # regrow the highest priority first while E <= T and count room
                room = max(count) - count[j]
                for i in sorted((i for i in idx if not flat[i]), key=lambda i: (-pr[i], i)):
                    if room == 0 or e[j] + u[i] > t:
                        break
                    flat[i], e[j], room = True, e[j] + u[i], room - 1
    return flat.reshape(shape), work, np.array(tgts)


def _case(seed, shape, p, ties=False, silent=0.0):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < p
    w = rng.standard_normal(shape).astype(np.float32)
    c_shape = (1, 1, shape[2], 1) if len(shape) == 4 else (shape[0], 1)
    costs = rng.random(c_shape).astype(np.float32)
    costs[rng.random(c_shape) < silent] = 0.0
    return mask, (np.round(w) if ties else w), costs


SHAPES = [((3, 3, 5, 7), 4), ((1, 1, 9, 3), 4), ((2, 2, 6, 2), 1), ((7, 5), 3), ((12, 9), 5)]


@pytest.mark.parametrize("backend", workload.BACKENDS)
@pytest.mark.parametrize("mapping", ALL)
@pytest.mark.parametrize("shape, n", SHAPES)
def test_matches_the_loop_oracle(shape, n, mapping, backend):
    for seed, ties, silent in [(0, False, 0.0), (1, True, 0.3)]:
        mask, w, costs = _case(seed, shape, 0.4, ties, silent)
        kw = dict(n_pe=n, mapping=mapping, target=EW, costs=costs, backend=backend)
        new, rep = workload.rebalance_layer(mask, w, **kw)
        want, _, _ = oracle_rebalance(mask, np.abs(w), costs, n, mapping)
        np.testing.assert_array_equal(new, want)
        np.testing.assert_array_equal(rep.loads_before, oracle.loads_of(mask, n, mapping))
        np.testing.assert_array_equal(rep.loads_after, oracle.loads_of(want, n, mapping))
    key = jax.random.key(3)
    new_r, _ = workload.rebalance_layer(mask, None, policy="random", key=key, **kw)
    prio = np.asarray(workload.random_priorities(key, shape))
    np.testing.assert_array_equal(new_r, oracle_rebalance(mask, prio, costs, n, mapping)[0])


def _units_work(mask, costs, n, mapping):
    return np.round(workload.expected_work(mask, costs, n, mapping) * U).astype(np.int64)


@settings(max_examples=12, deadline=None)
@given(
    dims=st.sampled_from([(3, 3, 6, 5), (1, 1, 8, 7), (11, 6)]),
    n=st.sampled_from([1, 3, 4]),
    p=st.floats(0.0, 1.0),
    silent=st.sampled_from([0.0, 0.5, 1.0]),
    mapping=st.sampled_from(ALL),
    policy=st.sampled_from(workload.POLICIES),
    seed=st.integers(0, 2**16),
)
def test_invariants(dims, n, p, silent, mapping, policy, seed):
    mask, w, costs = _case(seed, dims, p, silent=silent)
    kw = dict(n_pe=n, mapping=mapping, target=EW, costs=costs, policy=policy)
    new, rep = workload.rebalance_layer(mask, w, key=jax.random.key(seed), **kw)
    new = np.asarray(new)
    prio = (
        np.abs(w)
        if policy == "magnitude"
        else workload.random_priorities(jax.random.key(seed), dims)
    )
    _, _, tgt = oracle_rebalance(mask, prio, costs, n, mapping)
    e0, e1 = _units_work(mask, costs, n, mapping), _units_work(new, costs, n, mapping)
    assert np.all(e1 <= tgt[:, None])  # every PE at or below its group's target
    assert np.all(e1.max(1) <= e0.max(1))  # the busiest PE's expected work never grows
    c0, c1 = oracle.loads_of(mask, n, mapping), oracle.loads_of(new, n, mapping)
    assert np.all(c1.max(1) <= c0.max(1))  # nor its count (weight-only latency)
    up = oracle.loads_of(new & ~mask, n, mapping)
    down = oracle.loads_of(mask & ~new, n, mapping)
    assert not np.any((up > 0) & (down > 0))  # a PE only regrows or only drops
    assert np.all((up == 0) | (e0 < tgt[:, None])) and np.all((down == 0) | (e0 > tgt[:, None]))
    np.testing.assert_array_equal(rep.loads_after, c1)
    assert int(rep.regrown) == up.sum() and int(rep.dropped) == down.sum()


@settings(max_examples=8, deadline=None)
@given(
    dims=st.sampled_from([(3, 3, 6, 5), (1, 1, 8, 7), (11, 6)]),
    n=st.sampled_from([1, 3, 4]),
    p=st.floats(0.0, 1.0),
    mapping=st.sampled_from(ALL),
    backend=st.sampled_from(workload.BACKENDS),
    seed=st.integers(0, 2**16),
)
def test_all_costs_one_is_ceil_mean_bit_for_bit(dims, n, p, mapping, backend, seed):
    mask, w, costs = _case(seed, dims, p)
    kw = dict(n_pe=n, mapping=mapping, backend=backend)
    want, _ = workload.rebalance_layer(mask, w, **kw)
    got, _ = workload.rebalance_layer(mask, w, target=EW, costs=np.ones_like(costs), **kw)
    np.testing.assert_array_equal(got, want)


def test_balanced_expected_work_is_left_alone_and_quiet_inputs_take_the_work():
    # input_split, one output channel, 2 PEs: PE 0 holds channels 0-1 (rate 1), PE 1 channels
    # 2-3 (rate 1/4). Equal counts (weight-only balanced) but expected work 4 vs 1.
    mask = np.zeros((2, 2, 4, 1), bool)
    mask[:, :, 0, 0] = mask[:, :, 2, 0] = True
    w = np.arange(16, dtype=np.float32).reshape(mask.shape) + 1
    costs = np.array([1, 1, 0.25, 0.25], np.float32).reshape(1, 1, 4, 1)
    kw = dict(n_pe=2, mapping="input_split", target=EW, costs=costs)
    new, _ = workload.rebalance_layer(mask, w, **kw)
    e0 = workload.expected_work(mask, costs, 2, "input_split")
    e1 = workload.expected_work(new, costs, 2, "input_split")
    assert e0.tolist() == [[4.0, 1.0]]
    # In units: E = (1024, 256), capacities (2048, 512), L* = 768, T = 768: PE 0 drops its
    # smallest weight; PE 1 may not regrow (its count already is the group's largest, 4).
    assert e1.tolist() == [[3.0, 1.0]]
    again, _ = workload.rebalance_layer(np.asarray(new), w, **kw)
    assert workload.expected_work(again, costs, 2, "input_split").max() <= e1.max()
    flat = {"x": mask}
    same, _ = workload.rebalance(
        flat,
        {"x": w},
        n_pe=2,
        mapping="input_split",
        target=EW,
        costs={"x": np.full((1, 1, 4, 1), 0.5, np.float32)},
    )
    np.testing.assert_array_equal(same["x"], mask)  # equal work: nothing moves


def test_network_rebalances_only_the_included_layers_and_both_backends_agree():
    rng = np.random.default_rng(5)
    shapes = {"c0": (3, 3, 3, 8), "c1": (3, 3, 8, 12), "c2": (3, 3, 12, 6), "fc": (6, 4)}
    masks = {k: rng.random(s) < 0.3 for k, s in shapes.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    costs = {
        k: rng.random((1, 1, s[2], 1) if len(s) == 4 else (s[0], 1)).astype(np.float32)
        for k, s in shapes.items()
    }
    costs["c0"] = None  # not analysed (first conv): no rates needed
    kw = dict(n_pe=4, mapping="output_channel", target=EW)
    new, rep = workload.rebalance_network(masks, weights, costs=costs, **kw)
    host, _ = workload.rebalance_network(masks, weights, costs=costs, backend="numpy", **kw)
    for k in shapes:
        np.testing.assert_array_equal(new[k], host[k])
    assert rep.analysed == (False, True, True, False)
    np.testing.assert_array_equal(new["c0"], masks["c0"])
    np.testing.assert_array_equal(new["fc"], masks["fc"])
    for k in ("c1", "c2"):
        want, _, _ = oracle_rebalance(masks[k], np.abs(weights[k]), costs[k], 4, "output_channel")
        np.testing.assert_array_equal(new[k], want)


def test_jit_vmap_over_keys_and_no_recompilation():
    mask, _, costs = _case(2, (3, 3, 6, 8), 0.4)
    masks, cst = {"a": jnp.asarray(mask)}, {"a": jnp.asarray(costs)}
    kw = dict(n_pe=4, mapping="input_split", target=EW, policy="random", costs=cst)
    keys = jax.random.split(jax.random.key(1), 3)
    batched, _ = jax.vmap(lambda k: workload.rebalance(masks, None, k, **kw))(keys)
    jitted = jax.jit(lambda k: workload.rebalance(masks, None, k, **kw)[0])
    for i in range(3):
        one, _ = workload.rebalance(masks, None, keys[i], **kw)
        np.testing.assert_array_equal(batched["a"][i], one["a"])
        np.testing.assert_array_equal(jitted(keys[i])["a"], one["a"])
    assert batched["a"].dtype == jnp.bool_
    mask2, w2, costs2 = _case(9, (3, 3, 6, 8), 0.2)
    lkw = dict(n_pe=4, mapping="output_channel", target=EW)
    workload.rebalance_layer(mask, w2, costs=costs, **lkw)
    with CompileCounter() as cc:
        workload.rebalance_layer(mask2, w2, costs=costs2, **lkw)
    assert cc.count == 0, cc.names


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target=EW), "costs: required"),
        (dict(costs=np.ones((1, 1, 4, 1), np.float32)), "costs: only used"),
        (dict(target=EW, costs=np.ones((4,), np.float32)), "costs: shape"),
        (dict(target=EW, costs=np.ones((1, 1, 3, 1), np.float32)), "costs: shape"),
        (dict(target=EW, costs=np.ones((1, 1, 4, 1), np.int32)), "floating point"),
        (dict(target=EW, costs=np.full((1, 1, 4, 1), np.nan, np.float32)), r"in \[0, 1\]"),
        (dict(target=EW, costs=np.full((1, 1, 4, 1), 1.5, np.float32)), r"in \[0, 1\]"),
        (dict(target=EW, costs=np.full((1, 1, 4, 1), -0.1, np.float32)), r"in \[0, 1\]"),
        (dict(target="expected"), "target: unknown target"),
    ],
)
def test_bad_input(kwargs, match):
    mask = np.ones((3, 3, 4, 2), bool)
    with pytest.raises(ValueError, match=match):
        workload.rebalance_layer(mask, np.ones(mask.shape, np.float32), n_pe=2, **kwargs)


def test_network_names_the_layer_without_costs():
    masks = {"a": np.ones((3, 3, 2, 4), bool), "b": np.ones((3, 3, 4, 4), bool)}
    weights = {k: np.ones(v.shape, np.float32) for k, v in masks.items()}
    with pytest.raises(ValueError, match=r"costs\['b'\]: required"):
        workload.rebalance_network(masks, weights, n_pe=2, target=EW, costs={"a": None})
