"""The simulator's assembly, one code for both backends: group loads -> metrics -> counts -> energy.

Everything here takes `xp` (`jax.numpy` inside the compiled, vmapped kernel; `numpy` on the host)::

  workload_metrics  per-layer `Metrics` and the network `Metrics` of the analysed layers, from each
                    layer's per-group sums and maxima (`[..., B]`: one traced `n` in the kernel,
                    every distinct `n` at once on the host);
  counts            the energy models' counts of every layer (products only, so the kernel's and
                    the host's are the same float32 numbers);
  figures           cycles, seconds, counts and energy by term, with the network sums taken by the
                    caller's `add` (XLA's sum in the kernel; left to right on the host, XLA's order
                    for up to 32 layers).

Then the two runs: `run_jax` (one compiled call per mapping, configs vmapped and sharded over the
devices) and `run_host` (numpy, every config at once, nothing compiled).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uticket_jax.hardware import energy as energy_lib
from uticket_jax.hardware.config import HardwareConfig, num_configs
from uticket_jax.hardware.figures import Figures
from uticket_jax.workload import mappings as wm
from uticket_jax.workload.metrics import Metrics, layer_metrics, network_metrics

# Metrics dtypes of the kernel (numpy sums of int32 give int64; the int32 check bounds them).
DTYPES = (np.float32, np.float32, np.int32, np.int32, np.int32)


def workload_metrics(groups: Sequence[tuple[Any, Any]], n, analysed, xp=jnp):
    """Per-layer `Metrics` (stacked on the last axis, `[..., L]`) and the network `Metrics`.

    `groups`: per layer `(group_sum, group_max)` `[..., B]`; `n` broadcasts against them.
    `analysed` `[L]` bool: a layer left out enters `network_metrics` as a layer without work (NaN
    utilizations, zero counts), which it skips and which adds nothing.
    """
    cast = lambda m: Metrics(*(xp.asarray(x).astype(d) for x, d in zip(m, DTYPES, strict=True)))  # noqa: E731
    per_layer = [cast(layer_metrics(gsum, gmax, n, xp)) for gsum, gmax in groups]
    empty = (np.float32(np.nan), np.float32(np.nan), 0, 0, 0)
    masked = [
        Metrics(*(xp.where(analysed[j], x, e) for x, e in zip(m, empty, strict=True)))
        for j, m in enumerate(per_layer)
    ]
    net = cast(network_metrics(masked, xp))
    stacked = Metrics(*(xp.stack(col, axis=-1) for col in zip(*per_layer, strict=True)))
    return stacked, net


def counts(wl, cfg: HardwareConfig, facts, rates, xp=jnp) -> energy_lib.Counts:
    """The energy models' counts of every layer `[..., L]` (weight-stationary, see `energy`).

    Products only (no sums), so the counts computed inside the kernel (`xp=jnp`) and again
    outside it from the kernel's outputs (`layer_counts`, and the numpy backend) are the same
    float32 numbers. Seconds are cycles times the reciprocal clock, written out: XLA rewrites a
    division by a broadcast scalar so, and a numpy `/` would differ in the last bit.
    """
    pixels, c_in, c_out = facts
    scale = pixels * cfg.timesteps.astype(xp.float32)  # [L] positions x steps
    dynamic = wl.dynamic.astype(xp.float32)
    cycles = wl.latency.astype(xp.float32) * scale
    rate = xp.where(cfg.activity_aware, rates, xp.float32(1.0))
    busy = dynamic * scale  # one non-zero weight applied per PE-cycle
    lif = c_out * scale
    per_layer = lambda x: xp.broadcast_to(x, cycles.shape)  # noqa: E731
    return energy_lib.Counts(
        n_pe=per_layer(cfg.n_pe.astype(xp.float32)),
        clock_hz=per_layer(cfg.clock_hz),
        cycles=cycles,
        seconds=cycles * (xp.float32(1.0) / cfg.clock_hz),
        accumulates=dynamic * scale * rate,
        weights=dynamic,
        lif_updates=lif,
        pe_cycles_busy=busy,
        pe_cycles_idle=wl.wasted.astype(xp.float32) * scale,
        weight_buffer_reads=dynamic,
        input_buffer_reads=busy,
        output_buffer_writes=lif,
        dram_weight_reads=dynamic,
        dram_input_reads=c_in * scale,
        dram_output_writes=lif,
    )


def figures(wl, net, cfg, consts, facts, rates, model, add: Callable, xp=jnp):
    """Layer and network `Figures` (energy by term); `add` sums a layer axis over the analysed
    layers. The counts are left out (None): as kernel outputs they change XLA's fusion of the
    energy sums (float32 roundings of `energy_total` moved by 1 ulp); `layer_counts` recomputes
    them outside."""
    c = counts(wl, cfg, facts, rates, xp)
    terms = energy_lib.apply_model(model, c, consts)
    total = energy_lib.total(terms)
    layer = Figures(*wl, c.cycles, c.seconds, c.pe_cycles_idle, None, terms, total)
    sums = [add(x) for x in (layer.cycles, layer.seconds, layer.wasted_pe_cycles)]
    net_terms = {t: add(v) for t, v in terms.items()}
    return layer, Figures(*net, *sums, None, net_terms, add(total))


def layer_counts(layers: Figures, configs: HardwareConfig, facts, rates, analysed):
    """The counts `[N, L]` and network counts `[N]` from the layer figures (numpy)."""
    cfg = HardwareConfig(*(np.asarray(f)[:, None] for f in configs))
    lay = counts(layers, cfg, facts, rates, xp=np)
    net = energy_lib.Counts(
        **{
            k: np.asarray(getattr(configs, k), np.float32)
            if k in energy_lib.INTENSIVE_COUNTS
            else v[:, analysed].sum(axis=1, dtype=np.float32)
            for k, v in lay._asdict().items()
        }
    )
    return lay, net


# ---- the compiled run ---------------------------------------------------------------------------


# Static: mapping (the `PEMapping`, selects the kernel), the layers' kernel shapes, n_cap (0, or a
# power of two >= every n of the call for mappings with `needs_n_cap`) and the energy model.
# `analysed` is a traced [L] bool mask.
@functools.partial(jax.jit, static_argnames=("mapping", "shapes", "n_cap", "model"))
def _simulate_mapping(
    tables, facts, rates, analysed, uniq_n, inv, configs, consts, *, mapping, shapes, n_cap, model
):
    """Invariant: every config's figures equal the loop oracle of that config alone."""

    def workload(n):  # one traced n
        groups = [mapping.group_loads(t, s, n, n_cap) for t, s in zip(tables, shapes, strict=True)]
        return workload_metrics(groups, n, analysed)

    wl, net = jax.vmap(workload)(uniq_n)  # [U, ...]
    add = lambda x: jnp.sum(jnp.where(analysed, x, 0.0))  # noqa: E731

    def one(k, cfg, const):
        pick = lambda x: x[k]  # noqa: E731
        args = (jax.tree.map(pick, wl), jax.tree.map(pick, net), cfg, const, facts, rates)
        return figures(*args, model, add)

    return jax.vmap(one)(inv, configs, consts)


def pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(int(x) - 1, 0).bit_length()


def run_jax(
    tables, shapes, facts, rates, uniq, inv, batch, mapping, n_cap, analysed, devices, model
):
    """One compiled call; shards the config axis when several devices are given.

    The config axis is padded (repeating the last config) to a power of two >= 8, and to a
    multiple of the device count, so sweeps of similar size reuse one compilation.
    """
    n = num_configs(batch[0])
    d = len(devices)
    size = max(8, pow2(n))
    size += (-size) % d
    inv = np.asarray(inv, np.int32)
    uniq = np.asarray(uniq, np.int32)
    batch = (batch[0]._replace(mapping=None), batch[1])  # dispatched on already, not traced
    batch = jax.tree.map(lambda f: np.concatenate([f, np.repeat(f[-1:], size - n)]), batch)
    inv = np.concatenate([inv, np.repeat(inv[-1:], size - n)])
    args = (tables, facts, rates, analysed, uniq)
    if d > 1:
        mesh = Mesh(np.asarray(devices), ("config",))
        split = NamedSharding(mesh, PartitionSpec("config"))
        repl = NamedSharding(mesh, PartitionSpec())
        args = jax.device_put(args, repl)
        inv, batch = jax.device_put((inv, batch), split)
    out = _simulate_mapping(
        *args, inv, *batch, mapping=mapping, shapes=shapes, n_cap=n_cap, model=model
    )
    return jax.tree.map(lambda x: _fetch(x)[:n], out)


def _fetch(x: jax.Array) -> np.ndarray:
    """A result on the host; a config axis sharded over other processes' devices is gathered
    (every process then holds every config's figures)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # multi-process runs only

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---- the host run -------------------------------------------------------------------------------


def run_host(
    tables, shapes, facts, rates, uniq, inv, batch, mapping: wm.PEMapping, analysed, model
):
    """The layer and network `Figures` of one mapping's configs, with numpy on the host.

    The workload once per entry of `uniq` (each layer's per-n group sums and maxima from
    `host_group_loads`, padded with zero groups to a common width, which the metrics skip), gathered
    to the configs by `inv`, then `figures` for all configs at once.
    """
    uniq = np.asarray(uniq, np.int32)
    groups = []
    for t, shape in zip(tables, shapes, strict=True):
        gsum, gmax = zip(*(mapping.host_group_loads(t, shape, int(k)) for k in uniq), strict=True)
        groups.append((_stack_groups(gsum), _stack_groups(gmax)))
    wl, net = workload_metrics(groups, uniq[:, None], np.asarray(analysed), np)
    inv = np.asarray(inv, np.intp)
    wl, net = Metrics(*(x[inv] for x in wl)), Metrics(*(x[inv] for x in net))
    configs, consts = batch
    col = lambda x: np.asarray(x)[:, None]  # noqa: E731 (one value per config, against layers)
    cfg = HardwareConfig(*(col(f) for f in configs))
    add = lambda x: _sum_layers(x, analysed)  # noqa: E731
    return figures(
        wl, net, cfg, type(consts)(*(col(c) for c in consts)), facts, rates, model, add, np
    )


def _stack_groups(rows: Sequence[np.ndarray]) -> np.ndarray:
    """`[U, B]` int32 from per-n group rows, padded with zero groups to the widest."""
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _sum_layers(x: np.ndarray, analysed: np.ndarray) -> np.ndarray:
    """float32 sum over the analysed layers of `x` `[N, L]`, left to right (XLA's order for up to
    32 layers, so the numpy backend's network sums equal the kernel's)."""
    out = np.zeros(x.shape[0], np.float32)
    for j in np.flatnonzero(analysed):
        out = out + x[:, j]
    return out
