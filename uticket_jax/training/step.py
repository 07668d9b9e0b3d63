"""Masked SNN training: optimizers, a train state holding only arrays, jitted train and eval steps.

Masks compose with optax: `masked(tx)` wraps any gradient transformation so that pruned entries get
exactly zero updates. The gradients are masked before the inner transformation (so momentum and
Adam moments of pruned weights stay zero) and the updates after it (so nothing the inner chain adds,
e.g. decoupled weight decay, can move a pruned weight). With pruned weights stored as exact zeros
(see `uticket_jax.sparsity.masks.apply_masks`), they stay exactly zero through every step.

Loss (direct-encoded SNNs emit logits per step, `[T, B, classes]`): the mean over steps of the
cross-entropy, `L = 1/T Σ_t CE(logits_t, y)`; the prediction is `argmax_c 1/T Σ_t logits_t`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from uticket_jax import checks
from uticket_jax.models import spike_rates
from uticket_jax.sparsity.masks import apply_masks

PyTree = Any
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")


def masked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps `inner` so entries whose mask is False get exactly zero updates.

    The masks come as an extra argument, `tx.update(grads, state, params, masks=masks)`, so they
    stay traced (a new mask needs no recompilation) and the optimizer state stays the inner one.
    `masks=None`, or `None` leaves, leave the updates untouched.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from uticket_jax import training
      >>> tx = training.masked(optax.sgd(0.5))
      >>> params = {"w": jnp.ones(3)}
      >>> masks = {"w": jnp.array([True, False, True])}
      >>> updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params, masks=masks)
      >>> updates["w"].tolist()
      [-0.5, 0.0, -0.5]
    """

    def update(updates, state, params=None, *, masks=None, **extra_args):
        del extra_args
        if masks is not None:
            updates = apply_masks(updates, masks)
        updates, state = inner.update(updates, state, params)
        if masks is not None:
            updates = apply_masks(updates, masks)
        return updates, state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def make_schedule(
    name: str,
    lr: float,
    total_steps: int,
    *,
    step_every: int | None = None,
    step_gamma: float = 0.1,
) -> optax.Schedule:
    """Learning-rate schedule: `cosine` (to 0 over `total_steps`), `step` or `constant`.

    Args:
      name: one of `SCHEDULES`.
      lr: peak learning rate, > 0.
      total_steps: optimizer steps of the whole run, > 0.
      step_every: for `step`, multiply the rate by `step_gamma` every `step_every` steps
        (default: a third of the run).
    """
    lr = checks.check_float("lr", lr, minimum=0.0, open_min=True)
    total_steps = checks.check_int("total_steps", total_steps, minimum=1)  # an int32 step count
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps)
    if name == "step":
        every = step_every or max(1, total_steps // 3)
        return optax.exponential_decay(lr, every, step_gamma, staircase=True)
    if name == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"schedule: unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")


def make_optimizer(
    name: str = "sgd",
    *,
    lr: float = 0.1,
    total_steps: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
) -> optax.GradientTransformationExtraArgs:
    """The masked optimizer: SGD with momentum or Adam, L2 weight decay, and a schedule.

    Weight decay is added to the gradient before the optimizer (PyTorch's `weight_decay`, as in
    the paper's code), so `sgd` is `torch.optim.SGD(lr, momentum, weight_decay)`.

    Args:
      name: `sgd` or `adam`.
      lr: peak learning rate.
      total_steps: optimizer steps of the whole run (for the schedule).
      momentum: SGD momentum (ignored by Adam).
      weight_decay: L2 coefficient, >= 0.
      schedule: one of `SCHEDULES`.
    """
    lr, momentum, weight_decay = checks.check_optimizer_settings(
        lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    sched = make_schedule(schedule, lr, total_steps)
    if name == "sgd":
        opt = optax.sgd(sched, momentum=momentum if momentum > 0 else None)
    elif name == "adam":
        opt = optax.adam(sched)
    else:
        raise ValueError(f"optimizer: unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return masked(optax.chain(optax.add_decayed_weights(weight_decay), opt))


@flax.struct.dataclass
class TrainState:
    """Arrays of a training run; the model's `apply` and the optimizer are static fields."""

    step: jnp.ndarray
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    masks: PyTree
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformationExtraArgs = flax.struct.field(pytree_node=False)


def create_train_state(
    apply_fn: Callable,
    variables: PyTree,
    tx: optax.GradientTransformationExtraArgs,
    masks: PyTree | None = None,
) -> TrainState:
    """A fresh state: params (pruned entries zeroed when `masks` is given) and a new optimizer.

    Args:
      apply_fn: the Flax module's `apply`.
      variables: `{"params": ..., "batch_stats": ...}` (from `init`, or a rewind point).
      tx: an optimizer from `make_optimizer` (or any `masked(...)` transformation).
      masks: mask tree over `params` (`None` leaves for non-prunable), or None for dense.
    """
    params = variables["params"]
    if masks is not None:
        params = apply_masks(params, masks)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        masks=masks,
        apply_fn=apply_fn,
        tx=tx,
    )


def start_schedule_at(state: TrainState, step: int) -> TrainState:
    """`state` with its learning-rate schedule (and `step`) moved to `step`, its moments untouched.

    A fresh optimizer whose schedule starts part-way: retraining from a rewind point at step `k`
    with the rest of the original schedule (Frankle et al. 2020's rewinding, as open_lth's
    `train(start_step=k)` does it: a new optimizer, the schedule stepped `k` times). Only the
    schedule's own counter moves; Adam's bias-correction count and the momentum stay fresh.

    Args:
      state: a train state of a `make_optimizer` optimizer (or any with a schedule).
      step: the schedule step the next update uses, >= 0.

    Returns:
      The new state.

    Raises:
      ValueError: if `step` < 0 or the optimizer has no schedule counter.
    """
    if step < 0:
        raise ValueError(f"step: must be >= 0, got {step}")
    count = jnp.asarray(step, jnp.int32)
    try:
        opt_state = optax.tree_utils.tree_set(
            state.opt_state,
            lambda path, _: getattr(path[-1], "tuple_name", None) == "ScaleByScheduleState",
            count=count,
        )
    except KeyError:
        raise ValueError("state: its optimizer has no learning-rate schedule to move") from None
    return state.replace(step=count, opt_state=opt_state)


def snn_loss(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean over steps and batch of the cross-entropy of per-step logits `[T, B, C]`."""
    if logits.ndim != 3:
        raise ValueError(f"logits: expected [T, B, classes], got shape {logits.shape}")
    labels_t = jnp.broadcast_to(labels, logits.shape[:2])  # [T, B]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels_t).mean()


def _forward(state: TrainState, params, images, train: bool):
    variables = {"params": params, "batch_stats": state.batch_stats}
    if train:
        return state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
    return state.apply_fn(variables, images, train=False), None


@jax.jit
def train_step(state: TrainState, images: jnp.ndarray, labels: jnp.ndarray):
    """One optimizer step on a batch; returns `(state, {"loss", "accuracy"})`.

    Keeps: every weight whose mask is False is exactly zero after the step.
    Batches sharded over devices (batch axis) with replicated state run data-parallel as is.
    """

    def loss_fn(params):
        if state.masks is not None:
            params = apply_masks(params, state.masks)
        logits, new_vars = _forward(state, params, images, train=True)
        return snn_loss(logits, labels), (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, masks=state.masks)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean(jnp.argmax(logits.mean(0), -1) == labels)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, {"loss": loss, "accuracy": accuracy}


def _eval_sums(state: TrainState, images: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray):
    logits, _ = _forward(state, state.params, images, train=False)  # [T, B, C]
    labels_t = jnp.broadcast_to(labels, logits.shape[:2])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_t).mean(0)  # [B]
    correct = jnp.argmax(logits.mean(0), -1) == labels
    w = valid.astype(jnp.float32)
    return {"loss": jnp.sum(ce * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}


@jax.jit
def eval_step(state: TrainState, images: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray):
    """Sums over the valid examples of a batch: `{"loss", "correct", "count"}` (BN in eval mode).

    `valid` `[B]` marks real examples, so a padded last batch counts each example exactly once.
    """
    return _eval_sums(state, images, labels, valid)


@jax.jit
def eval_counts_step(
    state: TrainState, images: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray
):
    """`eval_step`'s sums plus `"inputs"`: every conv/dense layer's `[non-zero inputs, inputs]`
    followed by its non-zero inputs per input channel (`spike_rates.count_inputs(channels=True)`).

    Counted over the valid examples in the same forward pass (`spike_rates.count_inputs`), so the
    test accuracy and the input spike rates of a trained net cost one pass over the test set.
    """
    with spike_rates.count_inputs(valid, channels=True) as counts:
        sums = _eval_sums(state, images, labels, valid)
    return {**sums, "inputs": counts}
