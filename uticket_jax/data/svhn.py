"""SVHN (Street View House Numbers), cropped-digit format: `train_32x32.mat`, `test_32x32.mat`.

The published files are MATLAB v5 .mat files with `X` [32, 32, 3, N] uint8 (height, width,
channel, example) and `y` [N, 1] with labels 1..10, where 10 stands for the digit 0 (mapped to 0
here). The optional `extra_32x32.mat` is not read.

Augmentation: random crop with 4-pixel padding but no horizontal flip, because a mirrored digit
is not the same digit (the paper's base code flips SVHN too; this is a deliberate choice).
"""

import os

import numpy as np

from uticket_jax.data.pipeline import DataError, Dataset, check_arrays, normalize

# Commonly used per-channel constants of the SVHN training set on [0, 1] pixels.
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _read_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One .mat file -> (uint8 [N, 32, 32, 3], int32 [N] in 0..9)."""
    import scipy.io

    name, where = os.path.basename(path), os.path.dirname(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a file that is not a .mat
        raise DataError(f"{name} in {where} is not a readable MATLAB file ({e})") from None
    if "X" not in mat or "y" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{name} in {where} lacks the variables X and y (has {keys})")
    x = np.asarray(mat["X"])
    y = np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{name} in {where}: X is {x.dtype} {x.shape}, expected uint8 [32,32,3,N]")
    n = x.shape[3]
    if y.size != n or y.ndim not in (1, 2) or (y.ndim == 2 and 1 not in y.shape):
        raise DataError(f"{name} in {where}: y has shape {y.shape}, expected [{n}, 1]")
    y = y.reshape(-1)
    if not np.all(np.isin(y, np.arange(1, 11))):
        raise DataError(
            f"{name} in {where}: labels span [{y.min()}, {y.max()}], expected 1..10 (10 = digit 0)"
        )
    labels = np.where(y == 10, 0, y).astype(np.int32)
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # [N, 32, 32, 3]
    check_arrays(images, labels, 10, what=name, where=where)
    return images, labels


def load_svhn(data_dir: str) -> Dataset:
    """SVHN from `train_32x32.mat` and `test_32x32.mat` in `data_dir`.

    Args:
      data_dir: directory holding both .mat files.

    Returns:
      Dataset with [N, 32, 32, 3] float32 images normalized by SVHN_MEAN/SVHN_STD (73,257
      train and 26,032 test for the official files), labels 0..9, augment with crop, no flip.

    Raises:
      DataError: a file missing or unreadable, or with wrong variables, shapes or labels.
    """
    missing = [f for f in SVHN_FILES if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise DataError(
            f"svhn: expected {', '.join(SVHN_FILES)} in {data_dir!r}; missing {', '.join(missing)}"
        )
    train_x, train_y = _read_mat(os.path.join(data_dir, SVHN_FILES[0]))
    test_x, test_y = _read_mat(os.path.join(data_dir, SVHN_FILES[1]))
    return Dataset(
        train_images=normalize(train_x, SVHN_MEAN, SVHN_STD),
        train_labels=train_y,
        test_images=normalize(test_x, SVHN_MEAN, SVHN_STD),
        test_labels=test_y,
        name="svhn",
        num_classes=10,
        image_shape=(32, 32, 3),
        augment=True,
        hflip=False,
        mean=SVHN_MEAN,
        std=SVHN_STD,
    )
