"""The simulator's outputs: `Figures` of layers or a network, and a sweep's `SweepResult`."""

from __future__ import annotations

from typing import Any, NamedTuple

from uticket_jax.hardware import energy as energy_lib


class Figures(NamedTuple):
    """Simulator outputs of a layer `[N, L]` or a network `[N]`; load units and SI units."""

    utilization: Any
    utilization_normalized: Any
    latency: Any  # load units: sum over groups of the max PE load
    wasted: Any  # load units
    dynamic: Any  # non-zero weights
    cycles: Any
    seconds: Any
    wasted_pe_cycles: Any
    counts: energy_lib.Counts  # the energy model's inputs
    energy_terms: dict[str, Any]  # J, {term: energy} of the energy model
    energy_total: Any  # J


class SweepResult(NamedTuple):
    """Per-layer figures (`[N, L]` arrays) and network figures (`[N]` arrays) of N configs."""

    layers: Figures
    network: Figures
    energy_model: str = "horowitz45"
