"""The u-Ticket pipeline: lottery-ticket IMP with and without workload rebalancing, side by side.

`config` (what defines a run: `LTHConfig`, its stages), `state` (the run state and records,
typed), `setup` (what stays fixed for a run), `steps` (the step functions), `records` (what a
stage reports), `runner` (`run`: a loop over `run_stage`).
"""

from uticket_jax.pipeline.config import ARMS, PRUNABLE, RETRAIN, LTHConfig, Stage, stage_at
from uticket_jax.pipeline.records import hardware_figures, stage_line, stage_record
from uticket_jax.pipeline.runner import run, run_stage
from uticket_jax.pipeline.setup import RunSetup, Trainer, fresh_state, make_trainer, setup_run
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
from uticket_jax.pipeline.steps import choose_et_timesteps, next_masks

__all__ = [
    "ARMS",
    "PRUNABLE",
    "RETRAIN",
    "ArmState",
    "ETChoice",
    "HardwareFigures",
    "LTHConfig",
    "Progress",
    "RebalanceCounts",
    "RewindPoint",
    "RunSetup",
    "RunState",
    "Stage",
    "StageRecord",
    "TrainArrays",
    "Trainer",
    "choose_et_timesteps",
    "fresh_state",
    "hardware_figures",
    "make_trainer",
    "next_masks",
    "run",
    "run_stage",
    "setup_run",
    "stage_at",
    "stage_line",
    "stage_record",
]
