"""Epoch loops around the jitted steps: data-parallel batches, augmentation, progress, NaN guard.

Data parallelism: a 1-D mesh over all devices (axis "data"); each batch is split over it along
the batch axis and the train state is replicated, so the jitted `train_step` runs SPMD with a
gradient all-reduce inserted by XLA. With one device this is the plain single-device path.
On several hosts, call `jax.distributed.initialize()` first (`uticket_jax.launch.distributed`);
every process then draws the same global batches and places the rows of its own devices
(`shard`), so the run equals a one-process run over the same number of devices.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uticket_jax import data as data_lib
from uticket_jax.models import spike_rates as rates_lib
from uticket_jax.training import step as train_lib


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (one-line message: where and what to try)."""


class DataParallel(NamedTuple):
    """Shardings of a data-parallel run: batches split over "data", state replicated."""

    mesh: Mesh
    batch: NamedSharding
    replicated: NamedSharding

    @property
    def size(self) -> int:
        return self.mesh.devices.size


def _bar(iterable, progress: bool, **kw):
    """`iterable` under a tqdm progress bar when `progress` (tqdm comes with the launchers'
    extra, `pip install uticket_jax[experiments]`), else as it is."""
    if not progress:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ValueError(
            "progress: bars need tqdm (pip install 'uticket_jax[experiments]'), or pass "
            "progress=False"
        ) from None
    return tqdm(iterable, **kw)


def data_parallel(devices: list[jax.Device] | None = None) -> DataParallel:
    """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    mesh = Mesh(np.asarray(devices), ("data",))
    return DataParallel(
        mesh, NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    )


def check_batch_size(batch_size: int, n: int, dp: DataParallel, name: str = "batch_size") -> None:
    """Raises ValueError (naming `name`, e.g. `--batch_size`) unless `batch_size` fits the data
    and splits evenly over the devices."""
    if batch_size <= 0 or batch_size > n:
        raise ValueError(f"{name}: must be in [1, {n}] (the training set size), got {batch_size}")
    per_process = dp.size // jax.process_count()
    if batch_size % dp.size:
        raise ValueError(
            f"{name}: {batch_size} does not split over {dp.size} devices; use a multiple of"
            f" {dp.size} ({per_process} per process)"
        )


def shard(dp: DataParallel, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Places GLOBAL host batches on the mesh, split along axis 0.

    Every process holds the same global batch (the batch order depends only on the run's key);
    with several processes each one places only the rows of its own devices, so the global
    array is the one a single process would build, whatever the number of processes.
    """
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, dp.batch) for a in arrays)
    return tuple(jax.make_array_from_callback(a.shape, dp.batch, a.__getitem__) for a in arrays)


def replicate(dp: DataParallel, tree: Any) -> Any:
    """Places a pytree (e.g. the train state) on every device of the mesh.

    With several processes, host-local leaves go through numpy (every process holds the same
    value), since a process cannot place its device's array on another process's devices.
    """
    if jax.process_count() > 1:
        tree = jax.tree.map(
            lambda x: (
                x if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x)
            ),
            tree,
        )
    return jax.device_put(tree, dp.replicated)


def train_epoch(
    state: train_lib.TrainState,
    dataset: data_lib.Dataset,
    *,
    batch_size: int,
    key: jax.Array,
    epoch: int,
    dp: DataParallel,
    desc: str = "train",
    progress: bool = True,
) -> tuple[train_lib.TrainState, dict[str, float]]:
    """One epoch over the shuffled training set; returns the new state and mean loss/accuracy.

    The batch order depends only on `(key, epoch)`, augmentation keys on `(key, epoch, step)`,
    so an epoch replayed from a checkpoint is the same epoch, bit for bit.

    Raises:
      TrainingDiverged: if the epoch's loss is NaN or infinite (checked once per epoch, so the
        caller's last checkpoint is still the last good state).
    """
    order_key, aug_key = jax.random.split(key)
    aug_key = jax.random.fold_in(aug_key, epoch)
    n = dataset.train_images.shape[0]
    steps = data_lib.num_batches(n, batch_size)
    losses, accs = [], []
    it = data_lib.batches(
        dataset.train_images,
        dataset.train_labels,
        batch_size=batch_size,
        key=order_key,
        epoch=epoch,
    )
    for step, (images, labels) in enumerate(
        _bar(it, progress, total=steps, desc=desc, leave=False)
    ):
        images, labels = shard(dp, images, labels)
        if dataset.augment:
            images = data_lib.augment(
                jax.random.fold_in(aug_key, step),
                images,
                flip=dataset.hflip,
                fill=dataset.pad_value,
            )
        state, metrics = train_lib.train_step(state, images, labels)
        losses.append(metrics["loss"])
        accs.append(metrics["accuracy"])
    loss = float(jnp.mean(jnp.stack(losses)))
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss is {loss} in {desc} epoch {epoch}; try a lower --lr or more --timesteps"
        )
    return state, {"loss": loss, "accuracy": float(jnp.mean(jnp.stack(accs)))}


def evaluate(
    state: train_lib.TrainState,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    dp: DataParallel,
    spike_rates: bool = False,
) -> dict[str, Any]:
    """Test loss and accuracy over every example exactly once (BN in eval mode).

    Args:
      state: the (replicated) train state.
      images: `[N, ...]` test images.
      labels: `[N]` labels.
      batch_size: rows per batch (rounded down to a multiple of the devices).
      dp: data-parallel shardings.
      spike_rates: also measure every conv/dense layer's input spike rate in the same pass
        (`"spike_rates"`: `{kernel path: rate}`, as `models.input_spike_rates` gives them), and
        every input channel's (`"channel_rates"`: `{kernel path: [c_in] float32}`).

    Returns:
      `{"loss", "accuracy"}`, and `"spike_rates"`, `"channel_rates"` when asked.
    """
    batch_size = max(dp.size, batch_size - batch_size % dp.size)
    step = train_lib.eval_counts_step if spike_rates else train_lib.eval_step
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    inputs: dict[str, np.ndarray] = {}
    for x, y, valid in data_lib.eval_batches(images, labels, batch_size=batch_size):
        out = step(state, *shard(dp, x, y, valid))
        for k in totals:
            totals[k] += float(out[k])
        if spike_rates:
            rates_lib.add_counts(inputs, out["inputs"])
    count = max(totals["count"], 1.0)
    result: dict[str, Any] = {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count}
    if spike_rates:
        result["spike_rates"] = rates_lib.rates_of(inputs)
        result["channel_rates"] = rates_lib.channel_rates_of(inputs)
    return result


def init_variables(model: Any, image_shape: tuple[int, ...], key: jax.Array) -> dict[str, Any]:
    """Initial `{"params", "batch_stats"}` of a model for images of `image_shape` (H, W, C)."""
    return dict(model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False))


def eval_due(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether epoch `epoch` (0-based) of `epochs` is evaluated: every `eval_every`-th, the last."""
    return epoch + 1 == epochs or (epoch + 1) % eval_every == 0


def run_epoch(
    state: train_lib.TrainState,
    dataset: data_lib.Dataset,
    *,
    epoch: int,
    batch_size: int,
    key: jax.Array,
    dp: DataParallel,
    eval_batch_size: int,
    test: bool = True,
    spike_rates: bool = False,
    desc: str = "train",
    progress: bool = True,
) -> tuple[train_lib.TrainState, dict[str, Any]]:
    """Trains epoch `epoch` (`train_epoch`), then evaluates on the test set when `test`.

    Args:
      state: the replicated train state.
      dataset: the data.
      epoch: the epoch's index (its batch order and augmentation derive from it and `key`).
      batch_size: global batch size.
      key: the run's data key.
      dp: data-parallel shardings.
      eval_batch_size: rows per evaluation batch.
      test: evaluate after the epoch; else the record's test fields are None.
      spike_rates: measure the input spike rates in that evaluation (implies `test`); the record
        gets `"spike_rates"` and `"channel_rates"` (`{kernel path: [c_in] list of floats}`).
      desc: label of the progress bar.
      progress: show the progress bar.

    Returns:
      `(state, record)`, record `{"epoch", "train_loss", "train_accuracy", "test_loss",
      "test_accuracy"}` (and `"spike_rates"`).
    """
    kw = dict(batch_size=batch_size, key=key, epoch=epoch, dp=dp, desc=desc, progress=progress)
    state, stats = train_epoch(state, dataset, **kw)
    record: dict[str, Any] = {"epoch": epoch, "train_loss": stats["loss"]}
    record.update(train_accuracy=stats["accuracy"], test_loss=None, test_accuracy=None)
    if test or spike_rates:
        images, labels = dataset.test_images, dataset.test_labels
        kw = dict(batch_size=eval_batch_size, dp=dp, spike_rates=spike_rates)
        out = evaluate(state, images, labels, **kw)
        record.update(test_loss=out["loss"], test_accuracy=out["accuracy"])
        if spike_rates:
            record["spike_rates"] = out["spike_rates"]
            record["channel_rates"] = {k: v.tolist() for k, v in out["channel_rates"].items()}
    return state, record


def fit(
    state: train_lib.TrainState,
    dataset: data_lib.Dataset,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    dp: DataParallel,
    start_epoch: int = 0,
    eval_batch_size: int = 256,
    eval_every: int = 1,
    on_epoch_end: Any = None,
    desc: str = "train",
    progress: bool = True,
) -> tuple[train_lib.TrainState, list[dict[str, Any]]]:
    """Trains epochs `start_epoch` to `epochs - 1`, evaluating on the test set as `eval_every` says.

    Args:
      state: the train state to start from (fresh, or restored from a checkpoint).
      dataset: the data.
      epochs: total epochs of the run (> 0); the loop resumes at `start_epoch`.
      batch_size: global batch size (split over `dp`).
      key: the run's data key (batch order and augmentation derive from it and the epoch).
      dp: data-parallel shardings (`data_parallel()`).
      start_epoch: first epoch to run (for resuming).
      eval_batch_size: rows per evaluation batch.
      eval_every: evaluate after every `eval_every`-th epoch and after the last (1: every epoch).
      on_epoch_end: optional `f(epoch, state, record)` called after each epoch (checkpointing).
      desc: label of the progress bar.
      progress: show progress bars.

    Returns:
      The final state and one `run_epoch` record per epoch run (the test fields None in the
      epochs not evaluated).
    """
    if epochs <= 0:
        raise ValueError(f"epochs: must be >= 1, got {epochs}")
    if eval_every <= 0:
        raise ValueError(f"eval_every: must be >= 1, got {eval_every}")
    check_batch_size(batch_size, dataset.train_images.shape[0], dp)
    state = replicate(dp, state)
    history = []
    bar = _bar(range(start_epoch, epochs), progress, desc=desc, leave=False)
    kw = dict(batch_size=batch_size, key=key, dp=dp, eval_batch_size=eval_batch_size)
    kw["progress"] = progress
    for epoch in bar:
        test, name = eval_due(epoch, epochs, eval_every), f"{desc} epoch {epoch}"
        state, record = run_epoch(state, dataset, epoch=epoch, test=test, desc=name, **kw)
        if progress:
            shown = {"loss": f"{record['train_loss']:.3f}"}
            if record["test_accuracy"] is not None:
                shown["test_acc"] = f"{record['test_accuracy']:.3f}"
            bar.set_postfix(**shown)
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, state, record)
    return state, history
