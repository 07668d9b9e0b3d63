"""Transparent huge pages for the large host buffers XLA:CPU takes on every call (glibc, Linux).

XLA:CPU allocates a fresh block for a compiled program's temporaries on every execution: about
0.9 GB for a VGG16 train step at batch 32 and T = 4. glibc serves blocks that large with `mmap`
and hands them back with `munmap`. Every step therefore faults in about 240,000 fresh 4 KiB pages,
and the kernel zeroes each one. On the 2-core development VM that cost 0.45-0.6 s of kernel time
per step, out of ~1.1 s of wall time.

glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) makes malloc advise such blocks as
transparent huge pages (`madvise(MADV_HUGEPAGE)`), so they fault in 2 MiB at a time. This only
matters where the kernel's THP mode is `madvise`; under `always` they are huge pages already, and
under `never` the advice is ignored. glibc reads tunables once, when a process starts, so
`reexec_with_hugepages()` restarts the running interpreter once with the tunable added. The
training launchers call it first thing in `__main__`; set `UTICKET_HUGEPAGES=0` to keep a process as
started. Measured effect: BUILD_NOTES.md ("Training step").
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "UTICKET_HUGEPAGES"  # "0" keeps the process as started
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's THP mode (`always`, `madvise` or `never`), None where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _glibc_version(libc: tuple[str, str]) -> tuple[int, ...] | None:
    name, version = libc
    if name != "glibc":
        return None
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def _hugetlb_values(tunables: str) -> list[str]:
    """The values given to `glibc.malloc.hugetlb` in a `GLIBC_TUNABLES` string, in order."""
    entries = (entry.partition("=") for entry in tunables.split(":"))
    return [value for name, _, value in entries if name == "glibc.malloc.hugetlb"]


def hugepage_env(
    environ: Mapping[str, str], *, libc: tuple[str, str], thp: str | None
) -> dict[str, str] | None:
    """The environment to restart with so glibc advises huge pages, or None when nothing to do.

    None when: the C library is not glibc >= 2.35 (`libc` as `platform.libc_ver()` gives it); the
    THP mode `thp` is not `madvise`; `GLIBC_TUNABLES` already sets `glibc.malloc.hugetlb` (to
    any value: the user's choice stands); or `UTICKET_HUGEPAGES` is "0". Otherwise a copy of
    `environ` with the tunable appended to the existing ones.
    """
    version = _glibc_version(libc)
    if version is None or version < _MIN_GLIBC or thp != "madvise":
        return None
    if environ.get(OPT_OUT, "").strip() == "0":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if _hugetlb_values(current):
        return None
    entries = [entry for entry in current.split(":") if entry]
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join([*entries, TUNABLE])
    return env


def hugepages_active(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process started with `glibc.malloc.hugetlb` set to a non-zero value."""
    values = _hugetlb_values((os.environ if environ is None else environ).get("GLIBC_TUNABLES", ""))
    return bool(values) and values[-1] not in ("", "0")


def reexec_with_hugepages() -> None:
    """Restarts the running interpreter (same executable, options and arguments) with the glibc
    huge-page tunable when `hugepage_env` says it applies; returns normally otherwise.

    Call it first thing in a script's `__main__` block, before work that should not run twice:
    on success this call does not return (`os.execve`).
    """
    env = hugepage_env(os.environ, libc=platform.libc_ver(), thp=thp_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
