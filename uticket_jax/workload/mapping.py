"""A PE mapping declared as one fact: where every weight coordinate lands, `(group, PE)`.

A mapping assigns every weight of a kernel to PE `j` of group `g` of an `n`-PE array. The groups
run one after another; the PEs of a group run in lock-step. A PE's *load* is the number of non-zero
weights it holds; its *capacity* the number of weights (zero or not) it holds.

Kernels are hwio: conv `[kh, kw, c_in, c_out]`, dense `[c_in, c_out]` (mapped as `kh = kw = 1`).

Declaring a mapping takes a name and an `assign` function::

    def assign(c: Coords, shape: Hwio, n) -> (group, pe)

`c` holds broadcastable integer index grids of the four coordinates (`c.kh` is `[kh, 1, 1, 1]`,
..., `c.c_out` is `[1, 1, 1, c_out]`), `shape` the kernel's `(kh, kw, c_in, c_out)` as Python ints
and `n` the PEs per group: a Python int, or a traced int32 scalar (the simulator sweeps `n` inside
one compiled program). `assign` uses arithmetic operators only (`//`, `%`, `*`, `+`, ...) so the
same code runs on numpy grids, jax grids with a traced `n` and plain Python ints (the tests' loop
oracle); it returns `0 <= pe < n` and `group >= 0` for every coordinate. Input channels
interleaved over the PEs, for example::

    register_mapping(PEMapping("input_interleaved", lambda c, s, n: (c.c_out, c.c_in % n)))

Everything else is derived from `assign` (`derive.py`): which coordinates it reads (the broadcast
shape of its result), the count table (the mask summed over the axes it does not read), PE loads
and capacities for a static `n`, the slot layout, the simulator's per-group loads for a traced `n`,
the int32 bound, and numpy versions of each. A mapping may add hand-written faster versions
(`FastPaths`); the registry's self-check (`registry.check_mapping`) tests each against the derived
one. The built-ins (`builtin_mappings.py`) do.

The *slot layout* `[G, n, C]` lists, for every PE, the `C` weights it could hold (padding slots are
invalid) in increasing hwio flat index, so "ties broken by index" means the same thing in every
mapping: the lower flat index of the hwio kernel wins. The *column layout* `[C, P]` (`to_cols`) is
the slot-major view the selection kernel reduces over axis 0, with `pe_cols` giving the column
order of the `P = G * n` PEs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from uticket_jax.workload import derive
from uticket_jax.workload.kernel import Coords, Hwio, as_hwio4


class SlotPaths(NamedTuple):
    """Hand-written slot layout: `to_slots(x, n, fill, xp)`, `from_slots(slots, shape, n, xp)`."""

    to_slots: Callable[..., Any]
    from_slots: Callable[..., Any]


class ColPaths(NamedTuple):
    """Hand-written column layout (jax): `to_cols(x, n, fill) -> [C, P]`, its inverse
    `from_cols(cols, shape, n)`, and `pe_cols([G, n]) -> [P]` in the same column order."""

    to_cols: Callable[..., Any]
    from_cols: Callable[..., Any]
    pe_cols: Callable[..., Any]


class TablePaths(NamedTuple):
    """Hand-written count table and the simulator's group loads over it.

    Fields:
      count_table: `(mask, xp) -> table`, a pytree of small int32 arrays.
      group_loads: `(table, shape, n, n_cap) -> (group_sum [B], group_max [B])` for a TRACED
        `n <= n_cap` (`n_cap` static, 0 when `needs_n_cap` is False): the real groups first,
        zeros after.
      host_group_loads: numpy `(table, shape, n) -> (group_sum, group_max)` for a static `n`.
      load_bound: `(shape, table, n_max) -> int`, an upper bound of `sum_g n * max_j load` for
        every `n <= n_max` (the simulator's int32 check).
      needs_n_cap: whether `group_loads` reads `n_cap`.
    """

    count_table: Callable[..., Any]
    group_loads: Callable[..., Any]
    host_group_loads: Callable[..., Any]
    load_bound: Callable[..., int]
    needs_n_cap: bool


class FastPaths(NamedTuple):
    """Optional hand-written versions of derived views; each must equal the derived one.

    Fields:
      loads: `(mask, n, xp) -> [G, n]` int32 PE loads.
      slots, cols, table: see `SlotPaths`, `ColPaths`, `TablePaths`.
    """

    loads: Callable[..., Any] | None = None
    slots: SlotPaths | None = None
    cols: ColPaths | None = None
    table: TablePaths | None = None


@dataclasses.dataclass(frozen=True)
class PEMapping:
    """A mapping of kernels onto groups of PEs: a name and an assignment (see the module doc).

    Attributes:
      name: registry name (letters, digits, underscores).
      assign: `(coords, shape, n) -> (group, pe)`, arithmetic operators only.
      fast: optional hand-written versions of derived views (`FastPaths`).

    The methods are the views every consumer uses (the rebalance kernels, the host path, the
    simulator); each is the `fast` version when there is one, else the derived one. Shapes are
    hwio kernel shapes; `n` is static unless said; `xp` is `jax.numpy` or `numpy`.

    Example:
      Input channels interleaved over the PEs, one group per output channel: the assignment is
      the whole declaration, and every view is derived from it.

      >>> import jax.numpy as jnp
      >>> from uticket_jax import workload
      >>> interleaved = workload.PEMapping(
      ...     "input_interleaved", lambda c, shape, n: (c.c_out, c.c_in % n)
      ... )
      >>> mask = jnp.zeros((3, 3, 8, 2), bool).at[:, :, :3, 0].set(True)  # c_in 0-2 of c_out 0
      >>> interleaved.loads(mask, 4).tolist()  # [G, n]: groups are output channels
      [[9, 9, 9, 0], [0, 0, 0, 0]]
      >>> interleaved.capacity(mask.shape, 4).tolist()  # 3 * 3 * 2 weights per PE
      [[18, 18, 18, 18], [18, 18, 18, 18]]

      Registered, every consumer finds it by name (`check=True`, the default, first runs
      `check_mapping` on small kernels):

      >>> with workload.registered_mapping(interleaved, check=False):
      ...     workload.pe_loads(mask, 4, "input_interleaved").tolist()
      [[9, 9, 9, 0], [0, 0, 0, 0]]
      >>> "input_interleaved" in workload.MAPPINGS  # unregistered when the block ends
      False
    """

    name: str
    assign: Callable[[Coords, Hwio, Any], tuple[Any, Any]]
    fast: FastPaths | None = None

    def derived(self) -> PEMapping:
        """The same assignment with every view derived (no fast paths), for tests and checks."""
        return dataclasses.replace(self, fast=None)

    def _fast(self, part: str):
        return None if self.fast is None else getattr(self.fast, part)

    def geometry(self, shape: Sequence[int], n: int) -> tuple[int, int]:
        """`(G, C)`: the number of groups and of slots per PE."""
        return derive.geometry(self, as_hwio4(shape), n)

    def loads(self, mask, n: int, xp=jnp):
        """`[G, n]` int32 non-zeros per PE (`xp` arrays)."""
        fast = self._fast("loads")
        return fast(mask, n, xp) if fast else derive.loads(self, mask, n, xp)

    def capacity(self, shape: Sequence[int], n: int):
        """`[G, n]` int32 weight slots per PE (0 for idle PEs), numpy."""
        return derive.capacity(self, as_hwio4(shape), n)

    def to_slots(self, x, n: int, fill, xp=jnp):
        """`[G, n, C]`: the kernel's entries in slot layout, `fill` in padding slots."""
        fast = self._fast("slots")
        return fast.to_slots(x, n, fill, xp) if fast else derive.to_slots(self, x, n, fill, xp)

    def from_slots(self, slots, shape: Sequence[int], n: int, xp=jnp):
        """The kernel of `shape` from its slot layout (inverse of `to_slots` on valid slots)."""
        shape = tuple(int(d) for d in shape)
        fast = self._fast("slots")
        if fast:
            return fast.from_slots(slots, shape, n, xp)
        return derive.from_slots(self, slots, shape, n, xp)

    def to_cols(self, x, n: int, fill):
        """`[C, P]` slot-major view (jax), `fill` in padding slots."""
        fast = self._fast("cols")
        return fast.to_cols(x, n, fill) if fast else derive.to_cols(self, x, n, fill)

    def from_cols(self, cols, shape: Sequence[int], n: int):
        """The kernel of `shape` from its column layout (inverse of `to_cols` on valid slots)."""
        shape = tuple(int(d) for d in shape)
        fast = self._fast("cols")
        return fast.from_cols(cols, shape, n) if fast else derive.from_cols(self, cols, shape, n)

    def pe_cols(self, table):
        """`[G, n]` per-PE values as `[P]` in the column order of `to_cols`."""
        fast = self._fast("cols")
        return fast.pe_cols(table) if fast else table.reshape(-1)

    @property
    def needs_n_cap(self) -> bool:
        """Whether `group_loads` needs a static bound `n_cap` on the traced `n`."""
        fast = self._fast("table")
        return fast.needs_n_cap if fast else True

    def count_table(self, mask, xp=jnp):
        """The small int32 table from which `group_loads` gets the loads for any `n`."""
        fast = self._fast("table")
        return fast.count_table(mask, xp) if fast else derive.count_table(self, mask, xp)

    def group_loads(self, table, shape: Sequence[int], n, n_cap: int):
        """`(group_sum [B], group_max [B])` int32 for a TRACED `n` (real groups first, zeros
        after; `B` a static bound on the groups of every `n <= n_cap`)."""
        shape = as_hwio4(shape)
        fast = self._fast("table")
        if fast:
            return fast.group_loads(table, shape, n, n_cap)
        return derive.group_loads(self, table, shape, n, n_cap)

    def host_group_loads(self, table, shape: Sequence[int], n: int):
        """numpy `group_loads` for a static `n`: `[B]` int32 sums and maxima, zeros after."""
        shape = as_hwio4(shape)
        fast = self._fast("table")
        if fast:
            return fast.host_group_loads(table, shape, n)
        return derive.host_group_loads(self, table, shape, n)

    def load_bound(self, shape: Sequence[int], table, n_max: int) -> int:
        """Host bound of `sum_g n * max_j load[g, j]` for every `n <= n_max` (int32 check)."""
        shape = as_hwio4(shape)
        fast = self._fast("table")
        if fast:
            return int(fast.load_bound(shape, table, n_max))
        return derive.load_bound(self, shape, table, n_max)
