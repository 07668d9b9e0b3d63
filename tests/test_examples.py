"""The documented example runs: u-Ticket in somebody else's Flax/optax loop, public API only."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from uticket_jax import workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "uticket_in_your_loop.py")


def test_uticket_in_your_loop(capsys):
    spec = importlib.util.spec_from_file_location("uticket_in_your_loop", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    masks, params, acc = example.main(epochs=2, rounds=3)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dense:") and [ln[:8] for ln in out[1:]] == [
        "round 1:",
        "round 2:",
        "round 3:",
    ]
    assert all("-> 1.000" in ln for ln in out[1:])  # every round ends balanced
    assert acc > 0.5  # ten classes: chance is 0.1
    for name in ("Conv_1", "Conv_2"):  # the rebalanced convs: every PE of a group equal
        loads = np.asarray(workload.pe_loads(masks[name]["kernel"], 8))
        assert (loads == loads[:, :1]).all(), name
        assert not np.asarray(params[name]["kernel"])[~np.asarray(masks[name]["kernel"])].any()
    density = float(np.mean(np.concatenate([np.ravel(m) for m in _kernels(masks)])))
    assert abs(density - 0.6**3) < 0.02  # three rounds of 40 %, rebalancing adds few
    assert masks["Conv_0"]["bias"] is None


def _kernels(masks):
    return [v["kernel"] for v in masks.values()]
