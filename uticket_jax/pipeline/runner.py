"""The u-Ticket pipeline: lottery-ticket IMP with and without workload rebalancing, side by side.

Procedure (Frankle & Carbin 2019 with late rewinding, Frankle et al. 2020; u-Ticket: Yin et al.,
IEEE TETCI 2024, Alg. 1)::

  round 0 ("dense"): train the dense SNN; keep the rewind point θ_k, the weights and BN
    statistics after `rewind_epoch` epochs (0 = the initialization).
  round r = 1..R, for each arm (`lth`, `uticket`), starting from that arm's round r-1:
    1. prune `prune_percent` % of the surviving weights by |w| of the trained weights
       (`global` or `layer` scope);
    2. u-Ticket arm only: rebalance the new masks so every PE of a group carries the same load
       (`workload.rebalance_network`; the magnitude policy scores with the same trained weights);
    3. rewind the surviving weights to θ_k, fresh optimizer, and retrain: `retrain="full"` all
       `epochs` epochs with the whole schedule (the u-Ticket authors' code), `"rest"` epochs
       k..`epochs`-1 with the schedule from epoch k on (rewinding as Frankle et al. 2020 and
       open_lth define it: the round trains what round 0 trained after θ_k).
  Both arms share round 0, the seed and the per-round batch order, so the comparison is paired.
  Optional early-time ticket (Kim et al., ECCV 2022): after round 0, the smallest `T` among
  `et_candidates` whose time-averaged output on one batch is within `et_threshold` of the full-`T`
  output (KL divergence normalized by log(classes)) is used by the search rounds 1..R-1; the final
  round R trains with the full `T`.

Every stage (round 0, then (round, arm) pairs) ends with a `StageRecord`: sparsity, accuracy,
input spike rates per layer, rebalance counts, and the PE-array simulator's figures for the
configured hardware (plain and activity-aware). The run is a pure function of its config and
seed: it is checkpointed after every epoch and every stage (`RunState` as arrays, `Progress` as
JSON), and a resumed run ends with the same masks and figures as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from uticket_jax import data as data_lib
from uticket_jax.pipeline import records, steps
from uticket_jax.pipeline import setup as setup_lib
from uticket_jax.pipeline.config import LTHConfig, stage_at
from uticket_jax.pipeline.state import Progress, RunState, StageRecord
from uticket_jax.training import loop
from uticket_jax.training.checkpoint import Checkpointer

OnStageEnd = Callable[
    [StageRecord, dict[str, Any], dict[str, Any], Sequence[StageRecord], dict[str, Any]], None
]


def save(checkpointer: Checkpointer | None, state: RunState, progress: Progress) -> Progress:
    """Saves `(state, progress)` as the next numbered checkpoint (nothing when no checkpointer).

    Args:
      checkpointer: where to save, or None.
      state: the run state (arrays).
      progress: the run's progress (JSON); its save count is advanced.

    Returns:
      `progress` with the new save count.
    """
    if checkpointer is None:
        return progress
    progress = progress.replace(saves=progress.saves + 1)
    checkpointer.save(progress.saves, state, progress.to_json())
    return progress


def run_stage(
    setup: setup_lib.RunSetup,
    dataset: data_lib.Dataset,
    state: RunState,
    progress: Progress,
    *,
    checkpointer: Checkpointer | None = None,
    on_stage_end: OnStageEnd | None = None,
    bars: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[RunState, Progress]:
    """Runs (or finishes, after a resume) the stage at `progress.stage`.

    Args:
      setup: from `setup.setup_run`.
      dataset: the data.
      state: the run state before the stage (or as checkpointed inside it).
      progress: the run's progress.
      checkpointer: saves after every epoch and at the end; None: no checkpoints.
      on_stage_end: called as in `run`.
      bars: progress bars.
      log: where the stage's one-line summary goes.

    Returns:
      `(state, progress)` after the stage, `progress.stage` advanced.
    """
    et_t = progress.et.timesteps if progress.et is not None else None
    stage = stage_at(setup.cfg, progress.stage, et_t)
    masks_flat, counts = steps.stage_masks(setup, state, stage)
    if progress.epoch == 0:
        progress = progress.replace(history=(), stage_seconds=0.0)
    train_state = steps.start_state(setup, state, progress, stage, masks_flat)
    started = time.perf_counter()
    while stage.first_epoch + progress.epoch < setup.cfg.epochs:
        train_state, state, progress = steps.train_epoch(
            setup, dataset, stage, train_state, state, progress, bars=bars
        )
        now = time.perf_counter()
        progress = progress.replace(stage_seconds=progress.stage_seconds + now - started)
        started = now
        progress = save(checkpointer, state, progress)
    rates = steps.channel_rates(setup, progress.history)
    state, et = steps.keep_trained(setup, dataset, state, stage, train_state, masks_flat, rates)
    if et is not None:
        progress = progress.replace(et=et)
    record = records.stage_record(
        setup, dataset, stage, train_state, masks_flat, counts, progress, started=started
    )
    progress = progress.replace(records=(*progress.records, record))
    log(records.stage_line(record))
    if on_stage_end is not None:
        weights = records.weights_of(setup, train_state)
        rest = records.rest_of(setup, train_state)
        on_stage_end(record, masks_flat, weights, progress.records, rest)
    progress = progress.replace(stage=progress.stage + 1, epoch=0)
    return state, save(checkpointer, state, progress)


def run(
    cfg: LTHConfig,
    dataset: data_lib.Dataset,
    *,
    checkpointer: Checkpointer | None = None,
    on_stage_end: OnStageEnd | None = None,
    dp: loop.DataParallel | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[StageRecord]:
    """Runs (or resumes, when `checkpointer` holds a checkpoint) the whole comparison.

    Args:
      cfg: the run's configuration (validated here).
      dataset: the data (the whole training set: `cfg.train_subset` is taken here).
      checkpointer: where to save after every epoch and stage; a run resumes from its newest
        checkpoint that can be restored (`Checkpointer.restore_newest`). None: no checkpoints.
      on_stage_end: `f(record, masks_flat, weights_flat, records_so_far, rest_flat)` after each
        stage, before its checkpoint, with the stage's masks and trained kernels of the prunable
        layers in network order, and the rest of its trained variables (`records.rest_of`: BN
        statistics, scales, shifts, biases; with the kernels a complete inference model). The
        launcher writes files there; it must be idempotent.
      dp: data-parallel shardings (default: all devices).
      progress: progress bars.
      log: where the one-line stage summaries go.

    Returns:
      One `StageRecord` per stage, in run order.
    """
    cfg.validate()
    dataset = data_lib.take_train_subset(dataset, cfg.train_subset)
    dp = loop.data_parallel() if dp is None else dp
    loop.check_batch_size(cfg.batch_size, dataset.train_images.shape[0], dp)
    setup = setup_lib.setup_run(cfg, dataset, dp)
    state, prog = setup_lib.initial_state(setup), Progress()
    if checkpointer is not None and checkpointer.latest_step() is not None:
        # The newest step that restores: damaged newer ones are reported and skipped.
        state, meta = checkpointer.restore_newest(state, check_meta=Progress.from_json, log=log)
        prog = Progress.from_json(meta)
        log(f"resumed from checkpoint {prog.saves}: stage {prog.stage}, epoch {prog.epoch}")
    while prog.stage < len(cfg.stages()):
        state, prog = run_stage(
            setup,
            dataset,
            state,
            prog,
            checkpointer=checkpointer,
            on_stage_end=on_stage_end,
            bars=progress,
            log=log,
        )
    return list(prog.records)
