"""What stays fixed for a pipeline run: the model and optimizer (`Trainer`), the prunable layers in
network order, the simulator's layer specs, the keys (`RunSetup`), and the state a run starts from.
`make_trainer` and `fresh_state` are shared with `experiments/train.py`.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from uticket_jax import data as data_lib
from uticket_jax import models
from uticket_jax.hardware.layers import LayerSpec, specs_from_layers
from uticket_jax.pipeline.config import LTHConfig
from uticket_jax.pipeline.state import ArmState, RewindPoint, RunState, TrainArrays
from uticket_jax.sparsity.masks import flatten, make_masks, unflatten
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


def ordered(flat: Mapping[str, Any], order: Sequence[str]) -> collections.OrderedDict:
    """`flat`'s entries for the paths of `order`, in that order (an `OrderedDict`, which pytree
    transforms read in its own order: network order for pruning's ties and u-Ticket's keys)."""
    return collections.OrderedDict((k, flat[k]) for k in order)


def kernels(params: Any, order: Sequence[str]) -> collections.OrderedDict:
    """The prunable kernels of a params tree by path, in network order."""
    return ordered(flatten(params), order)


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
    dense = dict(ordered(prunable, order))
    return RunSetup(cfg, trainer, order, specs, dense, data_key, rebalance_key, dp, steps_per_epoch)


def initial_state(setup: RunSetup) -> RunState:
    """The state a run starts from (and the template a checkpoint is restored into).

    Args:
      setup: from `setup_run`.

    Returns:
      Round 0's fresh train arrays, the initialization as rewind point, dense masks (and all-ones
      channel rates) per arm.
    """
    cfg, variables = setup.cfg, setup.trainer.variables
    ones = {k: np.ones(np.shape(v)[-2], np.float32) for k, v in setup.dense_masks.items()}
    template = fresh_state(
        setup.trainer, cfg.timesteps, variables, unflatten(setup.dense_masks, variables["params"])
    )
    return RunState(
        train=TrainArrays.of(template),
        rewind=RewindPoint(variables["params"], variables["batch_stats"]),
        arms={a: ArmState(setup.dense_masks, variables["params"], ones) for a in cfg.arms},
    )
