"""experiments/rebalance.py end to end on tiny mask files (subprocess; marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from uticket_jax.sparsity.masks import from_hwio, load_mask_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "features/conv0/kernel": (3, 3, 3, 8),
    "features/conv1/kernel": (3, 3, 8, 12),
    "features/conv2/kernel": (3, 3, 12, 6),
    "classifier/kernel": (6, 10),
}


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "experiments/rebalance.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _files(tmp_path, layout):
    rng = np.random.default_rng(0)
    masks = {k: rng.random(s) < 0.3 for k, s in SHAPES.items()}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    mpath, wpath = str(tmp_path / "m.npz"), str(tmp_path / "w.npz")
    np.savez(mpath, **{k: from_hwio(v, layout).astype(np.uint8) for k, v in masks.items()})
    np.savez(wpath, **{k: from_hwio(v, layout) for k, v in weights.items()})
    return masks, mpath, wpath


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["hwio", "oihw"])
def test_cli_writes_masks_and_report(tmp_path, layout):
    masks, mpath, wpath = _files(tmp_path, layout)
    out = str(tmp_path / "out.npz")
    r = _run(
        f"--masks={mpath}",
        f"--weights={wpath}",
        f"--layout={layout}",
        "--n_pe=4",
        "--mapping=input_split",
        "--target=ceil_mean",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [x["name"] for x in report["layers"]] == list(SHAPES)
    assert [x["analysed"] for x in report["layers"]] == [False, True, True, False]
    for layer in report["layers"]:
        assert set(layer) >= {"name", "analysed", "before", "after", "regrown", "dropped"}
    assert report["network"]["after"]["utilization"] == pytest.approx(1.0)
    assert set(report["seconds"]) >= {"rebalance", "total"}
    with np.load(out) as z:
        assert list(z.files) == list(SHAPES)  # same key order
        assert (
            z["features/conv1/kernel"].shape
            == from_hwio(masks["features/conv1/kernel"], layout).shape
        )
    new = load_mask_file(out, layout)
    np.testing.assert_array_equal(new["features/conv0/kernel"], masks["features/conv0/kernel"])
    # Refuses to overwrite without --overwrite; random policy needs no weights.
    r = _run(f"--masks={mpath}", f"--layout={layout}", "--policy=random", f"--out={out}")
    assert r.returncode != 0 and "--out" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run(
        f"--masks={mpath}",
        f"--layout={layout}",
        "--policy=random",
        "--target=keep_count",
        f"--out={out}",
        "--overwrite",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for layer in rep["layers"]:
        assert layer["after"]["dynamic"] == layer["before"]["dynamic"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, flag",
    [
        (["--n_pe=0"], "--n_pe"),
        (["--mapping=tiles"], "--mapping"),
        (["--policy=magnitude"], "--weights"),
        (["--target=mean"], "--target"),
        (["--layout=nchw"], "--layout"),
        (["--bogus=1"], "bogus"),
    ],
)
def test_cli_bad_flags(tmp_path, args, flag):
    _, mpath, _ = _files(tmp_path, "hwio")
    out = tmp_path / "out.npz"
    r = _run(f"--masks={mpath}", f"--out={out}", "--policy=random", *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_rejects_non_finite_weights(tmp_path):
    # NaN weights under the magnitude policy: exit 2, one line naming the layer, no --out file.
    _, mpath, wpath = _files(tmp_path, "hwio")
    with np.load(wpath) as z:
        weights = dict(z)
    weights["features/conv1/kernel"].reshape(-1)[[1, 7, 40]] = [np.nan, np.inf, np.nan]
    np.savez(wpath, **weights)
    out = tmp_path / "out.npz"
    r = _run(f"--masks={mpath}", f"--weights={wpath}", "--n_pe=4", f"--out={out}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "weights['features/conv1/kernel']: 3 non-finite values" in lines[0]
    assert not out.exists()
