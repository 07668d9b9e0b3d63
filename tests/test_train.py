"""Masked training: pruned weights stay zero, losses, schedules, eval counting, contracts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uticket_jax.sparsity import masks as masks_lib
from uticket_jax.training import step as train

T, B, D, C = 3, 8, 6, 4


class Toy(nn.Module):
    """Two dense layers and a BN, emitting per-step logits `[T, B, C]` like the SNNs."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape(x.shape[0], -1)
        h = nn.Dense(16, name="fc1")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        h = jnp.tanh(h)
        steps = jnp.arange(1, T + 1, dtype=h.dtype)[:, None, None]  # [T, 1, 1]
        return nn.Dense(C, name="fc2")(h[None] * steps)  # [T, B, C]


def _setup(opt="sgd", seed=0, wd=5e-4, with_masks=True):
    model = Toy()
    key = jax.random.key(seed)
    x = jax.random.normal(key, (B, D))
    y = jax.random.randint(jax.random.fold_in(key, 1), (B,), 0, C)
    variables = model.init(key, x, train=False)
    masks = None
    if with_masks:
        masks = masks_lib.make_masks(variables["params"])
        k1 = variables["params"]["fc1"]["kernel"]
        masks["fc1"]["kernel"] = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.3, k1.shape)
    tx = train.make_optimizer(opt, lr=0.05, total_steps=50, weight_decay=wd)
    return train.create_train_state(model.apply, variables, tx, masks), x, y


@pytest.mark.parametrize("opt", train.OPTIMIZERS)
@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_pruned_weights_stay_exactly_zero(opt, wd):
    state, x, y = _setup(opt, wd=wd)
    m = np.asarray(state.masks["fc1"]["kernel"])
    assert (np.asarray(state.params["fc1"]["kernel"])[~m] == 0).all()
    before = np.asarray(state.params["fc1"]["kernel"])
    for _ in range(5):
        state, metrics = train.train_step(state, x, y)
    after = np.asarray(state.params["fc1"]["kernel"])
    assert (after[~m] == 0.0).all()
    assert (after[m] != before[m]).any()  # the surviving weights do train
    assert masks_lib.sparsity_report(state.masks)["layers"]["fc1/kernel"] == pytest.approx(
        1 - m.mean()
    )
    assert np.isfinite(float(metrics["loss"]))


def test_masked_transformation_zeroes_updates_for_any_inner_chain():
    params = {"w": jnp.ones((3,)), "b": jnp.ones((2,))}
    masks = {"w": jnp.array([True, False, True]), "b": None}
    tx = train.masked(optax.chain(optax.add_decayed_weights(0.1), optax.sgd(1.0, momentum=0.9)))
    state = tx.init(params)
    grads = {"w": jnp.full((3,), 2.0), "b": jnp.full((2,), 2.0)}
    for _ in range(3):
        updates, state = tx.update(grads, state, params, masks=masks)
    assert float(updates["w"][1]) == 0.0
    assert (np.asarray(updates["w"])[[0, 2]] != 0).all()
    assert (np.asarray(updates["b"]) != 0).all()


def test_loss_is_mean_over_steps_of_cross_entropy():
    logits = jax.random.normal(jax.random.key(0), (T, B, C))
    labels = jnp.arange(B) % C
    manual = np.mean(
        [
            np.mean(-jax.nn.log_softmax(logits[t])[np.arange(B), np.asarray(labels)])
            for t in range(T)
        ]
    )
    np.testing.assert_allclose(train.snn_loss(logits, labels), manual, rtol=1e-6)
    with pytest.raises(ValueError, match="logits"):
        train.snn_loss(logits[0], labels)


def test_training_reduces_loss_dense():
    state, x, y = _setup("adam", with_masks=False)
    first = None
    for _ in range(30):
        state, metrics = train.train_step(state, x, y)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first


def test_eval_step_counts_each_valid_example_once():
    state, x, y = _setup()
    full = train.eval_step(state, x, y, jnp.ones(B, bool))
    half = train.eval_step(state, x, y, jnp.arange(B) < 5)
    assert float(full["count"]) == B and float(half["count"]) == 5
    assert float(half["correct"]) <= float(full["correct"])
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
    )
    expected = np.sum(np.argmax(np.asarray(logits).mean(0), -1) == np.asarray(y))
    assert float(full["correct"]) == expected


def test_new_mask_same_shapes_does_not_recompile():
    state, x, y = _setup()
    train.train_step(state, x, y)
    n = train.train_step._cache_size()
    new_masks = jax.tree.map(
        lambda m: None if m is None else ~m, state.masks, is_leaf=lambda v: v is None
    )  # a different mask, same shapes and dtypes
    state2 = state.replace(masks=new_masks)
    out, _ = train.train_step(state2, x, y)
    assert train.train_step._cache_size() == n
    assert out.params["fc1"]["kernel"].dtype == state.params["fc1"]["kernel"].dtype


def test_same_seed_same_result_bit_for_bit():
    results = []
    for _ in range(2):
        state, x, y = _setup(seed=3)
        for _ in range(3):
            state, _ = train.train_step(state, x, y)
        results.append(np.asarray(state.params["fc2"]["kernel"]))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("name", train.SCHEDULES)
def test_schedules(name):
    sched = train.make_schedule(name, 0.1, 90)
    assert float(sched(0)) == pytest.approx(0.1)
    end = float(sched(90))
    assert {"cosine": end == pytest.approx(0.0, abs=1e-8), "step": end < 0.1 / 5}.get(
        name, end == pytest.approx(0.1)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"lr": 0.0}, "lr"),
        ({"total_steps": 0}, "total_steps"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_optimizer_arguments(kwargs, match):
    args = {"total_steps": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        train.make_optimizer(**args)


@settings(max_examples=12, deadline=None)
@given(opt=st.sampled_from(train.OPTIMIZERS), k=st.integers(0, 49))
def test_schedule_started_part_way_takes_that_rate_with_fresh_moments(opt, k):
    # Rewinding with the rest of the schedule: the first update at step k is the first update
    # of a fresh optimizer scaled by sched(k) / sched(0) (cosine over 50 steps from 0.05). That
    # holds for Adam only while its bias-correction count stays fresh, so it checks that too.
    state, x, y = _setup(opt, with_masks=False)
    n = train.train_step._cache_size()
    moved = train.start_schedule_at(state, k)
    assert int(moved.step) == k
    out0, _ = train.train_step(state, x, y)
    outk, _ = train.train_step(moved, x, y)
    ratio = float(optax.cosine_decay_schedule(0.05, 50)(k)) / 0.05
    for before, a, b in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(out0.params),
        jax.tree.leaves(outk.params),
        strict=True,
    ):
        np.testing.assert_allclose(b - before, (a - before) * ratio, rtol=1e-4, atol=3e-7)
    assert train.train_step._cache_size() <= n + 1  # one compile for both states


def test_schedule_start_rejects_bad_input():
    state, _, _ = _setup()
    with pytest.raises(ValueError, match="step: must be >= 0"):
        train.start_schedule_at(state, -1)
    plain = train.create_train_state(
        state.apply_fn, {"params": state.params}, train.masked(optax.sgd(0.1))
    )
    with pytest.raises(ValueError, match="no learning-rate schedule"):
        train.start_schedule_at(plain, 3)
