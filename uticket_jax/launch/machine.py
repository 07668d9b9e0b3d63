"""What a run's figures depend on besides its settings: the processor, the libraries, the devices.

The same seed and settings give the same figures, bit for bit, only on the same kind of machine
with the same library versions. XLA compiles for the processor it runs on, and the kernel
libraries it calls pick their code paths by the processor's instruction sets, so sums can be
rounded differently on another CPU model. A training run then drifts apart in the last digits
of its weights, and after a few epochs in its accuracy and masks. The Fashion-MNIST
run of BUILD_NOTES.md shows such a difference between two machines.

`describe()` records those facts and `lth.py` keeps them in `WORKDIR/machine.json`: one entry
per start of the run (the first start and every `--resume`). A resumed run prints which facts
differ from the first start (`differences`), since its later stages may then differ from an
uninterrupted run's.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax

from uticket_jax.launch import hostmem

CPUINFO = "/proc/cpuinfo"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
# The instruction-set extensions that decide XLA:CPU's and its kernel libraries' code paths.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def cpu_facts(path: str = CPUINFO) -> dict[str, Any]:
    """The first processor's vendor, model and instruction sets, as Linux's cpuinfo lists them.

    Returns `{"vendor", "model", "family", "simd"}` (`family`: "family/model/stepping", which
    tells processor generations apart where a virtual machine's model name does not; `simd`:
    those of `SIMD_FLAGS` present, or, on Arm, its `Features` line); a field the file lacks is
    None, and the file missing gives `platform.processor()` as the model.
    """
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # the first processor's block only
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        return {"vendor": None, "model": platform.processor() or None, "family": None, "simd": None}
    flags = fields.get("flags")
    if flags is not None:
        simd = [f for f in SIMD_FLAGS if f in flags.split()]
    else:
        simd = fields.get("Features", "").split() or None
    model = fields.get("model name") or fields.get("CPU part") or platform.processor() or None
    vendor = fields.get("vendor_id") or fields.get("CPU implementer")
    ident = [fields.get(k) for k in ("cpu family", "model", "stepping")]
    family = "/".join(ident) if all(ident) else None
    return {"vendor": vendor, "model": model, "family": family, "simd": simd}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (None for one not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe(*, resume: bool = False) -> dict[str, Any]:
    """This process's machine: CPU, cores, Python and package versions, JAX's devices.

    Initializes JAX's backend (call it where the run would anyway). In a multi-process run the
    CPU facts are the calling process's; the devices are all processes'.
    """
    devices = jax.devices()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resume": resume,
        "cpu": cpu_facts(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": package_versions(),
        "backend": jax.default_backend(),
        "devices": sorted({d.device_kind for d in devices}),
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "hugepages": hostmem.hugepages_active(),
        "xla_flags": os.environ.get("XLA_FLAGS") or None,
        "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else [],
    }


# Entries that differ between two starts of one run without bearing on its figures.
_NOT_COMPARED = ("started", "resume", "argv")
_MISSING = object()


def differences(first: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Dotted names of the facts that differ between two `describe()` entries, sorted.

    Start time, `resume` and the command line are not compared; nested dicts are compared field
    by field (`cpu.model`, `packages.jaxlib`); a field only one entry has counts as different.
    """
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                if not prefix and key in _NOT_COMPARED:
                    continue
                walk(a.get(key, _MISSING), b.get(key, _MISSING), f"{prefix}{key}.")
        elif a != b:
            out.append(prefix[:-1])

    walk(first, now, "")
    return sorted(out)


def summary(entry: Mapping[str, Any]) -> str:
    """One line of a `describe()` entry: CPU model, cores, jax/jaxlib, backend and devices."""
    cpu = entry.get("cpu") or {}
    pkgs = entry.get("packages") or {}
    kinds = ", ".join(entry.get("devices") or []) or "?"
    return (
        f"{cpu.get('model') or 'unknown CPU'}, {entry.get('cores')} cores; jax {pkgs.get('jax')},"
        f" jaxlib {pkgs.get('jaxlib')}; {entry.get('backend')}: {entry.get('device_count')} x"
        f" {kinds}"
    )
