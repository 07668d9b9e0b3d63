"""u-Ticket rebalance: loop-oracle equality, hypothesis invariants, network level, contracts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from uticket_jax import workload
from uticket_jax.workload import mappings as mp
from uticket_jax.workload import (
    network_workload,
    priorities,
    rebalance_layer,
    rebalance_network,
    report_to_json,
)
from uticket_jax.workload import selection as sel

MAPPINGS = list(mp.MAPPINGS)


def _apply(mask, prio, delta, *, m, n_pe):
    """`selection.apply_layer` in a fresh jit (so a patched module constant is traced anew)."""
    fn = jax.jit(lambda x, p, d: sel.apply_layer(x, p, d, m=m, n_pe=n_pe))
    return fn(mask, prio, delta)


def _case(seed, shape, p, ties=False):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < p
    w = rng.standard_normal(shape).astype(np.float32)
    return mask, (np.round(w) if ties else w)


@pytest.mark.parametrize("target", workload.TARGETS)
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize(
    "shape, n",
    [((3, 3, 5, 7), 4), ((1, 1, 3, 9), 8), ((2, 2, 6, 2), 1), ((7, 5), 16), ((9, 12), 5)],
)
def test_matches_oracle(shape, n, mapping, target):
    for seed, ties in [(0, False), (1, True)]:
        mask, w = _case(seed, shape, 0.3, ties)
        new, rep = rebalance_layer(mask, w, n_pe=n, mapping=mapping, target=target)
        want, loads, tgt = oracle.rebalance(mask, np.abs(w), n, mapping, target)
        np.testing.assert_array_equal(new, want)
        np.testing.assert_array_equal(rep.loads_before, loads)
        np.testing.assert_array_equal(rep.loads_after, tgt)
        if ties:
            continue  # random priorities ignore the weights: one random case per shape is enough
        key = jax.random.key(seed)
        new_r, _ = rebalance_layer(
            mask, None, n_pe=n, mapping=mapping, target=target, policy="random", key=key
        )
        prio = np.asarray(workload.random_priorities(key, shape))
        np.testing.assert_array_equal(new_r, oracle.rebalance(mask, prio, n, mapping, target)[0])


def _check_invariants(mask, new, rep, n, mapping, target):
    new = np.asarray(new)
    assert new.dtype == bool and new.shape == mask.shape
    before = oracle.loads_of(mask, n, mapping)
    after = oracle.loads_of(new, n, mapping)
    np.testing.assert_array_equal(rep.loads_before, before)
    np.testing.assert_array_equal(rep.loads_after, after)
    caps = mp.pe_capacity(mask.shape, n, mapping)
    assert np.all(after <= caps)
    regrown, dropped = new & ~mask, mask & ~new
    assert int(rep.regrown) == regrown.sum() and int(rep.dropped) == dropped.sum()
    up = oracle.loads_of(regrown, n, mapping)
    down = oracle.loads_of(dropped, n, mapping)
    # A PE either only regrows (was under target) or only drops; its own slice only.
    assert not np.any((up > 0) & (down > 0))
    np.testing.assert_array_equal(after - before, up - down)
    s0, s1 = before.sum(1), after.sum(1)
    if target == "keep_count":
        np.testing.assert_array_equal(s0, s1)
        # Water-filled: every PE is within 1 of the busiest, or full (capacity-capped).
        assert np.all((after >= after.max(1, keepdims=True) - 1) | (after == caps))
    else:
        assert np.all(s1 >= s0) and np.all(s1 - s0 < n)
        full = np.all(caps >= after.max(1, keepdims=True), axis=1)  # no PE held back by capacity
        for g in np.nonzero(full & (s0 > 0))[0]:
            act = after[g][caps[g] > 0]
            assert act.min() == act.max() == -(-s0[g] // (caps[g] > 0).sum())
        s = np.maximum(s0, 1)
        util_full = full & (caps > 0).all(1) & (s0 > 0)
        assert np.all(after[util_full].min(1) == after[util_full].max(1))  # utilization 1.0
        del s


@settings(max_examples=8, deadline=None)
@given(
    dims=st.lists(st.integers(1, 8), min_size=2, max_size=4).filter(lambda d: len(d) != 3),
    n=st.integers(1, 10),
    p=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
    mapping=st.sampled_from(MAPPINGS),
    target=st.sampled_from(workload.TARGETS),
    policy=st.sampled_from(workload.POLICIES),
    seed=st.integers(0, 2**16),
)
def test_invariants(dims, n, p, mapping, target, policy, seed):
    mask, w = _case(seed, tuple(dims), p, ties=seed % 2 == 0)
    kw = dict(n_pe=n, mapping=mapping, target=target, policy=policy, key=jax.random.key(seed))
    new, rep = rebalance_layer(mask, w, **kw)
    _check_invariants(mask, new, rep, n, mapping, target)
    again, rep2 = rebalance_layer(new, w, **kw)  # balanced -> unchanged (idempotent)
    np.testing.assert_array_equal(again, new)
    assert int(rep2.regrown) == int(rep2.dropped) == 0
    same, _ = rebalance_layer(mask, w, **kw)  # same key, same result
    np.testing.assert_array_equal(same, new)


def test_balanced_definition():
    # [3, 3, 3, 2] is not at ceil(mean) = 3 for the last PE; under keep_count it is balanced.
    mask = np.ones((1, 1, 3, 4), bool)
    mask[0, 0, 2, 3] = False
    w = np.arange(12, dtype=np.float32).reshape(mask.shape)
    new, rep = rebalance_layer(mask, w, n_pe=4, target="ceil_mean")
    np.testing.assert_array_equal(rep.loads_after, [[3, 3, 3, 3]])
    assert new.all() and int(rep.regrown) == 1
    new, rep = rebalance_layer(mask, w, n_pe=4, target="keep_count")
    np.testing.assert_array_equal(new, mask)
    # keep_count: the +1 goes to the PEs that already carry the most (fewest changes), ties to
    # the lower PE index: loads [0, 5, 0, 2] -> S = 7, level 1, r = 3 -> [2, 2, 1, 2].
    mask = np.zeros((1, 1, 6, 4), bool)
    mask[0, 0, :5, 1] = True
    mask[0, 0, :2, 3] = True
    _, rep = rebalance_layer(mask, np.ones(mask.shape, np.float32), n_pe=4, target="keep_count")
    np.testing.assert_array_equal(rep.loads_after, [[2, 2, 1, 2]])


def test_magnitude_choice_and_ties():
    mask = np.array([[True, False, False, False], [False, False, False, False]]).T  # [4, 2]
    w = np.array([[5.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]], np.float32).T
    # output_channel, n = 2: loads [1, 0] -> ceil_mean target 1 each: PE 1 regrows its largest |w|
    # (all 0, so the lowest index).
    new, _ = rebalance_layer(mask, w, n_pe=2)
    np.testing.assert_array_equal(new[:, 1], [True, False, False, False])
    # input_split, n = 1 with target keep_count is a no-op; n = 2 splits c_in into [0:2], [2:4]
    full = np.ones((4, 1), bool)
    full[1, 0] = False  # loads [1, 2]; keep_count: S = 3, level 1, r = 1 to the larger PE -> no-op
    new, _ = rebalance_layer(full, w[:, :1], n_pe=2, mapping="input_split", target="keep_count")
    np.testing.assert_array_equal(new, full)
    new, _ = rebalance_layer(full, w[:, :1], n_pe=2, mapping="input_split")  # ceil_mean -> [2, 2]
    np.testing.assert_array_equal(new[:, 0], [True, True, True, True])
    # Drop: loads [3, 0] with w [1, 3, 3] -> keep_count target [2, 1]... PE 1 has one slot only.
    m3 = np.array([[True], [True], [True], [False]])
    w3 = np.array([[1.0], [3.0], [3.0], [9.0]], np.float32)
    new, rep = rebalance_layer(m3, w3, n_pe=2, mapping="input_split", target="keep_count")
    # slices [0:2] and [2:4]: loads [2, 1] -> already within 1 -> unchanged.
    np.testing.assert_array_equal(new, m3)
    m4 = np.array([[True], [True], [True], [True], [False], [False]])
    w4 = np.array([[1.0], [2.0], [2.0], [0.5], [4.0], [0.0]], np.float32)
    new, rep = rebalance_layer(m4, w4, n_pe=2, mapping="input_split", target="keep_count")
    # slices [0:3], [3:6]: loads [3, 1] -> [2, 2]: PE 0 drops |w| = 1, PE 1 regrows |w| = 4.
    np.testing.assert_array_equal(new[:, 0], [False, True, True, True, True, False])


def test_random_policy_depends_on_key():
    mask, _ = _case(5, (3, 3, 16, 16), 0.2)
    a, _ = rebalance_layer(mask, n_pe=8, policy="random", key=jax.random.key(0))
    b, _ = rebalance_layer(mask, n_pe=8, policy="random", key=jax.random.key(1))
    assert not np.array_equal(a, b)
    u = np.asarray(workload.random_priorities(jax.random.key(0), (64, 64)))
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02 and len(np.unique(u)) > 4000


def test_capacity_capped_reported():
    mask = np.zeros((1, 1, 5, 1), bool)
    mask[0, 0, :2, 0] = True  # input_split n = 4: slices 2, 2, 1, 0 -> loads [2, 0, 0, 0]
    _, rep = rebalance_layer(mask, np.ones(mask.shape, np.float32), n_pe=4, mapping="input_split")
    np.testing.assert_array_equal(rep.loads_after, [[1, 1, 1, 0]])
    mask[0, 0, :4, 0] = True  # loads [2, 2, 0, 0] -> level 2 (f(2) = 5 >= 4), PE 2 capped at 1
    _, rep = rebalance_layer(mask, np.ones(mask.shape, np.float32), n_pe=4, mapping="input_split")
    np.testing.assert_array_equal(rep.loads_after, [[2, 2, 1, 0]])
    assert int(rep.capped) == 1


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_network_matches_layers(mapping):
    rng = np.random.default_rng(0)
    shapes = {
        "features/conv0/kernel": (3, 3, 3, 8),
        "features/conv1/kernel": (3, 3, 8, 12),
        "features/conv2/kernel": (3, 3, 12, 5),
        "classifier/kernel": (5, 10),
    }
    masks = {k: rng.random(s) < 0.3 for k, s in shapes.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    new, rep = rebalance_network(masks, weights, n_pe=4, mapping=mapping)
    assert list(new) == list(masks) and rep.analysed == (False, True, True, False)
    for name, a in zip(rep.names, rep.analysed, strict=True):
        if a:
            want, _ = rebalance_layer(masks[name], weights[name], n_pe=4, mapping=mapping)
            np.testing.assert_array_equal(new[name], want)
        else:
            np.testing.assert_array_equal(new[name], masks[name])
    assert float(rep.after.utilization) == pytest.approx(
        np.mean([float(rep.layers[i].after.utilization) for i in (1, 2)])
    )
    js = report_to_json(rep)
    assert set(js["layers"][1]) >= {"name", "analysed", "before", "after", "regrown", "dropped"}
    assert set(js["network"]["after"]) == {
        "utilization",
        "utilization_normalized",
        "latency",
        "wasted",
        "dynamic",
    }
    # Random policy: layer i uses fold_in(key, i); a tree input comes back as a tree.
    key = jax.random.key(3)
    tree = {
        "features": {
            "conv0": {"kernel": masks["features/conv0/kernel"]},
            "conv1": {"kernel": masks["features/conv1/kernel"], "bias": None},
        }
    }
    new_t, _ = rebalance_network(tree, n_pe=4, mapping=mapping, policy="random", key=key)
    want, _ = rebalance_layer(
        masks["features/conv1/kernel"],
        n_pe=4,
        mapping=mapping,
        policy="random",
        key=jax.random.fold_in(key, 1),
    )
    np.testing.assert_array_equal(new_t["features"]["conv1"]["kernel"], want)
    assert new_t["features"]["conv1"]["bias"] is None
    per_layer, net_m, keep = network_workload(masks, 4, mapping)
    assert float(net_m.latency) == float(rep.before.latency) and list(keep.values())[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_pe=0), "n_pe"),
        (dict(n_pe=4, mapping="tiles"), "mapping"),
        (dict(n_pe=4, policy="greedy"), "policy"),
        (dict(n_pe=4, target="mean"), "target"),
        (dict(n_pe=4, weights=np.ones((3, 3, 4, 5), np.float32)), "weights.*shape"),
        (dict(n_pe=4, weights=np.ones((3, 3, 4, 4), np.int32)), "weights.*floating"),
        (dict(n_pe=4, weights=None), "weights.*required"),
        (dict(n_pe=4, policy="random"), "key"),
        (dict(n_pe=4, mask=np.ones((3, 3, 4, 4), np.float32)), "mask.*boolean"),
    ],
)
def test_bad_input(kwargs, match):
    kwargs = dict(kwargs)
    mask = kwargs.pop("mask", np.ones((3, 3, 4, 4), bool))
    weights = kwargs.pop("weights", np.ones((3, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=match):
        rebalance_layer(mask, weights, **kwargs)


@pytest.mark.parametrize(
    "mapping, target", [("output_channel", "ceil_mean"), ("input_split", "keep_count")]
)
def test_row_classes_match_oracle(mapping, target):
    # The selection compacts each PE's candidates into the narrowest row class that holds them
    # (run as a loop over column tiles), or, past the widest, ranks its whole column (the direct
    # class): force each layout and compare to the oracle.
    shape, n = (3, 3, 16, 12), 4
    # Half the weights tie (rounded), so ties straddle the thresholds.
    mask, w = _case(8, shape, 0.15, ties=True)
    m = mp.get_mapping(mapping)
    loads = mp.pe_loads(mask, n, mapping)
    tgt = workload.pe_targets(loads, mp.pe_capacity(shape, n, mapping), target)
    delta = tgt - loads
    assert int(np.abs(np.asarray(delta)).max()) >= 2
    want = oracle.rebalance(mask, np.abs(w), n, mapping, target)[0]
    prio = jax.jit(priorities.magnitude_priorities)(jnp.asarray(w))
    layouts = {
        "default": {},
        "8-column tiles": {"_TILE": 64},  # several loop steps per class, padding columns
        "direct only": {"_ROWS": ()},
        "one narrow class": {"_ROWS": (8,), "_TILE": 64},
        "gathers": {"_ONEHOT_W": 0},  # compaction by gathers instead of word reductions
        "loose threshold": {"_T_STEPS": 0},  # every candidate counts: the widest classes
    }
    for label, patches in layouts.items():
        with pytest.MonkeyPatch.context() as patch:
            for name, value in patches.items():
                patch.setattr(sel, name, value)
            got = _apply(jnp.asarray(mask), prio, delta, m=m, n_pe=n)
        np.testing.assert_array_equal(got, want, err_msg=label)


def test_row_classes_are_shape_derived():
    # output_channel VGG16 conv (c = 4608 slots, 512 PEs): three compacted classes and the direct
    # one; a layer of 64 slots has room for the 8-row class only.
    assert sel.row_classes(4608, 512) == (
        sel.RowClass(8, 512, False),
        sel.RowClass(64, 512, False),
        sel.RowClass(512, 64, False),
        sel.RowClass(4608, 8, True),
    )
    assert sel.row_classes(64, 16384) == (sel.RowClass(8, 4096, False), sel.RowClass(64, 512, True))
    assert sel.row_classes(5, 3) == (sel.RowClass(8, 3, False), sel.RowClass(32, 3, True))


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 20000), p=st.integers(1, 40000))
def test_row_classes_cover_every_pe(c, p):
    # Invariants the selection relies on: rows increase, the last (direct) class holds a PE's
    # whole word-rounded column, every class takes between 1 and p columns per step.
    classes = sel.row_classes(c, p)
    words = -(-c // 32) * 32
    assert classes[-1].rows == words and classes[-1].direct
    assert not any(k.direct for k in classes[:-1]) and len(classes) <= 4
    assert all(a.rows < b.rows for a, b in zip(classes, classes[1:], strict=False))
    assert all(1 <= k.cols <= p and (k.cols == p or k.cols >= 8) for k in classes)


def _nan_net(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {
        "features/conv0/kernel": (3, 3, 3, 8),
        "features/conv1/kernel": (3, 3, 8, 12),
        "features/conv2/kernel": (3, 3, 12, 6),
        "classifier/kernel": (6, 10),
    }
    masks = {k: rng.random(s) < 0.3 for k, s in shapes.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    return masks, weights


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_rejected_under_magnitude(bad):
    masks, weights = _nan_net()
    w = weights["features/conv2/kernel"].copy()
    w.reshape(-1)[[0, 5, 17]] = bad
    weights["features/conv2/kernel"] = w
    with pytest.raises(ValueError, match=r"^weights\['features/conv2/kernel'\]: 3 non-finite") as e:
        rebalance_network(masks, weights, n_pe=4)
    assert "\n" not in str(e.value) and "magnitude" in str(e.value)
    with pytest.raises(ValueError, match=r"^weights: 3 non-finite values \(NaN or inf\)"):
        rebalance_layer(masks["features/conv2/kernel"], w, n_pe=4, mapping="input_split")
    # The random policy does not rank by |w|; layers that are not analysed are not ranked at all.
    key = jax.random.key(0)
    rebalance_network(masks, weights, n_pe=4, policy="random", key=key)
    rebalance_layer(masks["features/conv2/kernel"], w, n_pe=4, policy="random", key=key)
    _, weights = _nan_net()
    weights["classifier/kernel"] = np.full((6, 10), bad, np.float32)
    weights["features/conv0/kernel"] = np.full((3, 3, 3, 8), bad, np.float32)
    new, _ = rebalance_network(masks, weights, n_pe=4)
    np.testing.assert_array_equal(new["classifier/kernel"], masks["classifier/kernel"])


def test_network_errors_name_the_layer():
    masks, weights = _nan_net()
    weights["features/conv1/kernel"] = weights["features/conv1/kernel"].astype(np.int32)
    with pytest.raises(ValueError, match=r"weights\['features/conv1/kernel'\]: must be floating"):
        rebalance_network(masks, weights, n_pe=4)
    # Masks are boolean or exactly 0/1 (`checks.bool_mask`, the rule of every tool): 0/1 floats
    # give the boolean masks' result, any other value is refused naming the layer.
    key = jax.random.key(0)
    want, _ = rebalance_network(masks, n_pe=4, policy="random", key=key)
    masks["features/conv2/kernel"] = masks["features/conv2/kernel"].astype(np.float32)
    got, _ = rebalance_network(masks, n_pe=4, policy="random", key=key)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
    masks["features/conv2/kernel"][0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"masks\['features/conv2/kernel'\]: not boolean"):
        rebalance_network(masks, n_pe=4, policy="random", key=key)
