"""u-Ticket rebalancing, one pipeline for one layer (`rebalance_layer`) and a whole net
(`rebalance_network`): every PE of a group ends with the same load.

Per group (Yin et al., TETCI 2024, Sec. III): PEs under their target regrow
`target - load` pruned positions, PEs over it drop `load - target` active positions, only inside
their own slice of the kernel (see `mappings.py`). The targets are `targets.py`'s, the choice of
positions `selection.py`'s.

Masks are a flat `{path: bool hwio kernel}` dict in network order (the mask-file format) or a mask
pytree (flattened with `uticket_jax.sparsity.masks.flatten`; `None` leaves are not prunable). Which
layers are analysed follows `metrics.analysed_layers` (default, as the paper: conv layers only, the
first conv left out); the others pass through unchanged and stay out of the network figures. A
single layer (`rebalance_layer`) is always rebalanced.

The pipeline, the same for both entry points: validate the arguments; one compiled *plan* call per
layer (loads, capacities, targets, `target - load`, and under the magnitude policy the count of
non-finite weights); under the magnitude policy one host fetch of those counts for all layers
(the random policy never waits on the host); one compiled *select* call per analysed layer
(priorities, then `selection.apply_layer`; a layer that moves nothing skips the selection at run
time); one compiled *report* call per layer. Every call is dispatched asynchronously, so the
layers' kernels overlap; the loop over layers is a Python loop outside jit. (One program over all
layers measured ~10x slower on CPU: its kernels run one after another.)

Random keys: `rebalance_network` ranks the layer at position `i` of the flat order with
`jax.random.fold_in(key, i)`; `rebalance_layer` uses its `key` as given.

Compiled programs: the static arguments are the configuration's only: plan `(n_pe, mapping,
target)`, select `(n_pe, mapping, policy)`, report `(n_pe, mapping)`; everything else, the
selection's row classes included, follows from the input shapes. So after the first call, masks
of the same layer shapes (any density, any moves, new weights and key) compile nothing
(tests/test_rebalance_compile.py), and layers of one shape share their programs. The jitted
steps of the last `_CONFIGS_KEPT` configurations are held in small LRU caches of fresh jit
objects; an evicted configuration's executables are freed with its jit objects (JAX's caches
hold them through weak references to the jitted functions), so a process that loops over many
configurations keeps a bounded number of memory mappings without `jax.clear_caches()` (which the
library never calls: it would drop the caller's programs too).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uticket_jax import checks
from uticket_jax.sparsity import masks as masks_lib
from uticket_jax.workload import host as host_lib
from uticket_jax.workload import mappings as mp
from uticket_jax.workload import selection, targets
from uticket_jax.workload.metrics import Metrics, analysed_layers, loads_metrics, network_metrics


class RebalanceReport(NamedTuple):
    """What the rebalance changed in one layer (arrays; `Metrics` in load units)."""

    loads_before: jax.Array  # [G, n] int32
    loads_after: jax.Array  # [G, n] int32
    regrown: jax.Array  # int32: pruned positions made active
    dropped: jax.Array  # int32: active positions pruned
    capped: jax.Array  # int32: PEs held below their group's level by their capacity
    before: Metrics
    after: Metrics


class NetworkReport(NamedTuple):
    """Per-layer `RebalanceReport`s (in network order) and the network `Metrics` before/after."""

    names: tuple[str, ...]
    analysed: tuple[bool, ...]
    layers: tuple[RebalanceReport, ...]
    before: Metrics
    after: Metrics


# ---- validation ---------------------------------------------------------------------------------


def _flat(masks: Any, what: str = "masks") -> dict[str, Any]:
    """The flat `{path: mask}` dict of `masks`, each layer checked (ValueError naming it)."""
    flat = masks_lib.flatten(masks)
    if not flat:
        raise ValueError(f"{what}: no layers (expected a {{path: kernel}} dict or a mask tree)")
    return {name: checks.bool_mask(m, f"{what}[{name!r}]") for name, m in flat.items()}


BACKENDS = ("jax", "numpy")


def _check_setup(
    n_pe: Any, mapping: str, policy: str, target: str, backend: str = "jax"
) -> tuple[int, mp.PEMapping]:
    """`(n_pe, mapping)` checked, with the policy, target and backend (ValueError naming it)."""
    n_pe = mp.check_n_pe(n_pe)
    m = mp.get_mapping(mapping)
    selection.check_policy(policy)
    targets.check_target(target)
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    return n_pe, m


def _check_policy_inputs(policy: str, weights: Any, key: Any) -> None:
    """Raises ValueError when the policy's input (weights or key) is missing."""
    if policy == "magnitude" and weights is None:
        raise ValueError("weights: required for policy='magnitude' (use policy='random')")
    if policy == "random" and key is None:
        raise ValueError("key: required for policy='random' (a jax.random key)")


def _check_weights(label: str, mask: Any, weights: Any) -> None:
    """Raises ValueError (naming `label`) unless `weights` is a float array of the mask's shape."""
    if np.shape(weights) != np.shape(mask):
        raise ValueError(
            f"{label}: shape {np.shape(weights)} does not match the mask's {np.shape(mask)}"
        )
    if not jnp.issubdtype(jnp.result_type(weights), jnp.floating):
        raise ValueError(f"{label}: must be floating point, got {jnp.result_type(weights)}")


def _check_finite(labels: list[str], bad: list[Any]) -> None:
    """Raises ValueError for the first layer with non-finite weights (`bad`: counts, or None)."""
    for label, b in zip(labels, bad, strict=True):
        count = 0 if b is None else int(np.sum(b))
        if count > 0:
            raise ValueError(
                f"{label}: {count} non-finite values (NaN or inf); the magnitude policy ranks "
                "by |w|, which orders them arbitrarily (fix the weights or use policy='random')"
            )


# ---- compiled per-layer steps -------------------------------------------------------------------

# The compiled programs of this many configurations per step (plan: n_pe, mapping, target;
# select: n_pe, mapping, policy; report: n_pe, mapping) stay alive; an older configuration's jit
# objects are dropped, and with them its executables (JAX's caches hold them only through weak
# references to the jitted functions). A VGG16 configuration holds ~3,500 memory mappings and
# ~100 MB on XLA:CPU (BUILD_NOTES, "Rebalance compilation"): 4 keep a process well below Linux's
# default `vm.max_map_count` (65,530) and still cover both policies and mappings at one n_pe.
_CONFIGS_KEPT = 4


def _plan_body(mask, weights, *, n_pe: int, mapping: str, target: str):
    # Static: the PE array and the target formula (capacities and the slots per PE, which bound
    # the level bisection, follow from the shape). `weights` is None unless the magnitude policy
    # ranks this layer. Returns loads, targets, delta, the non-finite weights per output channel
    # (or None) and the PE capacities.
    loads = mp.traced_loads(mask, n_pe, mapping)  # [G, n]
    cap = mp.traced_capacity(mask.shape, n_pe, mapping)  # [G, n]
    c_max = mp.MAPPINGS[mapping].geometry(mask.shape, n_pe)[1]
    tgt = targets.traced_targets(loads, cap, target=target, c_max=c_max)  # [G, n]
    bad = None  # per output channel: a column reduction, ~2x faster on XLA:CPU than to a scalar
    if weights is not None:
        finite = jnp.isfinite(weights).reshape(-1, weights.shape[-1])
        bad = jnp.sum(~finite, axis=0, dtype=jnp.int32)  # [c_out]
    return loads, tgt, tgt - loads, bad, cap


def _select_body(mask, weights, delta, key, layer, *, n_pe: int, mapping: str, policy: str):
    # Static: the PE array and the policy (which priority); every shape inside follows from the
    # layer shape (`selection.apply_layer`). `layer` is the traced layer position folded into
    # `key` (None: `key` as given), so layers of one shape share a program. A layer that moves
    # nothing skips the selection at run time (`lax.cond`), so it still compiles on the first
    # call. Keeps: only the PE's own slots change; regrown were pruned, dropped were active.
    def run(_):
        k = key if layer is None else jax.random.fold_in(key, layer)
        prio = selection.layer_priorities(policy, weights, k, mask.shape)
        m = mp.MAPPINGS[mapping]
        return selection.apply_layer(mask, prio, delta, m=m, n_pe=n_pe)

    return lax.cond(jnp.any(delta != 0), run, lambda _: mask, None)


def _report_body(loads, tgt, cap):
    # The RebalanceReport of a layer from its loads before/after and PE capacities.
    delta = tgt - loads
    capped = (cap > 0) & (cap == tgt) & (tgt < tgt.max(-1, keepdims=True))
    return RebalanceReport(
        loads_before=loads,
        loads_after=tgt,
        regrown=jnp.maximum(delta, 0).sum(),
        dropped=jnp.maximum(-delta, 0).sum(),
        capped=capped.sum(dtype=jnp.int32),
        before=loads_metrics(loads),
        after=loads_metrics(tgt),
    )


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _plan_program(n_pe: int, mapping: str, target: str):
    """The jitted plan step of one configuration.

    Every static argument is bound here, so a program's only other key is its input shapes:
    masks of the same layer shapes reuse every program. A fresh `functools.partial` makes a fresh
    jit cache, which JAX frees once the least recently used configuration is evicted (the same
    for `_select_program`, `_report_program` and `_loads_program`).
    """
    return jax.jit(functools.partial(_plan_body, n_pe=n_pe, mapping=mapping, target=target))


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _select_program(n_pe: int, mapping: str, policy: str):
    """The jitted select step of one configuration (see `_plan_program`)."""
    return jax.jit(functools.partial(_select_body, n_pe=n_pe, mapping=mapping, policy=policy))


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _report_program(n_pe: int, mapping: str):
    """The jitted report step of one PE array (its load shapes; see `_plan_program`)."""
    del n_pe, mapping  # cache keys only
    return jax.jit(functools.partial(_report_body))


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _loads_program(n_pe: int, mapping: str):
    """The jitted load count of one PE array (`network_loads`; see `_plan_program`)."""
    return jax.jit(functools.partial(mp.traced_loads, n_pe=n_pe, mapping=mapping))


# ---- the pipeline -------------------------------------------------------------------------------


class _Layers(NamedTuple):
    """The checked inputs of one rebalance call, one entry per layer in network order."""

    labels: tuple[str, ...]  # how errors name each layer's weights
    masks: tuple[jax.Array, ...]
    weights: tuple[Any, ...]  # float kernels under the magnitude policy, else None
    keep: tuple[bool, ...]  # analysed (rebalanced) or passed through


def _rebalance(layers: _Layers, *, n_pe, m, policy, target, key, fold: bool, backend: str):
    """THE pipeline: plan every layer, check the weights, select, report.

    Returns `(new_masks, reports)`, tuples in layer order; `fold`: layer `i` ranks with
    `fold_in(key, i)` (else `key` itself). `backend="numpy"`: the same steps on the host
    (`host.rebalance`, numpy arrays in and out, no kernel compiled, the same masks).
    """
    if backend == "numpy":
        masks = tuple(np.asarray(x) for x in layers.masks)
        ranked = [
            np.asarray(w) if a and w is not None else None
            for w, a in zip(layers.weights, layers.keep, strict=True)
        ]
        _check_finite(
            list(layers.labels),
            [None if w is None else host_lib.bad_weight_count(w) for w in ranked],
        )
        return host_lib.rebalance(
            masks,
            ranked,
            layers.keep,
            n_pe=n_pe,
            m=m,
            policy=policy,
            target=target,
            key=key,
            fold=fold,
        )
    plan = _plan_program(n_pe, m.name, target)
    select = _select_program(n_pe, m.name, policy)
    report = _report_program(n_pe, m.name)
    ranked = [w if a else None for w, a in zip(layers.weights, layers.keep, strict=True)]
    plans = [plan(x, w) for x, w in zip(layers.masks, ranked, strict=True)]
    if policy == "magnitude":  # one sync for all layers; the random policy never waits
        _check_finite(list(layers.labels), jax.device_get([p[3] for p in plans]))
    new = list(layers.masks)
    for i, a in enumerate(layers.keep):
        if a:
            new[i] = select(
                layers.masks[i],
                ranked[i],
                plans[i][2],
                key if policy == "random" else None,
                jnp.int32(i) if fold and policy == "random" else None,
            )
    # Not analysed: unchanged (target = loads).
    reports = tuple(
        report(p[0], p[1] if a else p[0], p[4]) for p, a in zip(plans, layers.keep, strict=True)
    )
    return tuple(new), reports


def rebalance_layer(
    mask,
    weights=None,
    *,
    n_pe: int,
    mapping: str = "output_channel",
    policy: str = "magnitude",
    target: str = "ceil_mean",
    key: Any = None,
    backend: str = "jax",
) -> tuple[jax.Array, RebalanceReport]:
    """u-Ticket on one layer: moves non-zeros between the PEs of every group to the target loads.

    Args:
      mask: boolean hwio kernel `[kh, kw, c_in, c_out]` or `[c_in, c_out]`.
      weights: float array of the mask's shape; the trained weights from before pruning, so the
        ones that just fell below the threshold come back first. Required for "magnitude" (and
        then finite); checked when given.
      n_pe: PEs per group (static).
      mapping: "output_channel" or "input_split" (`mappings.MAPPINGS`).
      policy: "magnitude" (regrow largest |w|, drop smallest |w|) or "random" (uniform, `key`).
      target: "ceil_mean" (every PE at min(cap, L*), L* = ceil(mean) without caps) or
        "keep_count" (group totals unchanged, loads within 1); see `targets.py`.
      key: `jax.random` key, required for policy="random" (used as given).
      backend: "jax" (compiled kernels; fast when called again) or "numpy" (on the host, nothing
        compiled; fast for a single call); the same mask either way.

    Returns:
      `(new_mask, report)`: the bool mask (same shape) and a `RebalanceReport` (numpy arrays
      under backend="numpy").
    """
    n_pe, m = _check_setup(n_pe, mapping, policy, target, backend)
    mp.check_mask(mask)
    _check_policy_inputs(policy, weights, key)
    if weights is not None:
        _check_weights("weights", mask, weights)
    xp = np if backend == "numpy" else jnp
    w = xp.asarray(weights) if policy == "magnitude" else None  # random never reads them
    layers = _Layers(("weights",), (xp.asarray(mask),), (w,), (True,))
    new, reports = _rebalance(
        layers, n_pe=n_pe, m=m, policy=policy, target=target, key=key, fold=False, backend=backend
    )
    return new[0], reports[0]


def _restore(flat_new: dict[str, Any], masks: Any) -> Any:
    """Returns the new masks in the structure of the input (flat dict or tree)."""
    nested = isinstance(masks, Mapping) and any(isinstance(v, Mapping) for v in masks.values())
    return masks_lib.unflatten(flat_new, masks) if nested else flat_new


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
    backend: str = "jax",
) -> tuple[Any, NetworkReport]:
    """u-Ticket over a whole network: the `rebalance_layer` pipeline on every analysed layer.

    Args:
      masks: `{path: bool hwio kernel}` in network order, or a mask tree (`None` = not prunable).
      weights: same keys/structure, float kernels (required for policy="magnitude", and then
        finite in every analysed layer); checked when given.
      n_pe, mapping, policy, target: as `rebalance_layer`.
      key: `jax.random` key for policy="random"; layer at position `i` of the flat order uses
        `jax.random.fold_in(key, i)`.
      conv_only, skip_first: which layers are analysed and rebalanced (`metrics.analysed_layers`);
        the others come back unchanged.
      backend: "jax" (compiled kernels, for repeated calls: the LTH pipeline, sweeps in one
        process) or "numpy" (on the host, no kernel compiled, for one call in a fresh process:
        `experiments/rebalance.py`); the same masks either way.

    Returns:
      `(new_masks, report)`: masks in the input's structure (numpy arrays under
      backend="numpy"), and a `NetworkReport` whose network `Metrics` cover the analysed layers.
    """
    n_pe, m = _check_setup(n_pe, mapping, policy, target, backend)
    xp = np if backend == "numpy" else jnp
    flat = _flat(masks)
    _check_policy_inputs(policy, weights, key)
    names = tuple(flat)
    labels = tuple(f"weights[{k!r}]" for k in names)
    wlist: tuple[Any, ...] = (None,) * len(names)
    if weights is not None:
        wflat = masks_lib.flatten(weights)
        masks_lib.check_same_keys(flat, wflat)
        for label, k in zip(labels, names, strict=True):
            _check_weights(label, flat[k], wflat[k])
        if policy == "magnitude":  # the random policy never reads the weights
            wlist = tuple(xp.asarray(wflat[k]) for k in names)
    shapes = {k: tuple(np.shape(v)) for k, v in flat.items()}
    keep = tuple(analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first))
    layers = _Layers(labels, tuple(xp.asarray(flat[k]) for k in names), wlist, keep)
    new, reports = _rebalance(
        layers, n_pe=n_pe, m=m, policy=policy, target=target, key=key, fold=True, backend=backend
    )
    before = network_metrics([r.before for r, a in zip(reports, keep, strict=True) if a], xp)
    after = network_metrics([r.after for r, a in zip(reports, keep, strict=True) if a], xp)
    report = NetworkReport(names, keep, reports, before, after)
    return _restore(dict(zip(names, new, strict=True)), masks), report


def network_loads(masks: Any, n_pe: int, mapping: str = "output_channel") -> dict[str, jax.Array]:
    """`{path: [G, n] int32 PE loads}` of every layer (`mappings.pe_loads`).

    One compiled call per layer, dispatched asynchronously (they run side by side).

    Args:
      masks: `{path: bool hwio kernel}` in network order, or a mask tree.
      n_pe, mapping: the PE array (see `mappings.pe_loads`).

    Returns:
      `{path: [G, n] int32}` in network order.
    """
    n_pe = mp.check_n_pe(n_pe)
    name = mp.get_mapping(mapping).name
    flat = _flat(masks)
    fn = _loads_program(n_pe, name)
    return {k: fn(jnp.asarray(x)) for k, x in flat.items()}


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

    Returns:
      `(per_layer, network, analysed)`: `{path: Metrics}`, the network `Metrics`, `{path: bool}`.
    """
    loads = network_loads(masks, n_pe, mapping)
    shapes = {k: v.shape for k, v in _flat(masks).items()}
    flags = analysed_layers(shapes, conv_only=conv_only, skip_first=skip_first)
    keep = dict(zip(shapes, flags, strict=True))
    per_layer = {k: loads_metrics(v) for k, v in loads.items()}
    net = network_metrics([per_layer[k] for k in per_layer if keep[k]])
    return per_layer, net, keep


def report_to_json(report: NetworkReport) -> dict[str, Any]:
    """The JSON-able report of issue 3: `{"layers": [...], "network": {"before", "after"}}`.

    Args:
      report: a `NetworkReport` from `rebalance_network`.

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
