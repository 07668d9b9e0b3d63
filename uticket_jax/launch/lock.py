"""The work-directory lock: one run at a time in a directory, for the life of the run.

`acquire(workdir)` takes an exclusive `flock` on `WORKDIR/.lock` and writes who holds it (process
id, host, start time, command). A second process, fresh or `--resume`, cannot take it and is
refused with one line naming the holder. The kernel drops a `flock` when its process dies, however
it dies, so the lock of a killed run is free at once: the next run takes it over and says whose it
was (the file still names the killed process). On a clean exit the holder empties the file; the
file itself stays, because removing it would let a third process lock a new file while a second
still holds the old one. Linux's NFS client carries `flock` to the server, so the lock also
holds between hosts that share the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Any

from uticket_jax import files

LOCK_NAME = ".lock"


def _describe(holder: dict[str, Any]) -> str:
    """`process 1234 on host h (started 2026-01-02 10:00:00 UTC: python lth.py ...)`."""
    text = f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    extra = [str(holder[k]) for k in ("started", "command") if holder.get(k)]
    return f"{text} ({': '.join(extra)})" if extra else text


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except ValueError:
        return {"pid": "?", "command": "an unreadable lock file"}
    return holder if isinstance(holder, dict) else {}


class WorkdirLock:
    """A held lock (see the module docstring); `release()` or process exit frees it."""

    def __init__(self, path: str, fd: int, previous: dict[str, Any]):
        self.path = path
        self._fd: int | None = fd
        self.previous = previous  # the holder recorded by a run that died holding it ({} if none)

    def taken_over(self) -> str | None:
        """A line about the killed run whose lock this was, or None."""
        if not self.previous:
            return None
        return f"took over the lock of {_describe(self.previous)}, which is no longer running"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(workdir: str, flag: str = "--workdir") -> WorkdirLock:
    """Locks `workdir` (which must exist) for this process.

    Raises:
      ValueError: naming `flag`, `workdir` and the process that holds the lock.
      files.WriteError: the lock file cannot be created (a read-only file system, ...).
    """
    path = os.path.join(workdir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise files.write_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise ValueError(
            f"{flag}: {workdir} is in use by {_describe(holder)}; wait for it to finish or stop"
            " it, or choose another directory"
        ) from None
    previous = _read_holder(fd)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    data = (json.dumps(me) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
    except OSError as e:
        os.close(fd)
        raise files.write_error(path, e) from None
    return WorkdirLock(path, fd, previous)
