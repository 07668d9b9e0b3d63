"""Per-input-channel firing rates from the evaluation pass, and the expected_work target in the
pipeline: the rates of an arm's trained net become the costs of its next rebalance."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uticket_jax import configs, data, workload
from uticket_jax.models import spike_rates
from uticket_jax.pipeline import runner, steps
from uticket_jax.pipeline import setup as setup_lib
from uticket_jax.pipeline.state import Progress
from uticket_jax.training import loop
from uticket_jax.training.checkpoint import Checkpointer


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), name="conv")(x)
        x = (x > 0).astype(jnp.float32).reshape(x.shape[0], -1)
        return nn.Dense(2, name="fc")(x)


def test_channel_counts_match_a_loop_oracle_and_leave_the_layer_counts_alone():
    rng = np.random.default_rng(0)
    x = (rng.random((5, 4, 4, 2)) < 0.3).astype(np.float32)
    x[:, :, :, 1] = 0  # a silent channel
    valid = jnp.array([True, True, False, True, False])
    net = _Net()
    variables = net.init(jax.random.key(0), jnp.asarray(x))
    seen = {}

    def grab(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
            seen[context.module.name] = np.asarray(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        net.apply(variables, jnp.asarray(x))
    with spike_rates.count_inputs(valid) as plain:
        net.apply(variables, jnp.asarray(x))
    with spike_rates.count_inputs(valid, channels=True) as both:
        net.apply(variables, jnp.asarray(x))
    keep = np.asarray(valid)
    for name in ("conv", "fc"):
        k = f"{name}/kernel"
        np.testing.assert_array_equal(both[k][:2], plain[k])  # the layer counts, bit for bit
        inp = seen[name][keep]
        want = (inp.reshape(-1, inp.shape[-1]) != 0).sum(0)
        np.testing.assert_array_equal(both[k][2:], want)
    totals = {}
    spike_rates.add_counts(totals, both)
    rates = spike_rates.channel_rates_of(totals)
    assert rates["conv/kernel"][1] == 0.0
    layer = spike_rates.rates_of(totals)
    for k, r in rates.items():  # the layer's rate is the mean over its channels
        assert float(np.mean(r)) == pytest.approx(layer[k], rel=1e-6)


@pytest.fixture(scope="module")
def tiny():
    ds = data.load_dataset("digits")
    return ds._replace(
        train_images=ds.train_images[:256],
        train_labels=ds.train_labels[:256],
        test_images=ds.test_images[:128],
        test_labels=ds.test_labels[:128],
    )


def _cfg(**kw):
    base = dict(
        timesteps=2,
        epochs=2,
        rounds=1,
        rewind_epoch=1,
        batch_size=64,
        prune_percent=40.0,
        eval_batch_size=128,
        n_pe=8,
        arms=("uticket",),
        target="expected_work",
    )
    return configs.get("digits").replace(**(base | kw))


def test_the_next_rebalance_uses_the_rates_of_the_previous_trained_net(tiny, tmp_path):
    cfg = _cfg()
    cfg.validate()
    setup = setup_lib.setup_run(cfg, tiny, loop.data_parallel())
    state, prog = setup_lib.initial_state(setup), Progress()
    assert all(np.all(r == 1) for r in state.arms["uticket"].rates.values())
    kw = dict(bars=False, log=lambda s: None)
    with Checkpointer(str(tmp_path)) as ckpt:
        state, prog = runner.run_stage(setup, tiny, state, prog, checkpointer=ckpt, **kw)
        restored, _ = ckpt.restore_newest(setup_lib.initial_state(setup))
    arm = state.arms["uticket"]
    rates = arm.rates
    assert list(rates) == list(setup.order)
    analysed = [k for k, s in zip(setup.order, setup.specs, strict=True) if s.analysed]
    assert any(np.any((rates[k] > 0) & (rates[k] < 1)) for k in analysed)
    for k in rates:  # checkpointed with the arm, restored exactly
        np.testing.assert_array_equal(restored.arms["uticket"].rates[k], rates[k])
    stage = runner.stage_at(cfg, prog.stage, None)
    key = jax.random.fold_in(setup.rebalance_key, stage.round)
    got, counts = steps.next_masks(cfg, stage, arm, setup.order, key=key)
    weights = setup_lib.kernels(arm.trained, setup.order)
    pruned = steps.pruning.prune_magnitude(
        weights, setup_lib.ordered(arm.masks, setup.order), cfg.prune_percent, scope=cfg.scope
    )
    costs = steps.rate_costs(rates, weights)
    want, _ = workload.rebalance_network(
        pruned, weights, n_pe=8, target="expected_work", costs=costs
    )
    ones, _ = workload.rebalance_network(pruned, weights, n_pe=8)
    for k in setup.order:
        np.testing.assert_array_equal(got[k], want[k])
    assert any(not np.array_equal(got[k], ones[k]) for k in analysed)  # the rates matter
    assert counts.regrown + counts.dropped > 0
    state, prog = runner.run_stage(setup, tiny, state, prog, **kw)
    assert prog.records[-1].arm == "uticket" and prog.records[-1].rebalance is not None


def test_config_refuses_an_unknown_target():
    with pytest.raises(ValueError, match="--target: unknown 'expected'; allowed: .*expected_work"):
        _cfg(target="expected").validate()
