"""Spike-trace files: the recorded inputs of a model's analysed layers, as a compressed `.npz`.

One bool array per layer, keyed by its kernel path (as in mask files), in network order:
`[T, B, H, W, C_in]` for convs, `[T, B, C_in]` for dense layers (`models.record_inputs` makes
them, `hardware.simulate_spikes` prices them). Every layer of a trace has the same `T` and `B`.
Whether the layers and shapes fit a network is checked against its layers where the trace is used
(`hardware.check_spikes`); this module checks the file itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from uticket_jax.files.atomic import write_atomic
from uticket_jax.files.readers import read_npz

RANKS = (3, 5)  # [T, B, C_in] dense, [T, B, H, W, C_in] conv


def _events(name: str, value: Any, where: str) -> np.ndarray:
    """One layer's array as bool, or a one-line ValueError (rank, values other than 0/1)."""
    a = np.asarray(value)
    if a.ndim not in RANKS or a.size == 0:
        raise ValueError(
            f"{where}: layer {name!r} has shape {a.shape}; expected [T, B, H, W, C_in] (conv) or"
            " [T, B, C_in] (dense), no empty axis"
        )
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{where}: layer {name!r} has dtype {a.dtype}; expected bool or 0/1")
    bad = ~((a == 0) | (a == 1))
    if bad.any():
        raise ValueError(
            f"{where}: layer {name!r} holds values other than 0 and 1 (e.g. {a[bad][0]!r});"
            " expected spikes, bool or 0/1"
        )
    return a != 0


def check_trace(trace: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """`trace` as bool arrays, in its order, after the checks every trace file passes.

    Args:
      trace: `{kernel path: array}`.
      where: what messages name first (the file).

    Returns:
      `{kernel path: bool array}`.

    Raises:
      ValueError: naming `where` and the layer: no layers, a key that is not a path, a rank
        other than 3 or 5, values other than 0/1, layers of different `T` or `B`.
    """
    if not isinstance(trace, Mapping) or not trace:
        raise ValueError(f"{where}: holds no layers; expected one array per analysed layer")
    out: dict[str, np.ndarray] = {}
    for name, value in trace.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: layer key {name!r} is not a kernel path")
        out[name] = _events(name, value, where)
    first = next(iter(out))
    tb = out[first].shape[:2]
    for name, a in out.items():
        if a.shape[:2] != tb:
            raise ValueError(
                f"{where}: layer {name!r} has [T, B] = {list(a.shape[:2])}, but {first!r} has"
                f" {list(tb)}; every layer of a trace has the same steps and images"
            )
    return out


def save_spike_trace(path: str, trace: Mapping[str, Any]) -> None:
    """Writes `trace` to `path` as a compressed `.npz` of bool arrays, atomically.

    Args:
      path: the file (its directory is created when missing).
      trace: `{kernel path: [T, B, H, W, C_in] or [T, B, C_in]}`, bool or 0/1, network order.

    Raises:
      ValueError: the trace fails `check_trace` (nothing written).
      WriteError: the file could not be written (nothing left behind).
    """
    arrays = check_trace(trace, f"trace for {path!r}")
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def load_spike_trace(path: str, what: str = "spike_trace") -> dict[str, np.ndarray]:
    """The trace in `path`: `{kernel path: bool array}` in the file's order.

    Args:
      path: a file `save_spike_trace` wrote (or any `.npz` of such arrays).
      what: what messages name first (a flag, e.g. `--spike_trace`).

    Returns:
      The bool arrays, keyed by kernel path.

    Raises:
      ValueError: one line naming `what` and the file (and the layer): no such file, unreadable,
        not an `.npz`, empty, a rank other than 3 or 5, values other than 0/1, layers of
        different `T` or `B`.
    """
    arrays = read_npz(path, what, ranks=RANKS, expected="one array per analysed layer")
    return check_trace(arrays, f"{what}: {path!r}")
