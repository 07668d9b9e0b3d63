"""The u-Ticket pipeline: lottery-ticket IMP with and without workload rebalancing, side by side.

`config` (what defines a run: `LTHConfig`, its stages), `state` (the run state and records,
typed), `steps` (the step functions), `runner` (`run`: a loop over `run_stage`).
"""

from uticket_jax.pipeline.config import ARMS, PRUNABLE, RETRAIN, LTHConfig, Stage, stage_at
from uticket_jax.pipeline.runner import run, run_stage
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
from uticket_jax.pipeline.steps import (
    RunSetup,
    Trainer,
    choose_et_timesteps,
    fresh_state,
    hardware_figures,
    make_trainer,
    next_masks,
)

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
    "stage_at",
]
