"""Analytical PE-array simulator: masks -> latency, utilization and energy for many configs at once.

Model (lock-step, weight-stationary array; Yin et al., IEEE TETCI 2024, Sec. on hardware):
  A layer's non-zero weights are spread over groups of `n_pe` PEs by a mapping (the workload
  model of `uticket_jax.workload`). Every non-zero weight is applied at each of the layer's `P`
  output positions and `T` time steps, so with per-group loads `load[g, j]`:
    cycles            = sum_g max_j load[g, j] * P * T
    wasted PE-cycles  = sum_g sum_j (max_j load[g, j] - load[g, j]) * P * T
    accumulates       = nnz * P * T * (input spike rate if activity-aware else 1)
  These and the other counts of `hardware.energy.Counts` (LIF updates, busy/idle PE-cycles,
  buffer and DRAM accesses) go to an energy model (`hardware.energy`, chosen by name), which
  returns the energy by term; the default `horowitz45` is
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

Backends (`simulate(..., backend=)`): "jax" (default) is the compiled path above; "numpy" runs
the same formulas on the host with numpy and compiles nothing (one-shot sweeps, where compiling
the ~20 programs of a sweep costs seconds more than evaluating it): per-n group loads from the
mappings' `host_group_loads` (a mapping without one falls back to its JAX `group_loads`), then
`workload.metrics` with `xp=np`, `_counts` and the energy model on numpy arrays, every config at
once. The numpy backend runs on the host only: `devices` must be None (shard, or gather across
processes, with the jax backend). Its results: load-unit figures equal exactly; cycles, seconds,
wasted PE-cycles, the counts and the energy terms that are single products are bit-identical (the
sums over layers run left to right, XLA's order for up to 32 layers); the utilizations (means
over a layer's groups, whose float32 sums XLA splits differently beyond 32 groups), energy_total
and terms that add products (XLA fuses them into multiply-adds) may differ in the last bits
(relative < 3e-7 over the VGG16 sweep of n_pe 1..64, both mappings, both energy models).

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

from uticket_jax import checks
from uticket_jax.hardware import energy as energy_lib
from uticket_jax.hardware.config import (
    MAPPINGS,
    HardwareConfig,
    num_configs,
    take_configs,
    validate_config,
)
from uticket_jax.hardware.layers import LayerSpec, spike_rate_vector
from uticket_jax.hardware.tables import LayerTables, check_backend, network_tables
from uticket_jax.workload import mappings as wm
from uticket_jax.workload.metrics import Metrics, layer_metrics, network_metrics

ENERGY_TERMS = energy_lib.HOROWITZ45.terms  # the default model's terms
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
    counts: energy_lib.Counts  # the energy model's inputs
    energy_terms: dict[str, Any]  # J, {term: energy} of the energy model
    energy_total: Any  # J


class SweepResult(NamedTuple):
    """Per-layer figures (`[N, L]` arrays) and network figures (`[N]` arrays) of N configs."""

    layers: Figures
    network: Figures
    energy_model: str = "horowitz45"


def _group_loads(table, n, mapping: wm.PEMapping, n_cap: int):
    """Per-group `(sum, max)` of one layer for a traced `n`: the mapping's own `group_loads`."""
    return mapping.group_loads(table, n, n_cap)


# Static: mapping (selects the reduction) and n_cap (bounds n where the mapping needs it).
@functools.partial(jax.jit, static_argnames=("mapping", "n_cap"))
def _group_loads_jit(table, n, *, mapping, n_cap):
    return _group_loads(table, n, mapping, n_cap)


def _table_of(tables: Mapping[str, Any], m: wm.PEMapping, xp=jnp):
    """The mapping's count table from one layer's `LayerTables`, as int32 (`xp` arrays)."""
    if m.name not in tables:
        raise ValueError(
            f"tables: no count table for mapping {m.name!r} (have {', '.join(tables)}); build "
            "them with network_tables(..., mappings=[...])"
        )
    return jax.tree.map(lambda x: xp.asarray(x, np.int32), tables[m.name])


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


def _counts(wl, cfg: HardwareConfig, facts, rates, xp=jnp) -> energy_lib.Counts:
    """The energy models' counts of every layer `[..., L]` (weight-stationary, see `energy`).

    Products only (no sums), so the counts computed inside the kernel (`xp=jnp`) and again
    outside it from the kernel's outputs (`_layer_counts`, `xp=np`, and the numpy backend) are the
    same float32 numbers. Seconds are cycles times the reciprocal clock, written out: XLA rewrites
    a division by a broadcast scalar so, and a numpy `/` would differ in the last bit.
    """
    pixels, c_in, c_out = facts
    scale = pixels * cfg.timesteps.astype(xp.float32)  # [L] positions x steps
    dynamic = wl.dynamic.astype(xp.float32)
    cycles = wl.latency.astype(xp.float32) * scale
    rate = xp.where(cfg.activity_aware, rates, xp.float32(1.0))
    busy = dynamic * scale  # one non-zero weight applied per PE-cycle
    lif = c_out * scale
    per_layer = lambda x: xp.broadcast_to(x, cycles.shape)  # noqa: E731
    return energy_lib.Counts(
        n_pe=per_layer(cfg.n_pe.astype(xp.float32)),
        clock_hz=per_layer(cfg.clock_hz),
        cycles=cycles,
        seconds=cycles * (xp.float32(1.0) / cfg.clock_hz),
        accumulates=dynamic * scale * rate,
        weights=dynamic,
        lif_updates=lif,
        pe_cycles_busy=busy,
        pe_cycles_idle=wl.wasted.astype(xp.float32) * scale,
        weight_buffer_reads=dynamic,
        input_buffer_reads=busy,
        output_buffer_writes=lif,
        dram_weight_reads=dynamic,
        dram_input_reads=c_in * scale,
        dram_output_writes=lif,
    )


def _figures(wl: Metrics, net: Metrics, cfg: HardwareConfig, consts, facts, rates, analysed, model):
    """Cycles, seconds, counts and energy by term of one config (`[L]` and network)."""
    counts = _counts(wl, cfg, facts, rates)
    terms = energy_lib.apply_model(model, counts, consts)
    total = energy_lib.total(terms)
    # The counts are not kernel outputs: as outputs they change XLA's fusion of the energy sums
    # (float32 roundings of `energy_total` moved by 1 ulp); `_layer_counts` recomputes them.
    layer = Figures(*wl, counts.cycles, counts.seconds, counts.pe_cycles_idle, None, terms, total)
    add = lambda x: jnp.sum(jnp.where(analysed, x, 0.0))  # noqa: E731
    sums = [add(x) for x in (layer.cycles, layer.seconds, layer.wasted_pe_cycles)]
    net_terms = {t: add(v) for t, v in terms.items()}
    return layer, Figures(*net, *sums, None, net_terms, add(total))


def _layer_counts(layers: Figures, configs: HardwareConfig, facts, rates, analysed):
    """The counts `[N, L]` and network counts `[N]` from the kernel's layer outputs."""
    cfg = HardwareConfig(*(np.asarray(f)[:, None] for f in configs))
    lay = _counts(layers, cfg, facts, rates, xp=np)
    net = energy_lib.Counts(
        **{
            k: np.asarray(getattr(configs, k), np.float32)
            if k in energy_lib.INTENSIVE_COUNTS
            else v[:, analysed].sum(axis=1, dtype=np.float32)
            for k, v in lay._asdict().items()
        }
    )
    return lay, net


# Static: mapping (the `PEMapping`, selects the kernel), n_cap (0, or a power of two >= every n
# of the call for mappings with `needs_n_cap`) and the energy model. `analysed` is a traced [L]
# bool mask.
@functools.partial(jax.jit, static_argnames=("mapping", "n_cap", "model"))
def _simulate_mapping(
    tables, facts, rates, analysed, uniq_n, inv, configs, consts, *, mapping, n_cap, model
):
    """Invariant: every config's figures equal the loop oracle of that config alone."""
    wl, net = jax.vmap(lambda n: _workload(tables, n, mapping, n_cap, analysed))(uniq_n)  # [U, ...]

    def one(k, cfg, const):
        pick = lambda x: x[k]
        return _figures(
            jax.tree.map(pick, wl),
            jax.tree.map(pick, net),
            cfg,
            const,
            facts,
            rates,
            analysed,
            model,
        )

    return jax.vmap(one)(inv, configs, consts)


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
    energy_model: str | energy_lib.EnergyModel = "horowitz45",
    energy_constants: Any = None,
    backend: str = "jax",
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
        device runs unsharded). jax backend only: the numpy backend refuses anything but None.
      energy_model: a name in `energy.ENERGY_MODELS` or an `EnergyModel`.
      energy_constants: the model's constants (its NamedTuple; scalar leaves for every config
        or `[N]` leaves, one per config). None: the model's `from_config` (horowitz45 reads the
        config fields `e_acc_pj`, `e_fetch_pj`, `e_idle_pj`, `leak_w`) or its defaults.
      backend: "jax" (compiled, vmapped, sharded over `devices`) or "numpy" (the same formulas
        on the host, nothing compiled; see the module docstring for how the results compare).
    Returns:
      `SweepResult` of numpy arrays, layers `[N, L]`, network `[N]`, in the order of `configs`.
    """
    check_backend(backend)
    checks.check_specs(specs)
    if backend == "numpy" and devices is not None:
        raise ValueError(
            "devices: the numpy backend runs on the host; leave devices None, or shard with "
            "backend='jax'"
        )
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
    if backend == "jax":
        devices = list(jax.devices() if devices is None else devices)
    model = energy_lib.get_energy_model(energy_model)
    consts = _batch_constants(model, energy_constants, configs)
    facts = _layer_facts(specs)
    analysed = np.asarray([bool(s.analysed) for s in specs])
    n_total = num_configs(configs)
    parts: list[tuple[np.ndarray, SweepResult]] = []
    for mid in np.unique(configs.mapping):
        m = wm.get_mapping(MAPPINGS[int(mid)])
        mtables = [_table_of(t, m, jnp if backend == "jax" else np) for t in tables]
        idx = np.flatnonzero(configs.mapping == mid)
        sub = take_configs(configs, idx)
        sub_consts = type(consts)(*(f[idx] for f in consts))
        n_max = int(sub.n_pe.max())
        _check_int32(specs, mtables, n_max, m)
        if dedupe:
            uniq, inv = np.unique(sub.n_pe, return_inverse=True)
        else:
            uniq, inv = sub.n_pe, np.arange(len(idx))
        batch = (sub, sub_consts)
        if backend == "numpy":
            out = _run_host(mtables, facts, rates, uniq, inv, batch, m, analysed, model)
        else:
            # Pad to a power of two (>= 8) so sweeps of similar size share one compilation.
            uniq = np.pad(uniq, (0, max(8, _pow2(len(uniq))) - len(uniq)), mode="edge")
            n_cap = _n_cap(m, n_max)
            out = _run(mtables, facts, rates, uniq, inv, batch, m, n_cap, analysed, devices, model)
        parts.append((idx, out))
    order = np.empty(n_total, np.int64)
    order[np.concatenate([i for i, _ in parts])] = np.arange(n_total)
    layers, network = jax.tree.map(lambda *xs: np.concatenate(xs)[order], *[r for _, r in parts])
    return _with_counts(layers, network, configs, facts, rates, analysed, model)


def _layer_facts(specs: Sequence[LayerSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, c_in and c_out of every layer, float32 `[L]` each."""
    pick = (lambda s: s.pixels, lambda s: s.kernel_shape[2], lambda s: s.kernel_shape[3])
    return tuple(np.asarray([f(s) for s in specs], np.float32) for f in pick)


def _with_counts(layers, network, configs, facts, rates, analysed, model) -> SweepResult:
    """The result with its counts filled in and its terms in the model's order."""
    lay_counts, net_counts = _layer_counts(layers, configs, facts, rates, analysed)
    in_order = lambda terms: {t: terms[t] for t in model.terms}  # noqa: E731 (jax sorts keys)
    return SweepResult(
        layers._replace(counts=lay_counts, energy_terms=in_order(layers.energy_terms)),
        network._replace(counts=net_counts, energy_terms=in_order(network.energy_terms)),
        model.name,
    )


def _batch_constants(model: energy_lib.EnergyModel, constants: Any, configs: HardwareConfig):
    """The model's constants as `[N]` float32 leaves, one set per config; validated."""
    n = num_configs(configs)
    if constants is None:
        constants = model.defaults if model.from_config is None else model.from_config(configs)
    energy_lib.validate_constants(model, constants)
    leaves = [np.asarray(v, np.float32) for v in constants]
    if any(v.shape not in ((), (1,), (n,)) for v in leaves):
        shapes = sorted({v.shape for v in leaves})
        raise ValueError(f"energy_constants: need scalars or [{n}] per constant, got {shapes}")
    return type(constants)(*(np.broadcast_to(v.reshape(-1), (n,)).copy() for v in leaves))


def _run(tables, facts, rates, uniq, inv, batch, mapping, n_cap, analysed, devices, model):
    """One compiled call; shards the config axis when several devices are given.

    The config axis is padded (repeating the last config) to a power of two >= 8, and to a
    multiple of the device count, so sweeps of similar size reuse one compilation.
    """
    n = num_configs(batch[0])
    d = len(devices)
    size = max(8, _pow2(n))
    size += (-size) % d
    inv = np.asarray(inv, np.int32)
    uniq = np.asarray(uniq, np.int32)
    batch = jax.tree.map(lambda f: np.concatenate([f, np.repeat(f[-1:], size - n)]), batch)
    inv = np.concatenate([inv, np.repeat(inv[-1:], size - n)])
    args = (tables, facts, rates, analysed, uniq)
    if d > 1:
        mesh = Mesh(np.asarray(devices), ("config",))
        split = NamedSharding(mesh, PartitionSpec("config"))
        repl = NamedSharding(mesh, PartitionSpec())
        args = jax.device_put(args, repl)
        inv, batch = jax.device_put((inv, batch), split)
    out = _simulate_mapping(*args, inv, *batch, mapping=mapping, n_cap=n_cap, model=model)
    return jax.tree.map(lambda x: _fetch(x)[:n], out)


def _run_host(tables, facts, rates, uniq, inv, batch, mapping, analysed, model):
    """`_run` on the host with numpy: the layer and network `Figures` of one mapping's configs.

    The workload once per entry of `uniq` (`_host_workload`), gathered to the configs by `inv`,
    then `_host_figures` for all configs at once.
    """
    wl, net = _host_workload(tables, np.asarray(uniq, np.int32), mapping, analysed)
    inv = np.asarray(inv, np.intp)
    wl, net = Metrics(*(x[inv] for x in wl)), Metrics(*(x[inv] for x in net))
    configs, consts = batch
    return _host_figures(wl, net, configs, consts, facts, rates, analysed, model)


def _host_workload(tables, uniq: np.ndarray, mapping: wm.PEMapping, analysed: np.ndarray):
    """`_workload` for every `n` of `uniq` `[U]`: per-layer `Metrics` `[U, L]`, network `[U]`.

    Each layer's per-n group sums and maxima (`host_group_loads`, padded with zero groups to a
    common width, which the metrics skip) go through `layer_metrics(..., xp=np)` for all `n` at
    once; a layer left out of `analysed` enters `network_metrics` as a layer without work.
    """
    n = uniq[:, None]  # [U, 1] against the groups
    per_layer = []
    for t in tables:
        gsum, gmax = zip(*(wm.host_group_loads(mapping, t, int(k)) for k in uniq), strict=True)
        lm = layer_metrics(_stack_groups(gsum), _stack_groups(gmax), n, xp=np)
        per_layer.append(Metrics(*(np.asarray(x, dt) for x, dt in zip(lm, _DTYPES, strict=True))))
    empty = (np.float32(np.nan), np.float32(np.nan), 0, 0, 0)
    masked = [
        Metrics(*(x if analysed[j] else np.full_like(x, e) for x, e in zip(m, empty, strict=True)))
        for j, m in enumerate(per_layer)
    ]
    net = network_metrics(masked, xp=np)
    net = Metrics(*(np.asarray(x, dt) for x, dt in zip(net, _DTYPES, strict=True)))
    stacked = Metrics(*(np.stack(col, axis=1) for col in zip(*per_layer, strict=True)))
    return stacked, net


def _stack_groups(rows: Sequence[np.ndarray]) -> np.ndarray:
    """`[U, B]` int32 from per-n group rows, padded with zero groups to the widest."""
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# Metrics dtypes of the jax kernel (numpy sums of int32 give int64; the int32 check bounds them).
_DTYPES = (np.float32, np.float32, np.int32, np.int32, np.int32)


def _host_figures(wl: Metrics, net: Metrics, configs, consts, facts, rates, analysed, model):
    """`_figures` of every config at once on the host: layers `[N, L]`, network `[N]`."""
    col = lambda x: np.asarray(x)[:, None]  # noqa: E731 (one value per config, against layers)
    cfg = HardwareConfig(*(col(f) for f in configs))
    counts = _counts(wl, cfg, facts, rates, xp=np)
    terms = energy_lib.apply_model(model, counts, type(consts)(*(col(c) for c in consts)))
    total = energy_lib.total(terms)
    layer = Figures(*wl, counts.cycles, counts.seconds, counts.pe_cycles_idle, None, terms, total)
    add = lambda x: _sum_layers(x, analysed)  # noqa: E731
    sums = [add(x) for x in (layer.cycles, layer.seconds, layer.wasted_pe_cycles)]
    net_terms = {t: add(v) for t, v in terms.items()}
    return layer, Figures(*net, *sums, None, net_terms, add(total))


def _sum_layers(x: np.ndarray, analysed: np.ndarray) -> np.ndarray:
    """float32 sum over the analysed layers of `x` `[N, L]`, left to right (XLA's order for up to
    32 layers, so the numpy backend's network sums equal the kernel's)."""
    out = np.zeros(x.shape[0], np.float32)
    for j in np.flatnonzero(analysed):
        out = out + x[:, j]
    return out


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
    *,
    backend: str = "jax",
    **kwargs: Any,
) -> SweepResult:
    """`simulate` from masks: builds the count tables of `specs`' layers, then evaluates.

    Only the tables of the mappings in `configs` are built, with `backend` ("jax" or "numpy",
    see `simulate`), which also evaluates them.
    """
    check_backend(backend)
    checks.check_specs(specs)
    validate_config(configs)
    ids = np.unique(np.atleast_1d(np.asarray(configs.mapping)))
    names = [MAPPINGS[int(i)] for i in ids]
    tables = network_tables(masks, specs, names, backend=backend)
    return simulate(tables, specs, configs, backend=backend, **kwargs)
