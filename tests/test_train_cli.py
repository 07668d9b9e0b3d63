"""experiments/train.py end to end on the digits data, and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "train.py")


def _train(*args):
    return subprocess.run(
        [sys.executable, SCRIPT, "--progress=false", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_train_writes_accuracy_and_refuses_to_overwrite(tmp_path):
    work = tmp_path / "run"
    proc = _train("--workdir", str(work), "--epochs", "2", "--timesteps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(work / "results.json") as f:
        out = json.load(f)
    assert out["arch"] == "digits_snn" and len(out["history"]) == 2
    assert out["machine"]["backend"] == "cpu" and out["machine"]["packages"]["jaxlib"]
    assert 0.5 < out["test_accuracy"] <= 1.0  # two epochs already learn the digits
    # Nothing else is written but the (released, empty) lock of the work directory.
    assert sorted(os.listdir(work)) == [".lock", "results.json"]
    assert (work / ".lock").read_text() == ""
    again = _train("--workdir", str(work), "--epochs", "1")
    assert again.returncode == 2 and "--workdir" in again.stderr
    with open(work / "results.json") as f:
        assert json.load(f) == out


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "imagenet"], "--dataset"),
        (["--arch", "alexnet"], "--arch"),
        (["--timesteps", "0"], "--timesteps"),
        (["--epochs", "-1"], "--epochs"),
        (["--batch_size", "100000"], "batch_size"),
        (["--dataset", "cifar10"], "--data_dir"),
        (["--epochs", "x"], "--epochs"),
        (["--train_subset", "5000"], "--train_subset"),  # digits has 1,438 training images
        (["--train_subset", "-1"], "--train_subset"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path, args, needle):
    proc = _train("--workdir", str(tmp_path / "w"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()
