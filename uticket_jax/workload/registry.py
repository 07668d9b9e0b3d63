"""The one registry of PE mappings, by name, and the self-check a new mapping passes first.

`MAPPINGS` (name -> `PEMapping`) is read by every consumer: the workload model, the rebalance
kernels, the host path and the simulator look a mapping up by its name and key their compiled
programs by the mapping object itself, so a name can be unregistered and registered again with
another assignment, in any order, and nothing stale is ever served. The built-ins stay.
"""

from __future__ import annotations

import contextlib
import re
import types
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.workload import derive
from uticket_jax.workload.builtin_mappings import BUILTINS
from uticket_jax.workload.kernel import as_hwio4, coords
from uticket_jax.workload.mapping import PEMapping

_REGISTRY: dict[str, PEMapping] = {m.name: m for m in BUILTINS}
_BUILTIN = tuple(_REGISTRY)
#: The registry, read-only (change it with `register_mapping` / `unregister_mapping`).
MAPPINGS: Mapping[str, PEMapping] = types.MappingProxyType(_REGISTRY)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def get_mapping(mapping: str | PEMapping) -> PEMapping:
    """The registered `PEMapping` named `mapping` (a registered `PEMapping` passes through).

    Raises:
      ValueError: unknown name, or a `PEMapping` that is not the one registered under its name;
        the message lists the allowed names.
    """
    if isinstance(mapping, PEMapping):
        if _REGISTRY.get(mapping.name) != mapping:
            raise ValueError(
                f"mapping: PEMapping {mapping.name!r} is not registered (register_mapping); "
                f"allowed: {', '.join(_REGISTRY)}"
            )
        return mapping
    if not isinstance(mapping, str) or mapping not in _REGISTRY:
        raise ValueError(f"mapping: unknown mapping {mapping!r}; allowed: {', '.join(_REGISTRY)}")
    return _REGISTRY[mapping]


def register_mapping(m: PEMapping, *, check: bool = True) -> PEMapping:
    """Adds a mapping to `MAPPINGS` under its name.

    Args:
      m: the mapping.
      check: run `check_mapping` on small kernels first (recommended).
    Returns:
      `m`.
    Raises:
      ValueError: not a `PEMapping`, a bad name, a name already registered, or a failed check.
    """
    if not isinstance(m, PEMapping):
        raise ValueError(f"mapping: must be a PEMapping, got {type(m).__name__}")
    if not isinstance(m.name, str) or not _NAME.fullmatch(m.name):
        raise ValueError(f"mapping: name must be letters, digits and underscores, got {m.name!r}")
    if not callable(m.assign):
        raise ValueError(f"mapping: {m.name!r}.assign must be callable, got {m.assign!r}")
    if m.name in _REGISTRY:
        raise ValueError(
            f"mapping: {m.name!r} is already registered; registered: {', '.join(_REGISTRY)}"
        )
    if check:
        check_mapping(m)
    _REGISTRY[m.name] = m
    return m


def unregister_mapping(name: str) -> None:
    """Removes a registered mapping (any but the built-ins, in any order).

    Raises:
      ValueError: unknown, or a built-in.
    """
    get_mapping(name)
    if name in _BUILTIN:
        raise ValueError(f"mapping: the built-in {name!r} cannot be unregistered")
    del _REGISTRY[name]


@contextlib.contextmanager
def registered_mapping(m: PEMapping, *, check: bool = True) -> Iterator[PEMapping]:
    """`register_mapping(m)` for the `with` block, unregistered on exit (tests, experiments)."""
    register_mapping(m, check=check)
    try:
        yield m
    finally:
        unregister_mapping(m.name)


_CHECK_SHAPES = ((3, 3, 5, 7), (6, 5))
_CHECK_NS = (1, 3, 8)


def check_mapping(m: PEMapping) -> None:
    """Checks a mapping's assignment, and each of its fast paths against the derived view.

    On a conv and a dense kernel and several `n`: the assignment gives integers with
    `0 <= pe < n` and `group >= 0` and reads the same axes for every `n`; the derived slot layout
    round-trips; the traced-`n` group loads equal the static ones; and every `FastPaths` entry
    equals its derived counterpart (loads, slot and column layouts, count tables and group loads
    in jax and numpy, the int32 bound at or above the derived figure).

    Raises:
      ValueError: `mapping: 'name' fails its self-check: ...` naming the first mismatch.
    """
    rng = np.random.default_rng(0)
    for shape in _CHECK_SHAPES:
        mask = rng.random(shape) < 0.5
        for n in _CHECK_NS:
            try:
                problem = _check_assign(m, as_hwio4(shape), n) or _check_views(m, mask, n)
            except Exception as e:  # a user function that fails outright
                first = str(e).splitlines()[0] if str(e) else ""
                problem = f"{type(e).__name__}: {first}"
            if problem:
                raise ValueError(
                    f"mapping: {m.name!r} fails its self-check: {problem} (shape {shape}, n {n})"
                )


def _check_assign(m: PEMapping, shape, n: int) -> str:
    """The first contract the assignment itself breaks, or ''."""
    group, pe = m.assign(coords(shape), shape, n)
    group, pe = np.asarray(group), np.asarray(pe)
    if not (np.issubdtype(group.dtype, np.integer) and np.issubdtype(pe.dtype, np.integer)):
        return f"assign must give integers, got {group.dtype} and {pe.dtype}"
    if group.min(initial=0) < 0 or pe.min(initial=0) < 0 or pe.max(initial=0) >= n:
        return "assign must give group >= 0 and 0 <= pe < n"
    kept = np.broadcast_shapes(group.shape, pe.shape, (1,) * 4)
    if tuple(kept) != derive.table_shape(m, shape):
        return f"assign reads other axes for n={n} ({kept}) than for n=2"
    return ""


def _by_pe(m: PEMapping, x: np.ndarray, n: int, cols: bool) -> np.ndarray:
    """The valid entries of `x` in `m`'s slot (or column) layout, PE by PE in the derived PE
    order, each PE's in slot order: what any correct layout of `m` must agree on (where its
    padding slots sit is its own choice)."""
    ones = np.ones(x.shape, bool)
    if not cols:
        return np.asarray(m.to_slots(x, n, False, np))[np.asarray(m.to_slots(ones, n, False, np))]
    g, _ = m.geometry(x.shape, n)
    perm = np.asarray(m.pe_cols(jnp.arange(g * n, dtype=jnp.int32).reshape(g, n)))
    inv = np.argsort(perm)  # column q of the result: the fast column of derived PE q
    vals = np.asarray(m.to_cols(jnp.asarray(x), n, False))[:, inv].T
    valid = np.asarray(m.to_cols(jnp.asarray(ones), n, False))[:, inv].T
    return vals[valid]


def _check_views(m: PEMapping, mask: np.ndarray, n: int) -> str:
    """The first view of `m` that differs from the derived one on `mask`, or ''."""
    d = m.derived()
    shape = mask.shape
    loads = np.asarray(d.loads(mask, n, np))
    want = _by_pe(d, mask, n, cols=False)
    same = np.array_equal
    n_cap = max(16, 1 << (n - 1).bit_length())
    table = m.count_table(jnp.asarray(mask))
    gsum, gmax = jax.jit(m.group_loads, static_argnums=(1, 3))(
        table, tuple(shape), jnp.int32(n), n_cap if m.needs_n_cap else 0
    )
    host_table = m.count_table(mask, np)
    slots = m.to_slots(mask, n, False, np)
    checks = (
        (same(m.loads(jnp.asarray(mask), n), loads), "loads != derived loads"),
        (same(m.loads(mask, n, np), loads), "numpy loads != derived loads"),
        (m.geometry(shape, n) == d.geometry(shape, n), "geometry != derived"),
        (same(_by_pe(m, mask, n, cols=False), want), "to_slots != derived, PE by PE"),
        (same(m.to_slots(jnp.asarray(mask), n, False), slots), "jax to_slots != numpy"),
        (same(m.from_slots(slots, shape, n, np), mask), "from_slots(to_slots) != mask"),
        (same(_by_pe(m, mask, n, cols=True), want), "to_cols != derived, PE by PE"),
        (
            same(m.from_cols(m.to_cols(jnp.asarray(mask), n, False), shape, n), mask),
            "from_cols(to_cols) != mask",
        ),
        (_groups_match(gsum, gmax, loads), "group_loads (traced n) != loads"),
        (
            all(
                same(a, b)
                for a, b in zip(jax.tree.leaves(host_table), jax.tree.leaves(table), strict=True)
            ),
            "numpy count_table != jax count_table",
        ),
        (
            _groups_match(*m.host_group_loads(host_table, shape, n), loads),
            "host_group_loads != loads",
        ),
        (
            m.load_bound(shape, host_table, n) >= n * int(loads.max(1).sum()),
            "load_bound below sum_g n * max load",
        ),
    )
    return next((msg for ok, msg in checks if not ok), "")


def _groups_match(gsum, gmax, loads) -> bool:
    """Group sums/maxima equal the static loads' on the real groups, zeros after."""
    gsum, gmax, g = np.asarray(gsum), np.asarray(gmax), loads.shape[0]
    if gsum.shape != gmax.shape or gsum.ndim != 1 or gsum.shape[0] < g:
        return False
    real = np.array_equal(gsum[:g], loads.sum(1)) and np.array_equal(gmax[:g], loads.max(1))
    return real and not gsum[g:].any() and not gmax[g:].any()
