"""Reading files that may be anything: `.npz` arrays checked byte by byte, JSON in one line.

`np.load` trusts the file: an `.npy` header may declare a shape of terabytes (it allocates, then
fails with MemoryError), a raw `.npy` renamed `.npz` comes back as an array instead of a
mapping, a text file is reported as "pickled data", a member that is not an `.npy` raises from
deep inside numpy. `read_npz` reads the archive itself:

  1. the first bytes say what the file is (zip, a lone `.npy`, a pickle, text);
  2. the zip directory: every member a plain, unencrypted `*.npy` file, names unique;
  3. each member's `.npy` header (`numpy.lib.format`, a literal parser with a size limit): the
     dtype (no objects: pickles are refused, no structured or sub-array dtypes, a kind the caller
     allows), the shape (a rank the caller allows, every dimension in [1, 2**31 - 1]);
  4. the bytes that shape needs, against the bytes the member holds (and, for a compressed
     member, against what its compressed size can expand to): only then is memory allocated,
     and the data are read to the member's end, so a truncated or corrupted member fails its
     CRC check rather than coming back as garbage.

Every problem is one `ValueError` naming the file, the member and what is wrong.

JSON (`read_json`): `json.load` raises `UnicodeDecodeError` on binary data (a message that names
no file), `RecursionError` on deeply nested arrays, and reads a file of any size; each becomes
one `ValueError` naming the file.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, BinaryIO

import numpy as np
import numpy.lib.format as npy_format

from uticket_jax.checks.numbers import INT32_MAX

# Deflate expands at most ~1032:1; a member claiming more is corrupt (or a zip bomb).
_MAX_EXPANSION = 1100
_MAX_HEADER = 10_000  # bytes of an .npy header (numpy's own default limit)
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
KIND_NAMES = {"b": "boolean", "i": "integer", "u": "unsigned integer", "f": "floating point"}


def sniff(head: bytes) -> str | None:
    """What a file that is not a zip archive is, from its first bytes (None: a zip)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return None
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array, not a zip of them: write it with np.savez"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "it is a Python pickle, which is refused: unpickling can run code"
    if not head:
        return "it is empty"
    try:
        head.decode("utf-8")
        return "it is a text file, not a zip of .npy arrays"
    except UnicodeDecodeError:
        return f"it is not a zip of .npy arrays: it starts with {head[:8]!r}"


def _members(z: zipfile.ZipFile, where: str, size: int) -> list[zipfile.ZipInfo]:
    """The archive's members, each a unique, plain, readable `*.npy` file inside `size` bytes."""
    infos = z.infolist()
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if info.is_dir() or not name.endswith(".npy") or len(name) <= 4:
            raise ValueError(f"{where}: member {name!r} is not an .npy array file")
        if name in seen:
            raise ValueError(f"{where}: member {name!r} appears twice")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise ValueError(f"{where}: member {name!r} is encrypted")
        if info.compress_type not in _METHODS:
            raise ValueError(
                f"{where}: member {name!r} uses compression method {info.compress_type}"
            )
        if info.header_offset + info.compress_size > size or (
            info.file_size > _MAX_EXPANSION * info.compress_size + 1024
        ):
            raise ValueError(
                f"{where}: member {name!r} claims {info.file_size} bytes from"
                f" {info.compress_size} compressed ones at offset {info.header_offset} of a"
                f" {size}-byte file (corrupt)"
            )
    return infos


def _header(f: BinaryIO, label: str, kinds: str, ranks: tuple[int, ...]):
    """`(shape, fortran_order, dtype, header bytes)` of one member, checked."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f, _MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f, _MAX_HEADER)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except Exception as e:  # numpy raises ValueError, SyntaxError, TypeError, ... on bad headers
        raise ValueError(f"{label}: not a valid .npy header ({_reason(e)})") from None
    if dtype.hasobject:
        raise ValueError(f"{label}: holds Python objects (pickled data), which are refused")
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        allowed = ", ".join(KIND_NAMES[k] for k in kinds)
        raise ValueError(f"{label}: dtype {dtype} is not allowed; allowed: {allowed}")
    if len(shape) not in ranks:
        allowed = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{label}: shape {shape} is not allowed; allowed: {allowed}")
    if any(not 1 <= d <= INT32_MAX for d in shape):
        raise ValueError(f"{label}: shape {shape} has a dimension outside [1, {INT32_MAX}]")
    return tuple(shape), fortran, dtype


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, kinds, ranks):
    label = f"{where}: member {info.filename!r}"
    with z.open(info) as f:
        shape, fortran, dtype = _header(f, label, kinds, ranks)
        header_len = f.tell()
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        have = info.file_size - header_len
        if need != have:
            raise ValueError(
                f"{label}: its header declares shape {shape} of {dtype} ({need} bytes), but it"
                f" holds {have} bytes (truncated or corrupt)"
            )
        buf = bytearray(need)
        view, pos = memoryview(buf), 0
        while pos < need:
            got = f.readinto(view[pos:])
            if not got:
                raise ValueError(f"{label}: data end after {pos} of {need} bytes (truncated)")
            pos += got
        f.read(1)  # to the member's end: zipfile checks the CRC there
    array = np.frombuffer(buf, dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def read_npz(
    path: str,
    what: str,
    *,
    kinds: str = "biuf",
    ranks: tuple[int, ...] = (2, 4),
    expected: str = "one per prunable layer",
) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file, `{key: array}` in file order, every byte checked first.

    Args:
      path: the file.
      what: what messages name first (`masks`, `weights`).
      kinds: numpy dtype kinds allowed (`b` bool, `i`/`u` integers, `f` floats).
      ranks: array ranks allowed.
      expected: what the file should hold, for the message of a file that holds no arrays.

    Returns:
      Writable numpy arrays keyed by member name without `.npy`, in the archive's order.

    Raises:
      ValueError: naming `what` and `path`: no such file, not an `.npz`, a pickle, a bad member,
        header, dtype, shape or size, truncated or corrupt data, no arrays at all.
    """
    where = f"{what}: {path!r}"
    if not os.path.exists(path):
        raise ValueError(f"{what}: no such file {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file")
    try:
        with open(path, "rb") as f:
            kind = sniff(f.read(16))
        size = os.path.getsize(path)
    except OSError as e:
        raise ValueError(f"{where} cannot be read ({e.strerror or _reason(e)})") from None
    if kind is not None:
        raise ValueError(f"{where} is not a readable .npz file ({kind})")
    try:
        with zipfile.ZipFile(path) as z:
            arrays = {
                info.filename[:-4]: _read_member(z, info, where, kinds, ranks)
                for info in _members(z, where, size)
            }
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where} is not a readable .npz file ({_reason(e)})") from None
    except Exception as e:  # zipfile/zlib/bz2/lzma raise many types on damaged archives
        raise ValueError(f"{where} is not a readable .npz file ({_reason(e)})") from None
    if not arrays:
        raise ValueError(f"{where} holds no arrays; expected {expected}")
    return arrays


def is_npz(path: str) -> bool:
    """Whether `path` is a zip whose members are all `.npy` files (read no further)."""
    try:
        with open(path, "rb") as f:
            if sniff(f.read(16)) is not None:
                return False
        with zipfile.ZipFile(path) as z:
            return all(n.endswith(".npy") for n in z.namelist())
    except Exception:  # anything unreadable is not one
        return False


# ---- JSON ---------------------------------------------------------------------------------------

MAX_BYTES = 64 * 2**20  # no JSON file of the project comes near this


def read_json(path: str, what: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """The parsed content of the JSON file `path`.

    Args:
      path: the file.
      what: what messages name first (`spike_rates`, `--resume`).
      max_bytes: larger files are refused before they are read.

    Raises:
      ValueError: naming `what` and `path`: missing, not a file, unreadable, too large, not
        UTF-8, not JSON, nested too deeply.
    """
    where = f"{what}: {path!r}"
    if not os.path.exists(path):
        raise ValueError(f"{what}: no such file {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file")
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ValueError(
                f"{where} has {size} bytes; a JSON file here holds at most {max_bytes}"
            )
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{where} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{where} is not usable JSON (nested too deeply)") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of every HDF5 (and so NIR) file


def is_nir_file(path: str) -> bool:
    """Whether `path` is meant as a NIR file: it ends in `.nir` or starts as an HDF5 file does
    (cheap: reads 8 bytes, imports nothing; `uticket_jax.interop` reads the graph)."""
    if str(path).lower().endswith(".nir"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False
