"""Network-level workload: PE loads, metrics and u-Ticket rebalancing over every layer of a net.

Masks are a flat `{path: bool hwio kernel}` dict in network order (the mask-file format) or a mask
pytree (flattened with `uticket_jax.sparsity.masks.flatten`; `None` leaves are not prunable). Which
layers are analysed follows `metrics.analysed_layers` (default, as the paper: conv layers only, the
first conv left out); the others pass through unchanged and stay out of the network figures.

Every layer goes through one compiled call per step (counting, then selecting), dispatched
asynchronously so the layers' kernels overlap; the loop over layers is a Python loop outside jit.
(One program over all layers measured ~10x slower on CPU: its kernels run one after another.)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax.sparsity import masks as masks_lib
from uticket_jax.workload import mappings as mp
from uticket_jax.workload import rebalance as rb
from uticket_jax.workload.metrics import Metrics, analysed_layers, loads_metrics, network_metrics


class NetworkReport(NamedTuple):
    """Per-layer `RebalanceReport`s (in network order) and the network `Metrics` before/after."""

    names: tuple[str, ...]
    analysed: tuple[bool, ...]
    layers: tuple[rb.RebalanceReport, ...]
    before: Metrics
    after: Metrics


def _flat(masks: Any, what: str = "masks") -> dict[str, Any]:
    flat = masks_lib.flatten(masks)
    if not flat:
        raise ValueError(f"{what}: no layers (expected a {{path: kernel}} dict or a mask tree)")
    for name, m in flat.items():
        mp.check_mask(m, f"{what}[{name!r}]")
    return flat


def _restore(flat_new: dict[str, Any], masks: Any) -> Any:
    """Returns the new masks in the structure of the input (flat dict or tree)."""
    nested = isinstance(masks, Mapping) and any(isinstance(v, Mapping) for v in masks.values())
    return masks_lib.unflatten(flat_new, masks) if nested else flat_new


def network_loads(masks: Any, n_pe: int, mapping: str = "output_channel") -> dict[str, jax.Array]:
    """`{path: [G, n] int32 PE loads}` of every layer (`mappings.pe_loads`).

    One compiled call per layer, dispatched asynchronously (they run side by side).
    """
    n_pe = mp.check_n_pe(n_pe)
    name = mp.get_mapping(mapping).name
    flat = _flat(masks)
    return {k: mp._pe_loads(jnp.asarray(x), n_pe, name) for k, x in flat.items()}


def network_workload(
    masks: Any,
    n_pe: int,
    mapping: str = "output_channel",
    *,
    conv_only: bool = True,
    skip_first: bool = True,
) -> tuple[dict[str, Metrics], Metrics, dict[str, bool]]:
    """Per-layer `Metrics`, the network `Metrics` over the analysed layers, and which were analysed.

    Args:
      masks: `{path: bool hwio kernel}` in network order, or a mask tree.
      n_pe, mapping: the PE array (see `mappings.pe_loads`).
      conv_only, skip_first: which layers are analysed (`metrics.analysed_layers`).
    """
    loads = network_loads(masks, n_pe, mapping)
    shapes = {k: v.shape for k, v in _flat(masks).items()}
    flags = analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    keep = dict(zip(shapes, flags, strict=True))
    per_layer = {k: loads_metrics(v) for k, v in loads.items()}
    net = network_metrics([per_layer[k] for k in per_layer if keep[k]])
    return per_layer, net, keep


@functools.partial(jax.jit, static_argnames=("n_pe", "mapping", "target", "c_max"))
def _plan_layer(mask, cap, *, n_pe: int, mapping: str, target: str, c_max: int):
    # Static: the PE array (n_pe, mapping), the target formula and the slots per PE (bisection
    # length). Returns the layer's loads, targets and max |target - load| (to size the selection).
    loads = mp.traced_loads(mask, n_pe, mapping)  # [G, n]
    tgt = rb._targets(loads, cap, target=target, c_max=c_max)  # [G, n]
    return loads, tgt, jnp.max(jnp.abs(tgt - loads))


@functools.partial(jax.jit, static_argnames=("n_pe", "mapping", "policy", "widths"))
def _apply_layer(mask, weights, delta, key, heavy, layer, *, n_pe, mapping, policy, widths):
    # Static: the PE array, the policy (which priority) and the selection widths
    # (`rebalance.plan_widths`; `heavy` holds the columns of its wide classes). The layer
    # position (folded into `key`) is traced, so layers of one shape and widths share a program.
    # Keeps: only the PE's own slots change; regrown were pruned, dropped were active.
    if policy == "magnitude":
        prio = rb._magnitude(weights)
    else:
        prio = rb._random_priorities(jax.random.fold_in(key, layer), mask.shape)
    m = mp.MAPPINGS[mapping]
    return rb.apply_layer(mask, prio, delta, heavy, m=m, n_pe=n_pe, widths=widths)


@jax.jit
def _layer_report(loads, tgt, cap):
    return rb.make_report(loads, tgt, cap)


def rebalance_network(
    masks: Any,
    weights: Any = None,
    *,
    n_pe: int,
    mapping: str = "output_channel",
    policy: str = "magnitude",
    target: str = "ceil_mean",
    key: Any = None,
    conv_only: bool = True,
    skip_first: bool = True,
) -> tuple[Any, NetworkReport]:
    """u-Ticket over a whole network: `rebalance.rebalance` on every analysed layer.

    Args:
      masks: `{path: bool hwio kernel}` in network order, or a mask tree (`None` = not prunable).
      weights: same keys/structure, float kernels (required for policy="magnitude").
      n_pe, mapping, policy, target: as `rebalance.rebalance`.
      key: `jax.random` key for policy="random"; layer at position `i` of the flat order uses
        `jax.random.fold_in(key, i)`.
      conv_only, skip_first: which layers are analysed and rebalanced (`metrics.analysed_layers`);
        the others come back unchanged.

    Returns:
      `(new_masks, report)`: masks in the input's structure, and a `NetworkReport` whose network
      `Metrics` cover the analysed layers.
    """
    n_pe = mp.check_n_pe(n_pe)
    m = mp.get_mapping(mapping)
    rb.check_policy(policy)
    rb.check_target(target)
    flat = _flat(masks)
    if policy == "magnitude":
        if weights is None:
            raise ValueError("weights: required for policy='magnitude' (use policy='random')")
        wflat = masks_lib.flatten(weights)
        masks_lib.check_same_keys(flat, wflat)
        for name in flat:
            rb.check_weights(flat[name], wflat[name])
    elif key is None:
        raise ValueError("key: required for policy='random' (a jax.random key)")
    names = tuple(flat)
    shapes = {k: tuple(np.shape(v)) for k, v in flat.items()}
    keep = tuple(analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first))
    arrays = tuple(jnp.asarray(flat[k]) for k in names)
    caps = tuple(mp.pe_capacity(shapes[k], n_pe, m.name) for k in names)
    c_maxs = tuple(m.geometry(shapes[k], n_pe)[1] for k in names)
    # One compiled call per layer and step (plan, then select): the calls are dispatched
    # asynchronously and run side by side; one program over all layers runs them in sequence and
    # measured ~10x slower on CPU for the counting step.
    plans = [
        _plan_layer(x, jnp.asarray(c), n_pe=n_pe, mapping=m.name, target=target, c_max=cm)
        for x, c, cm in zip(arrays, caps, c_maxs, strict=True)
    ]
    deltas = [p[1] - p[0] for p in plans]  # [G, n] each
    host = jax.device_get([(d, p[2]) for d, p in zip(deltas, plans, strict=True)])
    rkey = key if key is not None else jax.random.key(0)
    new = list(arrays)
    for i, (a, (delta, d), c) in enumerate(zip(keep, host, c_maxs, strict=True)):
        if a and int(d) > 0:
            widths, heavy = rb.plan_widths(m.pe_cols(delta), c)
            new[i] = _apply_layer(
                arrays[i],
                jnp.asarray(wflat[names[i]]) if policy == "magnitude" else None,
                deltas[i],
                rkey,
                heavy,
                jnp.int32(i),
                n_pe=n_pe,
                mapping=m.name,
                policy=policy,
                widths=widths,
            )
    layers = []
    for i in range(len(names)):
        loads, tgt, _ = plans[i]
        # Not analysed: unchanged (target = loads).
        layers.append(_layer_report(loads, tgt if keep[i] else loads, caps[i]))
    before = network_metrics([r.before for r, a in zip(layers, keep, strict=True) if a])
    after = network_metrics([r.after for r, a in zip(layers, keep, strict=True) if a])
    report = NetworkReport(names, keep, tuple(layers), before, after)
    return _restore(dict(zip(names, new, strict=True)), masks), report


def report_to_json(report: NetworkReport) -> dict[str, Any]:
    """The JSON-able report of issue 3: `{"layers": [...], "network": {"before", "after"}}`."""
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
