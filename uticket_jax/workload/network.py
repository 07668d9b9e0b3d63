"""Whole-network entry points over mask files' flat dicts, and pytree load and metric views.

A mask file (`sparsity.masks`) is a flat `{path: kernel}` dict in network order. Which layers the
paper analyses depends on that order (conv layers only, the first conv left out:
`metrics.analysed_layers`), so `rebalance_network` takes the dict's order as the network order,
picks the analysed layers from it and calls the pure transform `rebalance.rebalance` on them, and
refuses non-finite weights the magnitude policy would rank. The pipeline and the launchers use it;
JAX code that holds a params-shaped mask tree calls `rebalance` directly.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import checks, trees
from uticket_jax.sparsity.masks import flatten
from uticket_jax.workload.mapping import PEMapping
from uticket_jax.workload.mappings import check_mask, check_n_pe, get_mapping
from uticket_jax.workload.metrics import Metrics, analysed_layers, loads_metrics, network_metrics
from uticket_jax.workload.rebalance import NetworkReport, check_finite, check_setup, rebalance


def _flat(masks: Any) -> dict[str, Any]:
    """A flat `{path: mask}` dict in the dict's own order (`sparsity.masks.flatten`: nested dicts
    depth first in insertion order, `None` leaves dropped)."""
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: must be a {{path: kernel}} dict, got {type(masks).__name__}")
    return flatten(masks)


def _weights_for(flat: Mapping[str, Any], weights: Mapping[str, Any]) -> collections.OrderedDict:
    """The weights of the masks' paths, in the masks' order (ValueError naming missing ones)."""
    wflat = _flat(weights)
    missing = [k for k in flat if k not in wflat]
    if missing:
        raise ValueError(f"weights: no array for mask layers {missing[:3]}")
    return collections.OrderedDict((k, wflat[k]) for k in flat)


def _costs_for(flat: Mapping[str, Any], costs: Mapping[str, Any]) -> collections.OrderedDict:
    """The costs of the masks' paths in the masks' order and container (absent paths: None)."""
    cflat = _flat(costs)
    return collections.OrderedDict((k, cflat.get(k)) for k in flat)


def rebalance_network(
    masks: Mapping[str, Any],
    weights: Mapping[str, Any] | None = None,
    *,
    n_pe: int,
    mapping: str = "output_channel",
    policy: str = "magnitude",
    target: str = "ceil_mean",
    key: Any = None,
    conv_only: bool = True,
    skip_first: bool = True,
    backend: str = "jax",
    costs: Mapping[str, Any] | None = None,
) -> tuple[Any, NetworkReport]:
    """u-Ticket over a network given in network order (a mask file's dict), checked.

    Args:
      masks: `{path: bool hwio kernel}` in network order (nested dicts flatten in insertion
        order, to "/"-joined paths).
      weights: `{path: float kernel}` with at least the masks' paths (required for "magnitude";
        finite in every layer it ranks).
      n_pe, mapping, policy, target, backend: as `rebalance.rebalance`.
      key: `jax.random` key for policy="random"; the layer at position `i` uses
        `jax.random.fold_in(key, i)`.
      conv_only, skip_first: which layers are analysed and rebalanced (`metrics.analysed_layers`
        over the network order); the others come back unchanged.
      costs: "expected_work" only: `{path: float costs}` of the analysed layers (`rebalance`).

    Returns:
      `(new_masks, report)`: the masks in the same order and structure (numpy arrays under
      backend="numpy") and the `NetworkReport`, whose network `Metrics` cover the analysed layers.
    """
    check_setup(n_pe, mapping, policy, target, backend)
    flat = checks.bool_masks(_flat(masks))  # 0/1 numbers allowed, nothing else
    if not flat:
        raise ValueError("masks: no layers (expected a {path: kernel} dict)")
    ordered = collections.OrderedDict(flat)
    w = None if weights is None else _weights_for(flat, weights)
    shapes = [np.shape(v) for v in flat.values()]
    keep = analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    include = frozenset(k for k, a in zip(flat, keep, strict=True) if a)
    costs = None if costs is None else _costs_for(flat, costs)
    new, report = rebalance(
        ordered,
        w,
        key,
        mapping=mapping,
        n_pe=n_pe,
        target=target,
        policy=policy,
        include=include,
        backend=backend,
        costs=costs,
    )
    if policy == "magnitude":
        check_finite(report.layers, [f"weights[{k!r}]" for k in report.names])
    if any(isinstance(v, Mapping) for v in masks.values()):  # a nested tree comes back nested
        return jax.tree_util.tree_map_with_path(lambda p, _: new[trees.path_name(p)], masks), report
    return dict(new), report


@functools.lru_cache(maxsize=8)
def _loads_program(n_pe: int, m: PEMapping):
    """The jitted load count of one PE array (a fresh jit object per configuration)."""
    return jax.jit(functools.partial(m.loads, n=n_pe))


def network_loads(masks: Any, n_pe: int, mapping: str = "output_channel") -> Any:
    """`[G, n]` int32 PE loads of every mask leaf (`mappings.pe_loads`), in the masks' structure.

    One compiled call per layer shape, dispatched asynchronously (the layers run side by side).

    Args:
      masks: any pytree of boolean hwio kernels (`None` leaves stay `None`).
      n_pe, mapping: the PE array (see `mappings.pe_loads`).
    """
    n_pe = check_n_pe(n_pe)
    fn = _loads_program(n_pe, get_mapping(mapping))
    names, leaves, treedef = trees.named_leaves(masks)
    for name, x in zip(names, leaves, strict=True):
        check_mask(x, f"masks[{name!r}]")
    return jax.tree_util.tree_unflatten(treedef, [fn(jnp.asarray(x)) for x in leaves])


def network_workload(
    masks: Mapping[str, Any],
    n_pe: int,
    mapping: str = "output_channel",
    *,
    conv_only: bool = True,
    skip_first: bool = True,
) -> tuple[dict[str, Metrics], Metrics, dict[str, bool]]:
    """Per-layer `Metrics`, the network `Metrics` over the analysed layers, and which were analysed.

    Args:
      masks: `{path: bool hwio kernel}` in network order (as `rebalance_network`).
      n_pe, mapping: the PE array (see `mappings.pe_loads`).
      conv_only, skip_first: which layers are analysed (`metrics.analysed_layers`).

    Returns:
      `(per_layer, network, analysed)`: `{path: Metrics}`, the network `Metrics`, `{path: bool}`,
      in the masks' order.
    """
    flat = _flat(masks)
    loads = network_loads(collections.OrderedDict(flat), n_pe, mapping)
    flags = analysed_layers(
        [np.shape(v) for v in flat.values()], conv_only=conv_only, skip_first=skip_first
    )
    keep = dict(zip(flat, flags, strict=True))
    per_layer = {k: loads_metrics(loads[k]) for k in flat}
    net = network_metrics([per_layer[k] for k in flat if keep[k]])
    return per_layer, net, keep


def report_to_json(report: NetworkReport) -> dict[str, Any]:
    """The JSON-able report: `{"layers": [...], "network": {"before", "after"}}`.

    Args:
      report: a `NetworkReport` from `rebalance` or `rebalance_network`.

    Returns:
      `{"layers": [{"name", "analysed", "before", "after", "regrown", "dropped", "capped"}],
      "network": {"before", "after"}}` with plain Python numbers.
    """
    layers = []
    for name, a, r in zip(report.names, report.analysed, report.layers, strict=True):
        layers.append(
            {
                "name": name,
                "analysed": bool(a),
                "before": r.before.to_dict(),
                "after": r.after.to_dict(),
                "regrown": int(r.regrown),
                "dropped": int(r.dropped),
                "capped": int(r.capped),
            }
        )
    return {
        "layers": layers,
        "network": {"before": report.before.to_dict(), "after": report.after.to_dict()},
    }
