"""CIFAR-10 and CIFAR-100 from the "python version" files (pickled batches).

Layout of the published archives (Krizhevsky, 2009)::

  cifar-10-python.tar.gz  -> cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
  cifar-100-python.tar.gz -> cifar-100-python/{train, test, meta}

Each batch is a pickled dict with bytes keys: b"data" is [N, 3072] uint8, one row per image in
channel-major order (1024 red, 1024 green, 1024 blue values, each row-major 32x32), b"labels"
(CIFAR-10) or b"fine_labels" (CIFAR-100) a list of N ints.

The files are found under `data_dir` in this order: the extracted folder
(`data_dir/cifar-10-batches-py/`), the files directly in `data_dir`, the original .tar.gz in
`data_dir` (read with `tarfile`, nothing extracted to disk).

Security: this format can only be read by unpickling, and a pickle can name any function for the
unpickler to call. The files are read by an unpickler that calls only what CIFAR's pickles need
(numpy's array and dtype constructors, `_codecs.encode` for Python 2 byte strings) and refuses
anything else as a corrupt file, so a crafted file cannot run code; still, use the official
archive. `encoding="bytes"` because the files were written by Python 2.
"""

import io
import os
import pickle
import tarfile
from typing import NamedTuple

import numpy as np

from uticket_jax.data.pipeline import DataError, Dataset, check_arrays, normalize

# Standard per-channel constants on [0, 1] pixels. CIFAR-10: the widely used mean and the
# widely used std figures (0.2023, 0.1994, 0.2010), which are also what the LTH-SNN code the paper
# builds on normalizes with. CIFAR-100: the usual mean/std of its training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE  # 3072 values per image


class _Spec(NamedTuple):
    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR10 = _Spec(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
)
_CIFAR100 = _Spec(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
)


def _all_files(spec: _Spec) -> tuple[str, ...]:
    return spec.train_files + (spec.test_file, spec.meta_file)


def expected_files(spec: _Spec) -> str:
    """One-line description of what the loader looks for."""
    return (
        f"{', '.join(_all_files(spec))} (in {spec.folder}/ or directly in the directory) "
        f"or {spec.archive}"
    )


# The only callables CIFAR's pickles name (numpy 1.x wrote `numpy.core`, 2.x `numpy._core`).
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((f"numpy.{c}.multiarray", n) for c in ("core", "_core") for n in ("_reconstruct", "scalar")),
    *((f"numpy.{c}.numeric", "_frombuffer") for c in ("core", "_core")),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that calls numpy's constructors and nothing else (see the module doc)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is refused")
        return super().find_class(module, name)


def _unpickle(f, what: str, where: str) -> dict:
    """Load one bytes-keyed pickle, calling nothing but numpy's constructors."""
    try:
        obj = _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        raise DataError(f"{what} in {where} is not a readable CIFAR pickle ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} in {where} holds a {type(obj).__name__}, expected a dict")
    return obj


def _read_raw(spec: _Spec, data_dir: str) -> tuple[dict[str, dict], str]:
    """{file name: unpickled dict} for all files of `spec`, and where they were found."""
    names = _all_files(spec)
    for folder in (os.path.join(data_dir, spec.folder), data_dir):
        if all(os.path.isfile(os.path.join(folder, n)) for n in names):
            out = {}
            for n in names:
                with open(os.path.join(folder, n), "rb") as f:
                    out[n] = _unpickle(f, n, folder)
            return out, folder
    archive = os.path.join(data_dir, spec.archive)
    if os.path.isfile(archive):
        return _read_archive(spec, archive), archive
    raise DataError(
        f"{spec.name}: expected {expected_files(spec)} under {data_dir!r}, found none complete"
    )


def _read_archive(spec: _Spec, archive: str) -> dict[str, dict]:
    """Read the pickles straight out of the .tar.gz, without extracting to disk."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            members = {}
            for m in tf.getmembers():
                if not m.isfile():
                    continue
                parent, base = os.path.split(m.name)
                if base in _all_files(spec) and os.path.basename(parent) in (spec.folder, ""):
                    members[base] = m
            missing = [n for n in _all_files(spec) if n not in members]
            if missing:
                raise DataError(
                    f"{spec.name}: archive {archive!r} lacks {', '.join(missing)} "
                    f"(expected {spec.folder}/{{{', '.join(_all_files(spec))}}})"
                )
            out = {}
            for n, m in members.items():
                data = tf.extractfile(m).read()
                out[n] = _unpickle(io.BytesIO(data), n, archive)
            return out
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{spec.name}: {archive!r} is not a readable .tar.gz ({e})") from None


def _batch_arrays(spec: _Spec, d: dict, what: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One unpickled batch -> (uint8 [N, 32, 32, 3], int32 [N])."""
    if b"data" not in d or spec.label_key not in d:
        raise DataError(
            f"{what} in {where} lacks the keys b'data' and {spec.label_key!r} (has {sorted(d)[:6]})"
        )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[spec.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise DataError(
            f"{what} in {where}: b'data' is {data.dtype} {data.shape}, expected uint8 [N, {_ROW}]"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{what} in {where}: labels are {labels.dtype} {labels.shape}, expected [N]"
        )
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    labels = labels.astype(np.int32)
    check_arrays(images, labels, spec.num_classes, what=what, where=where)
    return images, labels


def _load(spec: _Spec, data_dir: str) -> Dataset:
    raw, where = _read_raw(spec, data_dir)
    names = raw[spec.meta_file].get(spec.names_key)
    if names is None or len(names) != spec.num_classes:
        got = "missing" if names is None else f"{len(names)} names"
        raise DataError(
            f"{spec.meta_file} in {where}: {spec.names_key!r} is {got}, "
            f"expected {spec.num_classes} class names"
        )
    parts = [_batch_arrays(spec, raw[n], n, where) for n in spec.train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _batch_arrays(spec, raw[spec.test_file], spec.test_file, where)
    return Dataset(
        train_images=normalize(train_x, spec.mean, spec.std),
        train_labels=train_y,
        test_images=normalize(test_x, spec.mean, spec.std),
        test_labels=test_y,
        name=spec.name,
        num_classes=spec.num_classes,
        image_shape=(_SIDE, _SIDE, 3),
        augment=True,
        hflip=True,
        mean=spec.mean,
        std=spec.std,
    )


def load_cifar10(data_dir: str) -> Dataset:
    """CIFAR-10 from the python-version files under `data_dir`.

    Args:
      data_dir: directory holding `cifar-10-batches-py/`, its files, or `cifar-10-python.tar.gz`.

    Returns:
      Dataset with [N, 32, 32, 3] float32 images normalized by CIFAR10_MEAN/CIFAR10_STD
      (50,000 train and 10,000 test for the official files), labels in [0, 10), augment with
      crop and flip.

    Raises:
      DataError: files missing, unreadable, or with wrong keys, shapes or labels.
    """
    return _load(_CIFAR10, data_dir)


def load_cifar100(data_dir: str) -> Dataset:
    """CIFAR-100 (fine labels) from the python-version files under `data_dir`.

    Args:
      data_dir: directory holding `cifar-100-python/`, its files, or `cifar-100-python.tar.gz`.

    Returns:
      Dataset with [N, 32, 32, 3] float32 images normalized by CIFAR100_MEAN/CIFAR100_STD, the
      100 fine labels, augment with crop and flip.

    Raises:
      DataError: files missing, unreadable, or with wrong keys, shapes or labels.
    """
    return _load(_CIFAR100, data_dir)


CIFAR10_FILES = expected_files(_CIFAR10)
CIFAR100_FILES = expected_files(_CIFAR100)
