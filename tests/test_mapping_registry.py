"""The one mapping registry: a third mapping defined here alone runs through every consumer.

`output_channel_rr` deals output channels round-robin over the groups: channel `o` sits on PE
`o // G` of group `o % G`, `G = ceil(c_out / n)`. It is registered with `register_mapping` only
(no edit anywhere else) and checked against plain per-PE loops written in this file: PE loads and
capacities, the rebalance of one layer and of a network, the simulator and `sweep_networks`.
Registered copies of the built-ins must give identical masks and figures.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uticket_jax import hardware, workload
from uticket_jax.workload import mappings as mp

# ---- the third mapping: output channel o -> PE o // G of group o % G ---------------------------


def _cdiv(a, b):
    return -(-a // b)


def rr_geometry(shape, n):
    k, c_in, c_out = mp.kernel_dims(shape)
    return _cdiv(c_out, n), k * c_in


def rr_counts(mask):
    k, c_in, c_out = mp.kernel_dims(mask.shape)
    return mask.reshape(k * c_in, c_out).sum(0, dtype=jnp.int32)  # [c_out]


def rr_loads(counts, n):
    c_out = counts.shape[0]
    g = _cdiv(c_out, n)
    return jnp.pad(counts, (0, g * n - c_out)).reshape(n, g).T.astype(jnp.int32)  # [G, n]


def rr_to_cols(x, n, fill):
    k, c_in, c_out = mp.kernel_dims(x.shape)
    pad = _cdiv(c_out, n) * n - c_out
    # column p = j*G + g is output channel p: PE j of group g
    return jnp.pad(x.reshape(k * c_in, c_out), ((0, 0), (0, pad)), constant_values=fill)


def rr_from_cols(cols, shape, n):
    return cols[:, : shape[-1]].reshape(shape)


def rr_pe_cols(tbl):
    return tbl.T.reshape(-1)  # [G, n] -> column j*G + g


def rr_to_slots(x, n, fill):
    g, c = rr_geometry(x.shape, n)
    return rr_to_cols(x, n, fill).reshape(c, n, g).transpose(2, 1, 0)  # [G, n, C]


def rr_from_slots(slots, shape, n):
    g, c = rr_geometry(shape, n)
    return rr_from_cols(slots.transpose(2, 1, 0).reshape(c, n * g), shape, n)


def rr_group_loads(counts, n, n_cap):
    c_out = counts.shape[0]
    group = jnp.arange(c_out, dtype=jnp.int32) % ((c_out + n - 1) // n)
    gsum = jax.ops.segment_sum(counts, group, num_segments=c_out)
    gmax = jax.ops.segment_max(counts, group, num_segments=c_out)
    return gsum, jnp.maximum(gmax, 0)


def rr_load_bound(shape, counts, n_max):
    return (shape[3] + n_max - 1) * int(np.max(np.asarray(counts), initial=0))


RR = mp.PEMapping(
    name="output_channel_rr",
    geometry=rr_geometry,
    channel_counts=rr_counts,
    loads_from_counts=rr_loads,
    to_slots=rr_to_slots,
    from_slots=rr_from_slots,
    to_cols=rr_to_cols,
    from_cols=rr_from_cols,
    pe_cols=rr_pe_cols,
    count_table=rr_counts,
    group_loads=rr_group_loads,
    load_bound=rr_load_bound,
)


@pytest.fixture
def rr():
    with workload.registered_mapping(RR) as m:
        yield m.name


# ---- plain per-PE loops ----------------------------------------------------------------------


def oracle_slices(shape, n):
    """For every group, for every PE: the hwio flat indices it holds (ascending)."""
    k, c_in, c_out = mp.kernel_dims(shape)
    flat = np.arange(int(np.prod(shape))).reshape(k, c_in, c_out)
    g_count = math.ceil(c_out / n)
    groups = []
    for g in range(g_count):
        pes = []
        for j in range(n):
            o = j * g_count + g
            pes.append(sorted(flat[:, :, o].ravel().tolist()) if o < c_out else [])
        groups.append(pes)
    return groups


def oracle_loads(mask, n):
    flat = np.asarray(mask).ravel()
    return np.array([[int(flat[p].sum()) for p in pes] for pes in oracle_slices(mask.shape, n)])


def oracle_caps(shape, n):
    return np.array([[len(p) for p in pes] for pes in oracle_slices(shape, n)])


def oracle_ceil_mean(loads, caps):
    """Per group: every PE at min(cap, L), L the smallest level whose capped sum reaches S."""
    out = np.zeros_like(loads)
    for g in range(loads.shape[0]):
        s, level = int(loads[g].sum()), 0
        while sum(min(int(c), level) for c in caps[g]) < s:
            level += 1
        out[g] = [min(int(c), level) for c in caps[g]]
    return out


def oracle_rebalance(mask, prio, n):
    """Per PE: regrow the highest-priority pruned / drop the lowest-priority active weights."""
    flat = np.asarray(mask).ravel().copy()
    pr = np.asarray(prio, np.float32).ravel()
    loads = oracle_loads(mask, n)
    tgt = oracle_ceil_mean(loads, oracle_caps(mask.shape, n))
    for g, pes in enumerate(oracle_slices(mask.shape, n)):
        for j, idx in enumerate(pes):
            d = int(tgt[g, j] - loads[g, j])
            cand = [i for i in idx if flat[i] == (d < 0)]
            cand.sort(key=lambda i: (pr[i] if d < 0 else -pr[i], i))
            for i in cand[: abs(d)]:
                flat[i] = d > 0
    return flat.reshape(mask.shape), tgt


def oracle_layer(mask, n):
    """latency, wasted, dynamic and the mean (normalized) utilization of one layer."""
    lat = wasted = dyn = 0
    utils, norms = [], []
    for row in oracle_loads(mask, n):
        total, mx = int(row.sum()), int(row.max())
        dyn += total
        if mx == 0:
            continue
        lat += mx
        wasted += sum(mx - int(x) for x in row)
        utils.append(total / n / mx)
        cm = math.ceil(total / n)
        norms.append(1.0 if n == 1 else (mx * (n - 1) - (mx - cm) * n) / (mx * (n - 1)))
    mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return {
        "latency": lat,
        "wasted": wasted,
        "dynamic": dyn,
        "utilization": mean(utils),
        "utilization_normalized": mean(norms),
    }


def oracle_network(masks, specs, n, timesteps):
    """Per layer and network (analysed layers): load-unit figures and cycles."""
    layers = []
    for spec in specs:
        f = oracle_layer(np.asarray(masks[spec.name]), n)
        f["cycles"] = float(f["latency"] * spec.pixels * timesteps)
        layers.append(f)
    sel = [f for f, s in zip(layers, specs, strict=True) if s.analysed]
    net = {k: sum(f[k] for f in sel) for k in ("latency", "wasted", "dynamic", "cycles")}
    for k in ("utilization", "utilization_normalized"):
        vals = [f[k] for f in sel if not math.isnan(f[k])]
        net[k] = float(np.mean(vals)) if vals else math.nan
    return layers, net


def _close(got, want, where):
    for k, w in want.items():
        g = math.nan if got[k] is None else float(got[k])  # JSON rows: null for no work
        ok = (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=1e-5)
        assert ok, (where, k, g, w)


# ---- workload model ----------------------------------------------------------------------------

SHAPES = [(3, 3, 5, 7), (1, 1, 2, 3), (3, 3, 4, 10), (2, 2, 3, 1), (6, 10), (4, 33)]
NS = [1, 3, 4, 40]


@pytest.mark.parametrize("shape", SHAPES)
def test_rr_loads_and_layout_match_loop(rr, shape):
    mask = np.random.default_rng(shape[-1]).random(shape) < 0.4
    index = np.arange(mask.size).reshape(shape)
    for n in NS:
        np.testing.assert_array_equal(workload.pe_loads(mask, n, rr), oracle_loads(mask, n))
        np.testing.assert_array_equal(workload.pe_capacity(shape, n, rr), oracle_caps(shape, n))
        slots = np.asarray(workload.to_slots(index, n, rr, -1))
        want = [
            [p + [-1] * (slots.shape[-1] - len(p)) for p in pes] for pes in oracle_slices(shape, n)
        ]
        np.testing.assert_array_equal(slots, want)
        np.testing.assert_array_equal(workload.from_slots(slots, shape, n, rr), index)
    loads = workload.network_loads({"x/kernel": mask}, 3, rr)["x/kernel"]
    np.testing.assert_array_equal(loads, oracle_loads(mask, 3))


@settings(max_examples=12, deadline=None)
@given(
    dims=st.sampled_from([(3, 3, 4, 9), (1, 1, 6, 5), (7, 11)]),
    n=st.sampled_from([1, 3, 12]),  # few shapes x n: few compilations
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_rr_rebalance_invariants(dims, n, p, seed):
    """Balanced after one rebalance: every PE at min(cap, ceil-mean level); weights only regrow."""
    with workload.registered_mapping(RR):
        mask = np.random.default_rng(seed).random(dims) < p
        w = np.random.default_rng(seed + 1).standard_normal(dims).astype(np.float32)
        new, rep = workload.rebalance_layer(mask, w, n_pe=n, mapping=RR.name)
        after = oracle_loads(np.asarray(new), n)
        tgt = oracle_ceil_mean(oracle_loads(mask, n), oracle_caps(dims, n))
        np.testing.assert_array_equal(after, tgt)
        np.testing.assert_array_equal(rep.loads_after, tgt)
        assert (after.sum(1) >= oracle_loads(mask, n).sum(1)).all()  # ceil_mean never drops a sum
        again, _ = workload.rebalance_layer(new, w, n_pe=n, mapping=RR.name)
        np.testing.assert_array_equal(again, new)  # balanced masks come back unchanged


@pytest.mark.parametrize("shape, n", [((3, 3, 5, 7), 4), ((1, 1, 3, 9), 8), ((9, 12), 5)])
def test_rr_rebalance_layer_matches_loop(rr, shape, n):
    rng = np.random.default_rng(7)
    mask = rng.random(shape) < 0.3
    w = rng.standard_normal(shape).astype(np.float32)
    new, rep = workload.rebalance_layer(mask, w, n_pe=n, mapping=rr)
    want, tgt = oracle_rebalance(mask, np.abs(w), n)
    np.testing.assert_array_equal(new, want)
    np.testing.assert_array_equal(rep.loads_after, tgt)
    np.testing.assert_array_equal(oracle_loads(np.asarray(new), n), tgt)
    key = jax.random.key(5)
    new_r, _ = workload.rebalance_layer(mask, None, n_pe=n, mapping=rr, policy="random", key=key)
    prio = np.asarray(workload.random_priorities(key, shape))
    np.testing.assert_array_equal(new_r, oracle_rebalance(mask, prio, n)[0])


NET = {"a/kernel": (3, 3, 3, 8), "b/kernel": (3, 3, 8, 11), "c/kernel": (3, 3, 11, 6), "fc": (6, 4)}


def _net(seed, density=0.3):
    rng = np.random.default_rng(seed)
    masks = {k: rng.random(s) < density for k, s in NET.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in NET.items()}
    return masks, weights


@pytest.mark.parametrize("policy", ["magnitude", "random"])
def test_rr_rebalance_network_matches_loop(rr, policy):
    masks, weights = _net(1)
    key = jax.random.key(9)
    new, rep = workload.rebalance_network(
        masks, weights, n_pe=4, mapping=rr, policy=policy, key=key
    )
    for i, (name, a) in enumerate(zip(rep.names, rep.analysed, strict=True)):
        if not a:  # first conv and the dense layer stay as they are
            np.testing.assert_array_equal(new[name], masks[name])
            continue
        prio = (
            np.abs(weights[name])
            if policy == "magnitude"
            else np.asarray(workload.random_priorities(jax.random.fold_in(key, i), NET[name]))
        )
        want, tgt = oracle_rebalance(masks[name], prio, 4)
        np.testing.assert_array_equal(new[name], want, err_msg=name)
        np.testing.assert_array_equal(rep.layers[i].loads_after, tgt)


# ---- simulator and sweep -----------------------------------------------------------------------


def _specs(sizes=(6, 4, 2, 1)):
    return hardware.specs_from_shapes(NET, out_sizes=list(sizes))


def test_rr_group_loads_match_pe_loads(rr):
    mask = np.random.default_rng(2).random((3, 3, 5, 13)) < 0.4
    table = hardware.count_tables(mask, [rr])
    assert set(table) == {rr}
    for n in range(1, 16):
        gsum, gmax = hardware.group_loads(table, n, rr)
        loads = oracle_loads(mask, n)
        g = loads.shape[0]
        np.testing.assert_array_equal(np.asarray(gsum)[:g], loads.sum(1))
        np.testing.assert_array_equal(np.asarray(gmax)[:g], loads.max(1))
        assert not np.asarray(gsum)[g:].any() and not np.asarray(gmax)[g:].any()


def _load_figures(fig, *index):
    """The array figures of one config (and layer); the counts and energy terms are the energy
    models' business (tests/test_energy.py)."""
    skip = ("counts", "energy_terms")
    return {k: v[index] for k, v in fig._asdict().items() if k not in skip}


@pytest.mark.parametrize("seed", [0, 1])
def test_rr_simulator_matches_loop(rr, seed):
    masks, _ = _net(seed, density=0.2 + 0.3 * seed)
    specs = _specs()
    ns = [1, 2, 3, 5, 8, 13]
    configs = hardware.config_grid(n_pe=ns, mapping=["output_channel", rr], timesteps=[3])
    assert hardware.config_rows(configs)[-1]["mapping"] == rr
    assert int(configs.mapping[-1]) == hardware.mapping_id(rr) == 2
    res = hardware.simulate_masks(masks, specs, configs)
    for i, cfg in enumerate(hardware.config_rows(configs)):
        if cfg["mapping"] != rr:
            continue
        layers, net = oracle_network(masks, specs, cfg["n_pe"], 3)
        _close(_load_figures(res.network, i), net, (cfg["n_pe"], "net"))
        for j, want in enumerate(layers):
            _close(_load_figures(res.layers, i, j), want, (i, j))
    # Splitting the batch by mapping changes nothing: rr alone gives the same rr figures.
    alone = hardware.simulate_masks(
        masks, specs, hardware.config_grid(n_pe=ns, mapping=[rr], timesteps=[3])
    )
    assert res.energy_model == alone.energy_model
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a[len(ns) :], b),
        (res.layers, res.network),
        (alone.layers, alone.network),
    )


def test_rr_sweep_networks_matches_loop(rr):
    masks, weights = _net(3)
    balanced, _ = workload.rebalance_network(masks, weights, n_pe=4, mapping=rr)
    balanced = {k: np.asarray(v) for k, v in balanced.items()}
    specs = _specs()
    configs = hardware.config_grid(n_pe=[4, 6], mapping=[rr], timesteps=[2])
    rows = hardware.sweep_networks({"lth": masks, "u": balanced}, specs, configs, baseline="lth")
    assert [(r["masks"], r["config"]["mapping"], r["config"]["n_pe"]) for r in rows] == [
        ("lth", rr, 4),
        ("lth", rr, 6),
        ("u", rr, 4),
        ("u", rr, 6),
    ]
    for r in rows:
        src = masks if r["masks"] == "lth" else balanced
        layers, net = oracle_network(src, specs, r["config"]["n_pe"], 2)
        _close(r["network"], net, r["masks"])
        for lay, want in zip(r["layers"], layers, strict=True):
            _close(lay, want, (r["masks"], lay["name"]))
    lth4, u4 = rows[0]["network"], rows[2]["network"]
    assert u4["utilization"] >= lth4["utilization"]  # rebalanced for n = 4
    assert u4["latency"] <= lth4["latency"]  # every PE at ceil(mean) <= the old maximum


# ---- copies of the built-ins, registry contracts, bad input ------------------------------------


@pytest.mark.parametrize(
    "base",
    [mp.OUTPUT_CHANNEL, pytest.param(mp.INPUT_SPLIT, marks=pytest.mark.slow)],
    ids=lambda m: m.name,
)
def test_registered_copy_gives_identical_results(base):
    copy = dataclasses.replace(base, name=f"{base.name}_copy")
    masks, weights = _net(4)
    specs = _specs()
    with workload.registered_mapping(copy):
        for policy in ("magnitude", "random"):
            got = [
                workload.rebalance_network(
                    masks, weights, n_pe=4, mapping=m, policy=policy, key=jax.random.key(2)
                )[0]
                for m in (base.name, copy.name)
            ]
            jax.tree.map(np.testing.assert_array_equal, got[0], got[1])
        grid = dict(n_pe=[1, 3, 4, 16, 64], activity_aware=[False, True])
        res = [
            hardware.simulate_masks(masks, specs, hardware.config_grid(mapping=[m], **grid))
            for m in (base.name, copy.name)
        ]
        jax.tree.map(np.testing.assert_array_equal, res[0], res[1])


def test_registration_does_not_leak():
    assert list(workload.MAPPINGS) == ["output_channel", "input_split"]
    with workload.registered_mapping(RR):
        assert list(hardware.MAPPINGS) == ["output_channel", "input_split", RR.name]
        assert workload.get_mapping(RR.name) is RR
    assert list(workload.MAPPINGS) == list(hardware.MAPPINGS) == ["output_channel", "input_split"]
    with pytest.raises(ValueError, match="allowed: output_channel, input_split$"):
        workload.get_mapping(RR.name)
    with pytest.raises(ValueError, match="mapping"):
        hardware.config_grid(mapping=[RR.name])
    with pytest.raises(ValueError, match="not registered"):
        workload.pe_loads(np.ones((2, 3), bool), 2, RR)  # an unregistered object is refused too
    with pytest.raises(TypeError):
        workload.MAPPINGS["x"] = RR  # read-only: register_mapping is the one way in


def _bad_group_loads(counts, n, n_cap):  # output_channel's grouping on the rr layout
    return mp.OUTPUT_CHANNEL.group_loads(counts, n, n_cap)


@pytest.mark.parametrize(
    "bad, match",
    [
        (mp.OUTPUT_CHANNEL, "'output_channel' is already registered"),
        ({"name": "x"}, "must be a PEMapping"),
        (dataclasses.replace(RR, name="two words"), "name must be letters"),
        (dataclasses.replace(RR, name=""), "name must be letters"),
        (dataclasses.replace(RR, group_loads=3), "group_loads must be callable"),
        (dataclasses.replace(RR, direct_loads="fast"), "direct_loads must be callable"),
        (dataclasses.replace(RR, needs_n_cap=1), "needs_n_cap must be a bool"),
        (dataclasses.replace(RR, name="rr_bad", group_loads=_bad_group_loads), "self-check.*group"),
        (dataclasses.replace(RR, name="rr_bad2", pe_cols=mp.OUTPUT_CHANNEL.pe_cols), "pe_cols"),
        (dataclasses.replace(RR, name="rr_bad3", load_bound=lambda s, t, n: 0), "load_bound"),
    ],
)
def test_register_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        workload.register_mapping(bad)
    assert list(workload.MAPPINGS) == ["output_channel", "input_split"]


def test_registry_rules():
    with workload.registered_mapping(RR):
        with pytest.raises(ValueError, match="already registered"):
            workload.register_mapping(RR)
        with pytest.raises(ValueError, match="built-in"):
            workload.unregister_mapping("input_split")
        with workload.registered_mapping(dataclasses.replace(RR, name="rr_two")):
            with pytest.raises(ValueError, match="only the last registered"):
                workload.unregister_mapping(RR.name)  # would renumber rr_two's configs
            assert hardware.mapping_id("rr_two") == 3
    with pytest.raises(ValueError, match="unknown mapping 'nope'; allowed: output_channel, input"):
        workload.unregister_mapping("nope")
    # A name that comes back must bring the same functions (compiled programs are keyed by name).
    with pytest.raises(ValueError, match="registered before"):
        workload.register_mapping(dataclasses.replace(RR, pe_cols=lambda t: t.T.reshape(-1)))
    with workload.registered_mapping(RR):  # the same mapping again is fine
        assert workload.get_mapping(RR.name) is RR


def test_unknown_mapping_names_the_allowed_ones():
    mask = np.ones((3, 3, 4, 4), bool)
    for call in (
        lambda: workload.pe_loads(mask, 2, "tiles"),
        lambda: workload.rebalance_layer(mask, mask.astype(np.float32), n_pe=2, mapping="tiles"),
        lambda: hardware.config_grid(mapping=["tiles"]),
        lambda: hardware.count_tables(mask, ["tiles"]),
        lambda: hardware.group_loads(hardware.count_tables(mask), 2, "tiles"),
    ):
        with pytest.raises(ValueError, match="mapping: unknown mapping 'tiles'; allowed: output"):
            call()
    with pytest.raises(ValueError, match="no count table for mapping 'input_split'"):
        hardware.group_loads(hardware.count_tables(mask, ["output_channel"]), 2, "input_split")
