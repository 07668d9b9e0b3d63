"""Datasets (embedded digits; CIFAR-10/100, SVHN, Fashion-MNIST from files) and batching.

`load_dataset(name, data_dir=...)` is the one place that turns a dataset name into a `Dataset`;
the loaders are plain functions of a directory. Files are read from their standard published
formats; a missing or malformed file raises `DataError` (a `ValueError`) naming the files
expected and the directory searched, and never falls back to other data. The one default
location: Fashion-MNIST without `data_dir` is read from the Debian package's folder
(`fashion_mnist.DEBIAN_DIR`), never from anywhere else.
"""

import functools
import os

from uticket_jax.data.cifar import CIFAR10_FILES, CIFAR100_FILES, load_cifar10, load_cifar100
from uticket_jax.data.digits import load_digits, stratified_split
from uticket_jax.data.fashion_mnist import (
    FASHION_MNIST_FILES,
    load_fashion_mnist,
    parse_idx,
    resize_bilinear,
)
from uticket_jax.data.pipeline import (
    AUG_PADDING,
    SUBSET_SEED,
    DataError,
    Dataset,
    augment,
    batches,
    check_train_subset,
    epoch_permutation,
    eval_batches,
    normalize,
    num_batches,
    stratified_subset,
    take_train_subset,
)
from uticket_jax.data.svhn import SVHN_FILES, load_svhn

DATASET_NAMES = ("digits", "cifar10", "cifar100", "svhn", "fashion_mnist", "fashion_mnist32")

_FILE_LOADERS = {
    "cifar10": (load_cifar10, CIFAR10_FILES),
    "cifar100": (load_cifar100, CIFAR100_FILES),
    "svhn": (load_svhn, ", ".join(SVHN_FILES)),
    "fashion_mnist": (load_fashion_mnist, ", ".join(FASHION_MNIST_FILES)),
    "fashion_mnist32": (
        functools.partial(load_fashion_mnist, size32=True),
        ", ".join(FASHION_MNIST_FILES),
    ),
}
# Datasets read from the Debian package's location when no data_dir is given.
_DEFAULT_LOCATION = ("fashion_mnist", "fashion_mnist32")


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by name.

    Args:
      name: one of DATASET_NAMES. "digits" (the default of the launchers) is embedded in
        scikit-learn; the others are read from `data_dir`. "fashion_mnist32" is Fashion-MNIST
        in the paper authors' 32x32 pipeline (see `uticket_jax.data.fashion_mnist`).
      data_dir: directory with the dataset's published files; required for CIFAR and SVHN,
        ignored for "digits"; for the Fashion-MNIST names None reads the Debian package's
        copy (`/usr/share/datasets/fashion-mnist`).
      seed: seed of the digits train/test split (default 0). It is NOT the training seed: keep
        it fixed so the test set never changes. Unused by the file datasets, whose split is
        the published one.

    Returns:
      Dataset with normalized float32 NHWC images and int32 labels.

    Raises:
      ValueError: unknown name, or `data_dir` missing for CIFAR or SVHN.
      DataError: the files are missing or malformed.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    if name == "digits":
        return load_digits(split_seed=seed)
    loader, files = _FILE_LOADERS[name]
    if data_dir is None and name in _DEFAULT_LOCATION:
        return loader(None)
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data_dir, a directory holding {files}")
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"{name}: data_dir {data_dir!r} is not a directory (expected {files})")
    return loader(data_dir)


__all__ = [
    "AUG_PADDING",
    "DATASET_NAMES",
    "SUBSET_SEED",
    "DataError",
    "Dataset",
    "augment",
    "batches",
    "check_train_subset",
    "epoch_permutation",
    "eval_batches",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_svhn",
    "normalize",
    "num_batches",
    "parse_idx",
    "resize_bilinear",
    "stratified_split",
    "stratified_subset",
    "take_train_subset",
]
