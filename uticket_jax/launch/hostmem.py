"""Transparent huge pages for the large host buffers XLA:CPU takes on every call (glibc, Linux).

XLA:CPU allocates a fresh block for a compiled program's temporaries on every execution: about
0.9 GB for a VGG16 train step at batch 32 and T = 4. glibc serves blocks that large with `mmap`
and hands them back with `munmap`. Every step therefore faults in about 240,000 fresh 4 KiB pages,
and the kernel zeroes each one. On the 2-core development VM that kernel time was about half of
a step's wall time (BUILD_NOTES.md, "Pitfalls" and "Training step").

glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) makes malloc advise such blocks as
transparent huge pages (`madvise(MADV_HUGEPAGE)`), so they fault in 2 MiB at a time. This only
matters where the kernel's THP mode is `madvise`; under `always` they are huge pages already, and
under `never` the advice is ignored. glibc reads tunables once, when a process starts, so
`reexec_with_hugepages()` restarts the running interpreter once with the tunable added.

When it restarts (every rule must hold; otherwise the call just returns):
- it is called from the `__main__` module of a non-interactive interpreter (a launcher's
  `if __name__ == "__main__":` block), never from library code or a REPL;
- no debugger or coverage tool is attached (`sys.gettrace()` is None, and on Python >= 3.12 no
  `sys.monitoring` debugger or coverage tool): a restart would detach it;
- JAX's backend will be the CPU, decided without initializing any backend: if `JAX_PLATFORMS` is
  set, its first entry must be `cpu`; if not, no accelerator plugin may be installed (a
  `jax_plugins` entry point or module, e.g. the CUDA plugin, or `libtpu`);
- glibc >= 2.35, THP mode `madvise`, `GLIBC_TUNABLES` does not set `glibc.malloc.hugetlb`
  already, and `UTICKET_HUGEPAGES` is not "0" (`hugepage_env`).
The restarted process's first call removes the tunable from `os.environ` again (restoring
`GLIBC_TUNABLES` as it was), so the processes it starts do not inherit it; a private marker
variable carries the original value across the restart, and the process restarts only once.
Measured effect: BUILD_NOTES.md ("Training step").
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import os
import pkgutil
import platform
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "UTICKET_HUGEPAGES"  # "0" keeps the process as started
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable
_MARKER = "_UTICKET_HUGEPAGES_RESTARTED"  # "-": GLIBC_TUNABLES was unset, "=V": it was V
_restarted_with: str | None = None  # this process's GLIBC_TUNABLES at start, after a restart


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
    """glibc's version from `platform.libc_ver()`, None for another C library."""
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

    Args:
      environ: the current environment.
      libc: the C library as `platform.libc_ver()` gives it.
      thp: the kernel's THP mode (`thp_mode()`).

    Returns:
      None when: the C library is not glibc >= 2.35; `thp` is not `madvise`; `GLIBC_TUNABLES`
      already sets `glibc.malloc.hugetlb` (to any value: the user's choice stands); or
      `UTICKET_HUGEPAGES` is "0". Otherwise a copy of `environ` with the tunable appended to the
      existing ones, and the private marker holding the original `GLIBC_TUNABLES`.
    """
    version = _glibc_version(libc)
    if version is None or version < _MIN_GLIBC or thp != "madvise":
        return None
    if environ.get(OPT_OUT, "").strip() == "0":
        return None
    current = environ.get("GLIBC_TUNABLES")
    if _hugetlb_values(current or ""):
        return None
    entries = [entry for entry in (current or "").split(":") if entry]
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join([*entries, TUNABLE])
    env[_MARKER] = "-" if current is None else "=" + current
    return env


def accelerator_plugins() -> list[str]:
    """Installed JAX accelerator plugins (CUDA, ROCm, TPU...), found without importing JAX.

    Returns:
      The names of `jax_plugins` entry points and modules, and `libtpu` when importable.
    """
    names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        names += [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)]
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return sorted(set(names))


def backend_is_cpu(environ: Mapping[str, str], plugins: Sequence[str]) -> bool:
    """Whether JAX's default backend will be the CPU (without initializing a backend).

    Args:
      environ: the environment (`JAX_PLATFORMS`).
      plugins: the installed accelerator plugins (`accelerator_plugins()`).

    Returns:
      With `JAX_PLATFORMS` set (a priority list): whether its first entry is `cpu`. Unset:
      whether no accelerator plugin is installed.
    """
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not plugins


def traced() -> bool:
    """Whether a debugger or coverage tool watches this process (settrace or sys.monitoring)."""
    if sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python >= 3.12
    if monitoring is None:
        return False
    tools = (monitoring.DEBUGGER_ID, monitoring.COVERAGE_ID)
    return any(monitoring.get_tool(t) is not None for t in tools)


def _finish_restart() -> None:
    """In a restarted process: puts `GLIBC_TUNABLES` back as it was and drops the marker."""
    global _restarted_with
    _restarted_with = os.environ.get("GLIBC_TUNABLES", "")
    original = os.environ.pop(_MARKER)
    if original.startswith("="):
        os.environ["GLIBC_TUNABLES"] = original[1:]
    else:
        os.environ.pop("GLIBC_TUNABLES", None)


def hugepages_active(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process started with `glibc.malloc.hugetlb` set to a non-zero value.

    Args:
      environ: read `GLIBC_TUNABLES` from here; None: this process's start-up value (kept by
        `reexec_with_hugepages` after a restart, else `os.environ`).

    Returns:
      Whether the last `glibc.malloc.hugetlb` entry is set and not "0".
    """
    if environ is None:
        tunables = _restarted_with
        if tunables is None:
            tunables = os.environ.get("GLIBC_TUNABLES", "")
    else:
        tunables = environ.get("GLIBC_TUNABLES", "")
    values = _hugetlb_values(tunables)
    return bool(values) and values[-1] not in ("", "0")


def _from_main(frame) -> bool:
    """Whether `frame` runs in the `__main__` module of a non-interactive interpreter."""
    interactive = bool(sys.flags.interactive) or hasattr(sys, "ps1")
    return frame is not None and frame.f_globals.get("__name__") == "__main__" and not interactive


def reexec_with_hugepages() -> None:
    """Restarts the running interpreter (same executable, options and arguments) with the glibc
    huge-page tunable when every rule of the module docstring holds; returns normally otherwise.

    Call it first thing in a launcher's `if __name__ == "__main__":` block, before work that
    should not run twice: when it restarts, this call does not return (`os.execve`). In the
    restarted process it returns at once, after removing the tunable from `os.environ`.
    """
    if _MARKER in os.environ:
        _finish_restart()
        return
    frame = inspect.currentframe()
    if _restarted_with is not None or not _from_main(frame.f_back if frame else None):
        return
    if traced() or not backend_is_cpu(os.environ, accelerator_plugins()):
        return
    env = hugepage_env(os.environ, libc=platform.libc_ver(), thp=thp_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
