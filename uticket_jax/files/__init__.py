"""The project's files, read and written safely: `.npz` arrays checked byte by byte before
anything is allocated and JSON with one-line errors (`readers`), atomic writes with the
user's umask and no temporary file left behind (`atomic`); spike traces, compressed `.npz` of
recorded layer inputs (`traces`)."""

from uticket_jax.files.atomic import (
    WriteError,
    check_writable,
    current_umask,
    file_mode,
    make_dirs,
    write_atomic,
    write_bytes,
    write_error,
    write_npz,
    write_text,
)
from uticket_jax.files.readers import HDF5_SIGNATURE, is_nir_file, is_npz, read_json, read_npz
from uticket_jax.files.traces import check_trace, load_spike_trace, save_spike_trace

__all__ = [
    "HDF5_SIGNATURE",
    "WriteError",
    "check_trace",
    "check_writable",
    "current_umask",
    "file_mode",
    "is_nir_file",
    "is_npz",
    "load_spike_trace",
    "make_dirs",
    "read_json",
    "read_npz",
    "save_spike_trace",
    "write_atomic",
    "write_bytes",
    "write_error",
    "write_npz",
    "write_text",
]
