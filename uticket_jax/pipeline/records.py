"""What a finished stage reports: its `StageRecord` (sparsity, accuracy, spike rates, rebalance
counts, the simulator's figures: weight-only, activity-aware, and spike-driven from the inputs
recorded on a few test images), the one-line summary, and the trained kernels the launcher writes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import numpy as np

from uticket_jax import data as data_lib
from uticket_jax import models
from uticket_jax.hardware import config as hw_config
from uticket_jax.hardware import energy as hw_energy
from uticket_jax.hardware import rows as hw_rows
from uticket_jax.hardware import simulator
from uticket_jax.hardware.layers import LayerSpec
from uticket_jax.hardware.spikes import simulate_spikes
from uticket_jax.pipeline.config import LTHConfig, Stage
from uticket_jax.pipeline.setup import RunSetup, kernels
from uticket_jax.pipeline.state import HardwareFigures, Progress, RebalanceCounts, StageRecord
from uticket_jax.sparsity.masks import flatten, sparsity_report
from uticket_jax.training import step as train_lib


def _config_index(configs: hw_config.HardwareConfig, **values: Any) -> int:
    """The index of the one config of the batch whose fields equal `values`."""
    hits = [
        i
        for i, row in enumerate(hw_config.config_rows(configs))
        if all(row[k] == v for k, v in values.items())
    ]
    if len(hits) != 1:
        raise ValueError(f"hardware configs: {len(hits)} configs match {values}, expected one")
    return hits[0]


def hardware_figures(
    cfg: LTHConfig, specs: list[LayerSpec], masks_flat: dict, rates: dict[str, float]
) -> HardwareFigures:
    """The simulator's figures of a stage's masks at the run's hardware and full `T`.

    Every round is costed at the full `T`, for the deployed network.

    Args:
      cfg: the run's configuration (`n_pe`, `mapping`, `timesteps`, `energy_model`, whose
        published clock the configs use).
      specs: the simulator's layers (network order).
      masks_flat: the stage's masks.
      rates: the measured input spike rates per layer (for the activity-aware figures).

    Returns:
      `HardwareFigures`: network figures plain and activity-aware, plain figures per layer.
    """
    model = hw_energy.get_energy_model(cfg.energy_model)
    configs = hw_config.config_grid(
        n_pe=[cfg.n_pe],
        mapping=[cfg.mapping],
        timesteps=[cfg.timesteps],
        clock_hz=[model.clock_hz],
        activity_aware=[False, True],
    )
    res = simulator.simulate_masks(
        masks_flat, specs, configs, spike_rates=rates, energy_model=model
    )
    base = {"n_pe": cfg.n_pe, "mapping": cfg.mapping, "timesteps": cfg.timesteps}
    plain = _config_index(configs, **base, activity_aware=False)
    aware = _config_index(configs, **base, activity_aware=True)
    fig = functools.partial(hw_rows.figures_dict, energy_model=model.name)
    layers = [
        {"name": s.name, "analysed": s.analysed, **fig(res.layers, plain, j)}
        for j, s in enumerate(specs)
    ]
    return HardwareFigures(
        energy_model=model.name,
        plain=fig(res.network, plain),
        activity_aware=fig(res.network, aware),
        layers=layers,
    )


def stage_trace(
    setup: RunSetup, dataset: data_lib.Dataset, train_state: train_lib.TrainState
) -> dict[str, np.ndarray] | None:
    """The inputs of the analysed layers on the first `cfg.trace_images` test images, as events.

    One extra eval-mode pass over those images (`models.record_inputs`), at the run's full `T`
    (the `T` every round is costed at), with the stage's trained variables.

    Args:
      setup: from `setup_run` (the analysed layers: its specs').
      dataset: the data (its first test images; all of them when there are fewer).
      train_state: the stage's trained state.

    Returns:
      `{kernel path: bool [T, B, ...]}` in network order, or None when `cfg.trace_images` is 0 or
      no layer is analysed.
    """
    cfg = setup.cfg
    layers = [s.name for s in setup.specs if s.analysed]
    if not cfg.trace_images or not layers:
        return None
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    return models.record_inputs(
        setup.trainer.model_for(cfg.timesteps),
        variables,
        dataset.test_images[: cfg.trace_images],
        layers=layers,
        batch_size=cfg.eval_batch_size,
    )


def spike_figures(
    cfg: LTHConfig, specs: list[LayerSpec], masks_flat: dict, trace: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The spike-driven figures of a stage's masks at the run's hardware (`simulate_spikes`).

    A PE's work at each step, example and output position is its count of non-zero weights whose
    input is non-zero; a group spends its busiest PE's work (the semantics of
    `hardware.simulate_spikes`). Same configs and energy model as `hardware_figures`.

    Args:
      cfg: the run's configuration (`n_pe`, `mapping`, `timesteps`, `energy_model`).
      specs: the simulator's layers (network order).
      masks_flat: the stage's masks.
      trace: `stage_trace`'s events.

    Returns:
      `{"images": B, "network": F, "layers": [{"name", "analysed", **F}, ...]}`.
    """
    model = hw_energy.get_energy_model(cfg.energy_model)
    configs = hw_config.config_grid(
        n_pe=[cfg.n_pe], mapping=[cfg.mapping], timesteps=[cfg.timesteps], clock_hz=[model.clock_hz]
    )
    res = simulate_spikes(masks_flat, trace, specs, configs, energy_model=model)
    fig = functools.partial(hw_rows.figures_dict, energy_model=model.name)
    layers = [
        {"name": s.name, "analysed": s.analysed, **fig(res.layers, 0, j)}
        for j, s in enumerate(specs)
    ]
    images = int(next(iter(trace.values())).shape[1])
    return {"images": images, "network": fig(res.network, 0), "layers": layers}


def stage_record(
    setup: RunSetup,
    dataset: data_lib.Dataset,
    stage: Stage,
    train_state: train_lib.TrainState,
    masks_flat: dict,
    counts: RebalanceCounts | None,
    progress: Progress,
    *,
    started: float,
) -> StageRecord:
    """The record of a finished stage: sparsity, accuracy, spike rates, hardware figures.

    Args:
      setup: from `setup_run`.
      dataset: the data (its training-set size is recorded).
      stage: the finished stage.
      train_state: its trained state.
      masks_flat: its masks.
      counts: its rebalance counts (u-Ticket) or None.
      progress: the run's progress (the stage's epoch history, whose last record holds the test
        accuracy and the input spike rates measured in the same pass; the early-time choice; the
        stage's seconds before `started`).
      started: `time.perf_counter()` when this process's part of the stage's clock last started.

    Returns:
      The `StageRecord` (its seconds include recording the trace and pricing it).
    """
    cfg, history = setup.cfg, progress.history
    rates = history[-1]["spike_rates"]  # measured with the last epoch's test accuracy
    sparsity = sparsity_report(masks_flat)
    hardware = hardware_figures(cfg, setup.specs, masks_flat, rates)
    trace = stage_trace(setup, dataset, train_state)
    if trace is not None:
        spikes = spike_figures(cfg, setup.specs, masks_flat, trace)
        hardware = dataclasses.replace(hardware, spike_driven=spikes)
    return StageRecord(
        round=stage.round,
        arm=stage.arm,
        timesteps=stage.timesteps,
        train_images=int(dataset.train_images.shape[0]),
        sparsity=sparsity["global"],
        layer_sparsity=sparsity["layers"],
        test_accuracy=history[-1]["test_accuracy"],
        best_test_accuracy=max(
            h["test_accuracy"] for h in history if h["test_accuracy"] is not None
        ),
        train_loss=history[-1]["train_loss"],
        spike_rates={k: rates[k] for k in setup.order if k in rates},
        rebalance=counts,
        hardware=hardware,
        et=progress.et if stage.arm == "dense" else None,
        seconds=progress.stage_seconds + (time.perf_counter() - started),
    )


def stage_line(record: StageRecord) -> str:
    """The one-line summary of a stage the run logs."""
    hw = record.hardware.plain
    util = hw["utilization"]
    util_s = "   n/a" if util is None else f"{100 * util:5.1f}%"
    return (
        f"round {record.round:2d} {record.arm:8s} T={record.timesteps} sparsity"
        f" {100 * record.sparsity:6.2f}% acc {100 * record.test_accuracy:6.2f}%"
        f" util {util_s} latency {hw['cycles']:.4g} cyc"
        f" energy {hw['energy_total']:.4g} J{_spike_part(record)} ({record.seconds:.1f} s)"
    )


def _spike_part(record: StageRecord) -> str:
    """The stage line's spike-driven figures (empty without a trace)."""
    sd = record.hardware.spike_driven
    if sd is None:
        return ""
    net = sd["network"]
    util = "n/a" if net["utilization"] is None else f"{100 * net['utilization']:.1f}%"
    return (
        f" | spikes: util {util} latency {net['cycles']:.4g} cyc energy {net['energy_total']:.4g} J"
    )


def weights_of(setup: RunSetup, train_state: train_lib.TrainState) -> dict[str, Any]:
    """The trained kernels of the prunable layers, flat, in network order."""
    return dict(kernels(train_state.params, setup.order))


def rest_of(setup: RunSetup, train_state: train_lib.TrainState) -> dict[str, Any]:
    """The trained variables that `weights_of` leaves out, flat: `params/<path>` (BN scales and
    shifts, biases, kernels that are never pruned) and `batch_stats/<path>` (BN running
    statistics). With the prunable kernels they make the complete inference model."""
    kernels = set(setup.order)
    rest = {f"params/{k}": v for k, v in flatten(train_state.params).items() if k not in kernels}
    rest.update({f"batch_stats/{k}": v for k, v in flatten(train_state.batch_stats).items()})
    return rest
