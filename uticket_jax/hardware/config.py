"""Hardware configurations of the analytical PE-array model: a pytree of arrays, and grid builders.

A `HardwareConfig` holds one value per field (a scalar config) or one value per config along a
leading axis (a batch); a sweep is a batch, evaluated in one jitted, vmapped call.

Default energy constants (units in the field names; 45 nm CMOS at 0.9 V):
  e_acc_pj   = 0.1 pJ per accumulate: a 32-bit integer add, M. Horowitz, "Computing's energy
               problem (and what we can do about it)", ISSCC 2014, Fig. 1.1.9 (45 nm, 0.9 V).
               A spiking layer accumulates a weight for each input spike, no multiply.
  e_fetch_pj = 5.0 pJ per non-zero weight fetched: half of Horowitz's 10 pJ for a 64-bit read of
               an 8 kB SRAM (same table), i.e. one 32-bit weight from a PE's local weight buffer.
  e_idle_pj  = 0.03 pJ per idle PE-cycle: MODELLING ASSUMPTION, not a measured figure. A stalled
               PE of a lock-step group still clocks its registers; we price it as Horowitz's
               8-bit add (0.03 pJ), i.e. ~30% of an active accumulate.
  leak_w     = 1e-5 W leakage per PE: MODELLING ASSUMPTION (10 uW for a 32-bit accumulator plus a
               small register file in 45 nm); it enters as leak_w * n_pe * latency seconds.
  clock_hz   = 500 MHz: MODELLING ASSUMPTION, a typical clock of 45 nm accelerator studies.
  timesteps  = 5, the SNN time window used by the paper's experiments.
Every constant is a field of the config and can be swept (`config_grid`). The four energy fields
are the constants of the default energy model, `horowitz45` (`hardware/energy.py`); other models
(e.g. `sata`) take their constants as `simulate(..., energy_constants=...)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from uticket_jax import checks
from uticket_jax.workload import mappings as wm


class _MappingNames(Sequence[str]):
    """Read-only live view of the names in `workload.mappings.MAPPINGS`, in id order."""

    def __getitem__(self, i):
        return tuple(wm.MAPPINGS)[i]

    def __len__(self) -> int:
        return len(wm.MAPPINGS)

    def __repr__(self) -> str:
        return repr(tuple(wm.MAPPINGS))


# The names of the ONE mapping registry (`workload.MAPPINGS`); `HardwareConfig.mapping` holds a
# mapping's position there (output_channel = 0, input_split = 1, then registration order).
MAPPINGS: Sequence[str] = _MappingNames()

DEFAULTS: dict[str, Any] = {
    "n_pe": 16,
    "mapping": "output_channel",
    "timesteps": 5,
    "clock_hz": 500e6,
    "e_acc_pj": 0.1,
    "e_fetch_pj": 5.0,
    "e_idle_pj": 0.03,
    "leak_w": 1e-5,
    "activity_aware": False,
}

_INT_FIELDS = ("n_pe", "mapping", "timesteps")
_FLOAT_FIELDS = ("clock_hz", "e_acc_pj", "e_fetch_pj", "e_idle_pj", "leak_w")


class HardwareConfig(NamedTuple):
    """One accelerator configuration (scalars) or a batch of them (leading axis `[N]`).

    Fields:
      n_pe: int32, PEs per group (> 0).
      mapping: int32, the mapping's position in the registry (`workload.MAPPINGS`, `mapping_id`).
      timesteps: int32, SNN time steps `T` (> 0).
      clock_hz: float32, clock frequency in Hz (> 0).
      e_acc_pj: float32, energy of one accumulate, pJ (>= 0).
      e_fetch_pj: float32, energy of fetching one non-zero weight, pJ (>= 0).
      e_idle_pj: float32, energy of one idle PE-cycle, pJ (>= 0).
      leak_w: float32, leakage power of one PE, W (>= 0).
      activity_aware: bool, scale accumulates by the layer's input spike rate.
    """

    n_pe: jnp.ndarray
    mapping: jnp.ndarray
    timesteps: jnp.ndarray
    clock_hz: jnp.ndarray
    e_acc_pj: jnp.ndarray
    e_fetch_pj: jnp.ndarray
    e_idle_pj: jnp.ndarray
    leak_w: jnp.ndarray
    activity_aware: jnp.ndarray


def mapping_id(name: str | wm.PEMapping) -> int:
    """The integer id (registry position) of a mapping name; ValueError naming the allowed ones."""
    return wm.mapping_index(name)


def _field_array(name: str, values: Any) -> np.ndarray:
    if name == "mapping":
        vals = np.atleast_1d(np.asarray(values, dtype=object))
        ids = [mapping_id(v) if isinstance(v, str | wm.PEMapping) else int(v) for v in vals.ravel()]
        return np.asarray(ids, np.int32).reshape(np.shape(values))
    if name in _INT_FIELDS:
        return checks.check_int_array(name, values, minimum=None)  # never wrapped to int32
    if name == "activity_aware":
        return np.asarray(values, bool)
    return np.asarray(values, np.float32)


def validate_config(config: HardwareConfig) -> None:
    """Raises ValueError naming the field when any config of `config` is out of range."""
    c = {k: np.asarray(v) for k, v in config._asdict().items()}
    shapes = {np.shape(v) for v in c.values()}
    if len(shapes) != 1:
        raise ValueError(f"config: all fields must share one shape, got {sorted(shapes)}")
    if (c["n_pe"] <= 0).any():
        raise ValueError(f"n_pe: must be >= 1, got {np.unique(c['n_pe'][c['n_pe'] <= 0])}")
    bad = (c["mapping"] < 0) | (c["mapping"] >= len(wm.MAPPINGS))
    if bad.any():
        raise ValueError(f"mapping: ids must be in [0, {len(wm.MAPPINGS)}) for {tuple(MAPPINGS)}")
    if (c["timesteps"] <= 0).any():
        raise ValueError("timesteps: must be >= 1")
    if not (np.isfinite(c["clock_hz"]).all() and (c["clock_hz"] > 0).all()):
        raise ValueError("clock_hz: must be finite and > 0")
    for name in ("e_acc_pj", "e_fetch_pj", "e_idle_pj", "leak_w"):
        if not (np.isfinite(c[name]).all() and (c[name] >= 0).all()):
            raise ValueError(f"{name}: energies and powers must be finite and >= 0")


def make_config(**fields: Any) -> HardwareConfig:
    """One config (scalar fields) from keyword fields; missing fields take `DEFAULTS`.

    Example: `make_config(n_pe=16, mapping="input_split", e_fetch_pj=2.5)`.
    """
    unknown = set(fields) - set(HardwareConfig._fields)
    if unknown:
        raise ValueError(
            f"config: unknown fields {sorted(unknown)}; known: {HardwareConfig._fields}"
        )
    vals = {k: _field_array(k, fields.get(k, DEFAULTS[k])) for k in HardwareConfig._fields}
    cfg = HardwareConfig(**vals)
    validate_config(cfg)
    return cfg


def config_grid(**axes: Sequence[Any] | Any) -> HardwareConfig:
    """The Cartesian product of per-field value lists as a batch `HardwareConfig` `[N]`.

    Fields not given take `DEFAULTS`; a scalar counts as a one-value list. The order is
    row-major: mapping varies slowest, then n_pe, then the other fields in field order.

    Args:
      **axes: field name -> list of values (mapping as names or ids).
    Returns:
      A batch config with `N = prod(len(list))` configs.
    """
    unknown = set(axes) - set(HardwareConfig._fields)
    if unknown:
        raise ValueError(
            f"config: unknown fields {sorted(unknown)}; known: {HardwareConfig._fields}"
        )
    order = ("mapping", "n_pe") + tuple(
        k for k in HardwareConfig._fields if k not in ("mapping", "n_pe")
    )
    lists = []
    for k in order:
        v = axes.get(k, DEFAULTS[k])
        v = list(v) if isinstance(v, list | tuple | np.ndarray) else [v]
        if not v:
            raise ValueError(f"{k}: empty list of values")
        lists.append(v)
    cols = list(zip(*itertools.product(*lists), strict=True))
    cfg = HardwareConfig(**{k: _field_array(k, list(c)) for k, c in zip(order, cols, strict=True)})
    validate_config(cfg)
    return cfg


def stack_configs(configs: Sequence[HardwareConfig]) -> HardwareConfig:
    """Concatenates scalar or batch configs into one batch along the leading axis."""
    if not configs:
        raise ValueError("configs: need at least one config")
    columns = zip(*configs, strict=True)  # one tuple per field, across the configs
    return HardwareConfig(
        *(np.concatenate([np.atleast_1d(np.asarray(f)) for f in col]) for col in columns)
    )


def take_configs(config: HardwareConfig, index: np.ndarray) -> HardwareConfig:
    """The sub-batch `config[index]` (numpy indexing on every field)."""
    return HardwareConfig(*(np.asarray(f)[index] for f in config))


def num_configs(config: HardwareConfig) -> int:
    """Number of configs in a batch (1 for a scalar config)."""
    return int(np.size(config.n_pe))


def config_rows(config: HardwareConfig) -> list[dict[str, Any]]:
    """JSON-ready dicts, one per config, with the mapping as its name."""
    cols = {k: np.atleast_1d(np.asarray(v)).tolist() for k, v in config._asdict().items()}
    names = tuple(MAPPINGS)
    cols["mapping"] = [names[m] for m in cols["mapping"]]  # id -> registered name
    for k in _FLOAT_FIELDS:  # float32 values, printed with float32 precision
        cols[k] = [float(f"{v:.7g}") for v in cols[k]]
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
