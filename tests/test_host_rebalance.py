"""The numpy host rebalance (`backend="numpy"`): loop oracle, the JAX path bit for bit, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from uticket_jax import workload
from uticket_jax.workload import (
    host_select,
    priorities,
    rebalance_layer,
    rebalance_network,
    report_to_json,
    synthetic,
    targets,
)
from uticket_jax.workload import mappings as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPPINGS = list(mp.MAPPINGS)


def _case(seed, shape, p, ties=False):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < p
    w = rng.standard_normal(shape).astype(np.float32)
    return mask, (np.round(w) if ties else w)


def _net(seed, density):
    """A small conv net (first conv, three analysed convs, a dense head)."""
    shapes = {
        "c0": (3, 3, 2, 8),
        "c1": (3, 3, 8, 20),
        "c2": (2, 2, 20, 33),
        "c3": (3, 3, 33, 16),
        "fc": (16, 10),
    }
    rng = np.random.default_rng(seed)
    out = {k: synthetic.uneven_sparse_layer(rng, s, density) for k, s in shapes.items()}
    return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}


@pytest.mark.parametrize("target", workload.TARGETS)
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("shape, n", [((3, 3, 5, 7), 4), ((2, 2, 6, 2), 1), ((9, 12), 5)])
def test_matches_oracle(shape, n, mapping, target):
    for seed, ties in [(0, False), (1, True)]:
        mask, w = _case(seed, shape, 0.3, ties)
        new, rep = rebalance_layer(mask, w, n_pe=n, mapping=mapping, target=target, backend="numpy")
        want, loads, tgt = oracle.rebalance(mask, np.abs(w), n, mapping, target)
        assert isinstance(new, np.ndarray) and new.dtype == bool
        np.testing.assert_array_equal(new, want)
        np.testing.assert_array_equal(rep.loads_before, loads)
        np.testing.assert_array_equal(rep.loads_after, tgt)
        key = jax.random.key(seed)
        new_r, _ = rebalance_layer(
            mask,
            None,
            n_pe=n,
            mapping=mapping,
            target=target,
            policy="random",
            key=key,
            backend="numpy",
        )
        prio = priorities.random_priorities(key, shape)
        np.testing.assert_array_equal(new_r, oracle.rebalance(mask, prio, n, mapping, target)[0])


def test_hashed_priorities_numpy_match_jax():
    key = jax.random.key(7)
    shape = (3, 3, 17, 9)
    words = priorities.key_words(key, None)[0]
    np.testing.assert_array_equal(
        priorities.hashed_priorities(words, shape, np), priorities.random_priorities(key, shape)
    )
    folded = priorities.key_words(key, [0, 3])
    np.testing.assert_array_equal(
        priorities.hashed_priorities(folded[1], shape, np),
        priorities.random_priorities(jax.random.fold_in(key, 3), shape),
    )


@settings(max_examples=20, deadline=None)
@given(
    g=st.integers(1, 6),
    n=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    target=st.sampled_from(workload.TARGETS),
)
def test_numpy_targets_match_jax(g, n, seed, target):
    rng = np.random.default_rng(seed)
    cap = rng.integers(0, 12, (g, n)).astype(np.int32)
    loads = (rng.random((g, n)) * (cap + 1)).astype(np.int32)
    c_max = int(cap.max(initial=0))
    want = targets.traced_targets(
        jax.numpy.asarray(loads), jax.numpy.asarray(cap), target=target, c_max=c_max
    )
    got = targets.traced_targets(loads, cap, target=target, c_max=c_max, xp=np)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 40),
    levels=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_select_rows_is_top_need_with_ties_to_lower_column(rows, cols, levels, seed):
    rng = np.random.default_rng(seed)
    rank = rng.integers(-1, levels, (rows, cols)).astype(np.int32)  # few levels: many ties
    avail = (rank >= 0).sum(1)
    rank[avail == 0, 0] = 0
    avail = (rank >= 0).sum(1)
    need = np.maximum(1, (rng.random(rows) * (avail + 1)).astype(int)).clip(1, avail)
    got = host_select.select_rows(rank, need)
    for r in range(rows):
        order = sorted((c for c in range(cols) if rank[r, c] >= 0), key=lambda c: (-rank[r, c], c))
        want = np.zeros(cols, bool)
        want[order[: need[r]]] = True
        np.testing.assert_array_equal(got[r], want)


@settings(max_examples=15, deadline=None)
@given(
    dims=st.lists(st.integers(1, 8), min_size=2, max_size=4).filter(lambda d: len(d) != 3),
    n=st.integers(1, 10),
    p=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
    mapping=st.sampled_from(MAPPINGS),
    target=st.sampled_from(workload.TARGETS),
    policy=st.sampled_from(workload.POLICIES),
    seed=st.integers(0, 2**16),
)
def test_numpy_equals_jax_layer(dims, n, p, mapping, target, policy, seed):
    mask, w = _case(seed, tuple(dims), p, ties=seed % 2 == 0)
    kw = dict(n_pe=n, mapping=mapping, target=target, policy=policy, key=jax.random.key(seed))
    new_j, rep_j = rebalance_layer(mask, w, **kw)
    new_h, rep_h = rebalance_layer(mask, w, backend="numpy", **kw)
    np.testing.assert_array_equal(new_h, np.asarray(new_j))
    for f in ("loads_before", "loads_after", "regrown", "dropped", "capped"):
        np.testing.assert_array_equal(getattr(rep_h, f), np.asarray(getattr(rep_j, f)))
    for mh, mj in ((rep_h.before, rep_j.before), (rep_h.after, rep_j.after)):
        for a, b in zip(mh, mj, strict=True):
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6)


@pytest.mark.parametrize("policy", workload.POLICIES)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_numpy_equals_jax_network(mapping, policy):
    key = jax.random.key(3)
    for density in (0.3, 0.02):
        masks, weights = _net(1, density)
        kw = dict(n_pe=4, mapping=mapping, policy=policy, key=key)
        new_j, rep_j = rebalance_network(masks, weights, **kw)
        new_h, rep_h = rebalance_network(masks, weights, backend="numpy", **kw)
        assert list(new_h) == list(masks)
        for k in masks:
            np.testing.assert_array_equal(new_h[k], np.asarray(new_j[k]), err_msg=k)
        a, b = report_to_json(rep_j), report_to_json(rep_h)
        for la, lb in zip(a["layers"], b["layers"], strict=True):
            assert {k: la[k] for k in ("regrown", "dropped", "capped", "analysed")} == {
                k: lb[k] for k in ("regrown", "dropped", "capped", "analysed")
            }
            for side in ("before", "after"):
                for k, v in la[side].items():
                    assert (v is None) == (lb[side][k] is None)
                    if v is not None:
                        assert lb[side][k] == pytest.approx(v, rel=1e-6), (la["name"], side, k)


def test_numpy_refuses_non_finite_weights_and_bad_backend():
    masks, weights = _net(0, 0.2)
    weights["c2"][0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"weights\['c2'\]: 1 non-finite"):
        rebalance_network(masks, weights, n_pe=4, backend="numpy")
    with pytest.raises(ValueError, match="backend: unknown backend 'torch'; allowed: jax, numpy"):
        rebalance_network(masks, weights, n_pe=4, backend="torch")


def test_a_mapping_without_fast_paths_gives_the_same_masks_on_both_backends():
    # Every view derived from the assignment alone (index tables for the slot layout, segment
    # sums for the loads), on the host and in the kernels alike.
    plain = dataclasses.replace(mp.OUTPUT_CHANNEL.derived(), name="oc_plain")
    masks, weights = _net(2, 0.1)
    with mp.registered_mapping(plain, check=False):
        new_j, _ = rebalance_network(masks, weights, n_pe=4, mapping="oc_plain")
        new_h, _ = rebalance_network(masks, weights, n_pe=4, mapping="oc_plain", backend="numpy")
    for k in masks:
        np.testing.assert_array_equal(new_h[k], np.asarray(new_j[k]))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "experiments/rebalance.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=120,
    )


@pytest.mark.slow
def test_cli_backends_write_the_same_masks(tmp_path):
    masks, weights = _net(4, 0.1)
    mpath, wpath = str(tmp_path / "m.npz"), str(tmp_path / "w.npz")
    np.savez(mpath, **masks)
    np.savez(wpath, **weights)
    outs = {}
    for backend in ("numpy", "jax"):
        out = str(tmp_path / f"{backend}.npz")
        flag = [] if backend == "numpy" else ["--backend=jax"]  # numpy is the default
        r = _cli(f"--masks={mpath}", f"--weights={wpath}", "--n_pe=4", f"--out={out}", *flag)
        assert r.returncode == 0, r.stderr
        outs[backend] = (np.load(out), json.loads(r.stdout))
    for k in masks:
        np.testing.assert_array_equal(outs["numpy"][0][k], outs["jax"][0][k])
    assert (
        outs["numpy"][1]["network"]["after"]["latency"]
        == (outs["jax"][1]["network"]["after"]["latency"])
    )
    bad = _cli(f"--masks={mpath}", f"--weights={wpath}", "--out=x.npz", "--backend=gpu")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].endswith("--backend: got 'gpu'; allowed: jax, numpy")
    assert not os.path.exists(os.path.join(ROOT, "x.npz"))
