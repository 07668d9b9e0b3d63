"""Fashion-MNIST from its four IDX files (gzip-compressed, as published).

IDX format (LeCun's MNIST format): a 4-byte big-endian magic number whose first two bytes are
zero, third byte the element type (0x08 = unsigned byte), fourth byte the number of dimensions
d; then d big-endian uint32 sizes; then the elements in row-major order. Images are
`[N, 28, 28]` (magic 0x00000803), labels `[N]` (magic 0x00000801) in 0..9.

Files are looked for in `data_dir` and in torchvision's layout `data_dir/FashionMNIST/raw/`;
an uncompressed copy (the same name without `.gz`) is accepted when the `.gz` is absent.
No augmentation (28x28 grey images, used as they are).
"""

import gzip
import os
import struct
import zlib

import numpy as np

from uticket_jax.data.pipeline import DataError, Dataset, check_arrays, normalize

# Commonly used mean/std of the Fashion-MNIST training set on [0, 1] pixels.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_UBYTE = 0x08


def parse_idx(raw: bytes, *, ndim: int, what: str = "IDX data") -> np.ndarray:
    """Parse an IDX byte string of unsigned bytes with `ndim` dimensions into a uint8 array.

    Args:
      raw: the whole (decompressed) file.
      ndim: expected number of dimensions (3 for images, 1 for labels).
      what: name used in error messages.

    Returns:
      uint8 array of the shape in the header.

    Raises:
      DataError: bad magic, element type, dimension count, or a size that does not match.
    """
    if len(raw) < 4:
        raise DataError(f"{what}: {len(raw)} bytes, too short for an IDX header")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != _UBYTE or dims != ndim:
        raise DataError(
            f"{what}: IDX magic 0x{int.from_bytes(raw[:4], 'big'):08x}, "
            f"expected 0x{0x800 + ndim:08x} (unsigned bytes, {ndim} dims)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{what}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        raise DataError(
            f"{what}: header says shape {shape} ({size} bytes) but {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(shape)


def _find(data_dir: str) -> str:
    """The folder holding all four files (gz or plain), else raise naming what was searched."""
    folders = [data_dir, os.path.join(data_dir, "FashionMNIST", "raw")]
    for folder in folders:
        if all(
            os.path.isfile(os.path.join(folder, f)) or os.path.isfile(os.path.join(folder, f[:-3]))
            for f in FASHION_MNIST_FILES
        ):
            return folder
    raise DataError(
        f"fashion_mnist: expected {', '.join(FASHION_MNIST_FILES)} in "
        f"{' or '.join(repr(f) for f in folders)}, found none complete"
    )


def _read(folder: str, name: str, ndim: int) -> np.ndarray:
    path = os.path.join(folder, name)
    what = f"{name} in {folder}"
    try:
        if os.path.isfile(path):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path[:-3], "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{what} is not a readable gzip file ({e})") from None
    return parse_idx(raw, ndim=ndim, what=what)


def _split(folder: str, images_file: str, labels_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(normalized float32 [N, 28, 28, 1], int32 [N]) of one split."""
    x = _read(folder, images_file, 3)
    y = _read(folder, labels_file, 1).astype(np.int32)
    if x.shape[1:] != (28, 28):
        raise DataError(f"{images_file} in {folder}: images are {x.shape[1:]}, expected 28x28")
    x = x[..., None]  # [N, 28, 28, 1]
    check_arrays(x, y, 10, what=f"{images_file}/{labels_file}", where=folder)
    return normalize(x, FASHION_MNIST_MEAN, FASHION_MNIST_STD), y


def load_fashion_mnist(data_dir: str) -> Dataset:
    """Fashion-MNIST from the four IDX files.

    Args:
      data_dir: directory holding the files (or `FashionMNIST/raw/` below it).

    Returns:
      Dataset with [N, 28, 28, 1] float32 images normalized by FASHION_MNIST_MEAN/STD (60,000
      train and 10,000 test for the official files), labels 0..9, no augmentation.

    Raises:
      DataError: files missing or corrupt, sizes that disagree, labels out of range.
    """
    folder = _find(data_dir)
    train_x, train_y = _split(folder, FASHION_MNIST_FILES[0], FASHION_MNIST_FILES[1])
    test_x, test_y = _split(folder, FASHION_MNIST_FILES[2], FASHION_MNIST_FILES[3])
    return Dataset(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        name="fashion_mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        augment=False,
        hflip=False,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )
