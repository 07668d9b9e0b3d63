"""Integers and floats at the boundary (run settings included): range-checked, never wrapped.

The kernels hold counts, sizes and PE numbers as int32 and JAX keeps a 32-bit seed, so a Python
integer that does not fit would be wrapped silently by `np.int32(...)` / `astype(np.int32)`
(`4294967312 -> 16`) or by `jax.random.key` (`2**32 -> key(0)`). Every integer a user can give is
checked here against the range its consumer holds, and every float against being finite and in
its range, with a one-line `ValueError` naming the argument (`n_pe`, or the flag `--n_pe`).

Training settings are checked here too, before anything runs: a NaN or negative learning rate
would otherwise surface only after a whole epoch, as a diverged loss blamed on that epoch, after
the work directory was written (`LTHConfig.validate`, `experiments/train.py` and
`training.step.make_optimizer` share these rules).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
# `jax.random.key(seed)` keeps the low 32 bits of a seed (without x64): 2**32 and 0 give the same
# key, and -1 the same as 2**32 - 1. Seeds are therefore the integers 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1
# PEs per lock-step group that the workload model (loads `[groups, n_pe]`) and the rebalance
# kernels take: arrays grow with n_pe whatever the layer (n_pe = 10**7 took 6 GB and 18 s for a
# 4-layer toy net); accelerators group 4 to a few hundred PEs. The simulator's sweeps, which
# bound n_pe by their int32 load counts instead, are not limited by this.
MAX_N_PE = 2**16


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is None:
        return f"<= {maximum}"
    if maximum is None:
        return f">= {minimum}"
    return f"in [{minimum}, {maximum}]"


def check_int(
    name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = INT32_MAX
) -> int:
    """`value` as a Python int; ValueError naming `name` unless an integer in range.

    Args:
      name: the argument or flag the message names (`n_pe`, `--n_pe`).
      value: an int or numpy integer (bools and floats are refused: `2.5` PEs is no count).
      minimum, maximum: inclusive bounds (None: unbounded); the default maximum is int32's.
    """
    if not _is_int(value):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: must be an integer {_range_text(minimum, maximum)}, got {value}")
    return value


def parse_int(
    name: str, text: str, *, minimum: int | None = 1, maximum: int | None = INT32_MAX
) -> int:
    """An integer written as text (a string flag), checked as `check_int` does."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    return check_int(name, value, minimum=minimum, maximum=maximum)


def parse_int_list(
    name: str, text: str, *, minimum: int | None = 1, maximum: int | None = INT32_MAX
) -> list[int]:
    """The integers of a comma list (`"4,8,16"`), each checked; at least one."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError(f"{name}: expected a comma list of integers, got {text!r}")
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise ValueError(f"{name}: expected a comma list of integers, got {text!r}") from None
    for v in values:  # the bound that is broken, as in "--n_pe: must be integers >= 1"
        if minimum is not None and v < minimum:
            raise ValueError(f"{name}: must be integers >= {minimum}, got {text!r}")
        if maximum is not None and v > maximum:
            raise ValueError(f"{name}: must be integers <= {maximum}, got {text!r}")
    return values


def check_seed(name: str, value: Any) -> int:
    """A seed for `jax.random.key`: an integer in [0, 2**32 - 1] (JAX keeps 32 bits)."""
    if _is_int(value) and not 0 <= int(value) <= SEED_MAX:
        raise ValueError(
            f"{name}: must be an integer in [0, {SEED_MAX}] (JAX keeps a 32-bit seed; a larger"
            f" one would repeat a smaller one's random numbers), got {int(value)}"
        )
    return check_int(name, value, minimum=0, maximum=SEED_MAX)


def check_int_array(
    name: str, values: Any, *, minimum: int | None = 1, maximum: int = INT32_MAX
) -> np.ndarray:
    """`values` (a number, list or array of whole numbers) as an int32 array, range-checked first.

    The check runs on the exact values (Python ints of any size, int64/uint64 arrays, whole
    floats), before the conversion that would wrap them.
    """
    flat = np.asarray(values, dtype=object).ravel().tolist() if np.ndim(values) else [values]
    for v in flat:
        if isinstance(v, float | np.floating) and math.isfinite(v) and float(v).is_integer():
            v = int(v)
        if not _is_int(v):
            raise ValueError(f"{name}: must be whole numbers, got {values!r}")
        low = INT32_MIN if minimum is None else minimum
        if not low <= v <= maximum:
            raise ValueError(f"{name}: must be integers {_range_text(low, maximum)}, got {int(v)}")
    return np.asarray([int(v) for v in flat], np.int32).reshape(np.shape(values))


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """`value` as a finite float in range; ValueError naming `name` otherwise.

    Args:
      name: the argument or flag the message names.
      value: an int or float (numpy scalars too; bools and strings are refused).
      minimum, maximum: bounds (None: unbounded); `open_min`/`open_max` exclude them.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value}")
    low = minimum is not None and (value <= minimum if open_min else value < minimum)
    high = maximum is not None and (value >= maximum if open_max else value > maximum)
    if low or high:
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        interval = f"{'(' if open_min or minimum is None else '['}{lo}, {hi}"
        interval += ")" if open_max or maximum is None else "]"
        raise ValueError(f"{name}: must be in {interval}, got {value:g}")
    return value


def check_int_tuple(
    name: str, values: Sequence[Any], *, minimum: int | None = 1, maximum: int = INT32_MAX
) -> tuple[int, ...]:
    """Each element checked as `check_int` does; the tuple of Python ints."""
    return tuple(check_int(name, v, minimum=minimum, maximum=maximum) for v in values)


# ---- training settings ----------------------------------------------------------------------

# SGD momentum is a decay factor: 1 never forgets a gradient (the heavy ball never settles) and
# beyond 1 the velocity grows without bound.
MOMENTUM_MAX = 1.0


def check_optimizer_settings(
    *, lr: Any, momentum: Any, weight_decay: Any, prefix: str = ""
) -> tuple[float, float, float]:
    """`(lr, momentum, weight_decay)` as floats, checked.

    lr: finite and > 0; momentum: finite, in [0, 1); weight_decay: finite and >= 0.

    Args:
      lr, momentum, weight_decay: the values.
      prefix: put before each name in a message (`"--"` where they are flags).

    Raises:
      ValueError: naming the first bad value and its allowed range.
    """
    lr = check_float(f"{prefix}lr", lr, minimum=0.0, open_min=True)
    momentum = check_float(
        f"{prefix}momentum", momentum, minimum=0.0, maximum=MOMENTUM_MAX, open_max=True
    )
    weight_decay = check_float(f"{prefix}weight_decay", weight_decay, minimum=0.0)
    return lr, momentum, weight_decay


def check_run_sizes(prefix: str = "", **sizes: Any) -> dict[str, int]:
    """Positive int32 counts (epochs, timesteps, batch sizes, ...) by name, checked.

    Example: `check_run_sizes("--", epochs=cfg.epochs, timesteps=cfg.timesteps)`.
    """
    return {k: check_int(f"{prefix}{k}", v, minimum=1) for k, v in sizes.items()}


def check_seed_value(seed: Any, prefix: str = "") -> int:
    """The run's seed (`--seed`): an integer in [0, 2**32 - 1]."""
    return check_seed(f"{prefix}seed", seed)


def check_total_steps(epochs: int, batches_per_epoch: int, prefix: str = "") -> int:
    """`epochs * batches_per_epoch` optimizer steps, which the step counter holds as int32."""
    total = int(epochs) * int(batches_per_epoch)
    if total > INT32_MAX:
        raise ValueError(
            f"{prefix}epochs: {epochs} epochs of {batches_per_epoch} batches are {total} optimizer"
            f" steps; the step counter holds at most {INT32_MAX}"
        )
    return total
