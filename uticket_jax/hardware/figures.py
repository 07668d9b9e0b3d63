"""The simulator's outputs: `Figures` of layers or a network, and a sweep's `SweepResult`."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

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
    # J, the terms on the chip and off it (the model's `offchip_terms`: DRAM); filled in by
    # the simulator outside its kernels, None in a kernel's raw output.
    energy_onchip: Any = None
    energy_dram: Any = None


def with_energy_split(fig: Figures, model: energy_lib.EnergyModel) -> Figures:
    """`fig` with its terms in the model's order and its on-chip and DRAM energies (the sums of
    the model's on- and off-chip terms; 0 J, same shape, for a model without off-chip terms)."""
    terms = {t: fig.energy_terms[t] for t in model.terms}
    zero = np.zeros_like(fig.energy_total)
    return fig._replace(
        energy_terms=terms,
        energy_onchip=zero + energy_lib.onchip_energy(model, terms),
        energy_dram=zero + energy_lib.offchip_energy(model, terms),
    )


class SweepResult(NamedTuple):
    """Per-layer figures (`[N, L]` arrays) and network figures (`[N]` arrays) of N configs."""

    layers: Figures
    network: Figures
    energy_model: str = energy_lib.DEFAULT_ENERGY_MODEL
