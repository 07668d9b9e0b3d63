"""Shared plumbing of the `experiments/` launchers: one-line errors and quiet logs.

`run(main, name=...)` parses absl flags (a malformed or unknown flag is one line on stderr and
exit status 2, not absl's usage dump), sets absl logging to WARNING (JAX's backend probing and
orbax's INFO chatter would otherwise fill stderr), calls `main()` and turns the errors a user can
cause (`ValueError` and its subclasses: bad flag values, missing files, a diverged run, a foreign
checkpoint) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags, logging


def fail(name: str, message: str) -> NoReturn:
    """Prints `name: message` as one line on stderr and exits with status 2."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    print(f"{name}: {first}", file=sys.stderr)
    sys.exit(2)


def int_list(flag) -> list[int]:
    """The integers >= 1 of a comma-list string flag; ValueError naming the flag otherwise."""
    try:
        vals = [int(v) for v in flag.value.split(",") if v.strip()]
    except ValueError:
        msg = f"--{flag.name}: expected a comma list of integers, got {flag.value!r}"
        raise ValueError(msg) from None
    if not vals or min(vals) <= 0:
        raise ValueError(f"--{flag.name}: must be integers >= 1, got {flag.value!r}")
    return vals


def guarded(main: Callable[[], object], name: str) -> Callable[[], None]:
    """`main` with user errors (`ValueError`) turned into `fail(name, ...)`; flags parsed."""

    def call() -> None:
        try:
            main()
        except ValueError as e:
            fail(name, e)

    return call


def run(main: Callable[[], object], *, name: str) -> None:
    """Runs a launcher's `main()` under absl with the project's error conventions."""

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail(name, e)

    def wrapped(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            fail(name, f"unexpected arguments {argv[1:]}; flags are --name=value")
        guarded(main, name)()

    app.run(wrapped, flags_parser=parse)
