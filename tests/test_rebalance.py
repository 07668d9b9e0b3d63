"""u-Ticket rebalance: loop-oracle equality, hypothesis invariants, network level, contracts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from uticket_jax import workload
from uticket_jax.workload import mappings as mp
from uticket_jax.workload import selection as sel
from uticket_jax.workload.rebalance import (
    network_workload,
    rebalance_layer,
    rebalance_network,
    report_to_json,
)

MAPPINGS = list(mp.MAPPINGS)


def _apply(mask, prio, delta, heavy=(), *, m, n_pe, widths):
    """`selection.apply_layer` compiled for one mapping, `n_pe` and `widths` (a fresh jit, so a
    patched module constant is traced anew)."""
    fn = jax.jit(functools.partial(sel.apply_layer, m=m, n_pe=n_pe, widths=widths))
    return fn(mask, prio, delta, heavy)


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
def test_fast_path_and_topk_fallback_match_oracle(mapping, target):
    # The selection has a compaction fast path (at most k2 candidates per PE above a chunk-max
    # threshold) and an exact top-k fallback under lax.cond: force each and compare to the oracle.
    shape, n = (3, 3, 16, 12), 4
    # Half the weights tie (rounded), so ties straddle the thresholds.
    mask, w = _case(8, shape, 0.15, ties=True)
    m = mp.get_mapping(mapping)
    loads = mp.pe_loads(mask, n, mapping)
    tgt = workload.pe_targets(loads, mp.pe_capacity(shape, n, mapping), target)
    delta = tgt - loads
    d_max, c = int(np.abs(np.asarray(delta)).max()), m.geometry(shape, n)[1]
    assert d_max >= 2  # so k2 = 1 cannot hold the candidates of the busiest PE
    want = oracle.rebalance(mask, np.abs(w), n, mapping, target)[0]
    prio = jax.jit(sel.magnitude_priorities)(jnp.asarray(w))
    for k2 in (1, sel.cand_bound(d_max, c), -(-c // 32) * 32):
        widths = sel.Widths(sel.topk_bound(d_max, c), k2)
        got = _apply(jnp.asarray(mask), prio, delta, m=m, n_pe=n, widths=widths)
        np.testing.assert_array_equal(got, want, err_msg=f"k2={k2}")
    # The top-k fallback is exact for any width k >= max |delta|.
    for k in (d_max, c):
        widths = sel.Widths(k, 1)
        got = _apply(jnp.asarray(mask), prio, delta, m=m, n_pe=n, widths=widths)
        np.testing.assert_array_equal(got, want, err_msg=f"top-k, k={k}")
    # The compaction locates candidates by reductions when a PE spans few words, by gathers
    # otherwise: force the gather variant too (a fresh jit traces with the patched bound).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sel, "_ONEHOT_W", 0)
        for k2 in (sel.cand_bound(d_max, c), -(-c // 32) * 32):
            widths = sel.Widths(sel.topk_bound(d_max, c), k2)
            got = _apply(jnp.asarray(mask), prio, delta, m=m, n_pe=n, widths=widths)
            np.testing.assert_array_equal(got, want, err_msg=f"gathers, k2={k2}")
    # Three PE classes: PEs needing one or two moves keep a narrow candidate bound, those needing
    # three go to a second call and the rest to a third, the widest (each class with padding
    # columns, out of range).
    need = np.abs(np.asarray(m.pe_cols(np.asarray(delta))))
    mid, top = (need > 2) & (need <= 3), need > 3
    assert mid.any() and top.any() and not (mid | top).all()
    heavy = tuple(np.append(np.nonzero(cls)[0], need.size).astype(np.int32) for cls in (mid, top))
    widths = sel.Widths(sel.topk_bound(d_max, c), sel.cand_bound(2, c), (8, -(-c // 32) * 32))
    got = _apply(jnp.asarray(mask), prio, delta, heavy, m=m, n_pe=n, widths=widths)
    np.testing.assert_array_equal(got, want, err_msg="heavy classes")
    widths, heavy = sel.plan_widths(np.asarray(delta), c)
    assert widths.k >= d_max and widths.k2 >= 1 and len(heavy) == len(widths.heavy_k2)


def test_plan_widths_splits_off_heavy_pes():
    delta = np.ones((512, 8), np.int32)  # 4096 PEs needing one move ...
    delta[[3, 100], [0, 5]] = [-300, 280]  # ... and two needing hundreds
    widths, heavy = sel.plan_widths(delta, 4608)
    assert widths.k == 512 and len(heavy) == 1 and widths.heavy_k2[0] >= 2 * 300
    assert widths.k2 < widths.heavy_k2[0]
    assert heavy[0].size == 8 and sorted(heavy[0][:2]) == [3 * 8 + 0, 100 * 8 + 5]
    assert np.all(heavy[0][2:] == delta.size)  # padding columns are out of range
    none_moves = sel.plan_widths(np.zeros((4, 4), np.int32), 16)
    assert none_moves == (sel.Widths(sel.topk_bound(0, 16), sel.cand_bound(0, 16)), ())


def test_plan_widths_sizes_the_light_class_by_its_largest_need():
    # Cut at the level 128, the light PEs need at most 126 moves: 256 candidate rows, not the
    # 512 the level itself would ask for.
    delta = np.full((512, 8), 126, np.int32)
    delta[0, :2] = [300, -290]
    widths, heavy = sel.plan_widths(delta, 4608)
    assert widths.k2 == sel.cand_bound(126, 4608) == 256
    assert widths.heavy_k2 == (sel.cand_bound(300, 4608),)
    assert sorted(heavy[0][:2]) == [0, 1] and np.all(heavy[0][2:] == delta.size)


@settings(max_examples=60, deadline=None)
@given(d_max=st.integers(0, 5000), c=st.integers(1, 5000))
def test_widths_are_power_of_two_classes(d_max, c):
    # Invariants the selection relies on: the top-k width covers every move and fits the slots;
    # the candidate bound is a power of two or the word-rounded slot count; k follows from k2.
    d_max = min(d_max, c)
    k, k2 = sel.topk_bound(d_max, c), sel.cand_bound(d_max, c)
    words = -(-c // 32) * 32
    assert d_max <= k <= c and 1 <= k
    assert k2 == words or (k2 & (k2 - 1) == 0 and k2 >= 2 * d_max + 4)
    assert k == (c if k2 == words else min(c, k2 // 2))


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
    masks["features/conv2/kernel"] = masks["features/conv2/kernel"].astype(np.float32)
    with pytest.raises(ValueError, match=r"masks\['features/conv2/kernel'\]: must be boolean"):
        rebalance_network(masks, n_pe=4, policy="random", key=jax.random.key(0))


class _CompileCounter:
    """Counts XLA backend compilations (the `jax.monitoring` event of every new program)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        del duration, kwargs
        self.count += event == self.EVENT

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


_SMALL_NET = {
    "features/conv0/kernel": (3, 3, 3, 8),
    "features/conv1/kernel": (3, 3, 8, 16),
    "features/conv2/kernel": (3, 3, 16, 16),
    "features/conv3/kernel": (3, 3, 16, 12),
}


def _net_round(rng, density):
    masks = {k: rng.random(s) < density for k, s in _SMALL_NET.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in _SMALL_NET.items()}
    return masks, weights


def _signatures(masks, n, mapping):
    """The static selection signature of every analysed layer that moves anything."""
    m = mp.get_mapping(mapping)
    out = set()
    for mask in list(masks.values())[1:]:
        loads = np.asarray(mp.pe_loads(mask, n, mapping))
        delta = np.asarray(workload.pe_targets(loads, mp.pe_capacity(mask.shape, n, mapping)))
        delta = delta - loads
        if np.abs(delta).max() > 0:
            widths, heavy = sel.plan_widths(m.pe_cols(delta), m.geometry(mask.shape, n)[1])
            out.add((mask.shape, widths, tuple(h.size for h in heavy)))
    return out


@pytest.mark.parametrize("policy", ["magnitude", "random"])
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_compile_contract(mapping, policy):
    # Round 2: new masks and weights (and key) of the same shapes whose moves fall in the same
    # width classes compile nothing. Round 3: arbitrary new masks compile exactly one select
    # program per new width signature (at most one per analysed layer), nothing else.
    rng = np.random.default_rng(11)
    kw = dict(n_pe=4, mapping=mapping, policy=policy)
    masks, weights = _net_round(rng, 0.2)
    rebalance_network(masks, weights, key=jax.random.key(0), **kw)
    seen = _signatures(masks, 4, mapping)
    # Same loads, new positions: permute each (c_in, c_out) column over (kh, kw).
    moved = {
        k: rng.permuted(v.reshape(9, *v.shape[2:]), axis=0).reshape(v.shape)
        for k, v in masks.items()
    }
    assert any(not np.array_equal(moved[k], masks[k]) for k in masks)
    _, weights2 = _net_round(rng, 0.2)
    assert _signatures(moved, 4, mapping) == seen
    with _CompileCounter() as counter:
        new, _ = rebalance_network(moved, weights2, key=jax.random.key(1), **kw)
        jax.block_until_ready(new)
    assert counter.count == 0
    name = "features/conv2/kernel"
    prio = (
        np.abs(weights2[name])
        if policy == "magnitude"
        else np.asarray(
            workload.random_priorities(jax.random.fold_in(jax.random.key(1), 2), moved[name].shape)
        )
    )
    want = oracle.rebalance(moved[name], prio, 4, mapping, "ceil_mean")[0]
    np.testing.assert_array_equal(new[name], want)
    for density in (0.05, 0.5):
        masks3, weights3 = _net_round(rng, density)
        fresh = _signatures(masks3, 4, mapping) - seen
        with _CompileCounter() as counter:
            jax.block_until_ready(
                rebalance_network(masks3, weights3, key=jax.random.key(2), **kw)[0]
            )
        assert counter.count == len(fresh) <= len(_SMALL_NET) - 1
        seen |= fresh


def test_layer_compile_contract():
    # rebalance_layer: a new mask of the same shape and width classes compiles nothing.
    rng = np.random.default_rng(3)
    mask = rng.random((3, 3, 8, 8)) < 0.3
    w = rng.standard_normal(mask.shape).astype(np.float32)
    rebalance_layer(mask, w, n_pe=4)
    moved = rng.permuted(mask.reshape(9, 8, 8), axis=0).reshape(mask.shape)
    with _CompileCounter() as counter:
        new, rep = rebalance_layer(moved, w * 2.0, n_pe=4)
        jax.block_until_ready(new)
    assert counter.count == 0 and new.dtype == bool
    np.testing.assert_array_equal(
        new, oracle.rebalance(moved, np.abs(w), 4, "output_channel", "ceil_mean")[0]
    )
