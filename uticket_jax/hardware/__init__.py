"""Analytical PE-array accelerator model: configs, layer descriptions, count tables, vectorized
sweeps, energy models (`hardware.energy`), result rows (`hardware.rows`), and spike-driven figures
from recorded input spikes (`hardware.spikes`, `hardware.spike_work`).

Mappings are not registered here: `MAPPINGS` is a live view of the names in the one registry,
`uticket_jax.workload.MAPPINGS` (add one with `workload.register_mapping`). Energy models have
their own registry, `hardware.energy.ENERGY_MODELS` (`register_energy_model`).
"""

import importlib

from uticket_jax.hardware.config import (
    DEFAULTS,
    MAPPINGS,
    HardwareConfig,
    config_grid,
    config_rows,
    make_config,
    num_configs,
    stack_configs,
    take_configs,
    validate_config,
)
from uticket_jax.hardware.energy import (
    DEFAULT_ENERGY_MODEL,
    ENERGY_MODELS,
    Counts,
    EnergyModel,
    energy_terms,
    get_energy_model,
    make_constants,
    offchip_energy,
    onchip_energy,
    register_energy_model,
)
from uticket_jax.hardware.figures import Figures, SweepResult
from uticket_jax.hardware.layers import (
    LayerSpec,
    check_same_layers,
    load_spike_rates,
    specs_from_layers,
    specs_from_shapes,
    spike_rate_vector,
)
from uticket_jax.hardware.rows import (
    config_dicts,
    figures_dict,
    flat_row,
    ratios,
    sweep_networks,
    sweep_rows,
)
from uticket_jax.hardware.simulator import (
    ENERGY_TERMS,
    group_loads,
    simulate,
    simulate_masks,
)
from uticket_jax.hardware.tables import BACKENDS, LayerTables, count_tables, network_tables

# The spike-driven names -> their module, imported on first use: they need the models' convolution
# (and so Flax), which the weight-only launchers (`rebalance.py`, `sweep.py` without a trace) do
# not, and would otherwise pay for at start-up.
_LAZY = {
    "SpikeWork": "spike_work",
    "layer_spike_work": "spike_work",
    "check_spikes": "spikes",
    "simulate_spikes": "spikes",
    "Priced": "survival",
    "cut_rows": "survival",
    "cuts": "survival",
    "price_ticket": "survival",
}


_LAZY_MODULES = ("spike_plans", "spike_work", "spikes", "survival")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _LAZY_MODULES:  # `hardware.survival.FIGURES` without importing it first
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))


__all__ = [
    "Priced",
    "cut_rows",
    "cuts",
    "price_ticket",
    "BACKENDS",
    "DEFAULTS",
    "DEFAULT_ENERGY_MODEL",
    "ENERGY_MODELS",
    "ENERGY_TERMS",
    "Counts",
    "SpikeWork",
    "check_spikes",
    "layer_spike_work",
    "simulate_spikes",
    "EnergyModel",
    "config_dicts",
    "energy_terms",
    "get_energy_model",
    "make_constants",
    "offchip_energy",
    "onchip_energy",
    "register_energy_model",
    "MAPPINGS",
    "Figures",
    "HardwareConfig",
    "LayerSpec",
    "LayerTables",
    "SweepResult",
    "config_grid",
    "config_rows",
    "count_tables",
    "check_same_layers",
    "specs_from_shapes",
    "figures_dict",
    "flat_row",
    "group_loads",
    "load_spike_rates",
    "make_config",
    "network_tables",
    "num_configs",
    "ratios",
    "simulate",
    "simulate_masks",
    "spike_rate_vector",
    "specs_from_layers",
    "stack_configs",
    "sweep_networks",
    "sweep_rows",
    "take_configs",
    "validate_config",
]
