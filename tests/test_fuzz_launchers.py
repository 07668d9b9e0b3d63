"""Each launcher's flags under fuzzing (a fast slice of the campaign in BUILD_NOTES.md).

`tests/fuzz_launchers.py` runs hypothesis-generated command lines through a launcher in one
process; every case must succeed or exit 2 with one stderr line naming a flag or file, leaving
nothing behind. The slice here is derandomized (the same cases on every run); the campaign
(`python -m tests.fuzz_launchers LAUNCHER 1500 --seed N`) draws new ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import fuzz_launchers as fz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {"lth": 30, "train": 30, "rebalance": 40, "sweep": 40}


@pytest.mark.parametrize("launcher", sorted(CASES))
def test_fuzzed_flags_succeed_or_fail_in_one_line(launcher):
    env = dict(os.environ, JAX_PLATFORMS="cpu", UTICKET_HUGEPAGES="0")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_launchers", launcher, str(CASES[launcher])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failures"] == 0, json.dumps(summary["first_failures"], indent=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary["cases"] == CASES[launcher]
    # Both outcomes occur: the slice reaches past the checks, and the checks refuse.
    assert summary["exit"].get("0", 0) >= 1 and summary["exit"].get("2", 0) >= 1, summary


def test_the_judge_fails_what_it_must():
    """The fuzzer's verdicts: a case that breaks the promise is reported, never passed."""
    snap = {"a": (1, 2)}
    ok = ("sweep", 2, "sweep: --n_pe: must be integers >= 1, got '0'\n", [], snap, snap)
    assert fz.judge(*ok) is None
    assert fz.judge("sweep", 0, "", [], snap, {}) is None  # success may write
    bad = {
        "exit status 1": ("sweep", 1, "sweep: boom\n", [], snap, snap),
        "2 stderr lines": ("sweep", 2, "sweep: --x: a\nmore\n", [], snap, snap),
        "0 stderr lines": ("sweep", 2, "", [], snap, snap),
        "launcher's name": ("sweep", 2, "Traceback: --x\n", [], snap, snap),
        "names no flag": ("sweep", 2, "sweep: something failed\n", [], snap, snap),
        "files changed": ("sweep", 2, "sweep: --x: bad\n", [], snap, {**snap, "b": (0, 0)}),
    }
    for want, args in bad.items():
        assert want in (fz.judge(*args) or ""), want
    assert fz.judge("sweep", 2, "sweep: masks: '/p/m.npz' is empty\n", [], snap, snap) is None
