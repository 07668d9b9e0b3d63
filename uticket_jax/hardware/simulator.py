"""Analytical PE-array simulator: masks -> latency, utilization and energy for many configs at once.

Model (lock-step, weight-stationary array; Yin et al., IEEE TETCI 2024, Sec. on hardware):

  A layer's non-zero weights are spread over groups of `n_pe` PEs by a mapping (the workload
  model of `uticket_jax.workload`). Every non-zero weight is applied at each of the layer's `P`
  output positions and `T` time steps, so with per-group loads `load[g, j]`::

    cycles            = sum_g max_j load[g, j] * P * T
    wasted PE-cycles  = sum_g sum_j (max_j load[g, j] - load[g, j]) * P * T
    accumulates       = nnz * P * T * (input spike rate if activity-aware else 1)

  These and the other counts of `hardware.energy.Counts` (LIF updates, busy/idle PE-cycles,
  buffer and DRAM accesses) go to an energy model (`hardware.energy`, chosen by name), which
  returns the energy by term, its total, and that total split into on-chip energy and energy
  off the chip (DRAM, the model's `offchip_terms`). The default, `sata`, prices SATA_Sim's
  published PE, buffer and DRAM figures; `horowitz45` (`energy_model="horowitz45"`) is::

    Energy (J) = e_acc * accumulates + e_fetch * nnz + e_idle * wasted PE-cycles
                 + leak_w * n_pe * cycles / clock.

  Weights are fetched ONCE per layer: in a weight-stationary array a PE loads its non-zeros into
  its register file and keeps them while all positions and time steps stream past (that is what
  makes the latency formula above hold), so fetches do not scale with T or P.
  Utilization, normalized utilization, latency/wasted/dynamic in load units: exactly the figures
  of `workload.metrics` (same code). Network figures cover the analysed layers only.

Mappings with a traced `n = n_pe`: the simulator knows no mapping but through the registry. A
config names its mapping, and everything mapping-specific comes from that `PEMapping`: its
`count_table` (per layer, `tables.py`), its `group_loads` (per-group sum and max for a traced `n`
over a static number of groups, with a static bound `n_cap` on `n` when `needs_n_cap`) and its
`load_bound` (the host int32 overflow check), each derived from the mapping's assignment or its
hand-written fast version (`workload/builtin_mappings.py` for the built-ins' formulas).

Evaluation: the workload part depends on (mapping, n_pe) only, so a sweep evaluates it once per
distinct n_pe (vmapped, traced n) and then every config (vmapped) from a gather of it; the
mapping is dispatched outside jit (one compiled kernel per mapping). With several devices the
config axis is sharded (`NamedSharding(Mesh(devices, ('config',)), P('config'))`, padded to a
multiple of the device count); the small per-distinct-n_pe workload table is replicated.

Backends (`simulate(..., backend=)`): "jax" (default) is the compiled path above; "numpy" runs
the same formulas on the host with numpy and compiles nothing (one-shot sweeps, where compiling
the ~20 programs of a sweep costs seconds more than evaluating it): per-n group loads from the
mappings' `host_group_loads` (derived from the assignment, or a mapping's numpy fast path), then
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

from uticket_jax import checks
from uticket_jax.hardware import assembly
from uticket_jax.hardware import energy as energy_lib
from uticket_jax.hardware.config import (
    HardwareConfig,
    num_configs,
    take_configs,
    validate_config,
)
from uticket_jax.hardware.figures import SweepResult, with_energy_split
from uticket_jax.hardware.layers import LayerSpec, spike_rate_vector
from uticket_jax.hardware.tables import LayerTables, check_backend, network_tables
from uticket_jax.workload import mappings as wm

ENERGY_TERMS = energy_lib.get_energy_model(energy_lib.DEFAULT_ENERGY_MODEL).terms  #: the default's
_INT32_MAX = 2**31 - 1


# Static: mapping (selects the reduction), the kernel shape and n_cap (bounds n where the mapping
# needs it).
@functools.partial(jax.jit, static_argnames=("mapping", "shape", "n_cap"))
def _group_loads_jit(table, n, *, mapping, shape, n_cap):
    return mapping.group_loads(table, shape, n, n_cap)


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
    return (
        max(16, assembly.pow2(n_max)) if m.needs_n_cap else 0
    )  # few distinct caps, few compilations


def group_loads(
    table: LayerTables, shape: Sequence[int], n_pe, mapping: str, n_cap: int | None = None
):
    """Per-group `(sum, max)` PE loads of one layer for a traced `n_pe` (the mapping's kernel).

    Args:
      table: the layer's `LayerTables` (`count_tables`), holding a table for `mapping`.
      shape: the layer's kernel shape (hwio).
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
    shape = wm.as_hwio4(shape)
    n = jnp.asarray(n_pe, jnp.int32)
    return _group_loads_jit(_table_of(table, m), n, mapping=m, shape=shape, n_cap=cap)


def _check_int32(specs: Sequence[LayerSpec], tables: Sequence[Any], n_max: int, m: wm.PEMapping):
    """Refuses n_pe so large that the int32 wasted-load counts could overflow (`load_bound`)."""
    bound = sum(
        int(m.load_bound(spec.kernel_shape, jax.tree.map(np.asarray, t), n_max))
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
    energy_model: str | energy_lib.EnergyModel = energy_lib.DEFAULT_ENERGY_MODEL,
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
      energy_model: a name in `energy.ENERGY_MODELS` or an `EnergyModel` (default `sata`,
        `energy.DEFAULT_ENERGY_MODEL`).
      energy_constants: the model's constants (its NamedTuple; scalar leaves for every config
        or `[N]` leaves, one per config). None: the model's defaults.
      backend: "jax" (compiled, vmapped, sharded over `devices`) or "numpy" (the same formulas
        on the host, nothing compiled; see the module docstring for how the results compare).
    Returns:
      `SweepResult` of numpy arrays, layers `[N, L]`, network `[N]`, in the order of `configs`.
    """
    configs, rates = _checked(tables, specs, configs, spike_rates, devices, backend)
    if backend == "jax":
        devices = list(jax.devices() if devices is None else devices)
    model = energy_lib.get_energy_model(energy_model)
    net = _Net(
        _layer_facts(specs),
        rates,
        np.asarray([bool(s.analysed) for s in specs]),
        tuple(s.kernel_shape for s in specs),
    )
    consts = _batch_constants(model, energy_constants, configs)
    n_total = num_configs(configs)
    parts: list[tuple[np.ndarray, SweepResult]] = []
    for name in np.unique(configs.mapping):
        idx = np.flatnonzero(configs.mapping == name)
        batch = (take_configs(configs, idx), type(consts)(*(f[idx] for f in consts)))
        m = wm.get_mapping(str(name))
        mtables = [_table_of(t, m, jnp if backend == "jax" else np) for t in tables]
        _check_int32(specs, mtables, int(batch[0].n_pe.max()), m)
        parts.append((idx, _run(mtables, net, batch, m, model, dedupe, devices, backend)))
    order = np.empty(n_total, np.int64)
    order[np.concatenate([i for i, _ in parts])] = np.arange(n_total)
    layers, network = jax.tree.map(lambda *xs: np.concatenate(xs)[order], *[r for _, r in parts])
    return _with_counts(layers, network, configs, net, model)


class _Net(NamedTuple):
    """The layer facts of a network the runs need: pixels, c_in, c_out `[L]` float32 each, the
    input spike rates `[L]`, which layers are analysed `[L]`, the kernel shapes (static)."""

    facts: tuple[np.ndarray, np.ndarray, np.ndarray]
    rates: np.ndarray
    analysed: np.ndarray
    shapes: tuple[tuple[int, int, int, int], ...]


def _checked(tables, specs, configs, spike_rates, devices, backend):
    """`simulate`'s inputs checked: the configs as `[N]` batches and the rates `[L]`."""
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
        return configs, spike_rate_vector(spike_rates, specs)
    rates = np.asarray(spike_rates, np.float32)
    if rates.shape != (len(specs),) or not ((rates >= 0) & (rates <= 1)).all():
        raise ValueError(f"spike_rates: need {len(specs)} rates in [0, 1], got {rates}")
    return configs, rates


def _run(tables, net: _Net, batch, m: wm.PEMapping, model, dedupe: bool, devices, backend: str):
    """One mapping's configs on one backend: the workload once per distinct `n_pe` (dedupe) or
    once per config."""
    n_pe = batch[0].n_pe
    if dedupe:
        uniq, inv = np.unique(n_pe, return_inverse=True)
    else:
        uniq, inv = n_pe, np.arange(len(n_pe))
    args = (tables, net.shapes, net.facts, net.rates)
    if backend == "numpy":
        return assembly.run_host(*args, uniq, inv, batch, m, net.analysed, model)
    # Pad to a power of two (>= 8) so sweeps of similar size share one compilation.
    uniq = np.pad(uniq, (0, max(8, assembly.pow2(len(uniq))) - len(uniq)), mode="edge")
    n_cap = _n_cap(m, int(n_pe.max()))
    return assembly.run_jax(*args, uniq, inv, batch, m, n_cap, net.analysed, devices, model)


def _layer_facts(specs: Sequence[LayerSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, c_in and c_out of every layer, float32 `[L]` each."""
    pick = (lambda s: s.pixels, lambda s: s.kernel_shape[2], lambda s: s.kernel_shape[3])
    return tuple(np.asarray([f(s) for s in specs], np.float32) for f in pick)


def _with_counts(layers, network, configs, net: _Net, model) -> SweepResult:
    """The result with its counts filled in and its terms in the model's order."""
    lay_counts, net_counts = assembly.layer_counts(
        layers, configs, net.facts, net.rates, net.analysed
    )
    return SweepResult(
        _finished(layers, lay_counts, model), _finished(network, net_counts, model), model.name
    )


def _finished(fig, counts: energy_lib.Counts, model: energy_lib.EnergyModel):
    """`fig` with its counts, its terms in the model's order (jax sorts dict keys) and its
    on-chip and DRAM energies."""
    return with_energy_split(fig._replace(counts=counts), model)


def _batch_constants(model: energy_lib.EnergyModel, constants: Any, configs: HardwareConfig):
    """The model's constants as `[N]` float32 leaves, one set per config; validated."""
    n = num_configs(configs)
    if constants is None:
        constants = model.defaults
    energy_lib.validate_constants(model, constants)
    leaves = [np.asarray(v, np.float32) for v in constants]
    if any(v.shape not in ((), (1,), (n,)) for v in leaves):
        shapes = sorted({v.shape for v in leaves})
        raise ValueError(f"energy_constants: need scalars or [{n}] per constant, got {shapes}")
    return type(constants)(*(np.broadcast_to(v.reshape(-1), (n,)).copy() for v in leaves))


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

    Example:
      Two 3x3 convs on 8x8 images; the second has its first 4 output channels pruned away, so
      with 8 PEs per group half of its PEs idle (4 PEs: one group idles, the other is full):

      >>> import numpy as np
      >>> from uticket_jax import hardware
      >>> masks = {"conv1": np.ones((3, 3, 3, 8), bool), "conv2": np.ones((3, 3, 8, 8), bool)}
      >>> masks["conv2"][..., :4] = False
      >>> shapes = {name: m.shape for name, m in masks.items()}
      >>> specs = hardware.specs_from_shapes(shapes, input_size=8, skip_first=False)
      >>> result = hardware.simulate_masks(masks, specs, hardware.config_grid(n_pe=[4, 8]))
      >>> result.layers.utilization.tolist()  # [N configs, L layers]
      [[1.0, 1.0], [1.0, 0.5]]
      >>> result.network.cycles.tolist()  # 8 PEs halve conv1's latency, not conv2's
      [40320.0, 31680.0]
    """
    check_backend(backend)
    checks.check_specs(specs)
    validate_config(configs)
    names = [str(x) for x in np.unique(np.atleast_1d(np.asarray(configs.mapping)))]
    tables = network_tables(masks, specs, names, backend=backend)
    return simulate(tables, specs, configs, backend=backend, **kwargs)
