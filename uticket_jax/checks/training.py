"""Training hyper-parameters and run sizes: finite, in range, checked before anything runs.

A NaN or negative learning rate would otherwise surface only after a whole epoch, as a diverged
loss blamed on that epoch, after the work directory was written. Used by `LTHConfig.validate`,
`experiments/train.py` and `training.step.make_optimizer` (one rule for all three).
"""

from __future__ import annotations

from typing import Any

from uticket_jax.checks.numbers import INT32_MAX, check_float, check_int, check_seed

# SGD momentum is a decay factor: 1 never forgets a gradient (the heavy ball never settles) and
# beyond 1 the velocity grows without bound.
MOMENTUM_MAX = 1.0


def check_optimizer_settings(
    *, lr: Any, momentum: Any, weight_decay: Any, prefix: str = ""
) -> tuple[float, float, float]:
    """`(lr, momentum, weight_decay)` as floats, checked.

    lr: finite and > 0; momentum: finite, in [0, 1); weight_decay: finite and >= 0.

    Args:
      lr, momentum, weight_decay: the values.
      prefix: put before each name in a message (`"--"` where they are flags).

    Raises:
      ValueError: naming the first bad value and its allowed range.
    """
    lr = check_float(f"{prefix}lr", lr, minimum=0.0, open_min=True)
    momentum = check_float(
        f"{prefix}momentum", momentum, minimum=0.0, maximum=MOMENTUM_MAX, open_max=True
    )
    weight_decay = check_float(f"{prefix}weight_decay", weight_decay, minimum=0.0)
    return lr, momentum, weight_decay


def check_run_sizes(prefix: str = "", **sizes: Any) -> dict[str, int]:
    """Positive int32 counts (epochs, timesteps, batch sizes, ...) by name, checked.

    Example: `check_run_sizes("--", epochs=cfg.epochs, timesteps=cfg.timesteps)`.
    """
    return {k: check_int(f"{prefix}{k}", v, minimum=1) for k, v in sizes.items()}


def check_seed_value(seed: Any, prefix: str = "") -> int:
    """The run's seed (`--seed`): an integer in [0, 2**32 - 1]."""
    return check_seed(f"{prefix}seed", seed)


def check_total_steps(epochs: int, batches_per_epoch: int, prefix: str = "") -> int:
    """`epochs * batches_per_epoch` optimizer steps, which the step counter holds as int32."""
    total = int(epochs) * int(batches_per_epoch)
    if total > INT32_MAX:
        raise ValueError(
            f"{prefix}epochs: {epochs} epochs of {batches_per_epoch} batches are {total} optimizer"
            f" steps; the step counter holds at most {INT32_MAX}"
        )
    return total
