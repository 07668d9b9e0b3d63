"""Result files of the launchers: atomic JSON/CSV writes and a guarded work directory."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def jsonable(obj: Any) -> Any:
    """Converts numpy/jax scalars and arrays to Python values; NaN and inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON (see `jsonable`), atomically."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None):
    """Writes dict rows as CSV (columns: `columns`, else all keys in first-seen order)."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def prepare_workdir(path: str, *, overwrite: bool = False, resume: bool = False) -> str:
    """Creates the work directory, refusing to clobber an existing non-empty one.

    An existing non-empty directory is used only with `resume` (continue it) or `overwrite`
    (the caller replaces its files as it goes; nothing is deleted up front).

    Raises:
      ValueError: naming `--workdir` and the two flags that allow reuse.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir: {path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not (overwrite or resume):
        raise ValueError(
            f"--workdir: {path} already holds results; pass --resume to continue it or"
            " --overwrite to replace them, or choose another directory"
        )
    os.makedirs(path, exist_ok=True)
    return path


def set_aside(workdir: str) -> str | None:
    """Moves everything in `workdir` into `workdir/replaced-<UTC time>/` (nothing is deleted).

    Returns the new folder, or None when `workdir` was empty.
    """
    entries = [e for e in os.listdir(workdir) if not e.startswith("replaced-")]
    if not entries:
        return None
    dest = os.path.join(workdir, time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime()))
    os.makedirs(dest)
    for e in entries:
        shutil.move(os.path.join(workdir, e), os.path.join(dest, e))
    return dest
