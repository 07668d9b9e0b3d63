"""Orbax checkpoints: exact round trip, newest step, clear errors for missing/foreign/corrupt."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uticket_jax.training import step as train
from uticket_jax.training.checkpoint import Checkpointer, CheckpointError


def _tree(scale=1.0):
    params = {"conv": {"kernel": jnp.arange(12.0).reshape(3, 4) * scale}}
    tx = train.make_optimizer(total_steps=10)
    return {
        "params": params,
        "opt": tx.init(params),
        "masks": {"conv/kernel": np.arange(12).reshape(3, 4) % 2 == 0},
        "step": jnp.int32(7),
    }


def test_round_trip_is_exact_and_keeps_structure(tmp_path):
    tree = _tree(0.5)
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.latest_step() is None
        ckpt.save(0, _tree(1.0), {"stage": 0})
        ckpt.save(1, tree, {"stage": 1, "records": [{"acc": 0.5}]})
        assert ckpt.latest_step() == 1
        state, meta = ckpt.restore(_tree(0.0))
    assert meta == {"stage": 1, "records": [{"acc": 0.5}]}
    assert jax.tree.structure(state) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype


def test_missing_and_foreign_checkpoints_raise_one_line_errors(tmp_path):
    with Checkpointer(str(tmp_path / "empty")) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint"):
            ckpt.restore(_tree())
    with Checkpointer(str(tmp_path / "a")) as ckpt:
        ckpt.save(0, _tree(), {})
        other = _tree()
        other["params"]["conv"]["kernel"] = jnp.zeros((4, 4))
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(other)
        assert "\n" not in str(err.value)


def test_corrupt_checkpoint_raises(tmp_path):
    with Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(0, _tree(), {})
    for root, _, files in os.walk(tmp_path):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(CheckpointError, match="cannot be restored"):
            ckpt.restore(_tree())
