"""hardware.survival: the cuts of a ticket over a baseline, weight-only and spike-driven."""

from __future__ import annotations

import numpy as np
import pytest

from uticket_jax import hardware

SHAPES = {"c0": (3, 3, 2, 8), "c1": (1, 1, 8, 12), "d": (12, 5)}


def _setup(seed):
    rng = np.random.default_rng(seed)
    specs = hardware.specs_from_shapes(SHAPES, out_sizes=[4, 4, 1], conv_only=False)
    cfg = hardware.config_grid(n_pe=[2, 4], mapping=["output_channel", "input_split"], timesteps=3)
    masks = {k: rng.random(s) < 0.5 for k, s in SHAPES.items()}
    return rng, specs, cfg, masks


def _trace(rng, p):
    return {"c1": rng.random((3, 2, 4, 4, 8)) < p, "d": rng.random((3, 2, 12)) < p}


def test_a_ticket_against_itself_cuts_nothing():
    rng, specs, cfg, masks = _setup(0)
    priced = hardware.price_ticket(masks, _trace(rng, 0.3), specs, cfg)
    c = hardware.cuts(priced, priced)
    for name in ("latency", "energy"):
        np.testing.assert_array_equal(c[f"{name}_cut_weights"], 0.0)
        np.testing.assert_array_equal(c[f"{name}_cut_spikes"], 0.0)
        assert np.isnan(c[f"{name}_survives"]).all()  # nothing to survive
    np.testing.assert_array_equal(c["utilization_spikes"], c["baseline_utilization_spikes"])


def test_all_spiking_without_padding_keeps_the_whole_cut():
    """1x1 convs and dense layers with every input spiking: spike-driven = weight-only, so the
    cut survives whole."""
    rng, specs, cfg, masks = _setup(1)
    other = {k: rng.random(s) < 0.3 for k, s in SHAPES.items()}
    ones = _trace(rng, 2.0)  # every entry True
    a = hardware.price_ticket(other, ones, specs, cfg)
    b = hardware.price_ticket(masks, ones, specs, cfg)
    for part in ("network", "layers"):
        c = hardware.cuts(a, b, part)
        for name in ("latency", "energy"):
            np.testing.assert_allclose(
                c[f"{name}_cut_spikes"], c[f"{name}_cut_weights"], rtol=1e-6, atol=1e-7
            )
        assert np.nanmax(np.abs(c["latency_survives"] - 1)) < 1e-5


def test_cuts_equal_the_figures_ratio_and_rows_are_complete():
    rng, specs, cfg, masks = _setup(2)
    other = {k: rng.random(s) < 0.3 for k, s in SHAPES.items()}
    a = hardware.price_ticket(other, _trace(rng, 0.2), specs, cfg)
    b = hardware.price_ticket(masks, _trace(rng, 0.4), specs, cfg)
    c = hardware.cuts(a, b)
    want = 1 - a.spikes.network.cycles.astype(np.float64) / b.spikes.network.cycles
    np.testing.assert_array_equal(c["latency_cut_spikes"], want)
    rows = hardware.cut_rows(a, b, cfg, specs)
    analysed = [s.name for s in specs if s.analysed]
    assert len(rows) == 4 * (1 + len(analysed))
    assert [r["layer"] for r in rows[: 1 + len(analysed)]] == ["network", *analysed]
    assert rows[0]["latency_cut_spikes"] == pytest.approx(float(want[0]))
    with pytest.raises(ValueError, match="part: expected"):
        hardware.cuts(a, b, "groups")
