"""Spike-driven figures of an event-driven PE array: recorded input spikes x masks x configs.

Semantics (issue 24). For an analysed layer with recorded inputs `x` (`[T, B, H, W, C_in]` for a
conv, `[T, B, C_in]` for a dense layer; bool or 0/1), at each time step `t`, example `b` and output
position `p`, PE `(g, q)`'s work is the number of its non-zero weights whose input at that position
is non-zero (zero padding never spikes). A group of PEs advances in lock step from one `(t, b, p)`
to the next, so it spends the largest work among its PEs there::

  cycles_g   = sum_{t,b,p} max_q work[t,b,p,g,q] / B           (per example)
  work_g     = sum_{t,b,p} sum_q work[t,b,p,g,q] / B
  cycles     = sum_g cycles_g                                   (the layer, per example)
  utilization(g) = work_g / (n * cycles_g)                      (a layer: the mean over groups
                                                                 with work, as weight-only)
  utilization_normalized(g) = 1 - (cycles_g - ceil_g) / cycles_g * n / (n - 1),
                   ceil_g = sum_{t,b,p} ceil(sum_q work / n) / B (the paper's figure, its max and
                   ceil(mean) summed over the lock-step positions)

The busy fraction of the whole layer, `total work / (n x cycles)`, is
`counts.pe_cycles_busy / (counts.n_pe * counts.cycles)`. Load-unit fields are per position-step
averages (float64): `latency = sum_g cycles_g / (T P)`, `wasted = sum_g (n cycles_g - work_g) / (T
P)`, `dynamic = sum_g work_g / (T P)` (`P` output positions). Counts priced by the energy models:
`accumulates = pe_cycles_busy = input_buffer_reads = work` (the actual spike-weight products),
`cycles`, `seconds = cycles / clock`, `pe_cycles_idle = wasted_pe_cycles = n cycles - work`; the
weight counts (`weights`, `weight_buffer_reads`, `dram_weight_reads`), the LIF and output counts
are unchanged, and so is `dram_input_reads` (`C_in x P x T`: the spike map is fetched as a dense
1-bit map, zeros included). `activity_aware` is ignored: the trace gives the activity.

With every input spiking and no padding involved (dense layers, 1x1 convs) each figure equals the
weight-only one of `simulate_masks` (activity_aware False): bit for bit against its numpy backend
(the same host arithmetic; the utilizations' group fractions are reduced so their float32
quotients are the weight-only ones), to float32 rounding against the compiled one. Elsewhere
cycles, seconds, the load-unit latency and work, accumulates and the energy total (default
constants; horowitz45 needs `e_acc >= e_idle`) are never above it; idle PE-cycles can be (a
balanced group whose spikes land unevenly idles where the weight-only one did not). Layers that
are not analysed (no trace) keep their weight-only figures; the network covers the analysed
layers, as weight-only.

Evaluation: per analysed layer and mapping, one compiled call computes the per-group sums of every
distinct `n_pe` (`spike_work`, derived fast paths); every config's figures are then numpy products
of those sums (energy constants, clocks), all configs at once.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from uticket_jax import checks
from uticket_jax.hardware import energy as energy_lib
from uticket_jax.hardware.config import HardwareConfig, num_configs, validate_config
from uticket_jax.hardware.figures import Figures, SweepResult
from uticket_jax.hardware.layers import LayerSpec
from uticket_jax.hardware.simulator import simulate, simulate_masks
from uticket_jax.hardware.spike_work import Geometry, SpikeWork, conv_geometry, spike_work
from uticket_jax.workload.metrics import Metrics, network_metrics

#: `simulate`'s default energy model, followed here.
DEFAULT_ENERGY_MODEL = inspect.signature(simulate).parameters["energy_model"].default


def _dense_like(spec: LayerSpec) -> bool:
    return spec.kernel_shape[:2] == (1, 1) and tuple(spec.out_hw) == (1, 1)


def layer_geometry(spec: LayerSpec, x_shape: Sequence[int]) -> Geometry | None:
    """The stride and padding of `spec` for inputs of `x_shape` (`[T, B, (H, W,) C]`), or None."""
    if len(x_shape) == 3:
        return conv_geometry(spec.kernel_shape[:2], (1, 1), spec.out_hw)
    return conv_geometry(spec.kernel_shape[:2], tuple(x_shape[2:4]), spec.out_hw)


def _check_layer(k: str, v: Any, spec: LayerSpec, what: str) -> np.ndarray:
    """One layer's inputs checked: numeric, rank, C_in, H/W vs out_hw, values 0/1."""
    v = np.asarray(v)
    kh, kw, c_in, _ = spec.kernel_shape
    want = f"[T, B, C_in={c_in}]" if _dense_like(spec) else f"[T, B, H, W, C_in={c_in}]"
    if v.dtype.kind not in "biuf":
        raise ValueError(f"{what}: layer {k!r} has dtype {v.dtype}; expected bool or 0/1 numbers")
    ranks = (3, 5) if _dense_like(spec) else (5,)
    if v.ndim not in ranks or v.shape[-1] != c_in:
        raise ValueError(f"{what}: layer {k!r} has shape {v.shape}; expected {want}")
    if v.size == 0:
        raise ValueError(f"{what}: layer {k!r} has an empty trace {v.shape}; expected {want}")
    if layer_geometry(spec, v.shape) is None:
        oh, ow = spec.out_hw
        raise ValueError(
            f"{what}: layer {k!r} has {v.shape[2]}x{v.shape[3]} inputs, which no stride maps to "
            f"its {oh}x{ow} output (kernel {kh}x{kw}, padding {(kh - 1) // 2})"
        )
    if v.dtype.kind != "b":
        bad = v[(v != 0) & (v != 1)]
        if bad.size:
            raise ValueError(
                f"{what}: layer {k!r} holds values other than 0/1 (e.g. {bad.flat[0].item()!r}); "
                "expected spikes"
            )
    return v.astype(bool, copy=False)


def check_spikes(
    spikes: Mapping[str, Any], specs: Sequence[LayerSpec], what: str
) -> dict[str, np.ndarray]:
    """Recorded layer inputs checked against the layers; bool arrays in network order.

    Args:
      spikes: `{kernel path: inputs}`, one array per analysed layer: `[T, B, H, W, C_in]` for a
        conv, `[T, B, C_in]` for a dense layer (or a 1x1 conv with a 1x1 output); bool or 0/1.
      specs: the network's layers (their `out_hw` and the stride that reaches it fix `H, W`).
      what: what messages start with (a file or argument name).
    Returns:
      `{path: bool array}` in the order of `specs`.
    Raises:
      ValueError: one line starting with `what`, naming the layer and what was expected: an
        empty trace, a key that is not a layer or not analysed, an analysed layer missing, a
        wrong rank or shape, T or B differing between layers, values other than 0/1, a
        non-numeric dtype.
    """
    analysed = [s.name for s in specs if s.analysed]
    if not spikes:
        raise ValueError(f"{what}: the trace is empty; expected inputs of {analysed[:3]}...")
    by_name = {s.name: s for s in specs}
    for k in spikes:
        if k not in by_name:
            raise ValueError(
                f"{what}: {k!r} is not a layer of the model (layers: {analysed[:3]}...)"
            )
        if not by_name[k].analysed:
            raise ValueError(
                f"{what}: layer {k!r} is not analysed; expected only {analysed[:3]}..."
            )
    out, first = {}, None
    for k in analysed:
        if k not in spikes:
            raise ValueError(f"{what}: no inputs for analysed layer {k!r}; expected [T, B, ...]")
        v = _check_layer(k, spikes[k], by_name[k], what)
        if first is None:
            first = (k, v.shape[:2])
        elif v.shape[:2] != first[1]:
            raise ValueError(
                f"{what}: layer {k!r} has T, B = {v.shape[:2]}; layer {first[0]!r} has {first[1]}"
            )
        out[k] = v
    return out


def _ratio(num, den) -> np.ndarray:
    """float32 `num / den` of int64 arrays, the fraction reduced first: exact operands give the
    correctly rounded quotient, the weight-only simulator's where every input spikes."""
    g = np.maximum(np.gcd(num, den), 1)
    return (num // g).astype(np.float32) / (den // g).astype(np.float32)


def _group_figures(w: SpikeWork, n: int, width: int) -> tuple[float, float]:
    """A layer's utilization and normalized utilization from its per-group sums (NaN: no work).

    The mean over groups runs as the simulator's numpy backend's (float32 over `width` groups,
    the widest of the mapping's `n`s, groups without work as 0).
    """
    has = w.cycles > 0
    if not has.any():
        return np.nan, np.nan
    cyc = np.where(has, w.cycles, 1)
    util = _ratio(w.work, n * cyc)
    den = cyc * max(n - 1, 1)
    norm = _ratio(den - (cyc - w.ceil_mean) * n, den) if n > 1 else np.ones(len(cyc), np.float32)
    count = np.float32(has.sum())
    mean = lambda x: np.pad(np.where(has, x, 0), (0, width - len(x))).sum(dtype=np.float32) / count  # noqa: E731
    return mean(util), mean(norm)


def simulate_spikes(
    masks: Mapping[str, np.ndarray],
    spikes: Mapping[str, Any],
    specs: Sequence[LayerSpec],
    configs: HardwareConfig,
    *,
    energy_model: str | energy_lib.EnergyModel = DEFAULT_ENERGY_MODEL,
    energy_constants: Any = None,
    devices: Sequence[jax.Device] | None = None,
) -> SweepResult:
    """`simulate_masks` with spike-driven work: every config of the batch on a recorded trace.

    Args:
      masks: `{path: hwio mask}` of the layers of `specs`.
      spikes: `{path: inputs}` of every analysed layer (see `check_spikes`).
      specs: the layers (`specs_from_layers` of the model, or `specs_from_shapes`).
      configs: a batch `HardwareConfig` `[N]`; every `timesteps` must equal the trace's `T`;
        `activity_aware` is ignored (the trace is the activity).
      energy_model: a name in `energy.ENERGY_MODELS` or an `EnergyModel` (default: `simulate`'s).
      energy_constants: the model's constants (scalar or `[N]` leaves); None: its defaults.
      devices: the spike kernels run on the first of these (default: JAX's default device).
    Returns:
      `SweepResult` of numpy arrays, layers `[N, L]`, network `[N]`, in the order of `configs`
      (see the module docstring for what each figure means).
    """
    checks.check_specs(specs)
    validate_config(configs)
    configs = HardwareConfig(*(np.atleast_1d(np.asarray(f)) for f in configs))
    trace = check_spikes(spikes, specs, "spikes")
    t, b = next(iter(trace.values())).shape[:2]
    if (configs.timesteps != t).any():
        got = sorted({int(x) for x in configs.timesteps})
        raise ValueError(f"configs: timesteps {got} differ from the trace's T = {t}")
    weight_only = configs._replace(activity_aware=np.zeros(num_configs(configs), bool))
    base = simulate_masks(
        masks,
        specs,
        weight_only,
        backend="numpy",
        energy_model=energy_model,
        energy_constants=energy_constants,
    )
    sums = _spike_sums(masks, trace, specs, configs, devices)
    model = energy_lib.get_energy_model(energy_model)
    consts = _constants(model, energy_constants, num_configs(configs))
    layers = _layer_figures(base.layers, sums, specs, configs, (t, b), model, consts)
    return SweepResult(layers, _network(layers, specs, configs), model.name)


def _spike_sums(masks, trace, specs, configs: HardwareConfig, devices) -> dict[str, np.ndarray]:
    """Per config and analysed layer `[N, L]`: total work, cycles (over the trace, all `B`) and
    the two utilizations."""
    n_cfg, n_lay = num_configs(configs), len(specs)
    out = {k: np.full((n_cfg, n_lay), np.nan) for k in ("work", "cycles", "util", "norm")}
    ctx = jax.default_device(devices[0]) if devices else contextlib.nullcontext()
    with ctx:
        for j, spec in enumerate(specs):
            if not spec.analysed:
                continue
            x = trace[spec.name]
            geo = layer_geometry(spec, x.shape)
            mask = np.asarray(masks[spec.name])
            for name in np.unique(configs.mapping):
                idx = np.flatnonzero(configs.mapping == name)
                ns = sorted({int(n) for n in configs.n_pe[idx]})
                works = spike_work(x, mask, str(name), ns, geo)
                width = max(len(w.cycles) for w in works.values())
                for i in idx:
                    w = works[int(configs.n_pe[i])]
                    out["work"][i, j], out["cycles"][i, j] = w.work.sum(), w.cycles.sum()
                    out["util"][i, j], out["norm"][i, j] = _group_figures(
                        w, int(configs.n_pe[i]), width
                    )
    return out


def _constants(model: energy_lib.EnergyModel, constants: Any, n: int):
    """The model's constants as `[n, 1]` float32 columns (validated by `simulate_masks`)."""
    constants = model.defaults if constants is None else constants
    col = lambda v: np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (n,)).copy()[:, None]  # noqa: E731
    return type(constants)(*(col(v) for v in constants))


def _layer_figures(base: Figures, sums, specs, configs, tb, model, consts) -> Figures:
    """The layers' `Figures` `[N, L]`: spike-driven on the analysed layers, `base` elsewhere."""
    t, b = tb
    on = np.asarray([s.analysed for s in specs])
    n = configs.n_pe.astype(np.float64)[:, None]
    steps = t * np.asarray([s.pixels for s in specs], np.float64)  # [L] position-steps
    work, cyc = sums["work"], sums["cycles"]
    pick = lambda spiked, weights: np.where(on, spiked, weights)  # noqa: E731
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    cycles = pick(f32(cyc / b), base.cycles)
    busy = pick(f32(work / b), base.counts.pe_cycles_busy)
    idle = pick(f32((n * cyc - work) / b), base.counts.pe_cycles_idle)
    seconds = cycles * (np.float32(1.0) / configs.clock_hz[:, None].astype(np.float32))
    counts = base.counts._replace(
        cycles=cycles,
        seconds=seconds,
        accumulates=pick(busy, base.counts.accumulates),
        pe_cycles_busy=busy,
        pe_cycles_idle=idle,
        input_buffer_reads=busy,
    )
    terms = energy_lib.apply_model(model, counts, consts)
    return Figures(
        utilization=pick(f32(sums["util"]), base.utilization),
        utilization_normalized=pick(f32(sums["norm"]), base.utilization_normalized),
        latency=pick(cyc / (b * steps), base.latency),
        wasted=pick((n * cyc - work) / (b * steps), base.wasted),
        dynamic=pick(work / (b * steps), base.dynamic),
        cycles=cycles,
        seconds=seconds,
        wasted_pe_cycles=idle,
        counts=counts,
        energy_terms=terms,
        energy_total=energy_lib.total(terms),
    )


def _network(layers: Figures, specs, configs: HardwareConfig) -> Figures:
    """The network `Figures` `[N]` of the analysed layers (as the simulator's numpy backend)."""
    on = np.asarray([s.analysed for s in specs])
    cols = np.flatnonzero(on)

    def add(x):  # left to right, as the simulator's host sums
        out = np.zeros(x.shape[0], np.float32)
        for j in cols:
            out = out + x[:, j]
        return out

    metrics = network_metrics(
        [Metrics(*(getattr(layers, f)[:, j] for f in Metrics._fields)) for j in cols], np
    )
    counts = energy_lib.Counts(
        **{
            k: np.asarray(getattr(configs, k), np.float32)
            if k in energy_lib.INTENSIVE_COUNTS
            else v[:, on].sum(axis=1, dtype=np.float32)
            for k, v in layers.counts._asdict().items()
        }
    )
    return Figures(
        *metrics,
        add(layers.cycles),
        add(layers.seconds),
        add(layers.wasted_pe_cycles),
        counts,
        {k: add(v) for k, v in layers.energy_terms.items()},
        add(layers.energy_total),
    )
