"""Multi-process runs with real processes: two CPU processes on loopback, JAX's own runtime.

Two processes with one CPU device each must give the same masks, accuracies and simulator
figures as one process with two devices; a run whose processes are all killed mid-run resumes
to the same results; bad distributed set-ups fail on every process in one line, in bounded time.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LTH = os.path.join(ROOT, "experiments", "lth.py")
SWEEP = os.path.join(ROOT, "experiments", "sweep.py")
# A short digits run with checkpoints: dense round + one pruning round of both arms.
SHORT = ["--rounds=1", "--epochs=2", "--rewind_epoch=1", "--timesteps=2", "--noprogress"]
TIMEOUT = 420  # seconds for one whole multi-process run on 2 shared cores

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, UTICKET_HUGEPAGES="0")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(script: str, args: list[str], n: int) -> list[subprocess.Popen]:
    """Starts `n` processes of `script` on loopback (one CPU device each)."""
    port = _free_port()
    return [_start_one(script, i, n, port, args) for i in range(n)]


def _start_one(script: str, i: int, n: int, port: int, args: list[str]) -> subprocess.Popen:
    """Process `i` of `n` of `script`, its coordinator on 127.0.0.1:`port`."""
    dist = [
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={n}",
        f"--process_id={i}",
        "--distributed_timeout=60",
    ]
    return subprocess.Popen(
        [sys.executable, script, *args, *dist],
        cwd=ROOT,
        env=_env(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
        for stream in (p.stdout, p.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def _wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """`(returncode, stdout, stderr)` of every process; all are killed on a time-out."""
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            so, se = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, so, se))
    finally:
        _kill(procs)
    return out


def _run_multi(script: str, args: list[str], n: int = 2) -> list[tuple[int, str, str]]:
    results = _wait(_start(script, args, n))
    for i, (rc, _, se) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc}:\n{se[-3000:]}"
    return results


def _run_single(script: str, args: list[str], devices: int = 2) -> str:
    r = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _own_lines(stdout: str) -> list[str]:
    """The lines a process printed itself (gloo's C++ runtime prints its connection line)."""
    return [ln for ln in stdout.splitlines() if ln.strip() and not ln.startswith("[Gloo]")]


def _records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "rounds.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    for r in recs:
        r.pop("seconds")  # wall time, the only field allowed to differ
    return recs


def _masks(workdir: str) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in sorted(os.listdir(os.path.join(workdir, "masks"))):
        with np.load(os.path.join(workdir, "masks", name)) as z:
            out[name] = {k: z[k] for k in z.files}
    return out


def _same_run(a: str, b: str) -> None:
    assert _records(a) == _records(b)
    ma, mb = _masks(a), _masks(b)
    assert list(ma) == list(mb)
    for name in ma:
        assert list(ma[name]) == list(mb[name])
        for k in ma[name]:
            np.testing.assert_array_equal(ma[name][k], mb[name][k], err_msg=f"{name}:{k}")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> str:
    """The reference: one process with two CPU devices."""
    workdir = str(tmp_path_factory.mktemp("single") / "run")
    _run_single(LTH, [*SHORT, f"--workdir={workdir}"])
    return workdir


def test_two_processes_equal_one_process_with_two_devices(single_run, tmp_path):
    workdir = str(tmp_path / "run")
    results = _run_multi(LTH, [*SHORT, f"--workdir={workdir}"])
    _same_run(workdir, single_run)
    # One set of files, written by process 0 only: process 1 prints no table and no paths.
    assert "u-Ticket" in results[0][1] or "rnd |" in results[0][1]
    assert _own_lines(results[1][1]) == [], results[1][1]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))  # orbax steps exist
    assert not [e for e in os.listdir(workdir) if e.startswith("replaced-")]


def test_killed_processes_resume_to_the_same_results(single_run, tmp_path):
    workdir = str(tmp_path / "run")
    procs = _start(LTH, [*SHORT, f"--workdir={workdir}"], 2)
    ckpt = os.path.join(workdir, "checkpoints")
    deadline = time.monotonic() + TIMEOUT
    try:  # kill both once a few epochs are saved (mid-run: the last stage is not done)
        while time.monotonic() < deadline:
            steps = [s for s in os.listdir(ckpt) if s.isdigit()] if os.path.isdir(ckpt) else []
            if steps and max(map(int, steps)) >= 3:
                break
            assert all(p.poll() is None for p in procs), "a process ended before the kill"
            time.sleep(0.5)
    finally:
        _kill(procs)
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    _run_multi(LTH, [*SHORT, f"--workdir={workdir}", "--resume"])
    _same_run(workdir, single_run)


def test_sweep_across_processes_equals_one_process(single_run, tmp_path):
    masks = os.path.join(single_run, "masks")
    args = [
        f"--masks={masks}/round01_uticket.npz",
        f"--compare={masks}/round01_lth.npz",
        "--model=digits_snn",
        "--input_size=8",
        "--n_pe=4,8,16,32,64",
        "--mapping=output_channel,input_split",
        "--timesteps=2",
        "--grid",
        "--energy_model=horowitz45",
        "--e_idle_pj=0.03",
        "--leak_uw=10",
    ]
    multi = str(tmp_path / "multi")
    single = str(tmp_path / "single")
    results = _run_multi(SWEEP, [*args, f"--out={multi}"])
    _run_single(SWEEP, [*args, "--backend=jax", f"--out={single}"])  # --distributed's backend
    with open(os.path.join(multi, "sweep.json")) as f:
        got = json.load(f)
    with open(os.path.join(single, "sweep.json")) as f:
        want = json.load(f)
    assert got == want
    assert _own_lines(results[1][1]) == [], results[1][1]


def _one_line_failure(results, needle: str) -> None:
    for i, (rc, _, se) in enumerate(results):
        lines = [ln for ln in se.splitlines() if ln.startswith("lth.py:")]
        assert rc == 2, f"process {i} exited {rc}: {se[-2000:]}"
        assert len(lines) == 1 and needle in lines[0], f"process {i}: {se[-2000:]}"


def test_unreachable_coordinator_fails_in_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    port = _free_port()  # nobody listens: process 0 of 2 is never started
    args = [sys.executable, LTH, *SHORT, f"--workdir={workdir}", "--distributed"]
    args += [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1"]
    r = subprocess.run(
        [*args, "--distributed_timeout=5"],
        cwd=ROOT,
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_failure([(r.returncode, r.stdout, r.stderr)], "--coordinator_address")
    assert not os.path.exists(workdir)


def test_processes_with_different_flags_fail_on_every_process(tmp_path):
    workdir = str(tmp_path / "run")
    port = _free_port()
    procs = [
        _start_one(LTH, i, 2, port, [*SHORT, f"--workdir={workdir}", f"--seed={seed}"])
        for i, seed in enumerate((0, 1))
    ]
    _one_line_failure(_wait(procs, 180), "--seed")
    assert not os.path.exists(workdir) or not os.listdir(workdir)


def test_batch_that_does_not_split_fails_on_every_process(tmp_path):
    workdir = str(tmp_path / "run")
    results = _wait(_start(LTH, [*SHORT, f"--workdir={workdir}", "--batch_size=63"], 2), 180)
    _one_line_failure(results, "batch_size")
    assert not os.path.exists(workdir) or not os.listdir(workdir)
