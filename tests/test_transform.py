"""u-Ticket as a pure transform on pytrees: jit equals eager, vmap equals a loop, and a jitted
training step of somebody else's model rebalances behind `lax.cond`, compiled once, with no
host transfer."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uticket_jax import sparsity, workload
from uticket_jax.training import masked


def _params(seed=0):
    """A params-shaped tree: two convs, a dense head, biases (not prunable)."""
    rng = np.random.default_rng(seed)
    shapes = {"conv0": (3, 3, 2, 8), "conv1": (3, 3, 8, 12), "head": (12, 5)}
    return {
        k: {"kernel": jnp.asarray(rng.standard_normal(s), jnp.float32), "bias": jnp.zeros(s[-1])}
        for k, s in shapes.items()
    }


def _masks(params, seed=1, density=0.3):
    rng = np.random.default_rng(seed)
    masks = sparsity.make_masks(params)
    return jax.tree.map(lambda m: jnp.asarray(rng.random(m.shape) < density), masks)


CONVS = {"conv1/kernel"}  # rebalanced: the second conv (the first sees the image, the paper)


@pytest.mark.parametrize("policy", workload.POLICIES)
@pytest.mark.parametrize("mapping", ["output_channel", "input_split"])
def test_jit_equals_eager_on_a_params_tree(mapping, policy):
    params = _params()
    masks = _masks(params)
    key = jax.random.key(3)
    kw = dict(mapping=mapping, n_pe=4, policy=policy, include=CONVS)
    eager, rep = workload.rebalance(masks, params, key, **kw)
    jitted, rep_j = jax.jit(lambda m, w, k: workload.rebalance(m, w, k, **kw))(masks, params, key)
    assert jax.tree.structure(jitted) == jax.tree.structure(masks)  # None leaves kept
    assert eager["conv0"]["bias"] is None and jitted["head"]["bias"] is None
    jax.tree.map(np.testing.assert_array_equal, jitted, eager)
    jax.tree.map(np.testing.assert_array_equal, rep_j, rep)
    assert rep.names == ("conv0/kernel", "conv1/kernel", "head/kernel")
    assert rep.analysed == (False, True, False)
    np.testing.assert_array_equal(jitted["conv0"]["kernel"], masks["conv0"]["kernel"])
    assert not np.array_equal(jitted["conv1"]["kernel"], masks["conv1"]["kernel"])
    assert float(rep.after.utilization) == 1.0 > float(rep.before.utilization)
    host, _ = workload.rebalance(masks, params, key, backend="numpy", **kw)
    jax.tree.map(np.testing.assert_array_equal, host, eager)


def test_vmap_over_keys_equals_a_loop():
    params = _params()
    masks = _masks(params)
    keys = jax.random.split(jax.random.key(7), 4)
    kw = dict(mapping="input_split", n_pe=4, policy="random", include=CONVS)
    batched, rep = jax.vmap(lambda k: workload.rebalance(masks, None, k, **kw))(keys)
    for i in range(4):
        one, rep_i = workload.rebalance(masks, None, keys[i], **kw)
        jax.tree.map(lambda b, x, i=i: np.testing.assert_array_equal(b[i], x), batched, one)
        np.testing.assert_array_equal(rep.layers[1].loads_after[i], rep_i.layers[1].loads_after)
    picks = batched["conv1"]["kernel"]
    assert len({np.asarray(p).tobytes() for p in picks}) > 1  # the keys choose differently


def test_leaf_order_is_jax_tree_order_and_orderdicts_keep_theirs():
    masks = collections.OrderedDict(b=jnp.ones((3, 3, 2, 4), bool), a=jnp.ones((3, 3, 4, 4), bool))
    _, rep = workload.rebalance(masks, None, jax.random.key(0), n_pe=2, policy="random")
    assert rep.names == ("b", "a")
    _, rep = workload.rebalance(dict(masks), None, jax.random.key(0), n_pe=2, policy="random")
    assert rep.names == ("a", "b")


class _Net:
    """Somebody else's model: a plain function of a params dict (no Flax, none of ours)."""

    @staticmethod
    def apply(params, x):  # x [B, 6, 6, 2]
        h = jax.lax.conv_general_dilated(
            x, params["conv0"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + params["conv0"]["bias"])
        h = jax.lax.conv_general_dilated(
            h, params["conv1"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + params["conv1"]["bias"]).mean((1, 2))
        return h @ params["head"]["kernel"] + params["head"]["bias"]


def test_a_jitted_training_step_rebalances_behind_cond_compiled_once_no_transfers():
    params = _params()
    masks = _masks(params, density=0.5)
    params = sparsity.apply_masks(params, masks)
    tx = masked(optax.sgd(0.05, momentum=0.9))
    opt_state = tx.init(params)
    x = jax.random.normal(jax.random.key(0), (16, 6, 6, 2))
    y = jax.random.randint(jax.random.key(1), (16,), 0, 5)
    traces = []

    @jax.jit
    def step(params, masks, opt_state, key, i):
        traces.append(1)  # runs once per trace

        def loss(p):
            logits = _Net.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        params = optax.apply_updates(params, updates)

        def prune_and_rebalance(m):  # every 3rd step: IMP's prune, then u-Ticket
            m = sparsity.prune_magnitude(params, m, 20.0)
            m, _ = workload.rebalance(m, params, key, n_pe=4, include=CONVS)
            return m

        masks = jax.lax.cond(i % 3 == 2, prune_and_rebalance, lambda m: m, masks)
        return sparsity.apply_masks(params, masks), masks, opt_state

    key = jax.random.key(5)
    args = jax.device_put((params, masks, opt_state, key))
    steps = [jax.device_put(jnp.int32(i)) for i in range(6)]
    state = step(*args, steps[0])  # compiles
    with jax.transfer_guard("disallow"):
        for i in steps[1:]:
            state = step(*state, key, i)
        jax.block_until_ready(state)
    assert len(traces) == 1
    p, m, _ = state
    loads = workload.pe_loads(m["conv1"]["kernel"], 4)
    assert (np.asarray(loads) == np.asarray(loads)[:, :1]).all()  # every group balanced
    dens = [float(jnp.mean(m[k]["kernel"])) for k in ("conv0", "head")]
    assert all(d < 0.5 for d in dens)  # pruned twice (steps 2 and 5)
    for k in ("conv0", "conv1", "head"):  # pruned weights stay exactly zero
        assert not np.asarray(p[k]["kernel"])[~np.asarray(m[k]["kernel"])].any()
