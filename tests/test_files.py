"""File readers and writers under fuzzing: every input is read or refused in one line.

`read_npz` (and the mask/weight loaders on top of it) and `read_json` get random bytes, random
zips, hostile `.npy` headers and corrupted or truncated real files; each case must come back as
arrays equal to what numpy wrote, or as one `ValueError` line naming the file, never another
exception. The atomic writer must leave the target as it was and no temporary file behind.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uticket_jax import files
from uticket_jax.sparsity import masks as M

# UTICKET_FUZZ_EXAMPLES=5000 runs the longer campaign (BUILD_NOTES.md, "Fuzzing").
FUZZ = settings(
    max_examples=int(os.environ.get("UTICKET_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _refused_in_one_line(path, fn, what="masks"):
    """`fn(path)`'s result, or None after checking its ValueError is one line naming the file."""
    try:
        return fn(path)
    except ValueError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"{what}:"), msg
        assert repr(str(path)) in msg or str(path) in msg, msg
        return None


def _read(path):
    return files.read_npz(path, "masks")


def _npy(header: dict, data: bytes, version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + data


def _zip(path, members, method=zipfile.ZIP_STORED):
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", method) as z:
        warnings.simplefilter("ignore")  # duplicate names are part of the fuzz
        for name, data in members:
            z.writestr(name, data)


def _real(path):
    rng = np.random.default_rng(0)
    arrays = {
        "features/conv0/kernel": rng.random((3, 3, 1, 4)) < 0.5,
        "features/conv1/kernel": rng.random((3, 3, 4, 8)) < 0.5,
        "classifier/kernel": rng.random((8, 10)) < 0.5,
    }
    np.savez(path, **arrays)
    return arrays


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_in_one_line(tmp_path, raw):
    path = tmp_path / "x.npz"
    path.write_bytes(raw)
    assert _refused_in_one_line(str(path), _read) is None or raw.startswith(b"PK")


_DESCR = st.sampled_from(
    ["|b1", "<f4", ">f8", "<i8", "|u1", "<c8", "|O", "<U3", "|V8", "<M8[s]", "|S2", "?", "zz"]
)
_DIM = st.one_of(
    st.integers(0, 6), st.integers(-3, 2**40), st.sampled_from([2**31, 2**63, -(2**63)])
)


@FUZZ
@given(
    descr=_DESCR,
    shape=st.lists(_DIM, max_size=5),
    fortran=st.booleans(),
    extra=st.integers(-40, 40),
    version=st.sampled_from([(1, 0), (2, 0)]),
    method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_hostile_headers(tmp_path, descr, shape, fortran, extra, version, method):
    """Headers of any dtype and shape, followed by too few, exactly enough or too many bytes."""
    try:
        dtype = np.dtype(descr)
        need = max(0, int(np.prod(shape, dtype=object)) * dtype.itemsize) if shape else 0
    except TypeError:
        need = 16
    data = b"\x01" * max(0, min(need, 4096) + extra)
    header = {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    path = tmp_path / "h.npz"
    _zip(path, [("k.npy", _npy(header, data, version))], method)
    got = _refused_in_one_line(str(path), _read)
    if got is not None:  # only what np.load reads the same way
        with np.load(path) as z:
            np.testing.assert_array_equal(got["k"], z["k"])
            assert got["k"].dtype == z["k"].dtype and got["k"].flags.writeable


@FUZZ
@given(
    members=st.lists(
        st.tuples(
            st.sampled_from(["a.npy", "b/c.npy", "a.npy", "x.txt", "d/", ".npy", "é.npy"]),
            st.binary(max_size=80),
        ),
        max_size=4,
    )
)
def test_random_zips(tmp_path, members):
    path = tmp_path / "z.npz"
    _zip(path, members)
    assert _refused_in_one_line(str(path), _read) is None


@FUZZ
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_corrupted_and_truncated_real_files(tmp_path, cut, flips):
    path = tmp_path / "m.npz"
    arrays = _real(path)
    raw = bytearray(path.read_bytes())
    for i in flips:
        raw[i % len(raw)] ^= 0x5A
    raw = raw[: max(1, int(len(raw) * cut))] if cut < 1.0 else raw
    path.write_bytes(bytes(raw))
    got = _refused_in_one_line(str(path), M.load_mask_file)
    if got is not None:  # a flip that missed every checked byte leaves the same arrays
        assert list(got) == list(arrays)
        for k in arrays:
            np.testing.assert_array_equal(got[k], arrays[k])


def test_the_named_hostile_files(tmp_path):
    """The issue's cases, each with what its message says."""
    cases = {}
    np.save(tmp_path / "raw.npy", np.ones((2, 2)))
    os.replace(tmp_path / "raw.npy", tmp_path / "raw.npz")
    cases["raw.npz"] = "single .npy array"
    _zip(tmp_path / "member.npz", [("notes.txt", b"hello")])
    cases["member.npz"] = "is not an .npy array file"
    big = {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6, 3, 3)}
    _zip(tmp_path / "big.npz", [("k.npy", _npy(big, b"\0" * 64))])
    cases["big.npz"] = "truncated or corrupt"
    np.savez(tmp_path / "obj.npz", k=np.array([[None, 1]], dtype=object))
    cases["obj.npz"] = "Python objects"
    (tmp_path / "text.npz").write_text("layer,mask\n")
    cases["text.npz"] = "text file"
    import pickle

    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"k": 1}))
    cases["pickle.npz"] = "pickle"
    np.savez(tmp_path / "empty_dim.npz", k=np.ones((0, 3), bool))
    cases["empty_dim.npz"] = "outside [1,"
    np.savez(tmp_path / "strings.npz", k=np.array([["a", "b"]]))
    cases["strings.npz"] = "not allowed"
    for name, needle in cases.items():
        with pytest.raises(ValueError, match="masks: ") as err:
            M.load_mask_file(str(tmp_path / name))
        assert needle in str(err.value) and "\n" not in str(err.value), (name, err.value)


def test_values_other_than_0_and_1_are_refused_and_01_accepted(tmp_path):
    np.savez(tmp_path / "ok.npz", k=np.array([[0.0, 1.0]]))
    assert M.load_mask_file(str(tmp_path / "ok.npz"))["k"].dtype == bool
    for bad in (0.3, 2.0, np.nan, -1.0):
        np.savez(tmp_path / "bad.npz", k=np.array([[0.0, bad]]))
        with pytest.raises(ValueError, match="not boolean or exactly 0/1"):
            M.load_mask_file(str(tmp_path / "bad.npz"))


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.integers(1, 5000).map(lambda n: b"[" * n)))
def test_json_reader(tmp_path, raw):
    path = tmp_path / "r.json"
    path.write_bytes(raw)
    try:
        got = files.read_json(str(path), "spike_rates")
    except ValueError as e:
        assert "\n" not in str(e) and str(e).startswith(f"spike_rates: {str(path)!r}"), e
    else:
        assert got == json.loads(raw.decode("utf-8")) or got != got  # NaN is not equal to itself


def test_atomic_write_uses_the_umask_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_text(str(tmp_path / "a.json"), "{}")
        M.save_mask_file(str(tmp_path / "m.npz"), {"k": np.ones((2, 2), bool)})
    finally:
        os.umask(old)
    for name in ("a.json", "m.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name
    (tmp_path / "keep.txt").write_text("before")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(files.WriteError) as err:
        files.write_atomic(str(tmp_path / "keep.txt"), full)
    assert str(err.value) == f"cannot write {tmp_path / 'keep.txt'}: no space left on the device"
    assert (tmp_path / "keep.txt").read_text() == "before"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "keep.txt", "m.npz"]

    def interrupted(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(str(tmp_path / "keep.txt"), interrupted)
    assert sorted(os.listdir(tmp_path)) == ["a.json", "keep.txt", "m.npz"]
