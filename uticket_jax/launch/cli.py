"""Shared plumbing of the `experiments/` launchers: one-line errors and quiet logs.

`run(main, name=...)` parses absl flags (a malformed or unknown flag is one line on stderr and
exit status 2, not absl's usage dump), sets absl logging to WARNING (JAX's backend probing and
orbax's INFO chatter would otherwise fill stderr), calls `main()` and turns what can go wrong into
one line on stderr:

  bad input (`ValueError` and its subclasses: flag values, files, a diverged run, a foreign
    checkpoint, a work directory in use)                                      exit status 2;
  a file that cannot be written (`OSError`: a full disk, a read-only file system)   exit 1;
  SIGINT / SIGTERM (`signals.Stopped`): where the run stopped and the command
    that continues it (the launcher's `on_stop`)                              exit 130 / 143.

`define_config_flags(cls)` makes one flag per field of a config dataclass (name, type and help
from the field), and `config_from_flags` applies the flags the user set to a base config (a
preset): a launcher re-declares no setting by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as py_logging
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from absl import app, flags, logging

from uticket_jax import checks, files
from uticket_jax.launch import signals

OnStop = Callable[[signals.Stopped], "str | None"]

# Flags this module defines for a launcher (`define_config_flags`) are the launcher's key flags
# (listed by its --help), not this module's.
flags.disclaim_key_flags()

_SCALAR_FLAGS = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
}


def fail(name: str, message: Any, status: int = 2) -> NoReturn:
    """Prints `name: message` as one line on stderr and exits with `status` (2: bad input)."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    print(f"{name}: {first}", file=sys.stderr)
    sys.exit(status)


def int_list(flag, maximum: int = checks.INT32_MAX) -> list[int]:
    """The integers in [1, maximum] of a comma-list string flag; ValueError naming the flag."""
    return checks.parse_int_list(f"--{flag.name}", flag.value, minimum=1, maximum=maximum)


@contextlib.contextmanager
def flag_errors(*names: str) -> Iterator[None]:
    """Re-raises a library's `ValueError` that names argument `x` (`"x: ..."`) as flag `--x`.

    The library names its arguments; around a call that takes them from flags of the same
    names, the message then names the flag the user typed.
    """
    try:
        yield
    except ValueError as e:
        text = str(e)
        if text.split(":", 1)[0] in names:
            raise ValueError(f"--{text}") from None
        raise


def _flag_kind(name: str, hint: Any) -> Any:
    """The field's scalar type, or `(tuple, item type)` for `tuple[item, ...]` fields."""
    if hint in _SCALAR_FLAGS:
        return hint
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] in (str, int, float):
            return (tuple, args[0])
    raise TypeError(f"{name}: no flag type for a config field of type {hint!r}")


def define_config_flags(
    cls: type, *, note: str = "", flag_values: flags.FlagValues = flags.FLAGS
) -> dict[str, flags.FlagHolder]:
    """One absl flag per field of dataclass `cls`, each with default None (not given).

    Name: the field's; type: its annotation (`str`, `int`, `float`, `bool`, or `tuple[T, ...]` as
    a comma list); help: `field.metadata["help"]` (else the field's name), then `note`.

    Args:
      cls: the config dataclass.
      note: text appended to every help (e.g. where unset values come from).
      flag_values: the flag registry (absl's global one by default).

    Returns:
      `{field name: flag holder}`, in field order.
    """
    hints = typing.get_type_hints(cls)
    holders = {}
    for field in dataclasses.fields(cls):
        kind = _flag_kind(field.name, hints[field.name])
        help_text = " ".join(t for t in (field.metadata.get("help", field.name), note) if t)
        define = flags.DEFINE_list if isinstance(kind, tuple) else _SCALAR_FLAGS[kind]
        holders[field.name] = define(field.name, None, help_text, flag_values=flag_values)
    return holders


def _convert(name: str, kind: Any, value: Any) -> Any:
    """A parsed flag value as the field's type (comma lists as tuples)."""
    if not isinstance(kind, tuple):
        return value
    item = kind[1]
    try:
        return tuple(item(v.strip()) for v in value if v.strip())
    except ValueError:
        raise ValueError(
            f"--{name}: expected a comma list of {item.__name__} values, got {','.join(value)!r}"
        ) from None


def config_from_flags(base: Any, holders: Mapping[str, flags.FlagHolder]) -> Any:
    """`base` (a dataclass instance) with the value of every flag the user gave.

    Args:
      base: the config the flags override (e.g. a preset).
      holders: from `define_config_flags(type(base))`.

    Returns:
      A new instance (`dataclasses.replace`); flags left unset keep `base`'s values.

    Raises:
      ValueError: a comma-list element that is not of the field's item type, naming the flag.
    """
    hints = typing.get_type_hints(type(base))
    changes = {}
    for name, holder in holders.items():
        if holder.value is not None:
            changes[name] = _convert(name, _flag_kind(name, hints[name]), holder.value)
    return dataclasses.replace(base, **changes)


def _stopped_line(name: str, stop: signals.Stopped, on_stop: OnStop | None) -> str:
    tail = on_stop(stop) if on_stop is not None else None
    if tail is None:
        tail = f"; rerun with: {signals.resume_command(add=())}"
    return f"stopped by {signals.signal_name(stop.signum)}{tail}"


def _os_error_line(e: OSError) -> str:
    if e.filename and e.strerror and not isinstance(e, files.WriteError):
        return f"{e.filename}: {e.strerror}"
    return str(e)


def guarded(
    main: Callable[[], object], name: str, on_stop: OnStop | None = None
) -> Callable[[], None]:
    """`main` with its failures turned into one line on stderr (see the module docstring)."""

    def call() -> None:
        try:
            main()
        except ValueError as e:
            fail(name, e)
        except OSError as e:
            fail(name, _os_error_line(e), status=1)
        except signals.Stopped as stop:
            fail(name, _stopped_line(name, stop, on_stop), status=stop.exit_status)

    return call


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """absl logging off (but FATAL) while the block runs: orbax logs a failed save's traceback
    from each of its threads before the failure comes back as the one line a launcher prints."""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def quiet_async_debris() -> None:
    """Keeps stderr to the one line: orbax's failed reads of a damaged checkpoint leave asyncio
    tasks whose errors were already reported (as a `CheckpointError`) and tensorstore callbacks for
    a closed event loop; both would otherwise print tracebacks when garbage-collected."""
    py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        default(unraisable)

    sys.unraisablehook = hook


def parse_flags(name: str, argv: list[str]) -> list[str]:
    """absl's parse of `argv` (`argv[0]`: the program); bad flags are `fail(name, ...)`."""
    try:
        rest = flags.FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
        fail(name, f"--{e.flagname}: unknown flag; --help lists this launcher's flags")
    except flags.Error as e:
        fail(name, e)
    if len(rest) > 1:
        fail(name, f"unexpected arguments {rest[1:]}; flags are --name=value")
    return rest


def run(main: Callable[[], object], *, name: str, on_stop: OnStop | None = None) -> None:
    """Runs a launcher's `main()` under absl with the project's error conventions.

    Args:
      main: the launcher's work.
      name: its name in messages (`lth.py`).
      on_stop: on SIGINT/SIGTERM, the rest of the line after "stopped by SIGTERM" (where the run
        stopped, the command that continues it); None: "rerun with: <the same command>".
    """
    signals.install(name)  # until main starts: one line and exit, nothing is written yet
    quiet_async_debris()

    def wrapped(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)
        signals.arm(name)  # from here a signal raises `Stopped` (handled by `guarded`)
        guarded(main, name, on_stop)()

    app.run(wrapped, flags_parser=lambda argv: parse_flags(name, argv))
