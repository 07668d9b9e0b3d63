"""Multi-process runs of the launchers on JAX's own multi-controller runtime.

Every process runs the same launcher with the same flags (plus its own `--process_id`, or JAX's
auto-detection under Slurm, Open MPI or on TPU pods). `initialize` connects them through
`jax.distributed.initialize`; on the CPU backend it first selects JAX's gloo collectives, without
which CPU processes cannot all-reduce. After that, `jax.devices()` lists the devices of all
processes: training is data-parallel over all of them, sweeps shard their configs over all of them.

An unreachable coordinator is a one-line error on the processes other than 0 (they probe its
address first, within `--distributed_timeout`); process 0 waiting for peers that never come ends
with JAX's own fatal "deadline exceeded" error after the same time-out.

Who writes: process 0 alone writes files, logs and progress bars (`is_writer`); the others compute
the same results and write nothing. `check_same_settings` refuses, on every process at once, a run
whose processes were started with different settings (seeds, presets, ...), which would otherwise
hang in a collective or silently train different models.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from absl import flags

DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process run: connect the processes with jax.distributed.initialize() first.",
)
COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0's coordinator (default: JAX_COORDINATOR_ADDRESS, or JAX's"
    " auto-detection under Slurm / Open MPI / TPU).",
)
NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (default: JAX's auto-detection)."
)
PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id in [0, --num_processes) (default: auto-detection)."
)
T = TypeVar("T")

TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "Seconds to wait for all processes to connect."
)


def _on_cpu() -> bool:
    """Whether JAX will run on the CPU backend (read without starting a backend)."""
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    try:  # a GPU/TPU plugin package installed means JAX would pick that backend
        from importlib.metadata import distributions

        names = {d.metadata["Name"] or "" for d in distributions()}
    except Exception:  # pragma: no cover - broken metadata: assume the CPU
        return True
    return not any(n.startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu")) for n in names)


def check_flags() -> None:
    """One-line errors for inconsistent distributed flags (before anything connects)."""
    n, i = NUM_PROCESSES.value, PROCESS_ID.value
    if not DISTRIBUTED.value:
        for f in (COORDINATOR, NUM_PROCESSES, PROCESS_ID):
            if f.present:
                raise ValueError(f"--{f.name}: only used with --distributed")
        return
    if n is not None and n < 1:
        raise ValueError(f"--num_processes: must be >= 1, got {n}")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise ValueError(f"--process_id: must be in [0, --num_processes={n}), got {i}")
    if TIMEOUT.value <= 0:
        raise ValueError(f"--distributed_timeout: must be > 0 seconds, got {TIMEOUT.value}")


def initialize() -> None:
    """Connects this process to the others when `--distributed` is set (else does nothing).

    Raises:
      ValueError: bad flags, or the coordinator could not be reached within
        `--distributed_timeout` seconds (one line naming the address).
    """
    check_flags()
    if not DISTRIBUTED.value:
        return
    if _on_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address and PROCESS_ID.value not in (None, 0):
        _wait_for_coordinator(address, TIMEOUT.value)
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=NUM_PROCESSES.value,
            process_id=PROCESS_ID.value,
            initialization_timeout=TIMEOUT.value,
        )
    except Exception as e:  # jax raises RuntimeError / XlaRuntimeError / ValueError here
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"--coordinator_address: could not connect to {address or 'the auto-detected'}"
            f" coordinator within {TIMEOUT.value} s ({first})"
        ) from None


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Waits until something listens at `address` (host:port), at most `timeout` seconds.

    JAX's client aborts the whole process (a fatal C++ check, no Python exception) when it
    cannot reach the coordinator, so a process other than 0 probes the address first and turns
    an unreachable coordinator into a one-line error.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address: expected host:port, got {address!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"--coordinator_address: nothing listens at {address} after {timeout:g} s"
                    " (start process 0 first, or check the address and port)"
                ) from None
            time.sleep(0.25)


def is_writer() -> bool:
    """Whether this process writes files, logs and progress bars (process 0)."""
    return jax.process_index() == 0


def _allgather_bytes(payload: bytes) -> list[bytes]:
    """Every process's `payload`, in process order (a collective: all processes must call)."""
    from jax.experimental import multihost_utils

    sizes = multihost_utils.process_allgather(np.int32(len(payload)))
    width = max(1, int(np.max(sizes)))
    buf = np.zeros(width, np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(-1, width)
    return [bytes(r[: int(s)]) for r, s in zip(rows, np.ravel(sizes), strict=True)]


def check_same_settings(settings: dict[str, Any]) -> None:
    """Refuses, on every process, a run whose processes have different `settings` (JSON-able).

    A no-op in a single-process run.

    Raises:
      ValueError: naming the settings that differ and the processes that differ from process 0.
    """
    if jax.process_count() == 1:
        return
    mine = json.dumps(settings, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(mine).hexdigest().encode()
    digests = _allgather_bytes(digest)
    if all(d == digests[0] for d in digests):
        return
    alls = [json.loads(b) for b in _allgather_bytes(mine)]
    keys = sorted(
        {k for s in alls[1:] for k in set(s) | set(alls[0]) if s.get(k) != alls[0].get(k)}
    )
    bad = [i for i, d in enumerate(digests) if d != digests[0]]
    raise ValueError(
        f"--distributed: processes {bad} were started with other settings than process 0"
        f" ({', '.join('--' + k for k in keys)}); start every process with the same flags"
    )


def together(fn: Callable[[], T]) -> T:
    """`fn()` on every process; if it raises ValueError on any of them, raises on all of them.

    For the checks and set-up a launcher does before its first collective (flags, files, the
    work directory): a process that failed alone would leave the others waiting in a collective
    until a time-out. A no-op wrapper in a single-process run.

    Raises:
      ValueError: the first failing process's message (prefixed with its id when that is not
        this process).
    """
    if jax.process_count() == 1:
        return fn()
    try:
        out, err = fn(), ""
    except ValueError as e:
        out, err = None, str(e).strip().splitlines()[0] if str(e).strip() else "error"
    errors = [b.decode() for b in _allgather_bytes(err.encode())]
    for i, msg in enumerate(errors):
        if msg:
            raise ValueError(msg if i == jax.process_index() else f"{msg} (on process {i})")
    return out
