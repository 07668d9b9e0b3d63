"""Energy models: SATA_Sim's own numbers, today's figures bit for bit, the registry, a plug-in."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from typing import NamedTuple

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import oracle_energy
from uticket_jax import hardware
from uticket_jax.hardware import energy
from uticket_jax.launch import report

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def _sata_counts(fx):
    """SATA_Sim's counts of its lth workload as a float64 `Counts` record."""
    c = {k: float(v) for k, v in fx["counts"].items() if not k.startswith("_")}
    c["seconds"] = c["cycles"] / c["clock_hz"]
    c["weights"] = c["pe_cycles_busy"] = c["pe_cycles_idle"] = None  # sata does not need them
    return energy.Counts(**c)


def _sata_constants(fx, **zero):
    k = {n: float(v) for n, v in fx["constants"].items() if not n.startswith("_")}
    k.update({n: 0.0 for n in zero})
    return energy.Sata(**k)


def _close(got_j, want_nj):
    assert math.isclose(got_j, want_nj * 1e-9, rel_tol=1e-6), (got_j, want_nj * 1e-9)


# --- SATA_Sim's own figures ----------------------------------------------------------------


def test_sata_constants_are_sata_sims():
    fx = _fixture("sata_lth.json")
    consts = _sata_constants(fx)._asdict()
    defaults = energy.SATA.defaults._asdict()
    for k in ("act_bits", "out_bits"):  # sata-config.yaml today; the shipped run used 8
        assert defaults[k] == 1.0 and consts[k] == 8.0
        consts[k] = defaults[k]
    assert consts == defaults
    assert energy.SATA.clock_hz == fx["counts"]["clock_hz"] == 400e6


@pytest.mark.parametrize(
    "part, sata_name", [("mac", "spike-mac"), ("lif", "lif"), ("spad", "spad")]
)
def test_sata_reproduces_sata_sims_computation_energy(part, sata_name):
    """Each component alone (the other two zeroed) against computation-energy.yaml."""
    fx = _fixture("sata_lth.json")
    others = [p for p in ("mac", "lif", "spad") if p != part]
    zero = {f"{p}_{k}": 0 for p in others for k in ("op_mw", "ungated_mw", "leak_mw")}
    terms = energy.energy_terms("sata", _sata_counts(fx), _sata_constants(fx, **zero))
    want = fx["computation_energy_nj"][sata_name]
    _close(terms["compute_op"], want["energy-operation"])
    _close(terms["compute_ungated"], want["energy-ungated"])
    _close(terms["compute_leakage"], want["energy-leakage"])


def test_sata_reproduces_sata_sims_totals():
    fx = _fixture("sata_lth.json")
    terms = energy.energy_terms("sata", _sata_counts(fx), _sata_constants(fx))
    comp, mem = fx["computation_energy_nj"], fx["memory_energy_nj"]
    compute = terms["compute_op"] + terms["compute_ungated"] + terms["compute_leakage"]
    _close(compute, comp["total"])
    _close(terms["dram"], mem["dram_total"])
    _close(terms["buffer_dynamic"] + terms["buffer_leakage"], mem["sram_total"])
    dyn = sum(mem[f"GLB-{b}"][f"{b}-dynamic"] for b in ("ifmap", "weight", "ofmap"))
    _close(terms["buffer_dynamic"], dyn)
    leak = sum(mem[f"GLB-{b}"][f"{b}-leakage"] for b in ("ifmap", "weight", "ofmap"))
    _close(terms["buffer_leakage"], leak)


@pytest.mark.parametrize(
    "buf, read, leak",
    [("weight", "wbuf_read_nj", "wbuf_leak_mw"), ("ifmap", "ibuf_read_nj", "ibuf_leak_mw"),
     ("ofmap", "obuf_write_nj", "obuf_leak_mw")],
)  # fmt: skip
def test_sata_reproduces_each_buffer(buf, read, leak):
    fx = _fixture("sata_lth.json")
    rest = {"wbuf_read_nj", "wbuf_leak_mw", "ibuf_read_nj", "ibuf_leak_mw"}
    rest |= {"obuf_write_nj", "obuf_leak_mw"}
    terms = energy.energy_terms(
        "sata", _sata_counts(fx), _sata_constants(fx, **dict.fromkeys(rest - {read, leak}))
    )
    _close(terms["buffer_dynamic"], fx["memory_energy_nj"][f"GLB-{buf}"][f"{buf}-dynamic"])
    _close(terms["buffer_leakage"], fx["memory_energy_nj"][f"GLB-{buf}"][f"{buf}-leakage"])


def test_sata_reproduces_each_dram_stream():
    fx = _fixture("sata_lth.json")
    base = _sata_counts(fx)
    streams = {"ifmap": "dram_input_reads", "weight": "dram_weight_reads"}
    streams["ofmap"] = "dram_output_writes"
    for name, field in streams.items():
        only = base._replace(**{f: 0.0 for f in streams.values() if f != field})
        terms = energy.energy_terms("sata", only, _sata_constants(fx))
        _close(terms["dram"], fx["memory_energy_nj"]["DRAM-system"][name])


def test_sata_energy_matches_the_oracle_formula():
    """The model's function against the oracle's independent writing of it, default widths."""
    fx = _fixture("sata_lth.json")
    counts = _sata_counts(fx)
    got = energy.energy_terms("sata", counts)
    c = {k: v for k, v in counts._asdict().items() if v is not None}
    want = oracle_energy("sata", c, energy.SATA.defaults._asdict())
    for t in energy.SATA.terms:
        assert math.isclose(got[t], want[t], rel_tol=1e-12), t


# --- horowitz45: today's figures, bit for bit -------------------------------------------------


def test_horowitz45_is_todays_figures_bit_for_bit():
    """Figures recorded with the simulator before energy models were plug-ins (same configs),
    when horowitz45 was the default at 500 MHz: now one argument away."""
    g = _fixture("horowitz45_golden.json")
    shapes = {k: tuple(v) for k, v in g["shapes"].items()}
    rng = np.random.default_rng(g["seed"])
    masks = {k: rng.random(s) < g["density"] for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=g["out_sizes"])
    # The recorded grid's order: mapping, n_pe, e_idle_pj (then a config field), activity_aware.
    grid = g["grid"]
    rows = list(
        itertools.product(grid["mapping"], grid["n_pe"], grid["e_idle_pj"], grid["activity_aware"])
    )
    clock = energy.HOROWITZ45.clock_hz
    assert clock == 500e6
    configs = hardware.stack_configs(
        [
            hardware.make_config(mapping=m, n_pe=n, activity_aware=a, clock_hz=clock)
            for m, n, _, a in rows
        ]
    )
    consts = hardware.make_constants("horowitz45", e_idle_pj=[e for _, _, e, _ in rows])
    rates = np.asarray(g["rates"], np.float32)
    res = hardware.simulate_masks(
        masks, specs, configs, spike_rates=rates, energy_model="horowitz45", energy_constants=consts
    )
    for where, fig in (("network", res.network), ("layers", res.layers)):
        old = g[where]
        for k in hardware.Figures._fields[:8] + ("energy_total",):
            want = np.asarray(old[k], np.float64).astype(np.asarray(getattr(fig, k)).dtype)
            np.testing.assert_array_equal(getattr(fig, k), want, err_msg=f"{where} {k}")
        for t in energy.HOROWITZ45.terms:
            want = np.asarray(old[f"energy_{t}"], np.float32)
            np.testing.assert_array_equal(fig.energy_terms[t], want, err_msg=f"{where} {t}")
        # horowitz45 has no off-chip term: all of it is on the chip (the network's total sums
        # the layers' totals, the on-chip energy the network's terms: float32 rounding apart).
        np.testing.assert_allclose(fig.energy_onchip, fig.energy_total, rtol=1e-6)
        np.testing.assert_array_equal(fig.energy_dram, np.zeros_like(fig.energy_total))


def test_sata_is_the_default_model_at_its_own_clock():
    """No model named: sata's figures, at sata's published clock (the default config's)."""
    assert energy.DEFAULT_ENERGY_MODEL == hardware.DEFAULT_ENERGY_MODEL == "sata"
    assert hardware.DEFAULTS["clock_hz"] == energy.SATA.clock_hz == 400e6
    assert hardware.ENERGY_TERMS == energy.SATA.terms
    shapes = {"a/kernel": (3, 3, 2, 6), "b/kernel": (3, 3, 6, 4), "fc/kernel": (16, 3)}
    rng = np.random.default_rng(5)
    masks = {k: rng.random(s) < 0.4 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 2, 1], skip_first=False)
    cfg = hardware.config_grid(n_pe=[2, 3])
    assert (cfg.clock_hz == 400e6).all()
    default = hardware.simulate_masks(masks, specs, cfg)
    sata = hardware.simulate_masks(masks, specs, cfg, energy_model="sata")
    assert default.energy_model == "sata"
    jax.tree.map(np.testing.assert_array_equal, default, sata)
    row = hardware.sweep_networks({"m": masks}, specs, cfg)[0]
    assert row["energy_model"] == "sata" and list(row["config"])[-1] == "out_bits"
    assert hardware.SweepResult(default.layers, default.network).energy_model == "sata"


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_onchip_and_dram_energy_split_the_total(backend):
    """energy_onchip + energy_dram = energy_total; DRAM is sata's `dram` term, the rest is on
    the chip; the rows and the flat CSV row carry both beside the total."""
    assert energy.SATA.offchip_terms == ("dram",) and energy.HOROWITZ45.offchip_terms == ()
    shapes = {"a/kernel": (3, 3, 2, 6), "b/kernel": (3, 3, 6, 4)}
    rng = np.random.default_rng(2)
    masks = {k: rng.random(s) < 0.5 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 4], skip_first=False)
    cfg = hardware.config_grid(n_pe=[2, 4], mapping=list(hardware.MAPPINGS))
    res = hardware.simulate_masks(masks, specs, cfg, backend=backend)
    for fig in (res.network, res.layers):
        t = fig.energy_terms
        np.testing.assert_array_equal(fig.energy_dram, t["dram"])
        on = sum(v for k, v in t.items() if k != "dram")
        np.testing.assert_allclose(fig.energy_onchip, on, rtol=1e-6)
        np.testing.assert_allclose(fig.energy_onchip + fig.energy_dram, fig.energy_total, rtol=1e-6)
        assert fig.energy_onchip.dtype == fig.energy_dram.dtype == fig.energy_total.dtype
        assert fig.energy_onchip.shape == fig.energy_dram.shape == fig.energy_total.shape
        assert (fig.energy_dram > 0).all() and (fig.energy_onchip > 0).all()
    row = hardware.sweep_networks({"m": masks, "d": masks}, specs, cfg, baseline="d")[0]
    net = row["network"]
    assert list(net)[-3:] == ["energy_total", "energy_onchip", "energy_dram"]
    assert net["energy_dram"] == pytest.approx(net["energy_terms"]["dram"])
    assert row["vs_baseline"]["energy_onchip"] == pytest.approx(1.0)
    assert row["layers"][0]["energy_dram"] == pytest.approx(row["layers"][0]["energy"]["dram"])
    flat = hardware.flat_row(row)
    assert flat["energy_onchip"] == net["energy_onchip"] and "vs_baseline_energy_dram" in flat
    # The helpers on any {term: J}, numbers or arrays.
    terms = energy.energy_terms("sata", energy.Counts(*[1.0] * len(energy.COUNT_FIELDS)))
    assert energy.offchip_energy("sata", terms) == terms["dram"]
    assert energy.onchip_energy("sata", terms) + terms["dram"] == pytest.approx(
        energy.total(terms), rel=1e-15
    )
    assert energy.offchip_energy("horowitz45", {t: 1.0 for t in energy.HOROWITZ45.terms}) == 0


def test_offchip_terms_must_be_terms():
    bad = dataclasses.replace(energy.SATA, name="sata_bad", offchip_terms=("hbm",))
    with pytest.raises(ValueError, match=r"energy_model sata_bad: offchip_terms \['hbm'\]"):
        energy.register_energy_model(bad)
    assert "sata_bad" not in energy.ENERGY_MODELS


def test_every_model_is_priced_alike_defaults_and_rows():
    """No model's constants live in the hardware config: each takes its own NamedTuple, its
    defaults when none are given, and every row lists the model's constants."""
    assert not set(hardware.HardwareConfig._fields) & set(energy.Horowitz45._fields)
    shapes = {"a/kernel": (3, 3, 2, 6), "b/kernel": (3, 3, 6, 4)}
    rng = np.random.default_rng(1)
    masks = {k: rng.random(s) < 0.4 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 4], skip_first=False)
    cfg = hardware.config_grid(n_pe=[2, 3])
    for model in ("horowitz45", "sata"):
        a = hardware.simulate_masks(masks, specs, cfg, energy_model=model)
        defaults = energy.make_constants(model)
        b = hardware.simulate_masks(
            masks, specs, cfg, energy_model=model, energy_constants=defaults
        )
        jax.tree.map(np.testing.assert_array_equal, a, b)
        row = hardware.sweep_networks({"m": masks}, specs, cfg, energy_model=model)[0]["config"]
        m = energy.get_energy_model(model)
        assert list(row) == [*hardware.HardwareConfig._fields, *type(m.defaults)._fields]


# --- properties of the sata model in the simulator ---------------------------------------------


@st.composite
def _nets(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shapes = {"a/kernel": (3, 3, 3, 8), "b/kernel": (3, 3, 8, 12), "fc/kernel": (12, 5)}
    density = draw(st.sampled_from([0.05, 0.3, 1.0]))
    masks = {k: rng.random(s) < density for k, s in shapes.items()}
    other = {k: rng.random(s) < density for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 2, 1], skip_first=False)
    n = draw(st.integers(1, 12))
    mapping = draw(st.sampled_from(hardware.MAPPINGS))
    return masks, other, specs, hardware.make_config(n_pe=n, mapping=mapping, clock_hz=4e8)


@settings(max_examples=10, deadline=None)
@given(_nets(), st.floats(0.1, 10.0))
def test_sata_cycle_terms_follow_cycles_and_scale_with_constants(net, s):
    """Ungated and leakage energy are constants x cycles; every term is linear in the energies."""
    masks, other, specs, cfg = net
    a = hardware.simulate_masks(masks, specs, cfg, energy_model="sata")
    b = hardware.simulate_masks(other, specs, cfg, energy_model="sata")
    if b.network.cycles[0] and a.network.cycles[0]:
        ratio = a.network.cycles[0] / b.network.cycles[0]
        for t in ("compute_ungated", "compute_leakage", "buffer_leakage"):
            got = a.network.energy_terms[t][0] / b.network.energy_terms[t][0]
            assert got == pytest.approx(ratio, rel=1e-5), t
    k = energy.SATA.defaults
    scaled = k._replace(**{f: v * s for f, v in k._asdict().items() if not f.endswith("_bits")})
    c = hardware.simulate_masks(masks, specs, cfg, energy_model="sata", energy_constants=scaled)
    for t in energy.SATA.terms:
        want = a.network.energy_terms[t][0] * np.float32(s)
        assert c.network.energy_terms[t][0] == pytest.approx(want, rel=1e-5, abs=1e-30), t


def test_sata_constants_sweep_per_config():
    shapes = {"a/kernel": (3, 3, 2, 6), "b/kernel": (3, 3, 6, 4)}
    rng = np.random.default_rng(2)
    masks = {k: rng.random(s) < 0.4 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 4], skip_first=False)
    cfg = hardware.config_grid(n_pe=[4], timesteps=[5])
    cfg = hardware.take_configs(cfg, np.zeros(3, int))  # three copies of one config
    consts = energy.make_constants("sata", dram_nj=[0.1, 0.2, 0.4])
    res = hardware.simulate_masks(masks, specs, cfg, energy_model="sata", energy_constants=consts)
    dram = res.network.energy_terms["dram"]
    np.testing.assert_allclose(dram / dram[0], [1, 2, 4], rtol=1e-6)
    op = res.network.energy_terms["compute_op"]
    np.testing.assert_array_equal(op, np.full(3, op[0]))  # the other constants are shared


# --- the registry and bad input ----------------------------------------------------------------


def test_unknown_model_and_bad_constants_raise():
    with pytest.raises(ValueError, match="energy_model: unknown 'eyeriss'; allowed: "):
        energy.get_energy_model("eyeriss")
    with pytest.raises(ValueError, match="dram_nj: must be finite and >= 0"):
        energy.make_constants("sata", dram_nj=-1.0)
    with pytest.raises(ValueError, match="wbuf_leak_mw: must be finite"):
        energy.make_constants("sata", wbuf_leak_mw=float("nan"))
    with pytest.raises(ValueError, match="e_idle_pj: must be finite"):
        energy.make_constants("horowitz45", e_idle_pj=float("inf"))
    with pytest.raises(ValueError, match="not constants of sata"):
        energy.make_constants("sata", e_acc_pj=1.0)
    shapes = {"a/kernel": (3, 3, 2, 6)}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[2], skip_first=False)
    masks = {"a/kernel": np.ones(shapes["a/kernel"], bool)}
    with pytest.raises(ValueError, match="energy_model: unknown"):
        hardware.simulate_masks(masks, specs, hardware.make_config(), energy_model="nope")
    with pytest.raises(ValueError, match="energy_constants: model sata takes constants"):
        hardware.simulate_masks(
            masks, specs, hardware.make_config(), energy_model="sata",
            energy_constants=energy.Horowitz45(),
        )  # fmt: skip
    bad = energy.SATA.defaults._replace(mac_op_mw=-0.5)
    with pytest.raises(ValueError, match="mac_op_mw: must be finite and >= 0"):
        hardware.simulate_masks(
            masks, specs, hardware.make_config(), energy_model="sata", energy_constants=bad
        )


def test_a_missing_count_is_refused():
    fx = _fixture("sata_lth.json")
    counts = _sata_counts(fx)._replace(dram_input_reads=None)
    with pytest.raises(ValueError, match=r"counts: energy model sata needs \['dram_input_reads'\]"):
        energy.energy_terms("sata", counts)


class _Toy(NamedTuple):
    e_cycle_pj: float = 2.0  # per PE-cycle, busy or idle
    e_neuron_pj: float = 3.0  # per LIF update


def _toy(counts, c):
    return {
        "clock": c.e_cycle_pj * 1e-12 * (counts.pe_cycles_busy + counts.pe_cycles_idle),
        "neurons": c.e_neuron_pj * 1e-12 * counts.lif_updates,
    }


TOY = energy.EnergyModel(
    name="toy_test",
    terms=("clock", "neurons"),
    needs=("pe_cycles_busy", "pe_cycles_idle", "lif_updates"),
    defaults=_Toy(),
    energy=_toy,
    clock_hz=1e9,
)


def test_registry_refuses_bad_declarations():
    with pytest.raises(ValueError, match="needs counts \\['spikes_out'\\]"):
        energy.register_energy_model(
            energy.EnergyModel("bad_needs", ("x",), ("spikes_out",), _Toy(), _toy, 1e9)
        )
    with pytest.raises(ValueError, match="registered already"):
        energy.register_energy_model(energy.SATA)
    with pytest.raises(ValueError, match="e_cycle_pj: must be finite"):
        energy.register_energy_model(
            energy.EnergyModel("bad_const", ("x",), (), _Toy(-1.0), _toy, 1e9)
        )
    assert "bad_needs" not in energy.ENERGY_MODELS and "bad_const" not in energy.ENERGY_MODELS


def test_a_third_model_plugs_in_without_edits_elsewhere():
    energy.register_energy_model(TOY, replace=True)
    try:
        # One 1x1 conv, c_in 2, c_out 4, out 3x3 (P = 9), T = 2, 2 PEs per group (output_channel):
        # channel loads 2, 1, 0, 2 -> groups (2, 1) and (0, 2), busiest 2 and 2: latency 4.
        mask = np.zeros((1, 1, 2, 4), bool)
        mask[0, 0, :, 0] = True
        mask[0, 0, 0, 1] = True
        mask[0, 0, :, 3] = True
        masks = {"x/kernel": mask}
        specs = hardware.specs_from_shapes(
            {"x/kernel": mask.shape}, out_sizes=[3], skip_first=False
        )
        cfg = hardware.make_config(n_pe=2, timesteps=2)
        res = hardware.simulate_masks(masks, specs, cfg, energy_model="toy_test")
        pe_cycles = 2 * 4 * 9 * 2  # n_pe x latency x P x T = 144
        want = {"clock": 2e-12 * pe_cycles, "neurons": 3e-12 * 4 * 9 * 2}
        for t, v in want.items():
            assert res.network.energy_terms[t][0] == pytest.approx(v, rel=1e-6)
        assert res.network.energy_total[0] == pytest.approx(sum(want.values()), rel=1e-6)
        assert res.energy_model == "toy_test"
        rows = hardware.sweep_networks(
            {"m": masks, "dense": {"x/kernel": np.ones_like(mask)}},
            specs,
            cfg,
            baseline="dense",
            energy_model="toy_test",
            energy_constants=energy.make_constants("toy_test", e_neuron_pj=6.0),
        )
        r = rows[0]
        assert r["energy_model"] == "toy_test" and r["config"]["e_neuron_pj"] == 6.0
        assert "e_acc_pj" not in r["config"]
        assert r["network"]["energy_terms"]["neurons"] == pytest.approx(6e-12 * 72, rel=1e-6)
        dense_cycles = 2 * 2 * 9 * 2 * 2  # groups 2 x busiest 2 x P x T, times n_pe 2
        assert r["vs_baseline"]["energy_terms"]["clock"] == pytest.approx(pe_cycles / dense_cycles)
        flat = hardware.flat_row(r)
        assert flat["energy_model"] == "toy_test" and "energy_neurons" in flat
    finally:
        energy.ENERGY_MODELS.pop("toy_test", None)


# --- the report -------------------------------------------------------------------------------


def _record(rnd, arm, terms):
    hw = {
        "utilization": 0.9,
        "utilization_normalized": 0.9,
        "latency": 10,
        "wasted": 1,
        "cycles": 100.0,
        "seconds": 1e-6,
        "energy_terms": terms,
        "energy": terms,
        "energy_total": sum(terms.values()),
    }
    from uticket_jax.pipeline import HardwareFigures, StageRecord

    return StageRecord(
        round=rnd,
        arm=arm,
        timesteps=5,
        train_images=100,
        sparsity=0.5,
        layer_sparsity={},
        test_accuracy=0.9,
        best_test_accuracy=0.9,
        train_loss=0.1,
        spike_rates={},
        rebalance=None,
        hardware=HardwareFigures(energy_model="sata", plain=hw, activity_aware=hw, layers=[]),
        et=None,
        seconds=1.0,
    )


def test_report_names_the_terms_that_carry_the_saving(tmp_path):
    recs = [
        _record(0, "dense", {"compute_op": 4.0, "buffer_leakage": 6.0}),
        _record(1, "lth", {"compute_op": 2.0, "buffer_leakage": 4.0}),
        _record(1, "uticket", {"compute_op": 2.2, "buffer_leakage": 1.8}),
    ]
    rows = report.summary_rows(recs)
    pair = report.paired_rows(rows)[0]
    shares = pair["energy_saving_by_term_pct"]
    assert list(shares) == ["buffer_leakage", "compute_op"]
    assert shares["buffer_leakage"] == pytest.approx(110.0)
    assert sum(shares.values()) == pytest.approx(100.0)
    table = report.format_table(rows)
    assert "energy model: sata" in table and "buffer_leakage 110%" in table
    assert "energy_terms" not in report.csv_columns(rows) and "energy_compute_op" in rows[0]
    paths = report.plot_run(rows, str(tmp_path))
    assert os.path.basename(paths[-1]) == "energy_terms_by_round.png"
    assert os.path.getsize(paths[-1]) > 1000


# --- the pipeline -----------------------------------------------------------------------------


def test_pipeline_config_takes_and_checks_the_energy_model():
    from uticket_jax import configs
    from uticket_jax.pipeline import records

    base = configs.get("digits")
    with pytest.raises(ValueError, match="--energy_model: unknown 'eyeriss'; allowed: "):
        base.replace(energy_model="eyeriss").validate()
    base.replace(energy_model="sata").validate()
    shapes = {"a/kernel": (3, 3, 2, 6), "b/kernel": (3, 3, 6, 4)}
    rng = np.random.default_rng(3)
    masks = {k: rng.random(s) < 0.4 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 4], skip_first=False)
    rates = {"a/kernel": 1.0, "b/kernel": 0.5}
    rec = records.hardware_figures(base.replace(energy_model="sata"), specs, masks, rates)
    assert rec.energy_model == "sata" and rec.plain["energy_model"] == "sata"
    assert rec.to_json()["energy_model"] == "sata"
    assert list(rec.plain["energy_terms"]) == list(energy.SATA.terms)
    assert rec.plain["counts"]["clock_hz"] == 400e6  # the model's clock
    act = rec.activity_aware["energy_terms"]
    assert act["compute_op"] < rec.plain["energy_terms"]["compute_op"]  # rate 0.5 on b
    h45 = records.hardware_figures(base.replace(energy_model="horowitz45"), specs, masks, rates)
    assert h45.energy_model == "horowitz45"
    assert list(h45.plain["energy"]) == list(energy.HOROWITZ45.terms)
    assert h45.plain["counts"]["clock_hz"] == 500e6  # its own clock
    assert h45.plain["energy_dram"] == 0.0
    assert h45.plain["energy_onchip"] == pytest.approx(h45.plain["energy_total"], rel=1e-6)
    assert rec.plain["energy_dram"] == pytest.approx(rec.plain["energy_terms"]["dram"])
    for name in configs.NAMES:  # every preset prices with the default model
        assert configs.get(name).energy_model == energy.DEFAULT_ENERGY_MODEL == "sata"
