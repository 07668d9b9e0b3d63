r"""Trains a spiking network (dense) and writes its test accuracy.

Example (the embedded digits data, ~20 s on 2 CPU cores):
  python experiments/train.py --workdir runs/train_digits
Fashion-MNIST from the Debian package (`apt-get install dataset-fashion-mnist`; --data_dir to read
it elsewhere), the fmnist net on a fixed 10,000-image stratified subset:
  python experiments/train.py --dataset fashion_mnist --train_subset 10000 --epochs 5 \
      --workdir runs/train_fmnist
Real data from files you have:
  python experiments/train.py --dataset cifar10 --arch vgg16 --data_dir ~/data/cifar \
      --epochs 200 --batch_size 128 --lr 0.1 --timesteps 5 --workdir runs/vgg16_c10
"""

from __future__ import annotations

from uticket_jax.launch import signals

signals.install("train.py", __name__)  # before the heavy imports: a Ctrl-C there is one line

import os
import time

import jax
from absl import flags

from uticket_jax import checks, data, models
from uticket_jax.launch import cli, hostmem, lock, machine, results
from uticket_jax.launch import workdir as workdirs
from uticket_jax.pipeline import setup as pipeline_setup
from uticket_jax.training import loop
from uticket_jax.training import step as train

_DATASET = flags.DEFINE_string("dataset", "digits", f"One of {', '.join(data.DATASET_NAMES)}.")
_ARCH = flags.DEFINE_string(
    "arch",
    None,
    f"One of {', '.join(models.MODEL_NAMES)}; default: digits_snn for digits, fmnist_snn for"
    " fashion_mnist, else vgg16.",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Directory with the dataset files (not digits; Fashion-MNIST defaults to the Debian"
    " package's /usr/share/datasets/fashion-mnist).",
)
_SUBSET = flags.DEFINE_integer(
    "train_subset",
    0,
    "Train on a fixed, class-stratified subset of this many training images (0: all); the"
    " test set stays whole.",
)
_TIMESTEPS = flags.DEFINE_integer("timesteps", 4, "Simulation steps T.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Training epochs.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_LR = flags.DEFINE_float("lr", 0.1, "Peak learning rate.")
_OPT = flags.DEFINE_string("optimizer", "sgd", f"One of {', '.join(train.OPTIMIZERS)}.")
_SCHEDULE = flags.DEFINE_string("schedule", "cosine", f"One of {', '.join(train.SCHEDULES)}.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_WD = flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the init, batch order and augmentation.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/train", "Where results.json goes.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Start afresh; earlier results move to WORKDIR/replaced-<time>/."
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


_DEFAULT_ARCH = {"digits": "digits_snn", "fashion_mnist": "fmnist_snn"}


def _choice(flag, allowed) -> str:
    if flag.value not in allowed:
        raise ValueError(f"--{flag.name}: unknown {flag.value!r}; allowed: {', '.join(allowed)}")
    return flag.value


def _check_flags() -> str:
    """Every flag checked before anything is read or written; returns the architecture."""
    _choice(_DATASET, data.DATASET_NAMES)
    arch = _ARCH.value or _DEFAULT_ARCH.get(_DATASET.value, "vgg16")
    if arch not in models.MODEL_NAMES:
        raise ValueError(f"--arch: unknown {arch!r}; allowed: {', '.join(models.MODEL_NAMES)}")
    _choice(_OPT, train.OPTIMIZERS)
    _choice(_SCHEDULE, train.SCHEDULES)
    checks.check_run_sizes(
        "--", timesteps=_TIMESTEPS.value, epochs=_EPOCHS.value, batch_size=_BATCH.value
    )
    checks.check_int("--train_subset", _SUBSET.value, minimum=0)
    checks.check_seed_value(_SEED.value, "--")
    checks.check_optimizer_settings(
        lr=_LR.value, momentum=_MOMENTUM.value, weight_decay=_WD.value, prefix="--"
    )
    return arch


def _prepare() -> tuple[str, lock.WorkdirLock]:
    """The work directory: checked, created, locked; an earlier run set aside (--overwrite)."""
    path, _ = workdirs.prepare(
        _WORKDIR.value, workdirs.TRAIN, flag="--workdir", overwrite=_OVERWRITE.value
    )
    held = lock.acquire(path)
    try:
        if held.taken_over():
            print(f"--workdir: {held.taken_over()}")
        moved = workdirs.set_aside(path)
        if moved:
            print(f"--overwrite: moved the earlier results to {moved}")
    except BaseException:
        held.release()
        raise
    return path, held


def _on_stop(stop: signals.Stopped) -> str:
    return (
        " before results.json was written (train.py has no --resume); rerun with:"
        f" {signals.resume_command(drop=(), add=())}"
    )


def run() -> dict:
    arch = _check_flags()
    dataset = data.load_dataset(_DATASET.value, data_dir=_DATA_DIR.value)
    if dataset.source is not None:
        print(f"{dataset.name}: read from {dataset.source}")
    dataset = data.take_train_subset(dataset, _SUBSET.value)
    dp = loop.data_parallel()
    loop.check_batch_size(_BATCH.value, dataset.train_images.shape[0], dp, "--batch_size")
    steps_per_epoch = data.num_batches(dataset.train_images.shape[0], _BATCH.value)
    checks.check_total_steps(_EPOCHS.value, steps_per_epoch, "--")
    workdir, held = _prepare()
    try:
        return _train(arch, dataset, dp, workdir)
    finally:
        held.release()


def _train(arch: str, dataset, dp, workdir: str) -> dict:
    init_key, data_key = jax.random.split(jax.random.key(_SEED.value))
    trainer = pipeline_setup.make_trainer(
        arch=arch,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        timesteps=_TIMESTEPS.value,
        total_steps=_EPOCHS.value * data.num_batches(dataset.train_images.shape[0], _BATCH.value),
        optimizer=_OPT.value,
        lr=_LR.value,
        momentum=_MOMENTUM.value,
        weight_decay=_WD.value,
        schedule=_SCHEDULE.value,
        key=init_key,
    )
    state = pipeline_setup.fresh_state(trainer, _TIMESTEPS.value, trainer.variables)
    start = time.perf_counter()
    state, history = loop.fit(
        state,
        dataset,
        epochs=_EPOCHS.value,
        batch_size=_BATCH.value,
        key=data_key,
        dp=dp,
        desc=f"{arch}/{dataset.name}",
        progress=_PROGRESS.value,
    )
    out = {
        "dataset": dataset.name,
        "arch": arch,
        "timesteps": _TIMESTEPS.value,
        "epochs": _EPOCHS.value,
        "batch_size": _BATCH.value,
        "train_subset": _SUBSET.value,
        "train_images": int(dataset.train_images.shape[0]),
        "test_images": int(dataset.test_images.shape[0]),
        "lr": _LR.value,
        "seed": _SEED.value,
        "devices": dp.size,
        "test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in history),
        "seconds": time.perf_counter() - start,
        "history": history,
        "machine": machine.describe(),  # the figures are bit-identical only on such a machine
    }
    results.write_json(os.path.join(workdir, "results.json"), out)
    return out


def main() -> None:
    out = run()
    print(
        f"{out['arch']} on {out['dataset']}: test accuracy {out['test_accuracy']:.4f}"
        f" (best {out['best_test_accuracy']:.4f}) in {out['seconds']:.1f} s;"
        f" wrote {os.path.join(os.path.abspath(_WORKDIR.value), 'results.json')}"
    )


if __name__ == "__main__":
    hostmem.reexec_with_hugepages()  # XLA:CPU's per-step buffers on huge pages
    cli.run(main, name="train.py", on_stop=_on_stop)
