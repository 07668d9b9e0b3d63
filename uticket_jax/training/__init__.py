"""Masked SNN training: optimizers and jitted steps (`step`), epoch loops and data parallelism
(`loop`), orbax checkpoints (`checkpoint`, imported on its own: it pulls in orbax)."""

from uticket_jax.training.loop import (
    DataParallel,
    TrainingDiverged,
    check_batch_size,
    data_parallel,
    evaluate,
    fit,
    init_variables,
    replicate,
    shard,
    train_epoch,
)
from uticket_jax.training.step import (
    OPTIMIZERS,
    SCHEDULES,
    TrainState,
    create_train_state,
    eval_step,
    make_optimizer,
    make_schedule,
    masked,
    snn_loss,
    start_schedule_at,
    train_step,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "DataParallel",
    "TrainState",
    "TrainingDiverged",
    "check_batch_size",
    "create_train_state",
    "data_parallel",
    "eval_step",
    "evaluate",
    "fit",
    "init_variables",
    "make_optimizer",
    "make_schedule",
    "masked",
    "replicate",
    "shard",
    "snn_loss",
    "start_schedule_at",
    "train_epoch",
    "train_step",
]
