"""The dataset value and the ways to iterate it: shuffled batches, eval batches, augmentation.

A `Dataset` holds host (numpy) arrays, float32 NHWC images already normalized and int32 labels.
Batches are numpy arrays too: the jitted train/eval steps take them as arguments and XLA copies
them to the device, so the input pipeline never needs to be traced. Augmentation is the one
device-side piece: `augment(key, images)` is a jitted, vmapped JAX function meant to be called on
a batch (or inside the train step) with a per-step key such as `jax.random.fold_in(key, step)`.

Determinism: the order of epoch `e` is `jax.random.permutation(fold_in(key, e), N)`, so it depends
only on (key, epoch) and not on how many epochs ran before.
"""

from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Pixels of zero padding on each side for the random crop (the standard CIFAR recipe).
AUG_PADDING = 4


class DataError(ValueError):
    """Missing or malformed dataset files (a `ValueError`, message on one line)."""


class Dataset(NamedTuple):
    """A classification dataset held in host memory.

    Attributes:
      train_images: [N, H, W, C] float32, normalized: (x - mean) / std per channel, x the
        pixels scaled to [0, 1] (x/255; x/16 for digits).
      train_labels: [N] int32 in [0, num_classes).
      test_images: [M, H, W, C] float32, normalized with the same constants.
      test_labels: [M] int32.
      name: registry name ("digits", "cifar10", ...).
      num_classes: number of classes.
      image_shape: (H, W, C).
      augment: whether training applies `augment` (random crop, maybe flip).
      hflip: whether that augmentation includes the random horizontal flip.
      mean, std: per-channel constants used to normalize (in [0, 1] pixel units), or None.
      source: where the files were read from (a folder), or None (embedded data, or a loader
        that does not say).

    Build it with keywords; the metadata after `image_shape` has defaults.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    augment: bool = False
    hflip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str | None = None

    @property
    def pad_value(self) -> np.ndarray:
        """[C] float32: the normalized value of a black (raw 0) pixel, i.e. -mean/std.

        Padding the normalized image with this value is the same as zero-padding the raw image
        and normalizing afterwards (torchvision's `RandomCrop(padding=4)` before `Normalize`).
        """
        c = self.image_shape[-1]
        if self.mean is None or self.std is None:
            return np.zeros((c,), np.float32)
        return (-np.asarray(self.mean, np.float64) / np.asarray(self.std, np.float64)).astype(
            np.float32
        )


def normalize(images_u8: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 (x/255 - mean)/std with per-channel `mean`, `std`."""
    mean = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    std = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    x = images_u8.astype(np.float32) * np.float32(1.0 / 255.0)
    return (x - mean) / std


def check_arrays(
    images: np.ndarray, labels: np.ndarray, num_classes: int, *, what: str, where: str
) -> None:
    """Raise DataError unless images are [N, H, W, C], labels [N] in [0, num_classes)."""
    if images.ndim != 4:
        raise DataError(f"{what} in {where}: images have shape {images.shape}, expected [N,H,W,C]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{what} in {where}: {images.shape[0]} images but labels have shape {labels.shape}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{what} in {where}: no examples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{what} in {where}: labels span [{labels.min()}, {labels.max()}], "
            f"expected [0, {num_classes - 1}]"
        )


# Seed of `take_train_subset`: fixed, so every run (any --seed) trains on the same subset.
SUBSET_SEED = 0


def stratified_subset(labels: np.ndarray, n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of `n` examples, each class represented in proportion to its size.

    Class `c` (of `n_c` among `N`) gets `floor(n * n_c / N)` examples, and the `n - sum` left over
    go one each to the classes with the largest fractional parts (ties to the lower label);
    each class's indices are shuffled by `np.random.default_rng(seed)`, classes in label order,
    and the first ones taken. A pure function of (labels, n, seed); `n = N` gives every index.

    Raises:
      ValueError: `n` outside [1, N].
    """
    labels = np.asarray(labels)
    total = labels.shape[0]
    if not 1 <= n <= total:
        raise ValueError(f"subset size must be in [1, {total}], got {n}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts  # quota times N, exact integers
    take = exact // total
    leftover = n - int(take.sum())
    order = sorted(range(classes.size), key=lambda i: (-(int(exact[i]) % total), i))
    for i in order[:leftover]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def check_train_subset(n: int, dataset: "Dataset") -> None:
    """Raises ValueError (naming --train_subset) unless `n` is 0 or in [classes, training size]."""
    total = dataset.train_images.shape[0]
    if n == 0:
        return
    if not dataset.num_classes <= n <= total:
        raise ValueError(
            f"--train_subset: must be 0 (the whole training set) or in [{dataset.num_classes}, "
            f"{total}] ({dataset.name} has {total} training images in {dataset.num_classes} "
            f"classes), got {n}"
        )


def take_train_subset(dataset: "Dataset", n: int, seed: int = SUBSET_SEED) -> "Dataset":
    """The dataset with a fixed, class-stratified subset of `n` training images (0: all).

    The subset is `stratified_subset(train_labels, n, seed)` (kept in file order); the test set
    is unchanged.

    Raises:
      ValueError: `n` is not 0 or in [num_classes, training size] (`check_train_subset`).
    """
    check_train_subset(n, dataset)
    if n == 0:
        return dataset
    idx = stratified_subset(dataset.train_labels, n, seed)
    return dataset._replace(
        train_images=np.ascontiguousarray(dataset.train_images[idx]),
        train_labels=dataset.train_labels[idx],
    )


def _check_pair(images, labels, name_images: str = "images") -> int:
    if np.ndim(images) < 1 or np.ndim(labels) != 1 or np.shape(images)[0] != np.shape(labels)[0]:
        raise ValueError(
            f"{name_images} and labels must share the leading axis N with labels [N]; got "
            f"{np.shape(images)} and {np.shape(labels)}"
        )
    return int(np.shape(images)[0])


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches per epoch over `n` examples (floor, or ceil if not `drop_remainder`)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_permutation(key: jax.Array, epoch: int, n: int) -> np.ndarray:
    """[n] int: the example order of `epoch`, a function of (key, epoch) only."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    key: jax.Array,
    epoch: int = 0,
    drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled training batches for one epoch.

    Args:
      images: [N, ...] array (numpy; a jax array is converted to numpy).
      labels: [N] int array.
      batch_size: examples per batch, 1 <= batch_size <= N.
      key: PRNG key of the run; the epoch's order uses `fold_in(key, epoch)`.
      epoch: epoch index; same (key, epoch) gives the same batches, bit for bit.
      drop_remainder: drop the last N % batch_size examples of the shuffled order (every batch
        has the same shape, so a jitted step compiles once); if False the last batch is smaller.

    Returns:
      Iterator of (images [B, ...], labels [B]) numpy arrays; each example appears at most once
      per epoch (exactly once when drop_remainder is False).
    """
    n = _check_pair(images, labels)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the dataset size), got {batch_size}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    order = epoch_permutation(key, epoch, n)
    for b in range(num_batches(n, batch_size, drop_remainder)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield images[idx], labels[idx]


def eval_batches(
    images: np.ndarray, labels: np.ndarray, *, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches covering every example exactly once, in order, all of shape [batch_size, ...].

    The last partial batch is padded with zero images and label 0 up to `batch_size`, and a
    `valid` mask marks the real rows, so a jitted eval step compiles once; reduce with
    `sum(correct * valid) / sum(valid)`. A `batch_size` above N is allowed (one padded batch).

    Args:
      images: [N, ...] array.
      labels: [N] int array.
      batch_size: rows per batch, >= 1.

    Returns:
      Iterator of (images [B, ...], labels [B], valid [B] bool) numpy arrays.
    """
    n = _check_pair(images, labels)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        k = x.shape[0]
        valid = np.zeros((batch_size,), bool)
        valid[:k] = True
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((batch_size - k,), y.dtype)])
        yield x, y, valid


def _augment_one(key, image, flip, fill):
    """Random crop of the padded [H, W, C] image, then an optional mirror."""
    h, w, c = image.shape
    k_crop, k_flip = jax.random.split(key)
    p = AUG_PADDING
    canvas = jnp.broadcast_to(fill.astype(image.dtype), (h + 2 * p, w + 2 * p, c))
    canvas = canvas.at[p : p + h, p : p + w].set(image)  # [H+2p, W+2p, C]
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * p + 1)
    crop = jax.lax.dynamic_slice(canvas, (dy, dx, 0), (h, w, c))  # [H, W, C]
    mirror = jnp.logical_and(flip, jax.random.bernoulli(k_flip))
    return jnp.where(mirror, crop[:, ::-1], crop)


@jax.jit
def _augment(key, images, flip, fill):
    # Invariant: each output image is an HxW window of its padded input, possibly mirrored.
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(_augment_one, in_axes=(0, 0, None, None))(keys, images, flip, fill)


def augment(key: jax.Array, images, *, flip: bool = True, fill=None) -> jax.Array:
    """Training augmentation: random crop with 4-pixel padding and random horizontal flip.

    Each image is placed on a canvas padded by `AUG_PADDING` = 4 pixels of `fill` on every side,
    a window of the original size is cut at an offset drawn uniformly from {0..8}^2, and (if
    `flip`) mirrored left-right with probability 1/2. One key per batch (for example
    `fold_in(key, step)`); the same key and images give the same output. `flip` and `fill` are
    traced, so switching them does not recompile.

    Args:
      key: PRNG key for this batch.
      images: [B, H, W, C] float array.
      flip: apply the random horizontal flip (CIFAR: yes; SVHN digits: no).
      fill: [C] padding value; None pads with 0. Pass `dataset.pad_value` to pad with black
        pixels of the raw image, as torchvision's RandomCrop before Normalize does.

    Returns:
      [B, H, W, C] array, same dtype as `images`.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    c = images.shape[-1]
    fill = jnp.zeros((c,), images.dtype) if fill is None else jnp.asarray(fill, images.dtype)
    if fill.shape != (c,):
        raise ValueError(f"fill must have shape ({c},) (one value per channel), got {fill.shape}")
    return _augment(key, images, jnp.asarray(flip, bool), fill)
