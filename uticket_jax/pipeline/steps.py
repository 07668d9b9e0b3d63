"""The pipeline's steps, each a function of typed values (see `pipeline.state`).

- `make_trainer` / `fresh_state`: model, optimizer, initial variables and train states; shared
  with `experiments/train.py`;
- `setup_run` / `initial_state`: what stays fixed for a run, and the state it starts from;
- `next_masks`: one IMP step of an arm (prune, and rebalance in the u-Ticket arm);
- `start_state`, `train_epoch`, `keep_trained`: train a stage and keep its result;
- `choose_et_timesteps`: the early-time ticket;
- `hardware_figures`, `stage_record`, `stage_line`: what a stage reports.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uticket_jax import data as data_lib
from uticket_jax import models, workload
from uticket_jax.hardware import config as hw_config
from uticket_jax.hardware import energy as hw_energy
from uticket_jax.hardware import rows as hw_rows
from uticket_jax.hardware import simulator
from uticket_jax.hardware.layers import LayerSpec, specs_from_layers
from uticket_jax.pipeline.config import LTHConfig, Stage
from uticket_jax.pipeline.state import (
    ArmState,
    ETChoice,
    HardwareFigures,
    Progress,
    RebalanceCounts,
    RewindPoint,
    RunState,
    StageRecord,
    TrainArrays,
)
from uticket_jax.sparsity import pruning
from uticket_jax.sparsity.masks import flatten, make_masks, sparsity_report, unflatten
from uticket_jax.training import loop
from uticket_jax.training import step as train_lib


class Trainer(NamedTuple):
    """A training run's model (one cached instance per `T`), optimizer and initial variables.

    jit caches on the train state's static `apply_fn` and `tx`, so states built from one trainer
    reuse the compiled train and eval steps.
    """

    model_for: Callable[[int], Any]
    tx: optax.GradientTransformationExtraArgs
    variables: dict[str, Any]


def make_trainer(
    *,
    arch: str,
    num_classes: int,
    image_shape: tuple[int, ...],
    timesteps: int,
    total_steps: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    schedule: str,
    key: jax.Array,
) -> Trainer:
    """The model, masked optimizer and initial variables of a training run.

    Args:
      arch: one of `models.MODEL_NAMES`.
      num_classes: classes of the dataset.
      image_shape: `(H, W, C)` of the images.
      timesteps: the `T` the variables are initialized at.
      total_steps: optimizer steps of the whole schedule.
      optimizer, lr, momentum, weight_decay, schedule: as `training.make_optimizer` takes them.
      key: the initialization key.

    Returns:
      The `Trainer`.
    """
    tx = train_lib.make_optimizer(
        optimizer,
        lr=lr,
        total_steps=total_steps,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
    )
    model_for = functools.cache(
        lambda t: models.get_model(arch, num_classes=num_classes, timesteps=t)
    )
    variables = loop.init_variables(model_for(timesteps), image_shape, key)
    return Trainer(model_for, tx, variables)


def fresh_state(
    trainer: Trainer, timesteps: int, variables: dict[str, Any], masks: Any = None
) -> train_lib.TrainState:
    """A new train state of `trainer`'s model at `timesteps` from `variables` (masked if given).

    Args:
      trainer: from `make_trainer`.
      timesteps: the model's `T`.
      variables: `{"params", "batch_stats"}` to start from.
      masks: a mask tree over the params, or None (dense).

    Returns:
      The `TrainState` (fresh optimizer state, step 0).
    """
    model = trainer.model_for(timesteps)
    return train_lib.create_train_state(model.apply, variables, trainer.tx, masks)


class RunSetup(NamedTuple):
    """What stays fixed for a whole pipeline run."""

    cfg: LTHConfig
    trainer: Trainer
    order: tuple[str, ...]  # prunable layer paths in network order
    specs: list[LayerSpec]  # the simulator's layers, same order
    dense_masks: dict[str, Any]  # all-ones flat masks, network order
    data_key: jax.Array
    rebalance_key: jax.Array
    dp: loop.DataParallel
    steps_per_epoch: int


def _prunable_rule(cfg: LTHConfig) -> Callable[[str, Any], bool]:
    """Which params leaves `cfg.prunable` prunes."""
    ranks = (2, 4) if cfg.prunable == "conv_dense" else (4,)
    return lambda path, leaf: path.endswith("/kernel") and np.ndim(leaf) in ranks


def _order(flat: dict, order: tuple[str, ...] | list[str]) -> dict:
    """`flat` re-keyed in `order`."""
    return {k: flat[k] for k in order}


def setup_run(cfg: LTHConfig, dataset: data_lib.Dataset, dp: loop.DataParallel) -> RunSetup:
    """The model, optimizer, keys, prunable layers and simulator specs of a run.

    Args:
      cfg: the run's configuration (validated).
      dataset: the data.
      dp: data-parallel shardings.

    Returns:
      The `RunSetup`.
    """
    init_key, data_key, rebalance_key = jax.random.split(jax.random.key(cfg.seed), 3)
    steps_per_epoch = data_lib.num_batches(dataset.train_images.shape[0], cfg.batch_size)
    trainer = make_trainer(
        arch=cfg.arch,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        timesteps=cfg.timesteps,
        total_steps=cfg.epochs * steps_per_epoch,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        key=init_key,
    )
    mask_tree = make_masks(trainer.variables["params"], _prunable_rule(cfg))
    prunable = flatten(mask_tree)
    infos = models.describe_layers(trainer.model_for(cfg.timesteps), (1, *dataset.image_shape))
    infos = [i for i in infos if i.path in prunable]  # network order
    order = tuple(i.path for i in infos)
    specs = specs_from_layers(infos, skip_first=cfg.skip_first_layer)
    dense = _order(prunable, order)
    return RunSetup(cfg, trainer, order, specs, dense, data_key, rebalance_key, dp, steps_per_epoch)


def initial_state(setup: RunSetup) -> RunState:
    """The state a run starts from (and the template a checkpoint is restored into).

    Args:
      setup: from `setup_run`.

    Returns:
      Round 0's fresh train arrays, the initialization as rewind point, dense masks per arm.
    """
    cfg, variables = setup.cfg, setup.trainer.variables
    template = fresh_state(
        setup.trainer, cfg.timesteps, variables, unflatten(setup.dense_masks, variables["params"])
    )
    return RunState(
        train=TrainArrays.of(template),
        rewind=RewindPoint(variables["params"], variables["batch_stats"]),
        arms={a: ArmState(setup.dense_masks, variables["params"]) for a in cfg.arms},
    )


def next_masks(
    cfg: LTHConfig,
    stage: Stage,
    previous: ArmState,
    order: tuple[str, ...] | list[str],
    *,
    like: Any,
    key: jax.Array,
) -> tuple[dict[str, Any], RebalanceCounts | None]:
    """One IMP step of an arm: prune its previous masks, and rebalance them in the u-Ticket arm.

    Args:
      cfg: the run's configuration (pruning and rebalance settings).
      stage: the stage being set up (its arm decides whether to rebalance).
      previous: the arm's previous round (flat masks and trained params).
      order: prunable layer paths in network order.
      like: a params tree giving the structure for the mask tree.
      key: key of the random rebalance policy.

    Returns:
      `(masks_flat, counts)`: the new flat masks in network order, and for the u-Ticket arm the
      total regrown, dropped and capacity-capped counts (else None).
    """
    masks_tree = unflatten(previous.masks, like)
    pruned = pruning.prune_magnitude(
        previous.trained, masks_tree, cfg.prune_percent, scope=cfg.scope
    )
    masks_flat = _order(flatten(pruned), order)
    if stage.arm != "uticket":
        return masks_flat, None
    masks_flat, report = workload.rebalance_network(
        masks_flat,
        _order(flatten(previous.trained), order),
        n_pe=cfg.n_pe,
        mapping=cfg.mapping,
        policy=cfg.policy,
        target=cfg.target,
        key=key,
        skip_first=cfg.skip_first_layer,
    )
    totals = {
        k: sum(int(getattr(r, k)) for r in report.layers) for k in ("regrown", "dropped", "capped")
    }
    return masks_flat, RebalanceCounts(**totals)


def stage_masks(
    setup: RunSetup, state: RunState, stage: Stage
) -> tuple[dict[str, Any], RebalanceCounts | None]:
    """The masks `stage` trains under: dense in round 0, else `next_masks` of its arm.

    Args:
      setup: from `setup_run`.
      state: the run state before the stage.
      stage: the stage.

    Returns:
      `(masks_flat, counts)` as `next_masks` gives them (counts None in round 0).
    """
    if stage.arm == "dense":
        return setup.dense_masks, None
    return next_masks(
        setup.cfg,
        stage,
        state.arms[stage.arm],
        setup.order,
        like=setup.trainer.variables["params"],
        key=jax.random.fold_in(setup.rebalance_key, stage.round),
    )


def start_state(
    setup: RunSetup, state: RunState, progress: Progress, stage: Stage, masks_flat: dict
) -> train_lib.TrainState:
    """The train state `stage` starts (epoch 0) or resumes (later epochs) from, replicated.

    Args:
      setup: from `setup_run`.
      state: the run state (its rewind point, or the checkpointed train arrays).
      progress: the run's progress (its epoch says start or resume).
      stage: the stage.
      masks_flat: the stage's masks.

    Returns:
      Round 0 from the initialization, a pruning round from the rewind point (its schedule at
      `stage.first_epoch`), a resumed stage from the checkpointed arrays; masked, on every
      device.
    """
    variables = setup.trainer.variables
    masks_tree = unflatten(masks_flat, variables["params"])
    if progress.epoch == 0:
        start = variables if stage.arm == "dense" else state.rewind._asdict()
        train_state = fresh_state(setup.trainer, stage.timesteps, start, masks_tree)
        if stage.first_epoch:
            train_state = train_lib.start_schedule_at(
                train_state, stage.first_epoch * setup.steps_per_epoch
            )
    else:
        train_state = fresh_state(setup.trainer, stage.timesteps, variables, masks_tree)
        train_state = train_state.replace(**state.train._asdict())
    return loop.replicate(setup.dp, train_state)


def train_epoch(
    setup: RunSetup,
    dataset: data_lib.Dataset,
    stage: Stage,
    train_state: train_lib.TrainState,
    state: RunState,
    progress: Progress,
    *,
    bars: bool = True,
) -> tuple[train_lib.TrainState, RunState, Progress]:
    """Trains the stage's next epoch, and evaluates it when `cfg.eval_every` says so.

    `progress.epoch` counts the epochs the stage has trained; the schedule's epoch (its batch
    order, learning rates, the epoch record's `"epoch"`) is `stage.first_epoch` plus that. The
    schedule's last epoch is always evaluated, and that pass also measures the input spike rates
    of the trained net (the stage record's activity-aware figures).

    Args:
      setup: from `setup_run`.
      dataset: the data.
      stage: the stage being trained.
      train_state: its train state.
      state: the run state (its train arrays, and in round 0 the rewind point, are updated).
      progress: the run's progress (epoch advanced, the epoch's record appended).
      bars: progress bars.

    Returns:
      `(train_state, state, progress)` after the epoch.
    """
    cfg, epoch = setup.cfg, stage.first_epoch + progress.epoch
    train_state, record = loop.run_epoch(
        train_state,
        dataset,
        epoch=epoch,
        batch_size=cfg.batch_size,
        key=jax.random.fold_in(setup.data_key, stage.round),
        dp=setup.dp,
        eval_batch_size=cfg.eval_batch_size,
        test=loop.eval_due(epoch, cfg.epochs, cfg.eval_every),
        spike_rates=epoch + 1 == cfg.epochs,
        desc=f"round {stage.round} {stage.arm} epoch {epoch}",
        progress=bars,
    )
    rewind = state.rewind
    if stage.arm == "dense" and epoch + 1 == cfg.rewind_epoch:
        rewind = RewindPoint(train_state.params, train_state.batch_stats)
    state = state._replace(train=TrainArrays.of(train_state), rewind=rewind)
    progress = progress.replace(epoch=progress.epoch + 1, history=(*progress.history, record))
    return train_state, state, progress


def keep_trained(
    setup: RunSetup,
    dataset: data_lib.Dataset,
    state: RunState,
    stage: Stage,
    train_state: train_lib.TrainState,
    masks_flat: dict,
) -> tuple[RunState, ETChoice | None]:
    """Stores a finished stage's masks and trained params as its arm's latest round.

    Round 0 becomes every arm's starting point, and chooses the early-time ticket when `cfg.et`.

    Args:
      setup: from `setup_run`.
      dataset: the data (the early-time ticket's test batch).
      state: the run state.
      stage: the finished stage.
      train_state: its trained state.
      masks_flat: its masks.

    Returns:
      `(state, et)`: the new run state and, after round 0 with `cfg.et`, the early-time choice.
    """
    cfg, params = setup.cfg, train_state.params
    if stage.arm != "dense":
        return state._replace(arms={**state.arms, stage.arm: ArmState(masks_flat, params)}), None
    state = state._replace(arms={a: ArmState(setup.dense_masks, params) for a in cfg.arms})
    if not cfg.et:
        return state, None
    trained = {"params": params, "batch_stats": train_state.batch_stats}
    return state, choose_et_timesteps(cfg, trained, dataset, setup.trainer.model_for)


def choose_et_timesteps(
    cfg: LTHConfig, variables: Any, dataset: Any, model_for: Callable[[int], Any]
) -> ETChoice:
    """Early-time ticket: the smallest candidate `T` whose output stays close to the full `T`'s.

    Closeness on the first `eval_batch_size` test images: mean KL(p_full || p_T) / log(classes),
    with p the softmax of the time-averaged logits; a candidate is close when that is at most
    `et_threshold`. Candidates >= `cfg.timesteps` are skipped.

    Args:
      cfg: the run's configuration (`timesteps`, `et_candidates`, `et_threshold`).
      variables: the trained `{"params", "batch_stats"}`.
      dataset: anything with `test_images` and `num_classes`.
      model_for: `model_for(t)` is the run's model at `t` steps (its `apply` gives
        `[t, B, classes]` logits).

    Returns:
      The `ETChoice`: the chosen `T` (the full `T` when no candidate is close), every
      candidate's divergence, the threshold.
    """
    x = jnp.asarray(dataset.test_images[: cfg.eval_batch_size])

    def log_probs(t):
        """Log-softmax of the time-averaged logits at `t` steps."""
        logits = model_for(t).apply(variables, x, train=False)  # [t, B, classes]
        return jax.nn.log_softmax(logits.mean(0), -1)

    full = log_probs(cfg.timesteps)
    divergences = {}
    for t in sorted(set(cfg.et_candidates)):
        if t >= cfg.timesteps:
            continue
        lp = log_probs(t)
        kl = jnp.sum(jnp.exp(full) * (full - lp), -1).mean() / jnp.log(dataset.num_classes)
        divergences[t] = float(kl)
    chosen = next((t for t, d in divergences.items() if d <= cfg.et_threshold), cfg.timesteps)
    return ETChoice(timesteps=chosen, normalized_kl=divergences, threshold=cfg.et_threshold)


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
      The `StageRecord`.
    """
    cfg, history = setup.cfg, progress.history
    rates = history[-1]["spike_rates"]  # measured with the last epoch's test accuracy
    sparsity = sparsity_report(masks_flat)
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
        hardware=hardware_figures(cfg, setup.specs, masks_flat, rates),
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
        f" energy {hw['energy_total']:.4g} J ({record.seconds:.1f} s)"
    )


def weights_of(setup: RunSetup, train_state: train_lib.TrainState) -> dict[str, Any]:
    """The trained kernels of the prunable layers, flat, in network order."""
    return _order(flatten(train_state.params), setup.order)


def rest_of(setup: RunSetup, train_state: train_lib.TrainState) -> dict[str, Any]:
    """The trained variables that `weights_of` leaves out, flat: `params/<path>` (BN scales and
    shifts, biases, kernels that are never pruned) and `batch_stats/<path>` (BN running
    statistics). With the prunable kernels they make the complete inference model."""
    kernels = set(setup.order)
    rest = {f"params/{k}": v for k, v in flatten(train_state.params).items() if k not in kernels}
    rest.update({f"batch_stats/{k}": v for k, v in flatten(train_state.batch_stats).items()})
    return rest
