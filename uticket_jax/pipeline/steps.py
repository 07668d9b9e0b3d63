"""The pipeline's steps, each a function of typed values (see `pipeline.state`).

- `next_masks` / `stage_masks`: one IMP step of an arm (prune, and rebalance in the u-Ticket arm);
- `start_state`, `train_epoch`, `keep_trained`: train a stage and keep its result (with
  `channel_rates`, the firing rates its last evaluation measured per input channel);
- `choose_et_timesteps`: the early-time ticket.

What stays fixed for a run is `pipeline.setup`'s; what a stage reports is `pipeline.records`'.
Masks travel as flat `{path: kernel}` dicts in network order (the mask files' format): pruning and
u-Ticket are pytree transforms that take them as they are, and a mask tree over the params is
built once per stage, for training (`start_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import data as data_lib
from uticket_jax import workload
from uticket_jax.pipeline.config import LTHConfig, Stage
from uticket_jax.pipeline.setup import RunSetup, fresh_state, kernels, ordered
from uticket_jax.pipeline.state import (
    ArmState,
    ETChoice,
    Progress,
    RebalanceCounts,
    RewindPoint,
    RunState,
    TrainArrays,
)
from uticket_jax.sparsity import pruning
from uticket_jax.sparsity.masks import unflatten
from uticket_jax.training import loop
from uticket_jax.training import step as train_lib


def next_masks(
    cfg: LTHConfig,
    stage: Stage,
    previous: ArmState,
    order: tuple[str, ...] | list[str],
    *,
    key: jax.Array,
) -> tuple[dict[str, Any], RebalanceCounts | None]:
    """One IMP step of an arm: prune its previous masks, and rebalance them in the u-Ticket arm.

    Args:
      cfg: the run's configuration (pruning and rebalance settings).
      stage: the stage being set up (its arm decides whether to rebalance).
      previous: the arm's previous round (flat masks and trained params).
      order: prunable layer paths in network order (pruning's ties, u-Ticket's analysed layers
        and per-layer keys follow it).
      key: key of the random rebalance policy.

    Returns:
      `(masks_flat, counts)`: the new flat masks in network order, and for the u-Ticket arm the
      total regrown, dropped and capacity-capped counts (else None). Target "expected_work"
      weighs every weight by the firing rate of its input channel in `previous.rates` (measured
      on the arm's previous trained net).
    """
    weights = kernels(previous.trained, order)
    masks = pruning.prune_magnitude(
        weights, ordered(previous.masks, order), cfg.prune_percent, scope=cfg.scope
    )
    if stage.arm != "uticket":
        return dict(masks), None
    masks, report = workload.rebalance_network(
        masks,
        weights,
        n_pe=cfg.n_pe,
        mapping=cfg.mapping,
        policy=cfg.policy,
        target=cfg.target,
        key=key,
        skip_first=cfg.skip_first_layer,
        costs=rate_costs(previous.rates, weights) if cfg.target == workload.EXPECTED_WORK else None,
    )
    totals = {
        k: sum(int(getattr(r, k)) for r in report.layers) for k in ("regrown", "dropped", "capped")
    }
    return masks, RebalanceCounts(**totals)


def rate_costs(rates: dict[str, Any], weights: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-input-channel rates `{path: [c_in]}` as costs broadcasting to each kernel of `weights`
    (`[1, 1, c_in, 1]` conv, `[c_in, 1]` dense), clipped to `[0, 1]`."""
    out = {}
    for k, w in weights.items():
        shape = [1] * np.ndim(w)
        shape[-2] = np.shape(w)[-2]
        out[k] = np.clip(np.asarray(rates[k], np.float32), 0, 1).reshape(shape)
    return out


def channel_rates(setup: RunSetup, history: tuple[dict, ...]) -> dict[str, np.ndarray]:
    """`{path: [c_in] float32}` of every prunable layer: the input-channel firing rates that the
    stage's last evaluation measured (`history[-1]["channel_rates"]`), ones where none was."""
    measured = history[-1].get("channel_rates", {}) if history else {}
    out = {}
    for k, mask in setup.dense_masks.items():
        ones = np.ones(np.shape(mask)[-2], np.float32)
        out[k] = np.asarray(measured[k], np.float32) if k in measured else ones
    return out


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
    rates: dict[str, Any],
) -> tuple[RunState, ETChoice | None]:
    """Stores a finished stage's masks, trained params and channel rates as its arm's latest
    round.

    Round 0 becomes every arm's starting point, and chooses the early-time ticket when `cfg.et`.

    Args:
      setup: from `setup_run`.
      dataset: the data (the early-time ticket's test batch).
      state: the run state.
      stage: the finished stage.
      train_state: its trained state.
      masks_flat: its masks.
      rates: its input-channel firing rates (`channel_rates`).

    Returns:
      `(state, et)`: the new run state and, after round 0 with `cfg.et`, the early-time choice.
    """
    cfg, params = setup.cfg, train_state.params
    if stage.arm != "dense":
        arm = ArmState(masks_flat, params, rates)
        return state._replace(arms={**state.arms, stage.arm: arm}), None
    state = state._replace(arms={a: ArmState(setup.dense_masks, params, rates) for a in cfg.arms})
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
