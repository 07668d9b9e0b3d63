"""Output directories of the launchers: recognized, refused or set aside, never clobbered.

Each launcher that writes a directory declares what one of its runs looks like (`RunKind`: the
file it always writes first, and what that file holds). A directory is then one of

  missing  nothing there yet;
  empty    nothing but the launcher's own bookkeeping (the lock file, `replaced-*/` folders);
  run      it holds a run of this launcher (its marker file, with the expected content);
  other    anything else: the user's files, another tool's, `--workdir .` in a project.

`prepare` refuses a run or other folder unless `--resume` (a run) or `--overwrite` (a run only:
a folder that is not one is never moved about); `set_aside` then moves the earlier run into
`replaced-<UTC time>/` inside it (nothing is deleted).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from uticket_jax import files
from uticket_jax.launch.lock import LOCK_NAME

REPLACED = "replaced-"


@dataclasses.dataclass(frozen=True)
class RunKind:
    """What a run of one launcher leaves in its directory.

    Fields:
      launcher: the launcher's file name, for messages (`lth.py`).
      marker: the file every run writes first (`config.json`).
      holds: whether the marker's parsed JSON content is one of this launcher's.
      resumable: whether the launcher has `--resume`.
    """

    launcher: str
    marker: str
    holds: Callable[[Any], bool]
    resumable: bool = False


def _has_keys(*keys: str) -> Callable[[Any], bool]:
    return lambda obj: isinstance(obj, dict) and all(k in obj for k in keys)


def _sweep_rows(obj: Any) -> bool:
    return isinstance(obj, list) and all(isinstance(r, dict) and "config" in r for r in obj)


LTH = RunKind("lth.py", "config.json", _has_keys("preset", "rounds", "arms", "seed"), True)
TRAIN = RunKind("train.py", "results.json", _has_keys("test_accuracy", "history", "arch"))
SWEEP = RunKind("sweep.py", "sweep.json", _sweep_rows)


def _own(entry: str) -> bool:
    """The launchers' bookkeeping: the lock file and folders of earlier, replaced runs."""
    return entry == LOCK_NAME or entry.startswith(REPLACED)


def classify(path: str, kind: RunKind) -> str:
    """`missing`, `empty`, `run` or `other` (see the module docstring)."""
    if not os.path.exists(path):
        return "missing"
    entries = [e for e in os.listdir(path) if not _own(e)]
    if not entries:
        return "empty"
    marker = os.path.join(path, kind.marker)
    if os.path.isfile(marker):
        try:
            if kind.holds(files.read_json(marker, kind.marker)):
                return "run"
        except ValueError:
            pass
    return "other"


def prepare(
    path: str,
    kind: RunKind,
    *,
    flag: str,
    overwrite: bool = False,
    resume: bool = False,
    create: bool = True,
) -> tuple[str, str]:
    """Checks `path` for a new run (or `resume`), creates it; returns `(abs path, state)`.

    With `create=False` it only checks (a launcher that computes before it writes checks first,
    then calls again to create).

    Nothing else is written here: the caller locks the directory (`lock.acquire`), then sets
    the earlier run aside (`set_aside`) and writes.

    Raises:
      ValueError: naming `flag` (or `--resume`/`--overwrite`): not a directory; a run or other
        folder without the flag that allows it; `--overwrite` on a folder that is not a run;
        `--resume` on a folder that holds no run.
      files.WriteError: the directory cannot be created.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}: {path} exists and is not a directory")
    state = classify(path, kind)
    if resume:
        if state != "run":
            raise ValueError(
                f"--resume: {path} has no {kind.marker} of a {kind.launcher} run; nothing to resume"
            )
    elif state == "other" and overwrite:
        raise ValueError(
            f"--overwrite: {path} holds files that are not a {kind.launcher} run (no"
            f" {kind.marker} of one); they are left alone: choose a new or empty directory"
        )
    elif state in ("run", "other") and not overwrite:
        allow = "pass --overwrite"
        if kind.resumable:
            allow = "pass --resume to continue it or --overwrite"
        raise ValueError(
            f"{flag}: {path} already holds results; {allow} to set them aside in"
            f" {REPLACED}<time>/, or choose another directory"
        )
    if create:
        files.make_dirs(path)
    else:
        files.check_writable(os.path.join(path, kind.marker))
    return path, state


def set_aside(path: str) -> str | None:
    """Moves everything in `path` but the bookkeeping into `path/replaced-<UTC time>/`.

    Returns the new folder, or None when there was nothing to move.
    """
    entries = [e for e in os.listdir(path) if not _own(e)]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest, n = os.path.join(path, f"{REPLACED}{stamp}"), 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(path, f"{REPLACED}{stamp}-{n}")
    try:
        os.makedirs(dest)
        for e in entries:
            shutil.move(os.path.join(path, e), os.path.join(dest, e))
    except OSError as e:
        raise files.write_error(dest, e) from None
    return dest
