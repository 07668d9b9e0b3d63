"""Hardware configurations of the analytical PE-array model: a pytree of arrays, and grid builders.

A `HardwareConfig` holds one value per field (a scalar config) or one value per config along a
leading axis (a batch); a sweep is a batch, evaluated in one jitted, vmapped call per mapping.
Energy constants are not hardware fields: every energy model owns its constants (a NamedTuple,
`hardware.energy`), given to the simulator beside the configs (`simulate(...,
energy_constants=...)`), so no model is privileged.

Defaults: 16 PEs per group, the output-channel mapping, `timesteps = 5` (the SNN time window of the
paper's experiments) and the clock of the default energy model (`energy.DEFAULT_ENERGY_MODEL`,
`sata`: SATA's 400 MHz), so a default config is priced at the clock its constants were published
for; with another model give its clock (`EnergyModel.clock_hz`, e.g. 500 MHz for `horowitz45`),
as `experiments/sweep.py` and the pipeline do.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from uticket_jax import checks
from uticket_jax.hardware import energy
from uticket_jax.workload import mappings as wm


class _MappingNames(Sequence[str]):
    """Read-only live view of the names in `workload.MAPPINGS`, in registration order."""

    def __getitem__(self, i):
        return tuple(wm.MAPPINGS)[i]

    def __len__(self) -> int:
        return len(wm.MAPPINGS)

    def __repr__(self) -> str:
        return repr(tuple(wm.MAPPINGS))


#: The names of the ONE mapping registry (`workload.MAPPINGS`).
MAPPINGS: Sequence[str] = _MappingNames()

DEFAULTS: dict[str, Any] = {
    "n_pe": 16,
    "mapping": "output_channel",
    "timesteps": 5,
    "clock_hz": energy.get_energy_model(energy.DEFAULT_ENERGY_MODEL).clock_hz,
    "activity_aware": False,
}

_INT_FIELDS = ("n_pe", "timesteps")
_FLOAT_FIELDS = ("clock_hz",)


class HardwareConfig(NamedTuple):
    """One accelerator configuration (scalars) or a batch of them (leading axis `[N]`).

    Fields:
      n_pe: int32, PEs per group (> 0).
      mapping: the mapping's registered name (a numpy string array; the simulator dispatches on
        it outside jit, one compiled kernel per mapping).
      timesteps: int32, SNN time steps `T` (> 0).
      clock_hz: float32, clock frequency in Hz (> 0).
      activity_aware: bool, scale accumulates by the layer's input spike rate.
    """

    n_pe: jnp.ndarray
    mapping: np.ndarray
    timesteps: jnp.ndarray
    clock_hz: jnp.ndarray
    activity_aware: jnp.ndarray


def _field_array(name: str, values: Any) -> np.ndarray:
    if name == "mapping":
        vals = np.atleast_1d(np.asarray(values, dtype=object))
        names = [wm.get_mapping(v).name for v in vals.ravel()]
        return np.asarray(names, dtype=str).reshape(np.shape(values))
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
    for name in np.unique(c["mapping"]):
        wm.get_mapping(str(name))
    if (c["timesteps"] <= 0).any():
        raise ValueError("timesteps: must be >= 1")
    if not (np.isfinite(c["clock_hz"]).all() and (c["clock_hz"] > 0).all()):
        raise ValueError("clock_hz: must be finite and > 0")


def make_config(**fields: Any) -> HardwareConfig:
    """One config (scalar fields) from keyword fields; missing fields take `DEFAULTS`.

    Example: `make_config(n_pe=16, mapping="input_split", timesteps=4)`.
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
      **axes: field name -> list of values (mapping as names).
    Returns:
      A batch config with `N = prod(len(list))` configs.

    Example:
      >>> from uticket_jax import hardware
      >>> configs = hardware.config_grid(n_pe=[4, 8], mapping=["output_channel", "input_split"])
      >>> hardware.num_configs(configs)
      4
      >>> list(zip(configs.mapping.tolist(), configs.n_pe.tolist()))
      [('output_channel', 4), ('output_channel', 8), ('input_split', 4), ('input_split', 8)]
      >>> configs.timesteps.tolist() == [hardware.DEFAULTS["timesteps"]] * 4
      True
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
    """JSON-ready dicts, one per config (the mapping by name)."""
    cols = {k: np.atleast_1d(np.asarray(v)).tolist() for k, v in config._asdict().items()}
    for k in _FLOAT_FIELDS:  # float32 values, printed with float32 precision
        cols[k] = [float(f"{v:.7g}") for v in cols[k]]
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
