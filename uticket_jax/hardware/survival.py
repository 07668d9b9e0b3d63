"""How much of a ticket's hardware cut survives when the PEs skip zero spikes.

A u-Ticket ticket is balanced by weight counts; an event-driven array's PEs only work on the
weights whose input spiked (`hardware.simulate_spikes`), so the balance, and the latency and energy
it saves over a baseline ticket (LTH), may not survive the spikes. For two tickets of one network,
each with its own recorded inputs, and a batch of hardware configs, this module prices both
weight-only (`simulate_masks`, every input spiking) and spike-driven, and gives per config and
layer::

  cut       = 1 - figure(ticket) / figure(baseline)    (latency: cycles; energy: energy_total)
  survives  = spike-driven cut / weight-only cut       (NaN where the weight-only cut is 0)

beside both tickets' weight-only and spike-driven utilizations. Each ticket is priced with its own
spikes (the two networks fire differently), so a spike-driven cut mixes the balance with the
difference in firing; the weight-only cut is the paper's figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from uticket_jax.hardware.config import HardwareConfig, config_rows
from uticket_jax.hardware.energy import DEFAULT_ENERGY_MODEL
from uticket_jax.hardware.figures import Figures, SweepResult
from uticket_jax.hardware.layers import LayerSpec
from uticket_jax.hardware.simulator import simulate_masks
from uticket_jax.hardware.spikes import simulate_spikes

FIGURES = (("latency", "cycles"), ("energy", "energy_total"))  # (name, Figures field)


class Priced(NamedTuple):
    """One ticket priced two ways over the same configs."""

    weights: SweepResult  # weight-only (every input spiking)
    spikes: SweepResult  # spike-driven (its recorded inputs)


def price_ticket(
    masks: Mapping[str, np.ndarray],
    trace: Mapping[str, Any],
    specs: Sequence[LayerSpec],
    configs: HardwareConfig,
    *,
    energy_model: Any = DEFAULT_ENERGY_MODEL,
    energy_constants: Any = None,
) -> Priced:
    """A ticket's weight-only and spike-driven figures (numpy backend for the weight-only ones).

    Args:
      masks: `{kernel path: hwio mask}` in network order.
      trace: its analysed layers' recorded inputs (`hardware.check_spikes`' format).
      specs: the layers (`specs_from_layers`), network order.
      configs: a batch of configs; their `timesteps` must equal the trace's `T`.
      energy_model, energy_constants: as for `simulate_masks`.
    Returns:
      `Priced(weights, spikes)`.
    """
    kw = dict(energy_model=energy_model, energy_constants=energy_constants)
    weights = simulate_masks(masks, specs, configs, backend="numpy", **kw)
    spikes = simulate_spikes(masks, trace, specs, configs, **kw)
    return Priced(weights, spikes)


def _cut(ticket: np.ndarray, base: np.ndarray) -> np.ndarray:
    """`1 - ticket / base` in float64 (NaN where the baseline is 0)."""
    t, b = np.asarray(ticket, np.float64), np.asarray(base, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, 1.0 - t / np.where(b > 0, b, 1.0), np.nan)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def cuts(ticket: Priced, baseline: Priced, part: str = "network") -> dict[str, np.ndarray]:
    """The cuts of `ticket` over `baseline` and how much of each survives the spikes.

    Args:
      ticket, baseline: from `price_ticket`, over the same configs and layers.
      part: "network" (`[N]` arrays) or "layers" (`[N, L]`).
    Returns:
      `{f"{name}_cut_weights", f"{name}_cut_spikes", f"{name}_survives"}` for latency and energy,
      and the four utilizations `utilization_{weights,spikes}` (ticket) and
      `baseline_utilization_{weights,spikes}`.
    """
    if part not in ("network", "layers"):
        raise ValueError(f"part: expected 'network' or 'layers', got {part!r}")
    pick = lambda r: getattr(r, part)  # noqa: E731
    out: dict[str, np.ndarray] = {}
    for name, field in FIGURES:
        w = _cut(getattr(pick(ticket.weights), field), getattr(pick(baseline.weights), field))
        s = _cut(getattr(pick(ticket.spikes), field), getattr(pick(baseline.spikes), field))
        out |= {f"{name}_cut_weights": w, f"{name}_cut_spikes": s}
        out[f"{name}_survives"] = _ratio(s, w)
    for who, priced in (("", ticket), ("baseline_", baseline)):
        for how in ("weights", "spikes"):
            fig: Figures = pick(getattr(priced, how))
            out[f"{who}utilization_{how}"] = np.asarray(fig.utilization, np.float64)
    return out


def _number(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def cut_rows(
    ticket: Priced, baseline: Priced, configs: HardwareConfig, specs: Sequence[LayerSpec]
) -> list[dict[str, Any]]:
    """JSON-ready rows: per config the network's `cuts`, then one row per analysed layer.

    Args:
      ticket, baseline: from `price_ticket` over `configs` and `specs`.
      configs: the configs (their fields go in each row's `config`).
      specs: the layers (their names go in the layer rows).
    Returns:
      `[{"config": {...}, "layer": "network" | path, **cuts}, ...]`, config-major.
    """
    net = cuts(ticket, baseline, "network")
    lay = cuts(ticket, baseline, "layers")
    rows = []
    for i, cfg in enumerate(config_rows(configs)):
        rows.append(
            {"config": cfg, "layer": "network"} | {k: _number(v[i]) for k, v in net.items()}
        )
        for j, s in enumerate(specs):
            if s.analysed:
                rows.append(
                    {"config": cfg, "layer": s.name} | {k: _number(v[i, j]) for k, v in lay.items()}
                )
    return rows
