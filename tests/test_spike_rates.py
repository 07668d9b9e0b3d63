"""Input spike rates: the standalone counter, the count inside the evaluation pass, eval_every."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uticket_jax import data, models
from uticket_jax.models import spike_rates
from uticket_jax.models.describe import LAYER_TYPES
from uticket_jax.snn import LIFConfig
from uticket_jax.training import loop
from uticket_jax.training import step as train

T = 3


@pytest.fixture(scope="module")
def net():
    """A digits SNN with a lowered threshold (so spikes reach every layer) and 300 test images."""
    ds = data.load_dataset("digits")
    model = models.get_model(
        "digits_snn", num_classes=10, timesteps=T, neuron=LIFConfig(v_threshold=0.3)
    )
    variables = loop.init_variables(model, ds.image_shape, jax.random.key(0))
    tx = train.make_optimizer("sgd", lr=0.1, total_steps=10)
    state = train.create_train_state(model.apply, variables, tx, None)
    return model, variables, state, ds.test_images[:300], ds.test_labels[:300]


def _oracle_rates(model, variables, images):
    """Plain loops: every conv/dense input of one whole-set forward, its non-zeros counted."""
    seen = {}

    def grab(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, LAYER_TYPES) and args:
            seen["/".join(module.path) + "/kernel"] = np.asarray(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        model.apply(variables, jnp.asarray(images), train=False)
    rates = {}
    for name, x in seen.items():
        nonzero = total = 0
        for row in x.reshape(x.shape[0], -1):
            for v in row:
                nonzero += int(v != 0)
                total += 1
        rates[name] = nonzero / total
    return rates


def test_standalone_rates_match_the_loop_oracle(net):
    model, variables, _, images, _ = net
    want = _oracle_rates(model, variables, images)
    got = spike_rates.input_spike_rates(model, variables, images, batch_size=128)
    assert set(got) == set(want)
    assert any(0.0 < v < 1.0 for v in got.values())
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7), k


@pytest.mark.parametrize("batch_size", [128, 100, 300, 512])
def test_rates_in_the_evaluation_pass_equal_the_standalone_ones_bit_for_bit(net, batch_size):
    # 300 images: batch 128 pads the last batch (44 real rows of 128), 512 pads the only one.
    model, variables, state, images, labels = net
    dp = loop.data_parallel()
    out = loop.evaluate(state, images, labels, batch_size=batch_size, dp=dp, spike_rates=True)
    plain = loop.evaluate(state, images, labels, batch_size=batch_size, dp=dp)
    alone = spike_rates.input_spike_rates(model, variables, images, batch_size=batch_size)
    assert out["spike_rates"] == alone
    assert out["accuracy"] == plain["accuracy"]
    assert out["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert "spike_rates" not in plain


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="fc")(x)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6),
    fold=st.integers(1, 4),
    width=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_count_inputs_counts_only_the_valid_rows(b, fold, width, seed):
    # Rows t * b + e belong to example e (time folded into the batch).
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, (fold * b, width)).astype(np.float32)
    valid = rng.random(b) < 0.6
    module = _Dense()
    variables = module.init(jax.random.key(0), jnp.asarray(x))
    with spike_rates.count_inputs(jnp.asarray(valid)) as counts:
        module.apply(variables, jnp.asarray(x))
    nonzero = total = 0
    for r in range(fold * b):
        if valid[r % b]:
            nonzero += int(np.count_nonzero(x[r]))
            total += width
    np.testing.assert_array_equal(np.asarray(counts["fc/kernel"]), [nonzero, total])
    with spike_rates.count_inputs() as every:
        module.apply(variables, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(every["fc/kernel"]), [np.count_nonzero(x), x.size])


def test_count_inputs_refuses_rows_that_are_not_whole_batches():
    module = _Dense()
    x = jnp.ones((5, 3))
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="not a multiple"):
        with spike_rates.count_inputs(jnp.ones((2,), bool)):
            module.apply(variables, x)


@given(epochs=st.integers(1, 12), every=st.integers(1, 12))
def test_eval_due_is_every_nth_epoch_and_the_last(epochs, every):
    due = [e for e in range(epochs) if loop.eval_due(e, epochs, every)]
    want = sorted({e for e in range(epochs) if (e + 1) % every == 0} | {epochs - 1})
    assert due == want


def test_fit_with_eval_every_skips_evaluations_and_trains_the_same(net):
    _, _, state, _, _ = net
    ds = data.load_dataset("digits")
    ds = ds._replace(
        train_images=ds.train_images[:128],
        train_labels=ds.train_labels[:128],
        test_images=ds.test_images[:64],
        test_labels=ds.test_labels[:64],
    )
    kw = dict(epochs=3, batch_size=32, key=jax.random.key(1), dp=loop.data_parallel())
    _, every = loop.fit(state, ds, progress=False, **kw)
    final, sparse = loop.fit(state, ds, eval_every=2, progress=False, **kw)
    assert [r["test_accuracy"] is None for r in sparse] == [True, False, False]
    for a, b in zip(every, sparse, strict=True):
        assert a["train_loss"] == b["train_loss"]
        if b["test_accuracy"] is not None:
            assert (a["test_loss"], a["test_accuracy"]) == (b["test_loss"], b["test_accuracy"])
    with pytest.raises(ValueError, match="eval_every"):
        loop.fit(state, ds, eval_every=0, progress=False, **kw)
