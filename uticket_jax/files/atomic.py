"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every result file of the project is written here: into a temporary file next to the target,
flushed to disk, given the permissions any file the user creates gets (`0o666` less the umask;
`tempfile.mkstemp` alone would leave it `0o600`, readable by its owner only), then renamed over
the target. On any failure, an interrupt included, the temporary file is removed, so nothing is
left behind; an `OSError` (a full disk, a read-only file system, a missing permission) becomes a
`WriteError` whose one-line message names the file.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

TMP_PREFIX = ".tmp-"
_UMASK_LOCK = threading.Lock()


class WriteError(OSError):
    """A result file that could not be written (one-line message naming the path)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _explain(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or type(e).__name__


def write_error(path: str, e: OSError) -> WriteError:
    """A `WriteError` naming `path` and why (`e`), with `e`'s errno."""
    return WriteError(e.errno, f"cannot write {path}: {_explain(e)}")


def current_umask() -> int:
    """The process's umask (read from /proc where it is shown; else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new regular file under the current umask (`open(path, "w")` gives it)."""
    return 0o666 & ~current_umask()


def make_dirs(directory: str) -> None:
    """`os.makedirs(directory, exist_ok=True)`; a `WriteError` naming it when that fails."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise write_error(directory, e) from None


def check_writable(path: str) -> None:
    """Raises `WriteError` unless a file could be created at `path` now (nothing is left behind).

    Probes the nearest existing folder on the way to `path` with a temporary file, so a
    read-only file system or a missing permission is found before the work, not after it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory or (os.path.exists(directory) and not os.path.isdir(directory)):
            raise WriteError(errno.ENOTDIR, f"cannot write {path}: {directory} is not a folder")
        directory = parent
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    os.remove(tmp)


def write_atomic(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes `path` atomically: `write(f)` fills a temporary binary file that then replaces it.

    Args:
      path: the target file (its directory is created when missing).
      write: called once with the open temporary file.

    Raises:
      WriteError: the directory, the temporary file, the data or the rename could not be
        written (disk full, read-only, permissions); nothing is left behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    make_dirs(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (`write_atomic`)."""
    write_atomic(path, lambda f: f.write(data))


def write_text(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (`write_atomic`)."""
    write_bytes(path, text.encode("utf-8"))


def write_npz(path: str, arrays: Mapping[str, Any]) -> None:
    """Writes `arrays` as an uncompressed `.npz`, in order, atomically (`write_atomic`)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    write_atomic(path, lambda f: np.savez(f, **arrays))
