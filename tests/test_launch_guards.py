"""The launchers' guards: work directories (recognized, locked, set aside), SIGINT/SIGTERM, full
and read-only disks, file permissions. Real full and read-only file systems are small tmpfs
mounts where this machine allows them (root with mount rights, as CI); the same code paths are
also driven without them."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from uticket_jax import files
from uticket_jax.launch import lock, signals, workdir
from uticket_jax.sparsity.masks import save_mask_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "features/conv0/kernel": (3, 3, 1, 4),
    "features/conv1/kernel": (3, 3, 4, 4),
    "features/conv2/kernel": (3, 3, 4, 8),
    "classifier/kernel": (32, 3),
}


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", UTICKET_HUGEPAGES="0", PYTHONPATH=ROOT)


def _launch(script, *args, umask=None, **kw):
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", script), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        preexec_fn=pre,
        **kw,
    )


def _one_line(proc, status, needle, stderr=None):
    stderr = proc.stderr if stderr is None else stderr
    lines = stderr.strip().splitlines()
    assert proc.returncode == status, stderr[-3000:]
    assert len(lines) == 1 and needle in lines[0], stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def masks_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    save_mask_file(str(d / "m.npz"), {k: rng.random(s) < 0.4 for k, s in SHAPES.items()})
    return str(d / "m.npz")


# ---- work directories ----------------------------------------------------------------------------


def test_overwrite_moves_aside_only_a_run_or_an_empty_folder(tmp_path):
    user = tmp_path / "project"
    user.mkdir()
    (user / "config.json").write_text('{"model": "mine"}')  # not an lth.py run's
    (user / "notes.txt").write_text("mine")
    for kw in ({"overwrite": True}, {}):
        with pytest.raises(ValueError) as err:
            workdir.prepare(str(user), workdir.LTH, flag="--workdir", **kw)
        assert ("left alone" in str(err.value)) == bool(kw)
    assert sorted(os.listdir(user)) == ["config.json", "notes.txt"]
    # `--workdir . --overwrite` in a project: the current folder is never moved about.
    os.chdir(user)
    try:
        with pytest.raises(ValueError, match=f"--overwrite: {user} holds files that are not"):
            workdir.prepare(".", workdir.LTH, flag="--workdir", overwrite=True)
    finally:
        os.chdir(ROOT)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({"preset": "d", "rounds": 1, "arms": [], "seed": 0})
    )
    (run / "rounds.jsonl").write_text("{}\n")
    path, state = workdir.prepare(str(run), workdir.LTH, flag="--workdir", overwrite=True)
    assert state == "run"
    moved = workdir.set_aside(path)
    assert sorted(os.listdir(moved)) == ["config.json", "rounds.jsonl"]
    # Only the bookkeeping left (the lock file, replaced-*): empty, no flag needed.
    (run / lock.LOCK_NAME).write_text("")
    assert workdir.classify(str(run), workdir.LTH) == "empty"
    train_run = tmp_path / "t"
    train_run.mkdir()
    (train_run / "results.json").write_text('{"test_accuracy": 1, "history": [], "arch": "a"}')
    with pytest.raises(ValueError, match="pass --overwrite to set them aside") as err:
        workdir.prepare(str(train_run), workdir.TRAIN, flag="--workdir")
    assert "--resume" not in str(err.value)  # train.py has none


def test_a_second_process_is_refused_and_a_killed_ones_lock_taken_over(tmp_path):
    held = lock.acquire(str(tmp_path))
    with pytest.raises(
        ValueError, match=f"--workdir: {tmp_path} is in use by process {os.getpid()}"
    ):
        lock.acquire(str(tmp_path))
    held.release()
    code = "import sys, time; from uticket_jax.launch import lock; lock.acquire(sys.argv[1]);"
    code += " print('locked', flush=True); time.sleep(60)"
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=_env()
    ) as child:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by process {child.pid} on host"):
            lock.acquire(str(tmp_path))
        child.kill()  # SIGKILL: no clean-up; the kernel drops its flock
    again = lock.acquire(str(tmp_path))
    assert again.taken_over().startswith(f"took over the lock of process {child.pid} on host")
    again.release()
    with lock.acquire(str(tmp_path)) as third:
        assert third.taken_over() is None  # a clean release leaves no holder


# ---- signals -------------------------------------------------------------------------------------


def test_resume_command_keeps_every_argument_but_the_start_flags():
    argv = ["experiments/lth.py", "--workdir=runs/a b", "--overwrite", "--lr", "0.1"]
    want = "python experiments/lth.py '--workdir=runs/a b' --lr 0.1 --resume"
    assert signals.resume_command(argv) == want
    assert signals.resume_command([*argv[:2], "--nooverwrite", "--resume=true"]).endswith(
        "'--workdir=runs/a b' --resume"
    )


def test_a_signal_while_starting_is_one_line(tmp_path, masks_file):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), "--masks", masks_file],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    time.sleep(0.3)  # importing JAX
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "sweep.py: stopped by SIGINT while starting; nothing was written"
    ]
    assert os.listdir(tmp_path) == []


_TINY_LTH = ["--rounds", "1", "--epochs", "2", "--rewind_epoch", "0", "--timesteps", "2"]
_TINY_LTH += ["--arms", "lth", "--train_subset", "320", "--progress=false"]


@pytest.mark.slow
def test_a_stopped_run_says_where_and_gives_the_command_that_resumes_it(tmp_path):
    """SIGTERM in round 1: exit 143, one line with where it stopped and the exact command that
    continues it (the same command line plus --resume), no temporary file, and the files so far
    readable as the umask says (0644 under umask 022; `mkstemp` alone made them 0600). That
    such a command resumes to the uninterrupted run's results is `test_lth.py`'s resume tests
    and the end-to-end test there."""
    work = str(tmp_path / "run")
    args = ["--workdir", work, *_TINY_LTH]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "experiments", "lth.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    for line in proc.stdout:  # round 0 done: the run is in round 1
        if line.startswith("round  0"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    line = _one_line(proc, 143, "lth.py: stopped by SIGTERM at checkpoint ", err)
    script = os.path.join(ROOT, "experiments", "lth.py")
    assert line.endswith("; resume with: " + shlex.join(["python", script, *args, "--resume"]))
    leftovers = [f for _, d, n in os.walk(tmp_path) for f in d + n if "tmp" in f]
    assert leftovers == []
    assert json.loads((tmp_path / "run" / ".lock").read_text() or "{}") == {}  # released
    written = [
        os.path.join(d, n) for d, _, names in os.walk(work) if "checkpoints" not in d for n in names
    ]
    assert {"config.json", "machine.json"} <= {os.path.basename(f) for f in written}
    for f in written:
        if not f.endswith(lock.LOCK_NAME):
            assert stat.S_IMODE(os.stat(f).st_mode) == files.file_mode(), f


def test_stopped_exit_statuses():
    assert signals.Stopped(signal.SIGINT).exit_status == 130
    assert signals.Stopped(signal.SIGTERM).exit_status == 143


# ---- full and read-only disks, permissions -----------------------------------------------------


@pytest.fixture
def small_disk():
    """A 1 MiB tmpfs (skipped where mounting is not allowed), and a helper to make it read-only."""
    path = tempfile.mkdtemp(prefix="uticket_disk_")
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path], capture_output=True
    )
    if ok.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {ok.stderr.decode().strip()}")

    def read_only():
        subprocess.run(["mount", "-o", "remount,ro", path], check=True)

    try:
        yield path, read_only
    finally:
        subprocess.run(["umount", path], check=False)
        os.rmdir(path)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_file(
    small_disk, masks_file
):
    disk, _ = small_disk
    with open(os.path.join(disk, "filler"), "wb") as f:  # leave ~4 KB free
        try:
            f.write(b"\0" * (1024 * 1024))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    out = os.path.join(disk, "sweep")
    proc = _launch(
        "sweep.py", "--masks", masks_file, "--input_size", "8", "--n_pe", "2,4,8,16", "--out", out
    )
    line = _one_line(proc, 1, "no space left on the device")
    assert out in line
    assert [f for f in os.listdir(out) if f.startswith(".tmp-")] == []


@pytest.mark.slow
def test_a_full_disk_stops_a_run_in_one_line_that_says_how_to_resume(small_disk):
    """lth.py on a 1 MiB disk: its first checkpoint does not fit. One line naming the
    checkpoint directory and the resume command, exit 1, no temporary folder left (orbax's own
    error logs, a traceback per thread, stay off stderr)."""
    disk, _ = small_disk
    work = os.path.join(disk, "run")
    proc = _launch("lth.py", "--workdir", work, *_TINY_LTH)
    line = _one_line(proc, 1, f"cannot write checkpoint step 1 under {work}/checkpoints: no space")
    assert line.endswith("--resume") and "make room, then resume with: python " in line
    assert [f for _, d, n in os.walk(disk) for f in d + n if "tmp" in f] == []


def test_a_read_only_output_fails_before_the_work(small_disk, masks_file):
    disk, read_only = small_disk
    os.makedirs(os.path.join(disk, "d"))
    read_only()
    rb = _launch(
        "rebalance.py",
        "--masks",
        masks_file,
        "--policy",
        "random",
        "--n_pe",
        "4",
        "--out",
        os.path.join(disk, "d", "b.npz"),
    )
    _one_line(rb, 1, "read-only file system")
    assert "seconds" not in rb.stdout  # nothing was computed


def test_write_failures_without_a_small_disk(tmp_path, monkeypatch):
    """The same paths, driven by injected errors (runs everywhere)."""

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(files.WriteError, match=f"cannot write {tmp_path}/x.npz: read-only file"):
        files.check_writable(str(tmp_path / "x.npz"))
    with pytest.raises(files.WriteError, match="read-only file system"):
        files.write_text(str(tmp_path / "y.json"), "{}")
    assert os.listdir(tmp_path) == []


def test_result_files_follow_the_umask(tmp_path, masks_file):
    out = str(tmp_path / "b.npz")
    proc = _launch(
        "rebalance.py",
        "--masks",
        masks_file,
        "--policy",
        "random",
        "--n_pe",
        "4",
        "--out",
        out,
        umask=0o027,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
