"""JSON and CSV rows of simulator results: figures as dicts, ratios, sweeps over networks.

A figures dict `F` (network, layer or ratio) holds the load-unit figures, `cycles`, `seconds`,
`wasted_pe_cycles`, the energy model's `counts` ({count: value}), `energy_terms` ({term: J}),
`energy` (the same dict: the key earlier rows used) and `energy_total` (the terms' sum). A sweep
row is `{"masks", "energy_model", "config", "network": F, "layers": [...], "vs_baseline": F}`;
its `config` holds the hardware fields and the energy model's constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uticket_jax.hardware import energy as energy_lib
from uticket_jax.hardware.config import HardwareConfig, config_rows, num_configs
from uticket_jax.hardware.figures import Figures, SweepResult
from uticket_jax.hardware.layers import LayerSpec
from uticket_jax.hardware.simulator import simulate_masks
from uticket_jax.hardware.tables import check_backend
from uticket_jax.workload.metrics import float_or_none

_COUNTS = ("latency", "wasted", "dynamic")
_SCALARS = tuple(f for f in Figures._fields if f not in ("counts", "energy_terms"))


def _fig_dict(cols: Figures, *index: int, counts: bool = True) -> dict[str, Any]:
    """One entry of `Figures` columns (nested lists or arrays) as a JSON-ready `F`.

    `counts`: the load-unit counts are exact integers, or spike-driven averages (False: ratios).
    """

    def at(v):
        for i in index:
            v = v[i]
        return v

    d: dict[str, Any] = {}
    for k in _SCALARS:
        v = at(getattr(cols, k))
        d[k] = _count(v) if counts and k in _COUNTS else float_or_none(v)  # NaN: no work
    energy_total = d.pop("energy_total")
    d["counts"] = {k: float_or_none(at(v)) for k, v in cols.counts._asdict().items()}
    terms = {t: float_or_none(at(v)) for t, v in cols.energy_terms.items()}
    d["energy_terms"] = terms
    d["energy"] = dict(terms)
    d["energy_total"] = energy_total
    return d


def _count(v) -> int | float:
    """A load-unit figure: an int when integral (weight-only), else a float (the spike-driven
    per position-step averages of `hardware.spikes`)."""
    f = float(v)
    return int(f) if f.is_integer() else f


def map_figures(fn, *figs: Figures) -> Figures:
    """`fn` applied leaf by leaf to one or more `Figures` (keeps the terms' order).

    Args:
      fn: a function of one leaf from each of `figs`.
      *figs: figures of the same structure.
    Returns:
      The mapped `Figures`.
    """
    head = [fn(*xs) for xs in zip(*[f[:-3] for f in figs], strict=True)]
    counts = energy_lib.Counts(*(fn(*xs) for xs in zip(*[f.counts for f in figs], strict=True)))
    terms = {t: fn(*(f.energy_terms[t] for f in figs)) for t in figs[0].energy_terms}
    return Figures(*head, counts, terms, fn(*(f.energy_total for f in figs)))


def _columns(fig: Figures) -> Figures:
    return map_figures(lambda v: np.asarray(v, np.float64).tolist(), fig)


def figures_dict(
    fig: Figures, i: int, j: int | None = None, *, energy_model: str | None = None
) -> dict[str, Any]:
    """Config `i` (and layer `j`) of `fig` as a JSON-ready `F` (energy by term).

    Args:
      fig: network `[N]` or layer `[N, L]` figures.
      i: config index.
      j: layer index (layer figures only).
      energy_model: when given, added as `"energy_model"`.
    Returns:
      The dict `F` (see the module doc).
    """
    cols = map_figures(lambda v: np.asarray(v)[i] if j is None else np.asarray(v)[i, j], fig)
    d = _fig_dict(cols)
    return {"energy_model": energy_model, **d} if energy_model is not None else d


def ratios(result: SweepResult, baseline: SweepResult) -> Figures:
    """Network figures of `result` divided by those of `baseline`, config by config (NaN on 0/0).

    Args:
      result: the figures compared.
      baseline: the reference, same configs and energy model.
    Returns:
      `Figures` of float64 ratios `[N]`.
    """
    if result.energy_model != baseline.energy_model:
        raise ValueError(
            f"baseline: energy model {baseline.energy_model} differs from {result.energy_model}"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        return map_figures(
            lambda a, b: np.asarray(a, np.float64) / np.asarray(b, np.float64),
            result.network,
            baseline.network,
        )


def config_dicts(
    configs: HardwareConfig, energy_model: str = "horowitz45", energy_constants: Any = None
) -> list[dict[str, Any]]:
    """The `config` entry of each row: hardware fields and the energy model's constants.

    Args:
      configs: the batch `[N]`.
      energy_model: name or model.
      energy_constants: its constants as given to `simulate` (None: the model's defaults).
    Returns:
      N dicts: the config's fields (`config_rows`), then the model's constants.
    """
    model = energy_lib.get_energy_model(energy_model)
    rows = config_rows(configs)
    consts = energy_constants if energy_constants is not None else model.defaults
    n = num_configs(configs)
    cols = {
        k: np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (n,)).tolist()
        for k, v in consts._asdict().items()
    }
    out = []
    for i, row in enumerate(rows):
        row.update({k: float(f"{v[i]:.7g}") for k, v in cols.items()})
        out.append(row)
    return out


def sweep_rows(
    result: SweepResult,
    configs: HardwareConfig,
    specs: Sequence[LayerSpec],
    label: str,
    baseline: SweepResult | None = None,
    baseline_label: str | None = None,
    layers: bool = True,
    energy_constants: Any = None,
) -> list[dict[str, Any]]:
    """JSON rows `{"masks", "energy_model", "config", "network": F, "layers": [...]}`.

    Args:
      result: the simulator's figures of `configs`.
      configs: the configs `[N]`.
      specs: the layer descriptions.
      label: the masks' label.
      baseline: figures of the same configs on other masks; each row then also holds
        `"vs_baseline": {"masks": baseline_label, ...ratios}`.
      baseline_label: the baseline's label.
      layers: include the per-layer list (False keeps large sweeps small).
      energy_constants: the constants given to `simulate` (for the rows' `config`).
    Returns:
      N rows.
    """
    cfg_rows = config_dicts(configs, result.energy_model, energy_constants)
    net = _columns(result.network)
    lay = _columns(result.layers) if layers else None
    rat = _columns(ratios(result, baseline)) if baseline is not None else None
    rows = []
    for i, cfg in enumerate(cfg_rows):
        row: dict[str, Any] = {
            "masks": label,
            "energy_model": result.energy_model,
            "config": cfg,
            "network": _fig_dict(net, i),
        }
        if lay is not None:
            row["layers"] = [
                {"name": s.name, "analysed": s.analysed, **_fig_dict(lay, i, j)}
                for j, s in enumerate(specs)
            ]
        if rat is not None:
            row["vs_baseline"] = {"masks": baseline_label, **_fig_dict(rat, i, counts=False)}
        rows.append(row)
    return rows


def sweep_networks(
    networks: Mapping[str, Mapping[str, np.ndarray]],
    specs: Sequence[LayerSpec],
    configs: HardwareConfig,
    *,
    spike_rates: np.ndarray | Mapping[str, float] | None = None,
    baseline: str | None = None,
    layers: bool = True,
    energy_model: str | energy_lib.EnergyModel = "horowitz45",
    energy_constants: Any = None,
    backend: str = "jax",
) -> list[dict[str, Any]]:
    """Evaluates every config on every network (masks of the same layers) and returns JSON rows.

    Args:
      networks: `{label: {path: hwio mask}}`, e.g. a u-Ticket and an LTH ticket of one network.
      specs: the shared layer descriptions.
      configs: batch of configs `[N]`.
      spike_rates: per-layer input spike rates for activity-aware configs.
      baseline: label of the network the others are compared with (`vs_baseline` ratios).
      layers: include per-layer figures in the rows.
      energy_model: name in `energy.ENERGY_MODELS` or an `EnergyModel`.
      energy_constants: its constants (scalar or `[N]` leaves); None: the model's defaults.
      backend: the simulator's, "jax" (compiled; sharded over every device) or "numpy" (on the
        host, nothing compiled), see `simulate`.
    Returns:
      `len(networks) * N` rows (network-major), see `sweep_rows`.
    """
    check_backend(backend)
    if baseline is not None and baseline not in networks:
        raise ValueError(f"baseline: {baseline!r} is not one of {list(networks)}")
    kw = {"energy_model": energy_model, "energy_constants": energy_constants, "backend": backend}
    results = {
        k: simulate_masks(m, specs, configs, spike_rates=spike_rates, **kw)
        for k, m in networks.items()
    }
    rows = []
    for label, res in results.items():
        base = results[baseline] if baseline is not None and label != baseline else None
        rows += sweep_rows(
            res, configs, specs, label, base, baseline, layers, energy_constants=energy_constants
        )
    return rows


def flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep row without its layers as one flat dict (CSV).

    Args:
      row: a `sweep_rows` row.
    Returns:
      `masks`, `energy_model`, the config, the network figures (`energy_TERM`, `counts_COUNT`)
      and the ratios (`vs_baseline_...`).
    """
    out: dict[str, Any] = {"masks": row["masks"]}
    if "energy_model" in row:
        out["energy_model"] = row["energy_model"]
    out.update(row["config"])
    for section in ("network", "vs_baseline"):
        if section not in row:
            continue
        prefix = "" if section == "network" else "vs_baseline_"
        for k, v in row[section].items():
            if k == "masks":
                out["baseline"] = v
            elif k == "energy_terms":
                out.update({f"{prefix}energy_{t}": e for t, e in v.items()})
            elif k == "counts":
                out.update({f"{prefix}counts_{c}": e for c, e in v.items()})
            elif k != "energy":  # the same dict as energy_terms
                out[f"{prefix}{k}"] = v
    return out
