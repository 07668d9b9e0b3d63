"""Tests of uticket_jax.data: readers on tiny files in each published format, the digits split,
seeded batching, eval batching and the augmentation."""

import gzip
import io
import os
import pickle
import shutil
import struct
import tarfile

import jax
import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.real_data import fashion_mnist_dir
from uticket_jax import data
from uticket_jax.data import cifar, fashion_mnist, svhn

RNG = np.random.default_rng(1234)


def _raw_images(n, h, w, c, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _denorm(x, mean, std):
    """Back to [0, 1] pixels."""
    return x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)


# ----------------------------------------------------------------------------- CIFAR


def _cifar_rows(images):
    """NHWC uint8 -> the format's [N, 3072] channel-major rows."""
    return images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1)


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_files(num_classes, seed=0):
    """{file name: object} for a tiny CIFAR-10 (2 images per train batch) or CIFAR-100."""
    rng = np.random.default_rng(seed)
    files, raw = {}, {}
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for i, n in enumerate(names):
            imgs = _raw_images(3 if n == "test_batch" else 2, 32, 32, 3, seed + i)
            labels = rng.integers(0, 10, imgs.shape[0]).tolist()
            files[n] = {b"batch_label": n.encode(), b"labels": labels, b"data": _cifar_rows(imgs)}
            raw[n] = (imgs, np.asarray(labels))
        files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        for i, n in enumerate(["train", "test"]):
            imgs = _raw_images(5 if n == "train" else 3, 32, 32, 3, seed + i)
            fine = rng.integers(0, 100, imgs.shape[0]).tolist()
            coarse = [f // 5 for f in fine]
            files[n] = {b"fine_labels": fine, b"coarse_labels": coarse, b"data": _cifar_rows(imgs)}
            raw[n] = (imgs, np.asarray(fine))
        files["meta"] = {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"g{i}".encode() for i in range(20)],
        }
    return files, raw


def _write_cifar(root, num_classes, layout):
    files, raw = _cifar_files(num_classes)
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    archive = "cifar-10-python.tar.gz" if num_classes == 10 else "cifar-100-python.tar.gz"
    if layout == "tar":
        with tarfile.open(root / archive, "w:gz") as tf:
            for n, obj in files.items():
                payload = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(f"{folder}/{n}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    else:
        target = root / folder if layout == "folder" else root
        target.mkdir(exist_ok=True)
        for n, obj in files.items():
            _write_pickle(target / n, obj)
    return raw


@pytest.mark.parametrize("layout", ["folder", "flat", "tar"])
def test_cifar10_reads_every_layout(tmp_path, layout):
    raw = _write_cifar(tmp_path, 10, layout)
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    want_x = np.concatenate([raw[n][0] for n in train_names])
    want_y = np.concatenate([raw[n][1] for n in train_names])
    assert ds.train_images.shape == (10, 32, 32, 3) and ds.train_images.dtype == np.float32
    assert ds.test_images.shape == (3, 32, 32, 3)
    assert ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_labels, want_y)
    np.testing.assert_array_equal(ds.test_labels, raw["test_batch"][1])
    back = _denorm(ds.train_images, cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    np.testing.assert_allclose(back, want_x / 255.0, atol=1e-5)
    back = _denorm(ds.test_images, cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    np.testing.assert_allclose(back, raw["test_batch"][0] / 255.0, atol=1e-5)
    assert (ds.name, ds.num_classes, ds.image_shape, ds.augment, ds.hflip) == (
        "cifar10",
        10,
        (32, 32, 3),
        True,
        True,
    )


def test_cifar_channel_order_is_rgb_planes(tmp_path):
    """Row layout: first 1024 values are the red plane, row-major; pixel (0, 1) red is value 1."""
    files, _ = _cifar_files(10)
    row = np.zeros((1, 3072), np.uint8)
    row[0, 1] = 255  # red, y=0, x=1
    row[0, 1024 + 32] = 255  # green, y=1, x=0
    for n in [f"data_batch_{i}" for i in range(1, 6)]:
        files[n] = {b"data": row, b"labels": [3]}
    for n, obj in files.items():
        _write_pickle(tmp_path / n, obj)
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    raw = _denorm(ds.train_images[0], cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    hot = np.argwhere(raw > 0.5)
    np.testing.assert_array_equal(hot, [[0, 1, 0], [1, 0, 1]])


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_cifar100_fine_labels(tmp_path, layout):
    raw = _write_cifar(tmp_path, 100, layout)
    ds = data.load_dataset("cifar100", data_dir=str(tmp_path))
    assert ds.num_classes == 100 and ds.train_images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_labels, raw["train"][1])
    np.testing.assert_array_equal(ds.test_labels, raw["test"][1])
    back = _denorm(ds.test_images, cifar.CIFAR100_MEAN, cifar.CIFAR100_STD)
    np.testing.assert_allclose(back, raw["test"][0] / 255.0, atol=1e-5)


def test_cifar_missing_file_names_expected_and_dir(tmp_path):
    _write_cifar(tmp_path, 10, "folder")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(data.DataError, match=r"data_batch_3.*cifar-10-python\.tar\.gz") as e:
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_cifar_tar_missing_member(tmp_path):
    files, _ = _cifar_files(10)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        for n, obj in files.items():
            if n == "test_batch":
                continue
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{n}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(data.DataError, match="lacks test_batch"):
        data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_corrupt_files(tmp_path):
    _write_cifar(tmp_path, 10, "flat")
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(data.DataError, match="test_batch.*not a readable CIFAR pickle"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    bad = tmp_path / "t"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(data.DataError, match="not a readable .tar.gz"):
        data.load_dataset("cifar10", data_dir=bad)


class _RunsCode:
    """A pickle that would call os.system on load."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_call_nothing_but_numpy(tmp_path, protocol, monkeypatch):
    files, _ = _cifar_files(10)
    for n, obj in files.items():
        (tmp_path / n).write_bytes(pickle.dumps(obj, protocol=protocol))
    ds = data.load_dataset("cifar10", data_dir=tmp_path)  # every protocol numpy writes reads
    assert ds.train_images.shape[0] == sum(
        len(o[b"labels"]) for k, o in files.items() if k.startswith("data_batch")
    )
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _RunsCode()}, protocol=protocol))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        data.DataError, match="test_batch.*names (posix|os).system, which is refused"
    ):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize(
    "patch, message",
    [
        ({b"data": np.zeros((2, 3000), np.uint8)}, r"expected uint8 \[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.float32)}, r"expected uint8 \[N, 3072\]"),
        ({b"labels": [1, 2, 3]}, "2 images but labels"),
        ({b"labels": [1, 10]}, r"expected \[0, 9\]"),
        ({b"labels": [1, -1]}, r"expected \[0, 9\]"),
    ],
)
def test_cifar_malformed_batch(tmp_path, patch, message):
    files, _ = _cifar_files(10)
    files["data_batch_2"] = {**files["data_batch_2"], **patch}
    for n, obj in files.items():
        _write_pickle(tmp_path / n, obj)
    with pytest.raises(data.DataError, match=message):
        data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_meta_must_name_all_classes(tmp_path):
    files, _ = _cifar_files(10)
    files["batches.meta"] = {b"label_names": [b"a", b"b"]}
    for n, obj in files.items():
        _write_pickle(tmp_path / n, obj)
    with pytest.raises(data.DataError, match="expected 10 class names"):
        data.load_dataset("cifar10", data_dir=tmp_path)


# ----------------------------------------------------------------------------- SVHN


def _write_svhn(root, n_train=6, n_test=4, y_train=None):
    out = {}
    for name, n, seed in (("train_32x32.mat", n_train, 7), ("test_32x32.mat", n_test, 8)):
        imgs = _raw_images(n, 32, 32, 3, seed)
        y = np.arange(1, n + 1) % 10 + 1 if name.startswith("test") or y_train is None else y_train
        y = np.asarray(y, np.uint8).reshape(-1, 1)
        scipy.io.savemat(root / name, {"X": imgs.transpose(1, 2, 3, 0), "y": y})
        out[name] = (imgs, y[:, 0])
    return out


def test_svhn_reads_and_maps_10_to_0(tmp_path):
    raw = _write_svhn(tmp_path, y_train=[10, 1, 2, 10, 9, 5])
    ds = data.load_dataset("svhn", data_dir=tmp_path)
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.train_images.dtype == np.float32
    np.testing.assert_array_equal(ds.train_labels, [0, 1, 2, 0, 9, 5])
    assert ds.train_labels.dtype == np.int32
    back = _denorm(ds.train_images, svhn.SVHN_MEAN, svhn.SVHN_STD)
    np.testing.assert_allclose(back, raw["train_32x32.mat"][0] / 255.0, atol=1e-5)
    want_test = np.where(raw["test_32x32.mat"][1] == 10, 0, raw["test_32x32.mat"][1])
    np.testing.assert_array_equal(ds.test_labels, want_test)
    assert ds.augment and not ds.hflip


def test_svhn_errors(tmp_path):
    _write_svhn(tmp_path)
    os.remove(tmp_path / "test_32x32.mat")
    with pytest.raises(data.DataError, match="missing test_32x32.mat") as e:
        data.load_dataset("svhn", data_dir=tmp_path)
    assert "train_32x32.mat" in str(e.value) and str(tmp_path) in str(e.value)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(data.DataError, match="test_32x32.mat.*not a readable MATLAB"):
        data.load_dataset("svhn", data_dir=tmp_path)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8)})
    with pytest.raises(data.DataError, match="lacks the variables X and y"):
        data.load_dataset("svhn", data_dir=tmp_path)
    scipy.io.savemat(
        tmp_path / "test_32x32.mat",
        {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)},
    )
    with pytest.raises(data.DataError, match=r"expected uint8 \[32,32,3,N\]"):
        data.load_dataset("svhn", data_dir=tmp_path)
    _write_svhn(tmp_path, y_train=[0, 1, 2, 3, 4, 5])
    with pytest.raises(data.DataError, match="expected 1..10"):
        data.load_dataset("svhn", data_dir=tmp_path)
    _write_svhn(tmp_path, y_train=[1, 2, 3])
    with pytest.raises(data.DataError, match=r"y has shape \(3, 1\), expected \[6, 1\]"):
        data.load_dataset("svhn", data_dir=tmp_path)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _idx(arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fmnist(folder, n_train=5, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    xs = {
        "train": _raw_images(n_train, 28, 28, 1, 3)[..., 0],
        "t10k": _raw_images(n_test, 28, 28, 1, 4)[..., 0],
    }
    ys = {"train": np.arange(n_train) % 10, "t10k": (np.arange(n_test) * 3) % 10}
    for split in ("train", "t10k"):
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(_idx(xs[split]))
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(_idx(ys[split]))
    return xs, ys


@pytest.mark.parametrize("sub", [".", "FashionMNIST/raw"])
def test_fashion_mnist_reads(tmp_path, sub):
    xs, ys = _write_fmnist(tmp_path / sub)
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert ds.train_images.shape == (5, 28, 28, 1) and ds.test_images.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(ds.train_labels, ys["train"])
    np.testing.assert_array_equal(ds.test_labels, ys["t10k"])
    mean, std = fashion_mnist.FASHION_MNIST_MEAN, fashion_mnist.FASHION_MNIST_STD
    np.testing.assert_allclose(
        _denorm(ds.train_images, mean, std)[..., 0], xs["train"] / 255.0, atol=1e-5
    )
    assert not ds.augment


def test_parse_idx_header():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(fashion_mnist.parse_idx(_idx(arr), ndim=3), arr)
    with pytest.raises(data.DataError, match="expected 0x00000801"):
        fashion_mnist.parse_idx(_idx(arr), ndim=1)
    with pytest.raises(data.DataError, match="bytes follow"):
        fashion_mnist.parse_idx(_idx(arr)[:-1], ndim=3)
    bad_type = b"\x00\x00\x0d\x03" + _idx(arr)[4:]  # float element type
    with pytest.raises(data.DataError, match="IDX magic 0x00000d03"):
        fashion_mnist.parse_idx(bad_type, ndim=3)
    with pytest.raises(data.DataError, match="too short"):
        fashion_mnist.parse_idx(b"\x00", ndim=1)


def test_fashion_mnist_errors(tmp_path):
    _write_fmnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz") as e:
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08 broken")
    with pytest.raises(data.DataError, match="not a readable gzip"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(np.array([1, 2], np.uint8)))  # 2 labels for 3 images
    with pytest.raises(data.DataError, match="3 images but labels"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(np.array([1, 2, 10], np.uint8)))
    with pytest.raises(data.DataError, match=r"expected \[0, 9\]"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx(np.zeros((3, 32, 32), np.uint8)))
    with pytest.raises(data.DataError, match="expected 28x28"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_default_location_is_the_debian_package(tmp_path, monkeypatch):
    xs, ys = _write_fmnist(tmp_path / "pkg")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "pkg"))
    ds = data.load_dataset("fashion_mnist")  # no data_dir
    assert ds.source == str(tmp_path / "pkg")
    np.testing.assert_array_equal(ds.train_labels, ys["train"])
    # An explicit --data_dir wins, and it is the only place searched.
    other_xs, _ = _write_fmnist(tmp_path / "mine", n_train=7)
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path / "mine")
    assert ds.source == str(tmp_path / "mine") and ds.train_images.shape[0] == 7
    os.remove(tmp_path / "mine" / "train-images-idx3-ubyte.gz")
    with pytest.raises(data.DataError) as e:
        data.load_dataset("fashion_mnist", data_dir=tmp_path / "mine")
    msg = str(e.value)
    assert "lacks train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mine") in msg
    assert str(tmp_path / "pkg") in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_fashion_mnist_neither_place_has_the_files(tmp_path, monkeypatch):
    _write_fmnist(tmp_path / "pkg")
    os.remove(tmp_path / "pkg" / "t10k-images-idx3-ubyte.gz")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "pkg"))
    for name in ("fashion_mnist", "fashion_mnist32"):
        with pytest.raises(data.DataError) as e:
            data.load_dataset(name)
        msg = str(e.value)
        assert "no --data_dir given" in msg and str(tmp_path / "pkg") in msg
        assert "lacks t10k-images-idx3-ubyte.gz;" in msg
        assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError) as e:
        data.load_dataset("fashion_mnist", data_dir=tmp_path / "empty")
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and str(tmp_path / "pkg") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


def test_fashion_mnist_bad_files_name_the_file(tmp_path):
    _write_fmnist(tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(np.zeros((5, 28, 28), np.uint8)))  # an images file where labels belong
    with pytest.raises(
        data.DataError, match=r"train-labels-idx1-ubyte.gz in .*IDX magic 0x00000803"
    ):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(np.arange(6) % 10))  # 6 labels for 5 images
    with pytest.raises(data.DataError, match="5 images but labels have shape") as e:
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte.gz/train-labels-idx1-ubyte.gz" in str(e.value)
    # An uncompressed copy is read when the .gz is absent, and named in errors.
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(5) % 10)[:-1])
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte in .*bytes follow"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(5) % 10))
    assert data.load_dataset("fashion_mnist", data_dir=tmp_path).train_images.shape[0] == 5


def _oracle_bilinear_taps(n_in, n_out):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc (libImaging/Resample.c), plain loops."""
    scale = n_in / n_out
    filterscale = scale if scale > 1.0 else 1.0
    support = filterscale
    taps = []
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = int(center - support + 0.5)
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > n_in:
            xmax = n_in
        weights = []
        for x in range(xmin, xmax):
            t = abs((x - center + 0.5) / filterscale)
            weights.append(1.0 - t if t < 1.0 else 0.0)
        total = sum(weights)
        fixed = []
        for w in weights:
            w = w / total
            fixed.append(int(w * 4194304 + 0.5) if w >= 0 else int(w * 4194304 - 0.5))
        taps.append((xmin, fixed))
    return taps


def _oracle_resize(img, size):
    """uint8 [H, W] -> [size, size]: horizontal pass, round to uint8, vertical pass, round."""
    h, w = img.shape
    cols = _oracle_bilinear_taps(w, size)
    rows = _oracle_bilinear_taps(h, size)
    tmp = np.zeros((h, size), np.uint8)
    for y in range(h):
        for xx, (x0, ks) in enumerate(cols):
            acc = 1 << 21
            for k, c in enumerate(ks):
                acc += int(img[y, x0 + k]) * c
            tmp[y, xx] = min(max(acc >> 22, 0), 255)
    out = np.zeros((size, size), np.uint8)
    for yy, (y0, ks) in enumerate(rows):
        for x in range(size):
            acc = 1 << 21
            for k, c in enumerate(ks):
                acc += int(tmp[y0 + k, x]) * c
            out[yy, x] = min(max(acc >> 22, 0), 255)
    return out


@pytest.mark.parametrize("side, size", [(28, 32), (5, 8), (28, 14), (9, 4)])
def test_resize_bilinear_matches_loop_oracle_and_pillow(side, size):
    """Pillow's BILINEAR (torchvision's Resize on PIL images), bit for bit, up and down."""
    imgs = _raw_images(6, side, side, 1, 9 + side + size)
    imgs[0] = 255  # saturated: coefficient sums above 1 must clip, not wrap
    imgs[1] = 0
    imgs[2, ::2] = 255  # stripes: every tap weight shows
    imgs[2, 1::2] = 0
    out = data.resize_bilinear(imgs, size)
    assert out.shape == (6, size, size, 1) and out.dtype == np.uint8
    for o, img in zip(out, imgs, strict=True):
        np.testing.assert_array_equal(o[..., 0], _oracle_resize(img[..., 0], size))
    assert (out[0] == 255).all() and (out[1] == 0).all()
    image = pytest.importorskip("PIL.Image")
    for o, img in zip(out, imgs, strict=True):
        pil = image.fromarray(img[..., 0]).resize((size, size), image.BILINEAR)
        np.testing.assert_array_equal(o[..., 0], np.asarray(pil))


def test_resize_bilinear_is_not_nearest_and_keeps_channels():
    img = np.zeros((1, 28, 28, 2), np.uint8)
    img[0, :, 14:, 0] = 200  # a vertical edge in channel 0 only
    out = data.resize_bilinear(img, 32)
    assert set(np.unique(out[0, 0, :, 0])) - {0, 200}  # the edge is interpolated
    assert not out[..., 1].any()
    with pytest.raises(ValueError, match="uint8"):
        data.resize_bilinear(img.astype(np.float32), 32)


def test_fashion_mnist32_pipeline(tmp_path):
    """The authors' pipeline: Resize(32) bilinear, mean/std 0.5, crop with black padding, flip."""
    xs, ys = _write_fmnist(tmp_path, n_train=24, n_test=3)
    ds = data.load_dataset("fashion_mnist32", data_dir=tmp_path)
    assert ds.name == "fashion_mnist32" and ds.image_shape == (32, 32, 1)
    assert ds.train_images.shape == (24, 32, 32, 1) and ds.test_images.shape == (3, 32, 32, 1)
    assert ds.augment and ds.hflip and ds.mean == (0.5,) and ds.std == (0.5,)
    np.testing.assert_array_equal(ds.train_labels, ys["train"])
    for split, images in (("train", ds.train_images), ("t10k", ds.test_images)):
        want = np.stack([_oracle_resize(x, 32) for x in xs[split]])
        np.testing.assert_allclose((images[..., 0] * 0.5 + 0.5) * 255.0, want, atol=1e-3)
    np.testing.assert_array_equal(ds.pad_value, [-1.0])  # a black pixel after Normalize(0.5, 0.5)
    out = np.asarray(
        data.augment(jax.random.key(3), ds.train_images, flip=ds.hflip, fill=ds.pad_value)
    )
    found = [_match(o, img, ds.pad_value) for o, img in zip(out, ds.train_images, strict=True)]
    assert all(f is not None for f in found)
    assert 0 < sum(f[2] for f in found) < len(found)  # some mirrored, some not
    assert len({f[:2] for f in found}) > 6


# ----------------------------------------------------------------------------- Fashion-MNIST, real


@pytest.fixture(scope="module")
def real_fmnist():
    folder = fashion_mnist_dir()
    return folder, data.load_dataset("fashion_mnist")


def test_real_fashion_mnist_reader(real_fmnist):
    folder, ds = real_fmnist
    assert ds.source == folder
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (
        10000,
        28,
        28,
        1,
    )
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    pixels = _denorm(
        ds.train_images, fashion_mnist.FASHION_MNIST_MEAN, fashion_mnist.FASHION_MNIST_STD
    )
    assert abs(float(pixels.mean()) - 0.2860) < 5e-5  # the published mean/std, 4 digits
    assert abs(float(pixels.std()) - 0.3530) < 5e-5
    assert (
        abs(float(ds.train_images.mean())) < 2e-4 and abs(float(ds.train_images.std()) - 1) < 2e-4
    )
    raw = np.round(pixels * 255.0)
    np.testing.assert_allclose(pixels * 255.0, raw, atol=2e-3)  # whole grey levels 0..255
    assert raw.min() == 0 and raw.max() == 255


def test_real_fashion_mnist32_matches_pillow_on_real_images(real_fmnist):
    image = pytest.importorskip("PIL.Image")
    raw, _ = fashion_mnist.read_raw()
    some = raw["test_images"][:200]
    ours = data.resize_bilinear(some, 32)
    for o, img in zip(ours, some, strict=True):
        pil = image.fromarray(img[..., 0]).resize((32, 32), image.BILINEAR)
        np.testing.assert_array_equal(o[..., 0], np.asarray(pil))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_real_fashion_mnist_damaged_gz(real_fmnist, tmp_path, damage):
    folder, _ = real_fmnist
    for f in fashion_mnist.FASHION_MNIST_FILES:
        shutil.copy(os.path.join(folder, f), tmp_path / f)
    victim = tmp_path / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(victim.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0xFF  # the deflate stream or the CRC check catches it
    victim.write_bytes(bytes(blob))
    with pytest.raises(
        data.DataError, match="t10k-labels-idx1-ubyte.gz in .* not a readable gzip"
    ) as e:
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- training subsets


def test_stratified_subset_is_proportional_fixed_and_sorted():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    labels = labels[np.random.default_rng(0).permutation(labels.size)]
    idx = data.stratified_subset(labels, 37, seed=0)
    assert idx.size == 37 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=4)
    # Quotas 18.5, 11.1, 5.55, 1.85: floors 18, 11, 5, 1 and the 2 left over by largest remainder.
    np.testing.assert_array_equal(counts, [18, 11, 6, 2])
    np.testing.assert_array_equal(idx, data.stratified_subset(labels, 37, seed=0))
    assert not np.array_equal(idx, data.stratified_subset(labels, 37, seed=1))
    np.testing.assert_array_equal(data.stratified_subset(labels, 100), np.arange(100))
    for bad in (0, 101, -3):
        with pytest.raises(ValueError, match=r"in \[1, 100\]"):
            data.stratified_subset(labels, bad)


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_subset_counts_are_floor_or_ceil_of_the_quota(counts, frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[np.random.default_rng(seed).permutation(labels.size)]
    n = max(1, int(round(frac * labels.size)))
    idx = data.stratified_subset(labels, n, seed=seed)
    assert idx.size == n and np.unique(idx).size == n
    got = np.bincount(labels[idx], minlength=len(counts))
    for c, k in zip(counts, got, strict=True):
        quota = n * c / labels.size
        assert np.floor(quota) - 1e-9 <= k <= np.ceil(quota) + 1e-9


def test_take_train_subset_keeps_pairs_and_the_test_set(tmp_path):
    xs, ys = _write_fmnist(tmp_path, n_train=40, n_test=3)
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path)
    sub = data.take_train_subset(ds, 20)
    assert sub.train_images.shape == (20, 28, 28, 1) and sub.test_images is ds.test_images
    np.testing.assert_array_equal(np.bincount(sub.train_labels), [2] * 10)
    idx = data.stratified_subset(ds.train_labels, 20, data.SUBSET_SEED)
    np.testing.assert_array_equal(sub.train_images, ds.train_images[idx])
    np.testing.assert_array_equal(sub.train_labels, ys["train"][idx])
    assert data.take_train_subset(ds, 0) is ds
    for bad in (5, 41, -1):
        with pytest.raises(ValueError, match=r"--train_subset: must be 0 .* in \[10, 40\]") as e:
            data.take_train_subset(ds, bad)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "name", ["cifar10", "cifar100", "svhn", "fashion_mnist", "fashion_mnist32"]
)
def test_file_datasets_need_data_dir(tmp_path, monkeypatch, name):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-package"))
    with pytest.raises(ValueError, match="--data_dir"):
        data.load_dataset(name)
    with pytest.raises(data.DataError, match="is not a directory"):
        data.load_dataset(name, data_dir=tmp_path / "nope")
    with pytest.raises(data.DataError, match=str(tmp_path)):  # empty dir: no fallback
        data.load_dataset(name, data_dir=tmp_path)


def test_unknown_name_lists_allowed():
    allowed = "allowed: digits, cifar10, cifar100, svhn, fashion_mnist, fashion_mnist32$"
    with pytest.raises(ValueError, match=allowed):
        data.load_dataset("mnist")
    assert data.DATASET_NAMES[0] == "digits"


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def test_digits_shapes_and_normalization(digits):
    assert digits.train_images.shape[1:] == (8, 8, 1) and digits.train_images.dtype == np.float32
    assert digits.train_images.shape[0] + digits.test_images.shape[0] == 1797
    assert digits.test_images.shape[0] == 359
    assert abs(float(digits.train_images.mean())) < 1e-5
    assert abs(float(digits.train_images.std()) - 1.0) < 1e-4
    assert digits.train_labels.dtype == np.int32 and digits.num_classes == 10
    assert not digits.augment


def test_digits_split_fixed_stratified_disjoint(digits):
    from sklearn.datasets import load_digits

    again = data.load_dataset("digits")
    for a, b in zip(digits[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    y = load_digits().target
    train, test = data.stratified_split(y, 0.2, 0)
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == y.size
    for c in range(10):
        n_c = int((y == c).sum())
        assert int((y[test] == c).sum()) == round(0.2 * n_c)
    np.testing.assert_array_equal(digits.test_labels, y[test])
    other_train, other_test = data.stratified_split(y, 0.2, 1)
    assert not np.array_equal(test, other_test)


# ----------------------------------------------------------------------------- batching


def test_batches_deterministic_per_key_and_epoch():
    x = np.arange(50, dtype=np.float32).reshape(50, 1)
    y = np.arange(50, dtype=np.int32)
    key = jax.random.key(3)
    run = lambda k, e: [b[1] for b in data.batches(x, y, batch_size=8, key=k, epoch=e)]
    a, b = run(key, 0), run(key, 0)
    assert len(a) == data.num_batches(50, 8) == 6
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(np.concatenate(a), np.concatenate(run(key, 1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(run(jax.random.key(4), 0)))
    # images and labels stay paired
    for xb, yb in data.batches(x, y, batch_size=8, key=key, epoch=2):
        np.testing.assert_array_equal(xb[:, 0], yb)


@settings(max_examples=15, deadline=None)  # each new N compiles a permutation
@given(
    n=st.integers(1, 40),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 1000),
    drop=st.booleans(),
)
def test_batches_cover_each_example_once(n, frac, seed, epoch, drop):
    batch_size = max(1, int(round(frac * n)))
    y = np.arange(n, dtype=np.int32)
    x = RNG.normal(size=(n, 2, 2, 1)).astype(np.float32)
    got = list(
        data.batches(
            x, y, batch_size=batch_size, key=jax.random.key(seed), epoch=epoch, drop_remainder=drop
        )
    )
    assert len(got) == data.num_batches(n, batch_size, drop)
    seen = np.concatenate([b[1] for b in got])
    assert np.unique(seen).size == seen.size  # no example twice
    assert seen.size == (n // batch_size * batch_size if drop else n)
    assert all(b[0].shape[0] == batch_size for b in got[: n // batch_size])
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x[seen])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 50))
def test_eval_batches_cover_all_once_with_mask(n, batch_size):
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) + 1.0
    y = np.arange(n, dtype=np.int32)
    got = list(data.eval_batches(x, y, batch_size=batch_size))
    assert len(got) == data.num_batches(n, batch_size, drop_remainder=False)
    assert all(b[0].shape == (batch_size, 1, 1, 1) and b[2].shape == (batch_size,) for b in got)
    labels = np.concatenate([b[1][b[2]] for b in got])
    np.testing.assert_array_equal(labels, y)
    images = np.concatenate([b[0][b[2]] for b in got])
    np.testing.assert_array_equal(images, x)
    pad = np.concatenate([b[0][~b[2]] for b in got])
    assert pad.size == len(got) * batch_size - n and not pad.any()


@pytest.mark.parametrize("bad", [0, -1, 11])
def test_batch_size_out_of_range(bad):
    x, y = np.zeros((10, 1, 1, 1), np.float32), np.zeros((10,), np.int32)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
        list(data.batches(x, y, batch_size=bad, key=jax.random.key(0)))
    if bad <= 0:
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            list(data.eval_batches(x, y, batch_size=bad))
    with pytest.raises(ValueError, match="labels"):
        list(data.batches(x, y[:5], batch_size=2, key=jax.random.key(0)))


# ----------------------------------------------------------------------------- augmentation


def _windows(img, fill, pad=4):
    """All (dy, dx) crops of the padded image, plain loops (the oracle)."""
    h, w, c = img.shape
    canvas = np.broadcast_to(fill, (h + 2 * pad, w + 2 * pad, c)).copy()
    canvas[pad : pad + h, pad : pad + w] = img
    return {(dy, dx): canvas[dy : dy + h, dx : dx + w] for dy in range(9) for dx in range(9)}


def _match(out, img, fill):
    """(dy, dx, mirrored) of the window equal to `out`, or None."""
    for (dy, dx), win in _windows(img, fill).items():
        if np.array_equal(out, win):
            return dy, dx, False
        if np.array_equal(out, win[:, ::-1]):
            return dy, dx, True
    return None


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("use_fill", [False, True])
def test_augment_is_window_of_padded_image(flip, use_fill):
    images = RNG.normal(size=(24, 12, 10, 3)).astype(np.float32)
    fill = np.array([-1.5, 0.25, 2.0], np.float32) if use_fill else np.zeros(3, np.float32)
    key = jax.random.key(11)
    out = data.augment(key, images, flip=flip, fill=fill if use_fill else None)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(data.augment(key, images, flip=flip, fill=fill))
    )
    found = [_match(np.asarray(o), img, fill) for o, img in zip(out, images, strict=True)]
    assert all(f is not None for f in found)
    mirrored = [f[2] for f in found]
    assert any(mirrored) == flip and (not flip or not all(mirrored))
    assert len({f[:2] for f in found}) > 6  # offsets vary over the 81 possible
    other = data.augment(jax.random.key(12), images, flip=flip)
    assert not np.array_equal(np.asarray(out), np.asarray(other))


def test_augment_offsets_span_full_range():
    """Every shift 0..8 in each axis occurs (fixed key, so deterministic), flips about half."""
    images = RNG.normal(size=(300, 5, 5, 1)).astype(np.float32)
    out = np.asarray(data.augment(jax.random.key(21), images))
    found = [_match(o, img, np.zeros(1, np.float32)) for o, img in zip(out, images, strict=True)]
    assert {f[0] for f in found} == set(range(9)) and {f[1] for f in found} == set(range(9))
    assert 100 < sum(f[2] for f in found) < 200


def test_augment_flip_is_mirror_and_no_recompile():
    """Same key: crops agree, and with flip on each image is the crop or its exact mirror."""
    images = RNG.normal(size=(32, 6, 6, 2)).astype(np.float32)
    key = jax.random.key(5)
    plain = np.asarray(data.augment(key, images, flip=False))
    flipped = np.asarray(data.augment(key, images, flip=True))
    mirrored = []
    for p, f in zip(plain, flipped, strict=True):
        same, mirror = np.array_equal(f, p), np.array_equal(f, p[:, ::-1])
        assert same or mirror
        mirrored.append(mirror and not same)
    assert 0 < sum(mirrored) < len(mirrored)
    before = data.pipeline._augment._cache_size()
    data.augment(jax.random.key(99), images, flip=False, fill=np.ones(2, np.float32))
    assert data.pipeline._augment._cache_size() == before  # flip and fill are traced


def test_augment_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, C\]"):
        data.augment(jax.random.key(0), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"fill must have shape \(3,\)"):
        data.augment(jax.random.key(0), np.zeros((1, 4, 4, 3), np.float32), fill=np.zeros(2))


def test_pad_value_is_black_pixel(tmp_path):
    _write_svhn(tmp_path)
    ds = data.load_dataset("svhn", data_dir=tmp_path)
    black = data.normalize(np.zeros((1, 1, 1, 3), np.uint8), ds.mean, ds.std)[0, 0, 0]
    np.testing.assert_allclose(ds.pad_value, black, rtol=1e-6)


def test_fashion_mnist_reads_no_more_than_a_file_can_hold(tmp_path, monkeypatch):
    """A gzip that expands beyond any Fashion-MNIST file is refused before it is all read."""
    from uticket_jax.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "MAX_IDX_BYTES", 1000)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0" * 5000)
    with pytest.raises(data.DataError, match="holds more than 1000 bytes"):
        fashion_mnist._read(str(tmp_path), "train-images-idx3-ubyte.gz", 3)
