"""SIGINT and SIGTERM in the launchers: one line, where the run stopped, how to resume it.

A launcher calls `install(name, __name__)` before its heavy imports: as a script, a signal
then stops the process at once with one line ("nothing was written yet") and exit status
128 + signal (130 for SIGINT, 143 for SIGTERM), not a 45-line traceback out of an import. Once
`cli.run` starts `main`, `arm()` makes a signal raise `Stopped` in the main thread instead; the
launcher's stop handler says where the run stopped and gives the exact command that continues
it (`resume_command`). Code that must not be cut in half (a checkpoint save, whose files orbax
writes from other threads) runs inside `deferred()`: a signal that arrives there takes effect
when the section ends. Temporary files are removed on the way out by their writers
(`files.write_atomic`, `Checkpointer.save`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"name": "launcher", "armed": False, "depth": 0, "pending": None}


class Stopped(BaseException):
    """A SIGINT or SIGTERM, raised in the main thread (a BaseException, as KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process stopped by it."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum: int, frame) -> None:
    if not _state["armed"]:  # still importing or parsing: nothing is written yet
        os.write(
            2,
            f"{_state['name']}: stopped by {signal_name(signum)} while starting;"
            " nothing was written\n".encode(),
        )
        os._exit(128 + signum)
    if _state["depth"] > 0:
        _state["pending"] = signum
        return
    raise Stopped(signum)


def install(name: str, module: str = "__main__") -> None:
    """Handles SIGINT and SIGTERM from now on: an immediate one-line exit until `arm()`.

    Args:
      name: the launcher's name in messages (`lth.py`).
      module: the caller's `__name__`; nothing happens unless it is `"__main__"` (a launcher
        imported by a test keeps the default handlers).
    """
    if module != "__main__" or threading.current_thread() is not threading.main_thread():
        return
    _state["name"] = name
    for s in SIGNALS:
        signal.signal(s, _handler)


def arm(name: str) -> None:
    """From now on a signal raises `Stopped` in the main thread (see the module docstring)."""
    _state["name"] = name
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)
    _state["armed"] = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds SIGINT/SIGTERM while the block runs; one that arrived is raised when it ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if _state["depth"] == 0 and pending is not None:
            _state["pending"] = None
            raise Stopped(pending)


def _flag_name(arg: str) -> str:
    return arg[2:].split("=", 1)[0] if arg.startswith("--") else ""


def resume_command(
    argv: Sequence[str] | None = None,
    *,
    drop: Sequence[str] = ("overwrite", "resume"),
    add: Sequence[str] = ("--resume",),
) -> str:
    """The command line that continues this run: the same one, without `drop`, plus `add`.

    A boolean flag in `drop` goes in each of absl's spellings (`--overwrite`, `--nooverwrite`,
    `--overwrite=false`); every other argument stays as given, shell-quoted.
    """
    argv = list(sys.argv if argv is None else argv)
    names = set(drop) | {f"no{d}" for d in drop}
    kept = [a for a in argv[1:] if _flag_name(a) not in names]
    return shlex.join(["python", *argv[:1], *kept, *add])
