"""Shared plumbing of the `experiments/` launchers: one-line errors and quiet logs.

`run(main, name=...)` parses absl flags (a malformed or unknown flag is one line on stderr and
exit status 2, not absl's usage dump), sets absl logging to WARNING (JAX's backend probing and
orbax's INFO chatter would otherwise fill stderr), calls `main()` and turns the errors a user can
cause (`ValueError` and its subclasses: bad flag values, missing files, a diverged run, a foreign
checkpoint) into one line on stderr and exit status 2.

`define_config_flags(cls)` makes one flag per field of a config dataclass (name, type and help
from the field), and `config_from_flags` applies the flags the user set to a base config (a
preset): a launcher re-declares no setting by hand.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from absl import app, flags, logging

# Flags this module defines for a launcher (`define_config_flags`) are the launcher's key flags
# (listed by its --help), not this module's.
flags.disclaim_key_flags()

_SCALAR_FLAGS = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
}


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
