"""experiments/sweep.py --spike_trace: spike-driven rows end to end, and bad traces refused."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_sweep_cli import _DRIVER, ROOT, SCRIPT, SHAPES, _env, _popen
from uticket_jax.sparsity.masks import save_mask_file

C1, C2 = "features/conv1/kernel", "features/conv2/kernel"  # the analysed layers (8x8, 4x4)


@pytest.fixture(scope="module")
def trace_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trace")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_mask_file(str(d / f"{name}.npz"), {k: rng.random(s) < 0.3 for k, s in SHAPES.items()})
    good = {C1: rng.random((2, 3, 8, 8, 4)) < 0.3, C2: (rng.random((2, 3, 4, 4, 4)) < 0.3) * 1}
    np.savez(str(d / "trace.npz"), **good)
    bad = {
        "half": {**good, C2: good[C2] * 0.5},
        "missing": {C1: good[C1]},
        "unknown": {**good, "nope/kernel": good[C1]},
        "first": {**good, "features/conv0/kernel": np.zeros((2, 3, 8, 8, 1), bool)},
        "shape": {**good, C2: np.zeros((2, 3, 4, 4, 5), bool)},
        "batch": {**good, C2: np.zeros((2, 4, 4, 4, 4), bool)},
    }
    for k, v in bad.items():
        np.savez(str(d / f"{k}.npz"), **v)
    np.savez(str(d / "empty.npz"))
    return d


def test_sweep_spike_trace_end_to_end(trace_files, tmp_path):
    out = tmp_path / "sweep"
    args = ["--masks", str(trace_files / "a.npz"), "--compare", str(trace_files / "b.npz")]
    args += [
        "--input_size",
        "8",
        "--n_pe",
        "1,2,4",
        "--spike_trace",
        str(trace_files / "trace.npz"),
    ]
    p = _popen([*args, "--out", str(out)])
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    assert "spike-driven" in stdout
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 2 * 2 * 3 and all(r["workload"] == "spikes" for r in rows)
    assert {r["config"]["timesteps"] for r in rows} == {2}  # the trace's T
    assert all(r["network"]["cycles"] > 0 for r in rows) and "vs_baseline" in rows[0]
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {r["workload"] for r in table} == {"spikes"}
    assert (out / "latency.png").stat().st_size > 1000


def test_sweep_spike_trace_bad_inputs(trace_files, tmp_path):
    a, d = str(trace_files / "a.npz"), trace_files
    t = lambda name: ["--masks", a, "--spike_trace", str(d / f"{name}.npz")]  # noqa: E731
    cases = {
        "half.npz': layer 'features/conv2/kernel' holds values other than 0/1": t("half"),
        "missing.npz': no inputs for analysed layer 'features/conv2/kernel'": t("missing"),
        "unknown.npz': 'nope/kernel' is not a layer": t("unknown"),
        "first.npz': layer 'features/conv0/kernel' is not analysed": t("first"),
        "shape.npz': layer 'features/conv2/kernel' has shape (2, 3, 4, 4, 5)": t("shape"),
        "batch.npz': layer 'features/conv2/kernel' has T, B = (2, 4)": t("batch"),
        "empty.npz' holds no arrays": t("empty"),
        "--timesteps: '5' differs from the --spike_trace's T = 2": [
            *t("trace"),
            "--timesteps",
            "5",
        ],
        "--spike_rates: not with --spike_trace": [*t("trace"), "--spike_rates", str(d / "x.json")],
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
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sweep:"), (what, stderr)
        assert what in lines[0], (what, lines[0])
        assert not (tmp_path / f"o{i}").exists()
