"""End-to-end runs of experiments/sweep.py on tiny masks, and its bad-input handling."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from uticket_jax.hardware import energy
from uticket_jax.sparsity.masks import save_mask_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "sweep.py")

# A tiny VGG-style net for 8x8 inputs: stages (4, 4) at 8x8 and (8) at 4x4, 2x2 after the last pool.
SHAPES = {
    "features/conv0/kernel": (3, 3, 1, 4),
    "features/conv1/kernel": (3, 3, 4, 4),
    "features/conv2/kernel": (3, 3, 4, 8),
    "classifier/kernel": (8 * 2 * 2, 3),
}


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _popen(args):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def mask_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("masks")
    rng = np.random.default_rng(0)
    a = {k: rng.random(s) < 0.3 for k, s in SHAPES.items()}
    b = {k: rng.random(s) < 0.3 for k, s in SHAPES.items()}
    save_mask_file(str(d / "a.npz"), a)
    save_mask_file(str(d / "b.npz"), b)
    bad = dict(a)
    bad["classifier/kernel"] = np.ones((7, 3), bool)  # no feature map gives 7 inputs
    save_mask_file(str(d / "bad_shapes.npz"), bad)
    np.savez(str(d / "empty.npz"))
    (d / "rates.json").write_text(json.dumps({"features/conv1/kernel": 0.2}))
    (d / "bad_rates.json").write_text(json.dumps({"features/conv1/kernel": 1.2}))
    (d / "unknown_rates.json").write_text(json.dumps({"nope/kernel": 0.2}))
    return d


def test_sweep_end_to_end(mask_files, tmp_path):
    out = tmp_path / "sweep"
    common = ["--masks", str(mask_files / "a.npz"), "--compare", str(mask_files / "b.npz")]
    common += ["--n_pe", "1,2,4", "--input_size", "8", "--timesteps", "2,4"]
    common += ["--spike_rates", str(mask_files / "rates.json")]
    p = _popen([*common, "--out", str(out)])
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    assert "util_norm" in stdout and "energy_ratio" in stdout
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 2 * 2 * 3 * 2  # masks x mappings x n_pe x T
    r = rows[0]
    assert set(r) == {"masks", "energy_model", "config", "network", "layers", "vs_baseline"}
    # sata is the default, at its own clock; the energy is split on-chip / DRAM.
    assert r["energy_model"] == "sata" and r["config"]["clock_hz"] == 400e6
    assert r["config"]["activity_aware"] is True
    assert list(r["network"]["energy_terms"]) == list(energy.SATA.terms)
    net = r["network"]
    assert net["energy_dram"] == pytest.approx(net["energy_terms"]["dram"], rel=1e-6)
    on = net["energy_total"] - net["energy_terms"]["dram"]
    assert net["energy_onchip"] == pytest.approx(on, rel=1e-5)
    assert r["vs_baseline"]["energy_onchip"] > 0 and "energy_dram" in r["layers"][1]
    head = next(ln for ln in stdout.splitlines() if ln.startswith("masks")).split()
    assert head[8:11] == ["energy_J", "onchip_J", "dram_J"], head
    assert r["network"]["energy"] == r["network"]["energy_terms"]  # the earlier key, kept
    total = sum(r["network"]["energy_terms"].values())
    assert total == pytest.approx(r["network"]["energy_total"], rel=1e-6)
    assert [x["name"] for x in r["layers"]] == list(SHAPES)
    assert [x["analysed"] for x in r["layers"]] == [False, True, True, False]
    assert all("vs_baseline" not in x for x in rows if x["masks"].endswith("b.npz"))
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and "vs_baseline_seconds" in table[0]
    assert table[0]["energy_model"] == "sata" and "energy_dram" in table[0]
    assert float(table[0]["energy_onchip"]) == pytest.approx(net["energy_onchip"])
    assert "vs_baseline_energy_dram" in table[0]
    assert "counts_accumulates" in table[0]
    for png in ("latency.png", "energy.png", "utilization.png"):
        assert (out / png).stat().st_size > 1000
    # A second run without --overwrite refuses and leaves the files alone.
    before = (out / "sweep.json").stat().st_mtime_ns
    p = _popen([*common, "--out", str(out)])
    _, stderr = p.communicate(timeout=120)
    assert p.returncode != 0 and "--overwrite" in stderr
    assert (out / "sweep.json").stat().st_mtime_ns == before


def test_sweep_sata_model(mask_files, tmp_path):
    out = tmp_path / "sata"
    args = ["--masks", str(mask_files / "a.npz"), "--compare", str(mask_files / "b.npz")]
    args += ["--n_pe", "2,4", "--mapping", "output_channel", "--input_size", "8"]
    args += ["--energy_model", "sata", "--dram_nj", "0.5", "--grid", "--layer_rows=false"]
    p = _popen([*args, "--out", str(out)])
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 2 * 2 * 5  # masks x n_pe x the five --grid values of --dram_nj
    assert [r["config"]["dram_nj"] for r in rows[:5]] == [0.125, 0.25, 0.5, 1.0, 2.0]
    r = rows[0]
    assert r["energy_model"] == "sata" and r["config"]["clock_hz"] == 400e6
    assert "e_acc_pj" not in r["config"] and r["config"]["wbuf_leak_mw"] == 24.9086
    terms = r["network"]["energy_terms"]
    assert list(terms) == [
        "compute_op",
        "compute_ungated",
        "compute_leakage",
        "buffer_dynamic",
        "buffer_leakage",
        "dram",
    ]
    assert sum(terms.values()) == pytest.approx(r["network"]["energy_total"], rel=1e-6)
    assert rows[1]["network"]["energy_terms"]["dram"] == pytest.approx(2 * terms["dram"])
    assert "layers" not in r and "energy model sata" in stdout


def test_sweep_horowitz45_is_one_flag_away(mask_files, tmp_path):
    out = tmp_path / "h45"
    args = ["--masks", str(mask_files / "a.npz"), "--n_pe", "2", "--input_size", "8"]
    args += ["--mapping", "output_channel", "--energy_model", "horowitz45", "--e_idle_pj", "0.1"]
    p = _popen([*args, "--out", str(out)])
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    (r,) = json.loads((out / "sweep.json").read_text())
    assert r["energy_model"] == "horowitz45" and r["config"]["clock_hz"] == 500e6
    assert r["config"]["e_idle_pj"] == pytest.approx(0.1)
    net = r["network"]
    assert list(net["energy_terms"]) == ["accumulate", "weight_fetch", "idle", "leakage"]
    assert net["energy_dram"] == 0.0  # no off-chip term: all of it on the chip
    assert net["energy_onchip"] == pytest.approx(net["energy_total"], rel=1e-6)
    with open(out / "sweep.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["energy_model"] == "horowitz45" and "energy_idle" in row


# Runs every bad-input case through the launcher's main() in ONE process (one jax import).
_DRIVER = """
import contextlib, importlib.util, io, json, sys
from absl import flags
spec = importlib.util.spec_from_file_location("sweep_cli", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
out = {}
for what, args in json.loads(sys.argv[2]).items():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["sweep", *args])
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            mod.cli.guarded(mod.run, "sweep")()
        except SystemExit as e:
            code = e.code
    out[what] = [code, err.getvalue()]
print(json.dumps(out))
"""


def test_sweep_bad_inputs(mask_files, tmp_path):
    a = str(mask_files / "a.npz")
    cases = {
        "n_pe": ["--masks", a, "--n_pe", "0,4"],
        "mapping": ["--masks", a, "--mapping", "diagonal"],
        "e_acc_pj": ["--masks", a, "--energy_model", "horowitz45", "--e_acc_pj", "-1"],
        "--e_acc_pj: a constant of energy model horowitz45, not of --energy_model sata": [
            "--masks",
            a,
            "--e_acc_pj",
            "0.2",
        ],
        "clock_mhz": ["--masks", a, "--clock_mhz", "0"],
        "timesteps": ["--masks", a, "--timesteps", "2,x"],
        "masks": ["--masks", str(mask_files / "empty.npz")],
        "no such file": ["--masks", str(mask_files / "missing.npz")],
        "dense layer": ["--masks", str(mask_files / "bad_shapes.npz")],
        "spike_rates": ["--masks", a, "--spike_rates", str(mask_files / "bad_rates.json")],
        "unknown layer": ["--masks", a, "--spike_rates", str(mask_files / "unknown_rates.json")],
        "--compare": ["--masks", a, "--compare", str(mask_files / "bad_shapes.npz")],
        "--model": ["--masks", a, "--model", "vgg16"],
        "energy_model": ["--masks", a, "--energy_model", "eyeriss"],
        "dram_nj": ["--masks", a, "--energy_model", "sata", "--dram_nj", "-0.1"],
        "wbuf_leak_mw": ["--masks", a, "--energy_model", "sata", "--wbuf_leak_mw", "inf"],
        "horowitz45": ["--masks", a, "--energy_model", "sata", "--e_idle_pj", "0.1"],
        "--grid": ["--masks", a, "--energy_model", "sata", "--grid"],
        "--grid: give the constants of --energy_model horowitz45": [
            "--masks",
            a,
            "--energy_model",
            "horowitz45",
            "--grid",
        ],
        "--grid: give the constants of --energy_model sata": ["--masks", a, "--grid"],
        "unknown 'torch'; allowed: jax, numpy": ["--masks", a, "--backend", "torch"],
        "--backend: numpy runs on one host": ["--masks", a, "--backend", "numpy", "--distributed"],
    }
    for i, args in enumerate(cases.values()):
        args += ["--input_size", "8", "--out", str(tmp_path / f"o{i}")]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, SCRIPT, json.dumps(cases)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for i, what in enumerate(cases):
        code, stderr = results[what]
        assert code == 2, (what, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sweep:") and what in lines[0], (
            what,
            stderr,
        )
        assert not (tmp_path / f"o{i}").exists()
