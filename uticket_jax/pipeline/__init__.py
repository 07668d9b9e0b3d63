"""The u-Ticket pipeline: lottery-ticket IMP with and without workload rebalancing, side by side."""

from uticket_jax.pipeline.runner import (
    ARMS,
    PRUNABLE,
    LTHConfig,
    Stage,
    choose_et_timesteps,
    next_masks,
    run,
    stage_at,
)

__all__ = [
    "ARMS",
    "PRUNABLE",
    "LTHConfig",
    "Stage",
    "choose_et_timesteps",
    "next_masks",
    "run",
    "stage_at",
]
