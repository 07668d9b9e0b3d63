"""Fashion-MNIST from its four IDX files (gzip-compressed, as published).

IDX format (LeCun's MNIST format): a 4-byte big-endian magic number whose first two bytes are
zero, third byte the element type (0x08 = unsigned byte), fourth byte the number of dimensions
d; then d big-endian uint32 sizes; then the elements in row-major order. Images are
`[N, 28, 28]` (magic 0x00000803), labels `[N]` (magic 0x00000801) in 0..9.

Where the files are read from: `data_dir` or torchvision's layout `data_dir/FashionMNIST/raw/`
below it; with no `data_dir`, the Debian package's location `DEBIAN_DIR`
(/usr/share/datasets/fashion-mnist, `apt-get install dataset-fashion-mnist`). An uncompressed copy
(the same name without `.gz`) is accepted when the `.gz` is absent.

Two input pipelines (two dataset names)::

  fashion_mnist   the 28x28 images as they are, normalized by the training set's mean 0.2860 /
                  std 0.3530, no augmentation (the `fmnist` CPU preset);
  fashion_mnist32 the paper authors' pipeline (their `transforms.Resize(32)`, `RandomCrop(32,
                  padding=4)`, `RandomHorizontalFlip()`, `Normalize((0.5,), (0.5,))`): every
                  image resized to 32x32 once, when loading, by `resize_bilinear` (Pillow's
                  BILINEAR resize, which torchvision's Resize applies to the PIL images of
                  `datasets.FashionMNIST`, reproduced bit for bit), normalized with mean 0.5 /
                  std 0.5; training batches get the random 32x32 crop of the image padded by 4
                  black pixels and the random horizontal flip (`augment`, in the train step).
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from uticket_jax.data.pipeline import DataError, Dataset, check_arrays, normalize

# Commonly used mean/std of the Fashion-MNIST training set on [0, 1] pixels.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# The authors' normalization of the 32x32 pipeline.
FASHION_MNIST32_MEAN = (0.5,)
FASHION_MNIST32_STD = (0.5,)

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Where Debian's dataset-fashion-mnist package installs the four files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
APT_INSTALL = "apt-get install dataset-fashion-mnist"
_UBYTE = 0x08
_SIDE = 28
_SIDE32 = 32
# Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2 bits, libImaging/Resample.c).
_PRECISION_BITS = 22
# The largest Fashion-MNIST file is 47,040,016 bytes uncompressed (60,000 28x28 images).
MAX_IDX_BYTES = 256 * 2**20


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


def _missing(folder: str) -> list[str]:
    """The files of FASHION_MNIST_FILES missing from `folder` (gz or uncompressed)."""
    return [
        f
        for f in FASHION_MNIST_FILES
        if not (
            os.path.isfile(os.path.join(folder, f)) or os.path.isfile(os.path.join(folder, f[:-3]))
        )
    ]


def find_files(data_dir: str | os.PathLike | None) -> str:
    """The folder holding all four files (gz or plain), else a one-line DataError.

    Args:
      data_dir: the directory to search (and its `FashionMNIST/raw/`); None: `DEBIAN_DIR`.

    Returns:
      The folder the files are read from.

    Raises:
      DataError: no searched folder has all four files; the message names the folders
        searched, the files missing, the other place to look and the `apt-get` line.
    """
    expected = ", ".join(FASHION_MNIST_FILES)
    if data_dir is None:
        if _missing(DEBIAN_DIR):
            raise DataError(
                f"fashion_mnist: no --data_dir given and the Debian package's location "
                f"{DEBIAN_DIR} lacks {', '.join(_missing(DEBIAN_DIR))}; pass --data_dir, a "
                f"directory holding {expected}, or install them: {APT_INSTALL}"
            )
        return DEBIAN_DIR
    data_dir = os.fspath(data_dir)
    folders = [data_dir, os.path.join(data_dir, "FashionMNIST", "raw")]
    for folder in folders:
        if not _missing(folder):
            return folder
    raise DataError(
        f"fashion_mnist: --data_dir {data_dir!r} lacks {', '.join(_missing(data_dir))} "
        f"(expected {expected} in {' or '.join(repr(f) for f in folders)}); without --data_dir "
        f"they are read from {DEBIAN_DIR} ({APT_INSTALL})"
    )


def _read(folder: str, name: str, ndim: int) -> np.ndarray:
    path = os.path.join(folder, name)
    what = f"{name} in {folder}"
    try:
        if os.path.isfile(path):
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_IDX_BYTES + 1)
        else:
            what = f"{name[:-3]} in {folder}"
            with open(path[:-3], "rb") as f:
                raw = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{what} is not a readable gzip file ({e})") from None
    if len(raw) > MAX_IDX_BYTES:  # a gzip of zeros expands ~1000-fold: never read it all
        raise DataError(f"{what} holds more than {MAX_IDX_BYTES} bytes; not a Fashion-MNIST file")
    return parse_idx(raw, ndim=ndim, what=what)


def _split(folder: str, images_file: str, labels_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 28, 28, 1], int32 [N]) of one split, checked."""
    x = _read(folder, images_file, 3)
    y = _read(folder, labels_file, 1).astype(np.int32)
    if x.shape[1:] != (_SIDE, _SIDE):
        raise DataError(f"{images_file} in {folder}: images are {x.shape[1:]}, expected 28x28")
    x = x[..., None]  # [N, 28, 28, 1]
    check_arrays(x, y, 10, what=f"{images_file}/{labels_file}", where=folder)
    return x, y


def read_raw(data_dir: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The four arrays as stored (uint8 images `[N, 28, 28, 1]`, int32 labels) and their folder.

    Keys: `train_images`, `train_labels`, `test_images`, `test_labels`. `data_dir` as in
    `find_files` (None: the Debian package's location).
    """
    folder = find_files(data_dir)
    train_x, train_y = _split(folder, FASHION_MNIST_FILES[0], FASHION_MNIST_FILES[1])
    test_x, test_y = _split(folder, FASHION_MNIST_FILES[2], FASHION_MNIST_FILES[3])
    arrays = {
        "train_images": train_x,
        "train_labels": train_y,
        "test_images": test_x,
        "test_labels": test_y,
    }
    return arrays, folder


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear resampling taps along one axis: (first index [out], int coeffs [out, k]).

    Pillow's `precompute_coeffs` with the triangle filter (support 1, widened by the scale when
    shrinking), then `normalize_coeffs_8bpc`: output pixel `i` has its centre at input coordinate
    `(i + 0.5) * in/out`; the taps are the input pixels within the support, weighted by the
    triangle and renormalized to sum 1 over the pixels inside the image, then scaled to
    22-bit fixed point with rounding half away from zero. Computed in float64 as Pillow's C does.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.zeros((out_size,), np.int64)
    coeffs = np.zeros((out_size, ksize), np.int64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [
            max(0.0, 1.0 - abs((x + lo - center + 0.5) * (1.0 / filterscale)))
            for x in range(hi - lo)
        ]
        total = sum(w)
        w = [v / total for v in w] if total != 0.0 else w
        first[i] = lo
        for k, v in enumerate(w):
            coeffs[i, k] = int(v * (1 << _PRECISION_BITS) + (0.5 if v >= 0 else -0.5))
    return first, coeffs


def _resample_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One Pillow pass along `axis` of a uint8 array: fixed-point taps, round, clip to uint8."""
    first, coeffs = _bilinear_taps(x.shape[axis], out_size)
    x = np.moveaxis(x, axis, -1)  # [..., in]
    acc = np.full(x.shape[:-1] + (out_size,), 1 << (_PRECISION_BITS - 1), np.int64)
    for k in range(coeffs.shape[1]):
        idx = np.minimum(first + k, x.shape[-1] - 1)  # taps past the end have coefficient 0
        acc += x[..., idx].astype(np.int64) * coeffs[:, k]
    out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def resize_bilinear(images: np.ndarray, size: int, *, chunk: int = 4096) -> np.ndarray:
    """Pillow's `Image.resize((size, size), BILINEAR)` of uint8 images, bit for bit.

    This is what torchvision's `transforms.Resize(size)` (default bilinear) does to the square
    PIL images of `datasets.FashionMNIST`: two separable passes, horizontal (width) first, then
    vertical, each with the taps of `_bilinear_taps` (triangle filter, half-pixel centres,
    renormalized at the border: for enlarging, the same as clamping to the edge pixel) and each
    rounded to uint8 (add 2^21, shift right 22 bits, clip to 0..255).

    Args:
      images: uint8 `[N, H, W, C]`.
      size: output height and width (>= 1).
      chunk: images per block (bounds the int64 temporaries).

    Returns:
      uint8 `[N, size, size, C]`.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
    for s in range(0, images.shape[0], chunk):
        block = _resample_axis(images[s : s + chunk], 2, size)  # width first, as Pillow
        out[s : s + chunk] = _resample_axis(block, 1, size)
    return out


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, *, size32: bool = False
) -> Dataset:
    """Fashion-MNIST from the four IDX files.

    Args:
      data_dir: directory holding the files (or `FashionMNIST/raw/` below it); None reads the
        Debian package's copy in `DEBIAN_DIR`.
      size32: the authors' 32x32 pipeline (`fashion_mnist32`, see the module docstring) instead
        of the 28x28 images as they are.

    Returns:
      Dataset (60,000 train and 10,000 test images for the official files, labels 0..9, `source`
      the folder read). 28x28: `[N, 28, 28, 1]` float32 normalized by FASHION_MNIST_MEAN/STD, no
      augmentation. size32: `[N, 32, 32, 1]` resized by `resize_bilinear`, normalized by
      mean 0.5 / std 0.5, augment with crop (4 pixels of black padding) and flip.

    Raises:
      DataError: files missing or corrupt, sizes that disagree, labels out of range.
    """
    raw, folder = read_raw(data_dir)
    if not size32:
        mean, std, side = FASHION_MNIST_MEAN, FASHION_MNIST_STD, _SIDE
        train_x, test_x = raw["train_images"], raw["test_images"]
    else:
        mean, std, side = FASHION_MNIST32_MEAN, FASHION_MNIST32_STD, _SIDE32
        train_x = resize_bilinear(raw["train_images"], _SIDE32)
        test_x = resize_bilinear(raw["test_images"], _SIDE32)
    return Dataset(
        train_images=normalize(train_x, mean, std),
        train_labels=raw["train_labels"],
        test_images=normalize(test_x, mean, std),
        test_labels=raw["test_labels"],
        name="fashion_mnist32" if size32 else "fashion_mnist",
        num_classes=10,
        image_shape=(side, side, 1),
        augment=size32,
        hflip=size32,
        mean=mean,
        std=std,
        source=folder,
    )
