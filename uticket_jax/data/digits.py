"""The embedded default: scikit-learn's bundled handwritten digits (1,797 real 8x8 images).

No download: the data ship inside scikit-learn. The train/test split is stratified and fixed by
`split_seed` (default 0), deliberately independent of the training seed, so the test set is the
same in every run.
"""

import numpy as np

from uticket_jax.data.pipeline import Dataset

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
_DIGITS_MAX_VALUE = 16.0  # pixel values of load_digits are integers 0..16


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), both sorted, with `round(test_fraction * n_c)` test items per class c.

    Each class's indices are shuffled by `np.random.default_rng(seed)` (classes in label order),
    so the split is a pure function of (labels, test_fraction, seed).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(test_fraction * idx.size))
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(labels.shape[0], bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def load_digits(*, split_seed: int = DIGITS_SPLIT_SEED) -> Dataset:
    """scikit-learn's digits as a Dataset of [N, 8, 8, 1] float32 images.

    Pixels are scaled to [0, 1] (divided by 16), then standardized with the mean and std of the
    training split (one channel, so two scalars): x' = (x - mean_train) / std_train.

    Args:
      split_seed: seed of the stratified 80/20 train/test split; keep the default so the test
        set never changes between runs.

    Returns:
      Dataset(name="digits", num_classes=10, image_shape=(8, 8, 1), augment=False); about 1,437
      training and 360 test images.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:
        raise ValueError(
            "dataset: digits is scikit-learn's bundled data "
            "(pip install 'uticket_jax[experiments]')"
        ) from None

    bunch = _sk_load_digits()
    x = np.asarray(bunch.images, np.float32) / np.float32(_DIGITS_MAX_VALUE)  # [1797, 8, 8]
    y = np.asarray(bunch.target, np.int32)
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_FRACTION, split_seed)
    x = x[..., None]  # [1797, 8, 8, 1]
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())
    x = (x - np.float32(mean)) / np.float32(std)
    return Dataset(
        train_images=np.ascontiguousarray(x[train_idx]),
        train_labels=y[train_idx],
        test_images=np.ascontiguousarray(x[test_idx]),
        test_labels=y[test_idx],
        name="digits",
        num_classes=10,
        image_shape=(8, 8, 1),
        augment=False,
        hflip=False,
        mean=(mean,),
        std=(std,),
    )
