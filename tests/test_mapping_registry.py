"""A mapping declared as data: a third mapping, defined here in a few lines, runs everywhere.

`input_interleaved` deals a layer's input channels over the PEs of its group, channel `i` on PE
`i % n`, one group per output channel. It is declared by its assignment alone and registered;
nothing else in the package is edited. Every consumer is then checked against the loop oracle of
`tests/oracle.py`, which knows a mapping only through the same assignment: PE loads, capacities
and the slot layout, the rebalance of a layer and of a network on both backends, the simulator on
both backends, the sweep rows, and a short LTH pipeline run. Copies of the built-ins without their
hand-written fast paths (every view derived) give the same masks and figures as the built-ins.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from uticket_jax import hardware, workload

# ---- the third mapping, in full -----------------------------------------------------------------
INTERLEAVED = workload.PEMapping(
    name="input_interleaved",
    assign=lambda c, shape, n: (c.c_out, c.c_in % n),  # group = output channel, PE = c_in mod n
)
# -------------------------------------------------------------------------------------------------
IL = INTERLEAVED.name
BUILTIN = ["output_channel", "input_split"]


@pytest.fixture
def il():
    with workload.registered_mapping(INTERLEAVED) as m:
        yield m.name


def _close(got, want, where):
    for k, w in want.items():
        g = math.nan if got[k] is None else float(got[k])  # JSON rows: null for no work
        ok = (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=1e-5)
        assert ok, (where, k, g, w)


SHAPES = [(3, 3, 5, 7), (1, 1, 2, 3), (3, 3, 4, 10), (2, 2, 3, 1), (6, 10), (4, 33)]


@pytest.mark.parametrize("shape", SHAPES)
def test_loads_capacity_and_slots_match_the_oracle(il, shape):
    mask = np.random.default_rng(shape[-1]).random(shape) < 0.4
    index = np.arange(mask.size).reshape(shape)
    for n in (1, 3, 4, 40):
        pes = oracle.pe_slices(shape, n, il)
        np.testing.assert_array_equal(workload.pe_loads(mask, n, il), oracle.loads_of(mask, n, il))
        np.testing.assert_array_equal(
            workload.pe_capacity(shape, n, il), [[len(p) for p in g] for g in pes]
        )
        slots = np.asarray(workload.to_slots(index, n, il, -1))
        want = [[p + [-1] * (slots.shape[-1] - len(p)) for p in g] for g in pes]
        np.testing.assert_array_equal(slots, want)
        np.testing.assert_array_equal(workload.from_slots(slots, shape, n, il), index)
    loads = workload.network_loads({"x": mask, "b": None}, 3, il)
    np.testing.assert_array_equal(loads["x"], oracle.loads_of(mask, 3, il))
    assert loads["b"] is None


@settings(max_examples=10, deadline=None)
@given(
    dims=st.sampled_from([(3, 3, 7, 4), (1, 1, 6, 5), (11, 3)]),
    n=st.sampled_from([1, 3, 4]),  # few shapes x n: few compilations
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    backend=st.sampled_from(workload.BACKENDS),
)
def test_rebalance_layer_matches_the_oracle_and_is_idempotent(dims, n, p, seed, backend):
    with workload.registered_mapping(INTERLEAVED, check=False):
        rng = np.random.default_rng(seed)
        mask = rng.random(dims) < p
        w = rng.standard_normal(dims).astype(np.float32)
        kw = dict(n_pe=n, mapping=IL, backend=backend)
        new, rep = workload.rebalance_layer(mask, w, **kw)
        want, _, tgt = oracle.rebalance(mask, np.abs(w), n, IL, "ceil_mean")
        np.testing.assert_array_equal(new, want)
        np.testing.assert_array_equal(rep.loads_after, tgt)
        again, _ = workload.rebalance_layer(new, w, **kw)
        np.testing.assert_array_equal(again, new)  # balanced masks come back unchanged


NET = {"a": (3, 3, 3, 8), "b": (3, 3, 8, 11), "c": (3, 3, 11, 6), "fc": (6, 4)}


def _net(seed, density=0.3):
    rng = np.random.default_rng(seed)
    masks = {k: rng.random(s) < density for k, s in NET.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in NET.items()}
    return masks, weights


@pytest.mark.parametrize("backend", workload.BACKENDS)
@pytest.mark.parametrize("policy", workload.POLICIES)
def test_rebalance_network_matches_the_oracle(il, policy, backend):
    masks, weights = _net(1)
    key = jax.random.key(9)
    new, rep = workload.rebalance_network(
        masks, weights, n_pe=4, mapping=il, policy=policy, key=key, backend=backend
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
        want, _, tgt = oracle.rebalance(masks[name], prio, 4, il, "ceil_mean")
        np.testing.assert_array_equal(new[name], want, err_msg=name)
        np.testing.assert_array_equal(rep.layers[i].loads_after, tgt)


# ---- simulator and sweep -----------------------------------------------------------------------


def _specs(sizes=(6, 4, 2, 1)):
    return hardware.specs_from_shapes(NET, out_sizes=list(sizes))


def test_group_loads_for_a_traced_n_match_the_oracle(il):
    mask = np.random.default_rng(2).random((3, 3, 13, 5)) < 0.4
    table = hardware.count_tables(mask, [il])
    assert set(table) == {il} and np.shape(table[il]) == (1, 1, 13, 5)  # reads c_in and c_out
    for n in range(1, 16):
        gsum, gmax = hardware.group_loads(table, mask.shape, n, il)
        loads = oracle.loads_of(mask, n, il)
        g = loads.shape[0]
        np.testing.assert_array_equal(np.asarray(gsum)[:g], loads.sum(1))
        np.testing.assert_array_equal(np.asarray(gmax)[:g], loads.max(1))
        assert not np.asarray(gsum)[g:].any() and not np.asarray(gmax)[g:].any()


@pytest.mark.parametrize("backend", hardware.BACKENDS)
def test_simulator_matches_the_oracle(il, backend):
    masks, _ = _net(0, density=0.35)
    specs = _specs()
    ns = [1, 2, 3, 5, 8, 13]
    configs = hardware.config_grid(n_pe=ns, mapping=["output_channel", il], timesteps=[3])
    res = hardware.simulate_masks(masks, specs, configs, backend=backend, energy_model="horowitz45")
    for i, cfg in enumerate(hardware.config_rows(configs)):
        want = oracle.simulator_oracle(masks, specs, cfg, constants=dict(_H45))
        for k in ("utilization", "utilization_normalized", "latency", "cycles", "energy_total"):
            _close({k: np.asarray(getattr(res.network, k))[i]}, {k: want["network"][k]}, (i, k))
        for j, lw in enumerate(want["layers"]):
            got = {k: np.asarray(getattr(res.layers, k))[i, j] for k in ("latency", "wasted")}
            _close(got, {k: lw[k] for k in got}, (i, j))


_H45 = hardware.energy.HOROWITZ45.defaults._asdict()


def test_sweep_rows_match_the_oracle(il):
    masks, weights = _net(3)
    balanced, _ = workload.rebalance_network(masks, weights, n_pe=4, mapping=il)
    specs = _specs()
    configs = hardware.config_grid(n_pe=[4, 6], mapping=[il], timesteps=[2])
    rows = hardware.sweep_networks(
        {"lth": masks, "u": balanced}, specs, configs, baseline="lth", backend="numpy"
    )
    assert [(r["masks"], r["config"]["mapping"], r["config"]["n_pe"]) for r in rows] == [
        ("lth", il, 4),
        ("lth", il, 6),
        ("u", il, 4),
        ("u", il, 6),
    ]
    for r in rows:
        src = masks if r["masks"] == "lth" else balanced
        want = oracle.simulator_oracle(src, specs, {**r["config"], "activity_aware": False})
        _close(r["network"], {k: want["network"][k] for k in ("latency", "cycles")}, r["masks"])
    lth4, u4 = rows[0]["network"], rows[2]["network"]
    assert u4["utilization"] == 1.0 > lth4["utilization"]  # rebalanced for n = 4
    assert u4["latency"] <= lth4["latency"]  # every PE at ceil(mean) <= the old maximum


def test_a_short_pipeline_run_balances_under_the_mapping(il):
    from uticket_jax import configs, data, pipeline

    ds = data.load_dataset("digits")
    ds = ds._replace(
        train_images=ds.train_images[:128],
        train_labels=ds.train_labels[:128],
        test_images=ds.test_images[:64],
        test_labels=ds.test_labels[:64],
    )
    cfg = configs.get("digits").replace(
        timesteps=2,
        epochs=1,
        rounds=1,
        rewind_epoch=0,
        batch_size=64,
        eval_batch_size=64,
        prune_percent=40.0,
        n_pe=4,
        mapping=il,
        arms=("uticket",),
    )
    stage_masks = {}

    def keep(record, masks_flat, weights_flat, records, rest_flat):
        stage_masks[record.arm] = {k: np.asarray(v) for k, v in masks_flat.items()}

    records = pipeline.run(cfg, ds, on_stage_end=keep, progress=False, log=lambda s: None)
    ut = records[-1]
    assert ut.arm == "uticket" and ut.hardware.plain["utilization"] == pytest.approx(1.0)
    for layer in ut.hardware.layers:
        if not layer["analysed"]:
            continue
        mask = stage_masks["uticket"][layer["name"]]
        loads = oracle.loads_of(mask, 4, il)
        caps = np.array([[len(p) for p in g] for g in oracle.pe_slices(mask.shape, 4, il)])
        level = loads.max(1, keepdims=True)
        assert ((loads == level) | (loads == caps)).all(), layer["name"]  # balanced, or full
        assert layer["latency"] == int(loads.max(1).sum())


# ---- fast paths equal the derived views; the registry ------------------------------------------


@pytest.mark.parametrize("base", BUILTIN)
def test_builtins_without_fast_paths_give_the_same_results(base):
    m = workload.get_mapping(base)
    copy = dataclasses.replace(m.derived(), name=f"{base}_derived")
    masks, weights = _net(4)
    specs = _specs()
    with workload.registered_mapping(copy, check=False):
        for policy, backend in [("magnitude", "jax"), ("random", "numpy")]:
            got = [
                workload.rebalance_network(
                    masks,
                    weights,
                    n_pe=4,
                    mapping=x,
                    policy=policy,
                    key=jax.random.key(2),
                    backend=backend,
                )[0]
                for x in (base, copy.name)
            ]
            jax.tree.map(np.testing.assert_array_equal, got[0], got[1])
        grid = dict(n_pe=[1, 3, 4, 16, 64], activity_aware=[False, True])
        for backend in hardware.BACKENDS:
            res = [
                hardware.simulate_masks(
                    masks, specs, hardware.config_grid(mapping=[x], **grid), backend=backend
                )
                for x in (base, copy.name)
            ]
            # Integer figures exactly; float means of the groups' utilizations to the last bits
            # (two programs may sum them in different orders).
            for f in ("latency", "wasted", "dynamic"):
                np.testing.assert_array_equal(getattr(res[0].layers, f), getattr(res[1].layers, f))
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                res[0].network,
                res[1].network,
            )


def test_registry_by_name_in_any_order():
    assert list(workload.MAPPINGS) == BUILTIN
    rr = workload.PEMapping(
        "rr", lambda c, s, n: (c.c_out % -(-s.c_out // n), c.c_out // -(-s.c_out // n))
    )
    mask = np.random.default_rng(0).random((3, 3, 4, 10)) < 0.5
    with workload.registered_mapping(INTERLEAVED, check=False):
        workload.register_mapping(rr, check=False)
        assert list(hardware.MAPPINGS) == [*BUILTIN, IL, "rr"]
        workload.unregister_mapping(IL)  # not the last one: fine, nothing is numbered
        assert list(workload.MAPPINGS) == [*BUILTIN, "rr"]
        np.testing.assert_array_equal(
            workload.pe_loads(mask, 4, "rr"), oracle.loads_of(mask, 4, rr)
        )
        workload.unregister_mapping("rr")
        # The name comes back with another assignment: nothing compiled for the old one is used.
        other = dataclasses.replace(INTERLEAVED, name="rr")
        with workload.registered_mapping(other, check=False):
            np.testing.assert_array_equal(
                workload.pe_loads(mask, 4, "rr"), oracle.loads_of(mask, 4, INTERLEAVED)
            )
            cfg = hardware.config_grid(n_pe=[4], mapping=["rr"])
            res = hardware.simulate_masks(
                {"x": mask},
                hardware.specs_from_shapes({"x": mask.shape}, out_sizes=[1], skip_first=False),
                cfg,
            )
            assert int(res.network.latency[0]) == int(
                oracle.loads_of(mask, 4, INTERLEAVED).max(1).sum()
            )
        workload.register_mapping(INTERLEAVED, check=False)  # re-registered: back to the start
    assert list(workload.MAPPINGS) == BUILTIN
    with pytest.raises(ValueError, match="allowed: output_channel, input_split$"):
        workload.get_mapping(IL)
    with pytest.raises(ValueError, match="mapping"):
        hardware.config_grid(mapping=[IL])
    with pytest.raises(ValueError, match="not registered"):
        workload.pe_loads(np.ones((2, 3), bool), 2, INTERLEAVED)  # an unregistered object too
    with pytest.raises(TypeError):
        workload.MAPPINGS["x"] = INTERLEAVED  # read-only: register_mapping is the one way in
    with pytest.raises(ValueError, match="built-in"):
        workload.unregister_mapping("input_split")


def _bad_fast(**parts):
    """input_split's fast paths with some parts swapped for output_channel's."""
    fast = workload.INPUT_SPLIT.fast._replace(**parts)
    return dataclasses.replace(workload.INPUT_SPLIT, name="is_bad", fast=fast)


@pytest.mark.parametrize(
    "bad, match",
    [
        (workload.OUTPUT_CHANNEL, "'output_channel' is already registered"),
        ({"name": "x"}, "must be a PEMapping"),
        (dataclasses.replace(INTERLEAVED, name="two words"), "name must be letters"),
        (dataclasses.replace(INTERLEAVED, name=""), "name must be letters"),
        (dataclasses.replace(INTERLEAVED, assign=3), "assign must be callable"),
        (
            dataclasses.replace(INTERLEAVED, assign=lambda c, s, n: (c.c_out, c.c_in % (n + 1))),
            "self-check: assign must give group >= 0 and 0 <= pe < n",
        ),
        (
            dataclasses.replace(INTERLEAVED, assign=lambda c, s, n: (c.c_out * 1.0, c.c_in % n)),
            "self-check: assign must give integers",
        ),
        (
            _bad_fast(table=workload.OUTPUT_CHANNEL.fast.table),
            "self-check: group_loads",
        ),
        (_bad_fast(cols=workload.OUTPUT_CHANNEL.fast.cols), "self-check"),
        (_bad_fast(loads=workload.OUTPUT_CHANNEL.fast.loads), "self-check: loads"),
        (
            _bad_fast(table=workload.INPUT_SPLIT.fast.table._replace(load_bound=lambda s, t, n: 0)),
            "load_bound",
        ),
    ],
)
def test_register_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        workload.register_mapping(bad)
    assert list(workload.MAPPINGS) == BUILTIN


def test_unknown_mapping_names_the_allowed_ones():
    mask = np.ones((3, 3, 4, 4), bool)
    for call in (
        lambda: workload.pe_loads(mask, 2, "tiles"),
        lambda: workload.rebalance_layer(mask, mask.astype(np.float32), n_pe=2, mapping="tiles"),
        lambda: hardware.config_grid(mapping=["tiles"]),
        lambda: hardware.count_tables(mask, ["tiles"]),
        lambda: hardware.group_loads(hardware.count_tables(mask), mask.shape, 2, "tiles"),
    ):
        with pytest.raises(ValueError, match="mapping: unknown mapping 'tiles'; allowed: output"):
            call()
    with pytest.raises(ValueError, match="no count table for mapping 'input_split'"):
        hardware.group_loads(
            hardware.count_tables(mask, ["output_channel"]), mask.shape, 2, "input_split"
        )
