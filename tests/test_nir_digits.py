"""A tiny digits run of experiments/lth.py, exported with experiments/export.py: the file runs the
same in SpikingJelly, imports back bit for bit, and sweep.py and rebalance.py take it in place of
a masks file (figures against the run's own and the loop oracle's); experiments/trace.py records
the spike trace of its ticket. Bad input to the four launchers: one line, exit status 2, nothing
written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import nir
import numpy as np
import pytest

from tests import nir_consumer, oracle
from uticket_jax import data, files, hardware
from uticket_jax.hardware.layers import specs_from_layers
from uticket_jax.interop import arrays, import_nir, load_run_ticket, run_ticket
from uticket_jax.models import describe_layers
from uticket_jax.sparsity.masks import load_mask_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(script, *args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
    """A digits run (dense round + one LTH and one u-Ticket round at 70 %) and its round-1
    u-Ticket ticket as NIR."""
    d = tmp_path_factory.mktemp("nir_digits")
    work, out = str(d / "run"), str(d / "ticket.nir")
    r = _run(
        "lth.py",
        f"--workdir={work}",
        "--epochs=2",
        "--rounds=1",
        "--arms=lth,uticket",
        "--prune_percent=70",
        "--noprogress",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("export.py", f"--workdir={work}", f"--out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert (summary["round"], summary["arm"], summary["timesteps"]) == (1, "uticket", 4)
    return work, out, summary


def test_export_runs_the_same_in_spikingjelly(ticket, tmp_path):
    nir_consumer.require_spikingjelly()
    work, out, _ = ticket
    graph = nir.read(out)
    assert graph.metadata["format"] == "uticket_jax ticket"
    assert graph.metadata["firing"] == "strict"
    t = load_run_ticket(work, 1, "uticket")
    variables = {k: nir_consumer._nested(v) for k, v in t.variables.items()}
    images = data.load_dataset("digits").test_images  # all 359 real test images
    layers = {"features/conv1/kernel", "features/conv2/kernel", "classifier/kernel"}
    # The default file (NIR's strict firing): SpikingJelly fires on >= its v_threshold, so it
    # agrees spike for spike with our model at that threshold (up to float32 rounding of the
    # currents: `assert_agree`), and in its classes with ours as trained.
    res = nir_consumer.compare(t.model, variables, t.masks, out, images)
    assert res["images"] == 359 and res["same_class_fraction"] >= 0.99, res
    assert res["v_threshold"] == float(np.nextafter(np.float32(1), np.float32(0)))
    nir_consumer.assert_agree(res["rule"], layers, 359)
    # With --firing inclusive SpikingJelly's update is ours: its spikes agree with our model's.
    inclusive = str(tmp_path / "inclusive.nir")
    run_ticket.write_nir(
        inclusive, run_ticket.export_run_ticket(work, 1, "uticket", firing="inclusive")
    )
    res = nir_consumer.compare(t.model, variables, t.masks, inclusive, images)
    assert res["same_class_fraction"] >= 0.99 and "rule" not in res, res
    nir_consumer.assert_agree(res["layers"], layers, 359)


def test_round_trip_of_the_run_ticket_is_bit_for_bit(ticket):
    work, out, _ = ticket
    t = import_nir(out)
    masks = load_mask_file(os.path.join(work, "masks", "round01_uticket.npz"))
    assert list(t.masks) == list(masks)
    rt = load_run_ticket(work, 1, "uticket")
    params, stats = rt.variables["params"], rt.variables["batch_stats"]
    for k, m in masks.items():
        np.testing.assert_array_equal(t.masks[k], m)
        module = k.rsplit("/", 1)[0]
        if module.startswith("features/conv"):
            bn = module.replace("conv", "bn")
            folded = arrays.fold_batch_norm(
                params[k],
                m,
                bn={f: {**params, **stats}[f"{bn}/{f}"] for f in ("scale", "bias", "mean", "var")},
            )
        else:
            folded = arrays.fold_batch_norm(params[k], m, bias=params[f"{module}/bias"])
        np.testing.assert_array_equal(t.weights[k], folded.kernel)


def test_sweep_of_the_nir_file_gives_the_runs_figures(ticket, tmp_path):
    work, out, _ = ticket
    sweep = _run(
        "sweep.py",
        f"--masks={out}",
        "--n_pe=16",
        "--mapping=output_channel",
        "--timesteps=4",
        f"--out={tmp_path / 'sweep'}",
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    row = json.loads((tmp_path / "sweep" / "sweep.json").read_text())[0]
    record = run_ticket.stage_record(work, 1, "uticket")
    for key in ("cycles", "energy_total", "utilization"):
        assert row["network"][key] == pytest.approx(record["hardware"]["network"][key], rel=1e-6)


def test_rebalance_of_the_nir_file_matches_the_loop_oracle(ticket, tmp_path):
    _, out, _ = ticket
    balanced = str(tmp_path / "balanced.npz")
    r = _run(
        "rebalance.py", f"--masks={out}", "--n_pe=8", "--mapping=input_split", f"--out={balanced}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["network"]["after"]["utilization"] == pytest.approx(1.0)
    assert report["network"]["before"]["utilization"] < 1.0
    t = import_nir(out)
    got = load_mask_file(balanced)
    for spec in t.specs:
        want = t.masks[spec.name]
        if spec.analysed:
            w = t.weights[spec.name]
            want = oracle.rebalance(want, np.abs(w), 8, "input_split", "ceil_mean")[0]
        np.testing.assert_array_equal(got[spec.name], want)


def _one_line_exit_2(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_one_line_exit_2_nothing_written(ticket, tmp_path):
    work, out, _ = ticket
    target = tmp_path / "x.nir"
    _one_line_exit_2(
        _run("export.py", f"--workdir={work}", "--round=7", f"--out={target}"),
        "--round/--arm",
        "rounds 0-1",
    )
    assert not target.exists()
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"not a NIR file")
    _one_line_exit_2(
        _run("sweep.py", f"--masks={junk}", f"--out={tmp_path / 'sw'}"), "junk.nir", "HDF5"
    )
    assert not (tmp_path / "sw").exists()
    graph = nir.read(out)  # the ticket with a recurrent edge added
    graph.edges.append(("lif2", "conv2"))
    cyclic = str(tmp_path / "cyclic.nir")
    nir.write(cyclic, graph)
    with pytest.raises(ValueError, match=r"cyclic.nir: recurrent edge"):
        import_nir(cyclic)  # what rebalance.py and sweep.py call, and print in one line


def test_run_ticket_errors(ticket, tmp_path):
    work, _, _ = ticket
    with pytest.raises(ValueError, match="not a run directory"):
        load_run_ticket(str(tmp_path))
    with pytest.raises(ValueError, match="has no stage round 2 lth"):
        load_run_ticket(work, 2, "lth")
    assert run_ticket.stage_record(work, None, "uticket")["round"] == 1
    # A run without variables/ (older runs, or --nosave_weights) says so.
    os.makedirs(tmp_path / "old")
    for name in ("config.json", "rounds.jsonl"):
        with open(os.path.join(work, name)) as src, open(tmp_path / "old" / name, "w") as dst:
            dst.write(src.read())
    os.makedirs(tmp_path / "old" / "masks")
    os.link(
        os.path.join(work, "masks", "round01_uticket.npz"),
        tmp_path / "old" / "masks" / "round01_uticket.npz",
    )
    with pytest.raises(ValueError, match=r"no weights/round01_uticket.npz"):
        load_run_ticket(str(tmp_path / "old"), 1, "uticket")


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_trace_launcher_writes_the_run_s_trace(ticket, tmp_path):
    work, _, _ = ticket
    out = str(tmp_path / "trace.npz")
    r = _run("trace.py", f"--workdir={work}", "--arm=uticket", f"--out={out}", "--images=64")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    stage = (summary["round"], summary["arm"], summary["images"], summary["timesteps"])
    assert stage == (1, "uticket", 64, 4)
    trace = files.load_spike_trace(out)
    assert list(trace) == ["features/conv1/kernel", "features/conv2/kernel"]  # the analysed ones
    assert trace["features/conv1/kernel"].shape == (4, 64, 8, 8, 32)
    assert trace["features/conv2/kernel"].shape == (4, 64, 8, 8, 64)
    # The inputs the run's model gives on those images, recorded in this process.
    t = load_run_ticket(work, 1, "uticket")
    want = run_ticket.record_run_trace(t, data.load_dataset("digits").test_images[:64])
    for k, v in want.items():
        np.testing.assert_array_equal(trace[k], v)
        assert summary["layers"][k]["rate"] == pytest.approx(float(v.mean()))
        assert 0.0 < v.mean() < 1.0
    # The run priced every stage on the same recording of its first 256 test images: that trace
    # gives the rounds.jsonl and summary.csv spike-driven figures.
    full = run_ticket.record_run_trace(t, data.load_dataset("digits").test_images[:256])
    cfg = t.config
    specs = specs_from_layers(
        [i for i in describe_layers(t.model, t.input_shape) if i.path in t.masks],
        skip_first=cfg["skip_first_layer"],
    )
    configs = hardware.config_grid(
        n_pe=[cfg["n_pe"]],
        mapping=[cfg["mapping"]],
        timesteps=[cfg["timesteps"]],
        clock_hz=[hardware.get_energy_model(cfg["energy_model"]).clock_hz],
    )
    res = hardware.simulate_spikes(t.masks, full, specs, configs, energy_model=cfg["energy_model"])
    recorded = t.record["hardware"]["spike_driven"]
    assert recorded["images"] == 256
    assert float(res.network.cycles[0]) == pytest.approx(recorded["network"]["cycles"], rel=1e-6)
    with open(os.path.join(work, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["spike_latency_cycles"]) == pytest.approx(
        recorded["network"]["cycles"], rel=1e-6
    )
    assert all(float(r["spike_energy_j"]) > 0 for r in rows)
    # An existing file is refused without --overwrite, and kept as it was.
    before = _bytes(out)
    again = _run("trace.py", f"--workdir={work}", f"--out={out}", "--images=8")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _bytes(out) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--images=0"], "--images: "),
        (["--round=7"], "--round/--arm: "),
        (["--images=100000"], "--images: must be in [1, 359]"),
    ],
)
def test_trace_launcher_bad_flags_fail_in_one_line(ticket, tmp_path, args, needle):
    out = str(tmp_path / "trace.npz")
    r = _run("trace.py", f"--workdir={ticket[0]}", f"--out={out}", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trace.py: ") and needle in lines[0], lines
    assert not os.path.exists(out)


def test_spike_study_reproduces_the_runs_own_figures(ticket, tmp_path):
    """spike_study.py on the run: at the run's own PE array and the pipeline's 256 recorded
    images, its weight-only and spike-driven cuts are those of the run's records."""
    work, _, _ = ticket
    out = str(tmp_path / "study")
    r = _run("spike_study.py", f"--workdir={work}", f"--out={out}", "--n_pe=4,16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("round 1: latency cut"), r.stdout
    with open(os.path.join(out, "study.json")) as f:
        rows = json.load(f)
    recs = {}
    with open(os.path.join(work, "rounds.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            recs[rec["arm"]] = rec["hardware"]
    own = [
        x
        for x in rows
        if x["layer"] == "network"
        and (x["config"]["n_pe"], x["config"]["mapping"]) == (16, "output_channel")
    ]
    assert len(own) == 1
    for how, get in (
        ("weights", lambda h, f: h["network"][f]),
        ("spikes", lambda h, f: h["spike_driven"]["network"][f]),
    ):
        for name, field in hardware.survival.FIGURES:
            want = 1 - get(recs["uticket"], field) / get(recs["lth"], field)
            assert own[0][f"{name}_cut_{how}"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    # 2 n_pe x 2 mappings, each a network row and one per analysed layer (conv1, conv2)
    analysed = [x["name"] for x in recs["lth"]["layers"] if x["analysed"]]
    assert analysed == ["features/conv1/kernel", "features/conv2/kernel"]
    assert len(rows) == 4 * 3 and {x["layer"] for x in rows} == {"network", *analysed}
    assert os.path.isfile(os.path.join(out, "study.csv"))
    assert os.path.isfile(os.path.join(out, "survival_vs_npe.png"))
    again = _run("spike_study.py", f"--workdir={work}", f"--out={out}")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = _run("spike_study.py", f"--workdir={work}", "--rounds=5", f"--out={tmp_path / 'x'}")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rounds" in bad.stderr
    assert not os.path.exists(tmp_path / "x")
