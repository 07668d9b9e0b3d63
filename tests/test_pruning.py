"""Magnitude pruning: exact counts, subsets, scopes, ties, against a plain sort oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uticket_jax.sparsity import masks as M
from uticket_jax.sparsity import pruning


def _oracle(scores, keep, percent):
    """Plain loop: remove the round(p * survivors) smallest survivors, ties by position."""
    survivors = [i for i in range(scores.size) if keep[i]]
    survivors.sort(key=lambda i: (scores[i], i))
    n_drop = int(np.round(np.float32(percent / 100.0) * np.float32(len(survivors))))
    out = keep.copy()
    for i in survivors[:n_drop]:
        out[i] = False
    return out


def _net(seed, quantize=False):
    k = jax.random.split(jax.random.key(seed), 3)
    params = {
        "features": {
            "conv0": {"kernel": jax.random.normal(k[0], (3, 3, 2, 4))},
            "bn0": {"scale": jnp.ones(4)},
        },
        "classifier": {"kernel": jax.random.normal(k[1], (4, 3)), "bias": jnp.zeros(3)},
    }
    if quantize:  # many exact ties
        params = jax.tree.map(lambda x: jnp.round(x * 2) / 2, params)
    masks = M.make_masks(params)
    masks["features"]["conv0"]["kernel"] = jax.random.bernoulli(k[2], 0.7, (3, 3, 2, 4))
    return params, masks


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.0, 99.0), st.booleans())
def test_global_matches_oracle(seed, percent, quantize):
    params, masks = _net(seed, quantize)
    new = pruning.prune_magnitude(params, masks, percent, scope="global")
    fp, fm, fn = M.flatten(params), M.flatten(masks), M.flatten(new)
    scores = np.concatenate([np.abs(np.asarray(fp[k])).ravel() for k in fm])
    keep = np.concatenate([np.asarray(fm[k]).ravel() for k in fm])
    got = np.concatenate([np.asarray(fn[k]).ravel() for k in fm])
    np.testing.assert_array_equal(got, _oracle(scores, keep, percent))
    assert new["features"]["bn0"]["scale"] is None and new["classifier"]["bias"] is None


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.0, 99.0))
def test_layer_scope_matches_oracle_per_layer(seed, percent):
    params, masks = _net(seed, quantize=True)
    new = pruning.prune_magnitude(params, masks, percent, scope="layer")
    fp, fm, fn = M.flatten(params), M.flatten(masks), M.flatten(new)
    for k in fm:
        expected = _oracle(np.abs(np.asarray(fp[k])).ravel(), np.asarray(fm[k]).ravel(), percent)
        np.testing.assert_array_equal(np.asarray(fn[k]).ravel(), expected)


def test_rounds_follow_the_imp_schedule():
    params, _ = _net(0)
    masks = M.make_masks(params)
    total = sum(m.size for m in M.flatten(masks).values())
    for r in range(1, 6):
        masks = pruning.prune_magnitude(params, masks, 25.0)
        kept = sum(int(m.sum()) for m in M.flatten(masks).values())
        assert abs(kept - total * 0.75**r) <= r  # exact up to the rounding of each round


@pytest.mark.parametrize(
    "kwargs, match",
    [({"percent": 0.0}, "percent"), ({"percent": 100.0}, "percent"), ({"scope": "x"}, "scope")],
)
def test_bad_arguments(kwargs, match):
    params, masks = _net(0)
    args = {"percent": 20.0} | kwargs
    with pytest.raises(ValueError, match=match):
        pruning.prune_magnitude(params, masks, args.pop("percent"), **args)
