"""Analytical PE-array simulator: masks -> latency, utilization and energy for many configs at once.

Model (lock-step, weight-stationary array; Yin et al., IEEE TETCI 2024, Sec. on hardware):
  A layer's non-zero weights are spread over groups of `n_pe` PEs by a mapping (the workload
  model of `uticket_jax.workload`). Every non-zero weight is applied at each of the layer's `P`
  output positions and `T` time steps, so with per-group loads `load[g, j]`:
    cycles            = sum_g max_j load[g, j] * P * T
    wasted PE-cycles  = sum_g sum_j (max_j load[g, j] - load[g, j]) * P * T
    accumulates       = nnz * P * T * (input spike rate if activity-aware else 1)
  Energy (J) = e_acc * accumulates + e_fetch * nnz + e_idle * wasted PE-cycles
               + leak_w * n_pe * cycles / clock.
  Weights are fetched ONCE per layer: in a weight-stationary array a PE loads its non-zeros into
  its register file and keeps them while all positions and time steps stream past (that is what
  makes the latency formula above hold), so fetches do not scale with T or P.
  Utilization, normalized utilization, latency/wasted/dynamic in load units: exactly the figures
  of `workload.metrics` (same code). Network figures cover the analysed layers only.

Mappings with a traced `n = n_pe`: the simulator knows no mapping by name. A config's mapping id
is its position in the one registry (`workload.MAPPINGS`), and everything mapping-specific comes
from that `PEMapping` object: its `count_table` (per layer, `tables.py`), its `group_loads`
(per-group sum and max for a traced `n` over a static number of groups, with a static bound
`n_cap` on `n` when `needs_n_cap`) and its `load_bound` (the host int32 overflow check). See
`workload/mappings.py` for the built-ins' formulas.

Evaluation: the workload part depends on (mapping, n_pe) only, so a sweep evaluates it once per
distinct n_pe (vmapped, traced n) and then every config (vmapped) from a gather of it; the
mapping is dispatched outside jit (one compiled kernel per mapping). With several devices the
config axis is sharded (`NamedSharding(Mesh(devices, ('config',)), P('config'))`, padded to a
multiple of the device count); the small per-distinct-n_pe workload table is replicated.

Precision: load-unit figures (latency, wasted, dynamic) are exact int32 (a host check refuses
configs whose counts could overflow); cycles, seconds and energies are float32 products and sums of
those exact counts, relative error ~1e-6 (float32 rounding of a handful of operations).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uticket_jax.hardware.config import (
    MAPPINGS,
    HardwareConfig,
    config_rows,
    num_configs,
    take_configs,
    validate_config,
)
from uticket_jax.hardware.layers import LayerSpec, spike_rate_vector
from uticket_jax.hardware.tables import LayerTables, network_tables
from uticket_jax.workload import mappings as wm
from uticket_jax.workload.metrics import Metrics, float_or_none, layer_metrics, network_metrics

ENERGY_TERMS = ("accumulate", "weight_fetch", "idle", "leakage")
_PJ = 1e-12
_INT32_MAX = 2**31 - 1


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
    energy_accumulate: Any  # J
    energy_weight_fetch: Any  # J
    energy_idle: Any  # J
    energy_leakage: Any  # J
    energy_total: Any  # J


class SweepResult(NamedTuple):
    """Per-layer figures (`[N, L]` arrays) and network figures (`[N]` arrays) of N configs."""

    layers: Figures
    network: Figures


def _group_loads(table, n, mapping: wm.PEMapping, n_cap: int):
    """Per-group `(sum, max)` of one layer for a traced `n`: the mapping's own `group_loads`."""
    return mapping.group_loads(table, n, n_cap)


# Static: mapping (selects the reduction) and n_cap (bounds n where the mapping needs it).
@functools.partial(jax.jit, static_argnames=("mapping", "n_cap"))
def _group_loads_jit(table, n, *, mapping, n_cap):
    return _group_loads(table, n, mapping, n_cap)


def _table_of(tables: Mapping[str, Any], m: wm.PEMapping):
    """The mapping's count table from one layer's `LayerTables`, as int32."""
    if m.name not in tables:
        raise ValueError(
            f"tables: no count table for mapping {m.name!r} (have {', '.join(tables)}); build "
            "them with network_tables(..., mappings=[...])"
        )
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.int32), tables[m.name])


def _n_cap(m: wm.PEMapping, n_max: int) -> int:
    """Static bound on n: a power of two >= n_max (>= 16) if the mapping uses one, else 0."""
    return max(16, _pow2(n_max)) if m.needs_n_cap else 0  # few distinct caps, few compilations


def group_loads(table: LayerTables, n_pe, mapping: str, n_cap: int | None = None):
    """Per-group `(sum, max)` PE loads of one layer for a traced `n_pe` (the mapping's kernel).

    Args:
      table: the layer's `LayerTables` (`count_tables`), holding a table for `mapping`.
      n_pe: PEs per group (int or traced scalar >= 1).
      mapping: a registered mapping name, e.g. "output_channel" or "input_split".
      n_cap: static upper bound of `n_pe` for mappings with `needs_n_cap` (default: the
        simulator's power of two >= `n_pe`; required when `n_pe` is traced).
    Returns:
      `(group_sum [B], group_max [B])` int32, `B` the mapping's static bound on the groups
      (`c_out` for the built-ins); groups past the real ones are 0. Equal, on the real groups,
      to `workload.mappings.pe_loads(mask, n_pe, mapping)` summed / maxed over PEs.
    """
    m = wm.get_mapping(mapping)
    if n_cap is None and m.needs_n_cap:
        try:
            n_cap = _n_cap(m, int(n_pe))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
            raise ValueError(f"n_cap: needed with a traced n_pe for mapping {m.name!r}") from None
    cap = int(n_cap) if m.needs_n_cap else 0
    return _group_loads_jit(_table_of(table, m), jnp.asarray(n_pe, jnp.int32), mapping=m, n_cap=cap)


def _workload(tables, n, mapping: wm.PEMapping, n_cap: int, analysed):
    """Per-layer `Metrics` (stacked `[L]`) and the network `Metrics` for one traced `n`.

    `analysed` is a traced `[L]` bool mask: a layer left out enters `network_metrics` as a layer
    without work (NaN utilizations, zero counts), which it skips and which adds nothing.
    """
    per_layer = [layer_metrics(*_group_loads(t, n, mapping, n_cap), n) for t in tables]
    nan = jnp.float32(jnp.nan)
    zero = jnp.int32(0)
    masked = [
        Metrics(
            *(
                jnp.where(analysed[j], x, e)
                for x, e in zip(m, (nan, nan, zero, zero, zero), strict=True)
            )
        )
        for j, m in enumerate(per_layer)
    ]
    net = network_metrics(masked)
    stacked = Metrics(
        *(jnp.stack([jnp.asarray(x) for x in col]) for col in zip(*per_layer, strict=True))
    )
    return stacked, net


def _figures(wl: Metrics, net: Metrics, cfg: HardwareConfig, pixels, rates, analysed):
    """Cycles, seconds and energy of one config from its workload (`[L]` and network)."""
    scale = pixels * cfg.timesteps.astype(jnp.float32)  # [L] positions x steps
    latency = wl.latency.astype(jnp.float32)
    wasted = wl.wasted.astype(jnp.float32)
    dynamic = wl.dynamic.astype(jnp.float32)
    cycles = latency * scale
    seconds = cycles / cfg.clock_hz
    wasted_pe_cycles = wasted * scale
    rate = jnp.where(cfg.activity_aware, rates, 1.0)
    e_acc = cfg.e_acc_pj * _PJ * (dynamic * scale * rate)
    e_fetch = cfg.e_fetch_pj * _PJ * dynamic
    e_idle = cfg.e_idle_pj * _PJ * wasted_pe_cycles
    e_leak = cfg.leak_w * cfg.n_pe.astype(jnp.float32) * seconds
    total = e_acc + e_fetch + e_idle + e_leak
    layer = Figures(*wl, cycles, seconds, wasted_pe_cycles, e_acc, e_fetch, e_idle, e_leak, total)
    sums = [jnp.sum(jnp.where(analysed, x, 0.0)) for x in layer[5:]]
    return layer, Figures(*net, *sums)


# Static: mapping (the `PEMapping`, selects the kernel) and n_cap (0, or a power of two >= every
# n of the call for mappings with `needs_n_cap`). `analysed` is a traced [L] bool mask.
@functools.partial(jax.jit, static_argnames=("mapping", "n_cap"))
def _simulate_mapping(tables, pixels, rates, analysed, uniq_n, inv, configs, *, mapping, n_cap):
    """Invariant: every config's figures equal the loop oracle of that config alone."""
    wl, net = jax.vmap(lambda n: _workload(tables, n, mapping, n_cap, analysed))(uniq_n)  # [U, ...]

    def one(k, cfg):
        pick = lambda x: x[k]
        return _figures(
            jax.tree.map(pick, wl), jax.tree.map(pick, net), cfg, pixels, rates, analysed
        )

    return jax.vmap(one)(inv, configs)


def _pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def _check_int32(specs: Sequence[LayerSpec], tables: Sequence[Any], n_max: int, m: wm.PEMapping):
    """Refuses n_pe so large that the int32 wasted-load counts could overflow (`load_bound`)."""
    bound = sum(
        int(m.load_bound(spec.kernel_shape, t, n_max))
        for spec, t in zip(specs, tables, strict=True)
    )
    if bound > _INT32_MAX:
        raise ValueError(
            f"n_pe: up to {n_max} PEs with mapping {m.name} could overflow the exact int32 "
            "load counts of this network; use fewer PEs"
        )


def simulate(
    tables: Sequence[LayerTables],
    specs: Sequence[LayerSpec],
    configs: HardwareConfig,
    *,
    spike_rates: np.ndarray | Mapping[str, float] | None = None,
    dedupe: bool = True,
    devices: Sequence[jax.Device] | None = None,
) -> SweepResult:
    """Evaluates a batch of hardware configs on one network.

    Args:
      tables: per-layer count tables (`tables.network_tables`), in the order of `specs`, holding
        a table for every mapping of `configs`.
      specs: layer descriptions (`tables.specs_from_shapes` or `tables.specs_from_layers`).
      configs: a batch `HardwareConfig` `[N]` (a scalar config counts as N = 1).
      spike_rates: per-layer input spike rates, `[L]` or `{path: rate}`; used by configs with
        `activity_aware`. None: rate 1.
      dedupe: evaluate the workload once per distinct `n_pe` (True) or once per config (False);
        the results are identical, dedupe is faster for sweeps over energy constants.
      devices: devices to shard the config axis over (default: all of `jax.devices()`; one
        device runs unsharded).
    Returns:
      `SweepResult` of numpy arrays, layers `[N, L]`, network `[N]`, in the order of `configs`.
    """
    if len(tables) != len(specs) or not specs:
        raise ValueError(f"tables: need one table per layer spec, got {len(tables)}/{len(specs)}")
    validate_config(configs)
    configs = HardwareConfig(*(np.atleast_1d(np.asarray(f)) for f in configs))
    if configs.n_pe.ndim != 1:
        raise ValueError(f"configs: fields must be 1-D batches, got shape {configs.n_pe.shape}")
    if spike_rates is None or isinstance(spike_rates, Mapping):
        rates = spike_rate_vector(spike_rates, specs)
    else:
        rates = np.asarray(spike_rates, np.float32)
        if rates.shape != (len(specs),) or not ((rates >= 0) & (rates <= 1)).all():
            raise ValueError(f"spike_rates: need {len(specs)} rates in [0, 1], got {rates}")
    devices = list(jax.devices() if devices is None else devices)
    pixels = np.asarray([s.pixels for s in specs], np.float32)
    analysed = np.asarray([bool(s.analysed) for s in specs])
    n_total = num_configs(configs)
    parts: list[tuple[np.ndarray, SweepResult]] = []
    for mid in np.unique(configs.mapping):
        m = wm.get_mapping(MAPPINGS[int(mid)])
        mtables = [_table_of(t, m) for t in tables]
        idx = np.flatnonzero(configs.mapping == mid)
        sub = take_configs(configs, idx)
        n_max = int(sub.n_pe.max())
        _check_int32(specs, mtables, n_max, m)
        if dedupe:
            uniq, inv = np.unique(sub.n_pe, return_inverse=True)
        else:
            uniq, inv = sub.n_pe, np.arange(len(idx))
        # Pad to a power of two (>= 8) so sweeps of similar size share one compilation.
        uniq = np.pad(uniq, (0, max(8, _pow2(len(uniq))) - len(uniq)), mode="edge")
        out = _run(mtables, pixels, rates, uniq, inv, sub, m, _n_cap(m, n_max), analysed, devices)
        parts.append((idx, out))
    order = np.empty(n_total, np.int64)
    order[np.concatenate([i for i, _ in parts])] = np.arange(n_total)
    return jax.tree.map(lambda *xs: np.concatenate(xs)[order], *[r for _, r in parts])


def _run(tables, pixels, rates, uniq, inv, configs, mapping, n_cap, analysed, devices):
    """One compiled call; shards the config axis when several devices are given.

    The config axis is padded (repeating the last config) to a power of two >= 8, and to a
    multiple of the device count, so sweeps of similar size reuse one compilation.
    """
    n = num_configs(configs)
    d = len(devices)
    size = max(8, _pow2(n))
    size += (-size) % d
    inv = np.asarray(inv, np.int32)
    uniq = np.asarray(uniq, np.int32)
    configs = HardwareConfig(*(np.concatenate([f, np.repeat(f[-1:], size - n)]) for f in configs))
    inv = np.concatenate([inv, np.repeat(inv[-1:], size - n)])
    args = (tables, pixels, rates, analysed, uniq)
    if d > 1:
        mesh = Mesh(np.asarray(devices), ("config",))
        split = NamedSharding(mesh, PartitionSpec("config"))
        repl = NamedSharding(mesh, PartitionSpec())
        args = jax.device_put(args, repl)
        inv, configs = jax.device_put((inv, configs), split)
    out = _simulate_mapping(*args, inv, configs, mapping=mapping, n_cap=n_cap)
    return SweepResult(*jax.tree.map(lambda x: _fetch(x)[:n], out))


def _fetch(x: jax.Array) -> np.ndarray:
    """A result on the host; a config axis sharded over other processes' devices is gathered
    (every process then holds every config's figures)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # multi-process runs only

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def simulate_masks(
    masks: Mapping[str, np.ndarray],
    specs: Sequence[LayerSpec],
    configs: HardwareConfig,
    **kwargs: Any,
) -> SweepResult:
    """`simulate` from masks: builds the count tables of `specs`' layers, then evaluates.

    Only the tables of the mappings in `configs` are built.
    """
    validate_config(configs)
    ids = np.unique(np.atleast_1d(np.asarray(configs.mapping)))
    names = [MAPPINGS[int(i)] for i in ids]
    return simulate(network_tables(masks, specs, names), specs, configs, **kwargs)


_COUNTS = ("latency", "wasted", "dynamic")


def _fig_dict(cols: Mapping[str, Any], *index: int, counts: bool = True) -> dict[str, Any]:
    """One entry of pre-listed `Figures` columns as `F` (energy grouped by term).

    `counts`: the load-unit counts are exact integers (False for ratios).
    """

    def at(k):
        v = cols[k]
        for i in index:
            v = v[i]
        return int(v) if counts and k in _COUNTS else float_or_none(v)  # NaN: no work

    d = {k: at(k) for k in cols if not k.startswith("energy_")}
    d["energy"] = {t: at(f"energy_{t}") for t in ENERGY_TERMS}
    d["energy_total"] = at("energy_total")
    return d


def _columns(fig: Figures) -> dict[str, Any]:
    return {k: np.asarray(v, np.float64).tolist() for k, v in fig._asdict().items()}


def figures_dict(fig: Figures, i: int, j: int | None = None) -> dict[str, Any]:
    """Config `i` (and layer `j`) of `fig` as JSON-ready `F` (energy grouped by term)."""
    cols = {
        k: np.asarray(v)[i] if j is None else np.asarray(v)[i, j] for k, v in fig._asdict().items()
    }
    return _fig_dict(cols)


def ratios(result: SweepResult, baseline: SweepResult) -> Figures:
    """Network figures of `result` divided by those of `baseline`, config by config (NaN on 0/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return Figures(
            *(
                np.asarray(a, np.float64) / np.asarray(b, np.float64)
                for a, b in zip(result.network, baseline.network, strict=True)
            )
        )


def sweep_rows(
    result: SweepResult,
    configs: HardwareConfig,
    specs: Sequence[LayerSpec],
    label: str,
    baseline: SweepResult | None = None,
    baseline_label: str | None = None,
    layers: bool = True,
) -> list[dict[str, Any]]:
    """JSON rows `{"masks", "config", "network": F, "layers": [{"name", "analysed", ...F}]}`.

    With `baseline`, each row also holds `"vs_baseline": {"masks": baseline_label, ...ratios}`
    (this network's figure over the baseline's for the same config). `layers=False` leaves the
    per-layer list out (large sweeps).
    """
    cfg_rows = config_rows(configs)
    net = _columns(result.network)
    lay = _columns(result.layers) if layers else None
    rat = _columns(ratios(result, baseline)) if baseline is not None else None
    rows = []
    for i, cfg in enumerate(cfg_rows):
        row: dict[str, Any] = {"masks": label, "config": cfg, "network": _fig_dict(net, i)}
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
) -> list[dict[str, Any]]:
    """Evaluates every config on every network (masks of the same layers) and returns JSON rows.

    Args:
      networks: `{label: {path: hwio mask}}`, e.g. a u-Ticket and an LTH ticket of one network.
      specs: the shared layer descriptions.
      configs: batch of configs `[N]`.
      spike_rates: per-layer input spike rates for activity-aware configs.
      baseline: label of the network the others are compared with (`vs_baseline` ratios).
      layers: include per-layer figures in the rows.
    Returns:
      `len(networks) * N` rows (network-major), see `sweep_rows`.
    """
    if baseline is not None and baseline not in networks:
        raise ValueError(f"baseline: {baseline!r} is not one of {list(networks)}")
    results = {
        k: simulate_masks(m, specs, configs, spike_rates=spike_rates) for k, m in networks.items()
    }
    rows = []
    for label, res in results.items():
        base = results[baseline] if baseline is not None and label != baseline else None
        rows += sweep_rows(res, configs, specs, label, base, baseline, layers=layers)
    return rows


def flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep row without its layers as one flat dict (CSV): config, network and ratio columns."""
    out: dict[str, Any] = {"masks": row["masks"], **row["config"]}
    for section in ("network", "vs_baseline"):
        if section not in row:
            continue
        prefix = "" if section == "network" else "vs_baseline_"
        for k, v in row[section].items():
            if k == "masks":
                out["baseline"] = v
            elif k == "energy":
                out.update({f"{prefix}energy_{t}": e for t, e in v.items()})
            else:
                out[f"{prefix}{k}"] = v
    return out
