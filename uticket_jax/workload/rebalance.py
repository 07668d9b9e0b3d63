"""u-Ticket as a pure transform on a pytree of masks: every PE of a group ends with the same load.

`rebalance(masks, weights, key, *, mapping, n_pe, target, policy)` takes any pytree of boolean
hwio kernels (`None` leaves are not prunable and stay `None`) and returns the new masks in the
same structure with a `NetworkReport`. It runs eagerly, under `jax.jit` (inside a training step,
behind a `lax.cond`) and under `jax.vmap` (over keys, say); the static arguments are the
configuration's only (`n_pe`, the mapping, `target`, `policy`, `include`, `backend`), every shape
inside follows from the leaves' shapes.

Per group (Yin et al., TETCI 2024, Sec. III): PEs under their target regrow `target - load` pruned
positions, PEs over it drop `load - target` active positions, only inside their own slice of the
kernel (the mapping, `mapping.py`). Targets are `targets.py`'s, priorities `priorities.py`'s, the
choice of positions `selection.py`'s (compiled) or `host_select.py`'s (numpy).

The pipeline per layer, one code over the array module `xp` (`plan_layer`, `report_layer`):
loads, capacities, targets and `delta = target - load`; the selection of the analysed layers;
the report. `backend="jax"` runs each step as a jitted program per configuration (layers of one
shape share their programs; every call is dispatched asynchronously, so the layers overlap, and a
Python loop over layers outside jit costs nothing; one program over all layers measured ~10x
slower on CPU); `backend="numpy"` runs the same steps on the host, nothing compiled but the random
policy's key words (one tiny program), for one-shot tools. Both give the same masks bit for bit.

Random keys: the layer at position `i` of the leaves' order ranks with `jax.random.fold_in(key,
i)`. Non-finite weights rank as the largest float under the magnitude policy (deterministic, but
arbitrary among themselves): the report counts them per layer (`nonfinite`), and the checked entry
points (`rebalance_network`, the launchers) refuse them.

Compiled programs: the static arguments of each per-layer program are the configuration's (plan
`(n_pe, mapping, target)`, select `(n_pe, mapping, policy)`, report `(n_pe, mapping)`), bound in
fresh jit objects held in small LRU caches keyed by the `PEMapping` object itself; an evicted
configuration's executables are freed with its jit objects (JAX's caches hold them through weak
references), so a process looping over many configurations keeps a bounded number of memory
mappings without `jax.clear_caches()`. A VGG16 configuration holds ~3,500 memory mappings and
~100 MB on XLA:CPU: `_CONFIGS_KEPT = 4` stays well below Linux's default `vm.max_map_count`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from uticket_jax import trees
from uticket_jax.workload import expected, host_select, priorities, selection, targets
from uticket_jax.workload.mapping import PEMapping
from uticket_jax.workload.mappings import check_mask, check_n_pe, get_mapping
from uticket_jax.workload.metrics import Metrics, loads_metrics, network_metrics

BACKENDS = ("jax", "numpy")
# The count targets (`targets.py`) and the cost-weighted one (`expected.py`, needs `costs`).
REBALANCE_TARGETS = (*targets.TARGETS, expected.EXPECTED_WORK)
_CONFIGS_KEPT = 4


class RebalanceReport(NamedTuple):
    """What the rebalance changed in one layer (arrays; `Metrics` in load units)."""

    loads_before: jax.Array  # [G, n] int32
    loads_after: jax.Array  # [G, n] int32
    regrown: jax.Array  # int32: pruned positions made active
    dropped: jax.Array  # int32: active positions pruned
    capped: jax.Array  # int32: PEs held below their group's level by their capacity
    nonfinite: jax.Array  # int32: NaN/inf weights the magnitude policy ranked
    before: Metrics
    after: Metrics


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["layers", "before", "after"],
    meta_fields=["names", "analysed"],
)
@dataclasses.dataclass(frozen=True)
class NetworkReport:
    """Per-layer reports (`RebalanceReport`) in the leaves' order, and the network `Metrics` over
    the analysed layers before/after. A pytree (names and flags static), so jit can return it."""

    names: tuple[str, ...]
    analysed: tuple[bool, ...]
    layers: tuple[RebalanceReport, ...]
    before: Metrics
    after: Metrics


def check_setup(n_pe: Any, mapping: Any, policy: str, target: str, backend: str = "jax"):
    """`(n_pe, PEMapping)` checked with the policy, target and backend (ValueError naming it)."""
    n_pe = check_n_pe(n_pe)
    m = get_mapping(mapping)
    priorities.check_policy(policy)
    if target not in REBALANCE_TARGETS:
        allowed = ", ".join(REBALANCE_TARGETS)
        raise ValueError(f"target: unknown target {target!r}; allowed: {allowed}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    return n_pe, m


def check_policy_inputs(policy: str, weights: Any, key: Any) -> None:
    """Raises ValueError when the policy's input (weights or key) is missing."""
    if policy == "magnitude" and weights is None:
        raise ValueError("weights: required for policy='magnitude' (use policy='random')")
    if policy == "random" and key is None:
        raise ValueError("key: required for policy='random' (a jax.random key)")


def check_target_costs(target: str, costs: Any) -> None:
    """Raises ValueError unless `costs` is given exactly when the target is "expected_work"."""
    if target == expected.EXPECTED_WORK and costs is None:
        raise ValueError("costs: required for target='expected_work' (per-weight rates in [0, 1])")
    if target != expected.EXPECTED_WORK and costs is not None:
        raise ValueError(f"costs: only used by target='expected_work', not {target!r}")


def check_weights(label: str, mask: Any, weights: Any) -> None:
    """Raises ValueError (naming `label`) unless `weights` is a float array of the mask's shape."""
    if np.shape(weights) != np.shape(mask):
        raise ValueError(
            f"{label}: shape {np.shape(weights)} does not match the mask's {np.shape(mask)}"
        )
    if not jnp.issubdtype(jnp.result_type(weights), jnp.floating):
        raise ValueError(f"{label}: must be floating point, got {jnp.result_type(weights)}")


def check_finite(reports: Sequence[RebalanceReport], labels: Sequence[str]) -> None:
    """Raises ValueError naming the first layer whose ranked weights hold NaN or inf.

    One host sync for all layers. The magnitude policy ranks by `|w|`, which orders non-finite
    weights arbitrarily: the checked entry points refuse them.
    """
    counts = jax.device_get([r.nonfinite for r in reports])
    for label, count in zip(labels, counts, strict=True):
        if int(count) > 0:
            raise ValueError(
                f"{label}: {int(count)} non-finite values (NaN or inf); the magnitude policy "
                "ranks by |w|, which orders them arbitrarily (fix the weights or use "
                "policy='random')"
            )


# ---- one layer, one code over xp ----------------------------------------------------------------


def plan_layer(mask, m: PEMapping, n_pe: int, target: str, xp=jnp):
    """`(loads, targets, capacities)` `[G, n]` int32 of one layer."""
    loads = m.loads(mask, n_pe, xp)
    cap = m.capacity(mask.shape, n_pe)
    c_max = m.geometry(mask.shape, n_pe)[1]
    return loads, targets.traced_targets(loads, cap, target=target, c_max=c_max, xp=xp), cap


def nonfinite(weights, xp=jnp):
    """Non-finite weights per output channel, int32 `[c_out]` (a column reduction: ~2x faster on
    XLA:CPU than one to a scalar)."""
    finite = xp.isfinite(weights).reshape(-1, weights.shape[-1])
    return xp.sum(~finite, axis=0, dtype=np.int32)


def report_layer(loads, tgt, cap, bad, xp=jnp) -> RebalanceReport:
    """The `RebalanceReport` of a layer from its loads before/after, capacities and the
    non-finite weights counted per channel (`bad`, None when nothing was ranked)."""
    delta = tgt - loads
    capped = (cap > 0) & (cap == tgt) & (tgt < tgt.max(-1, keepdims=True))
    return RebalanceReport(
        loads_before=loads,
        loads_after=tgt,
        regrown=xp.maximum(delta, 0).sum(dtype=np.int32),
        dropped=xp.maximum(-delta, 0).sum(dtype=np.int32),
        capped=capped.sum(dtype=np.int32),
        nonfinite=xp.asarray(0 if bad is None else bad.sum(dtype=np.int32), np.int32),
        before=loads_metrics(loads, xp=xp),
        after=loads_metrics(tgt, xp=xp),
    )


# ---- compiled per-layer steps -------------------------------------------------------------------


def _plan_body(mask, weights, *, n_pe: int, m: PEMapping, target: str, xp=jnp):
    # Static: the PE array and the target formula (capacities, and the slots per PE that bound
    # the level bisection, follow from the shape). `weights` is None unless the magnitude policy
    # ranks this layer.
    loads, tgt, cap = plan_layer(mask, m, n_pe, target, xp)
    return loads, tgt, tgt - loads, None if weights is None else nonfinite(weights, xp), cap


def _select_body(mask, weights, delta, key, layer, *, n_pe: int, m: PEMapping, policy: str):
    # Static: the PE array and the policy; every shape inside follows from the layer shape. `layer`
    # is the traced position folded into `key` (None: `key` as given), so layers of one shape share
    # a program. A layer that moves nothing skips the selection at run time (`lax.cond`).
    # Keeps: only the PE's own slots change; regrown were pruned, dropped were active.
    def run(_):
        k = key if layer is None else jax.random.fold_in(key, layer)
        prio = priorities.layer_priorities(policy, weights, k, mask.shape)
        return selection.apply_layer(mask, prio, delta, m=m, n_pe=n_pe)

    return lax.cond(jnp.any(delta != 0), run, lambda _: mask, None)


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _plan_program(n_pe: int, m: PEMapping, target: str):
    """The jitted plan step of one configuration: a fresh jit object (and cache) per entry."""
    return jax.jit(functools.partial(_plan_body, n_pe=n_pe, m=m, target=target))


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _select_program(n_pe: int, m: PEMapping, policy: str):
    """The jitted select step of one configuration (see `_plan_program`)."""
    return jax.jit(functools.partial(_select_body, n_pe=n_pe, m=m, policy=policy))


@functools.lru_cache(maxsize=_CONFIGS_KEPT)
def _report_program(n_pe: int, m: PEMapping):
    """The jitted report step of one PE array (its load shapes; see `_plan_program`).

    A fresh `functools.partial`, never `report_layer` itself: JAX keys its caches by the function
    object, so only a fresh callable's executables are freed with its jit object."""
    del n_pe, m  # cache keys only
    return jax.jit(functools.partial(report_layer))


class Layers(NamedTuple):
    """The checked inputs of one rebalance, one entry per layer in the leaves' order."""

    masks: tuple[Any, ...]
    weights: tuple[Any, ...]  # float kernels the magnitude policy ranks, else None
    keep: tuple[bool, ...]  # analysed (rebalanced) or passed through


def _run_jax(layers: Layers, *, n_pe, m, policy, target, key, fold):
    plan = _plan_program(n_pe, m, target)
    select = _select_program(n_pe, m, policy)
    report = _report_program(n_pe, m)
    plans = [plan(x, w) for x, w in zip(layers.masks, layers.weights, strict=True)]
    new = list(layers.masks)
    for i, a in enumerate(layers.keep):
        if a:
            rkey = key if policy == "random" else None
            layer = jnp.int32(i) if fold and policy == "random" else None
            new[i] = select(layers.masks[i], layers.weights[i], plans[i][2], rkey, layer)
    reports = tuple(  # not analysed: unchanged (target = loads)
        report(p[0], p[1] if a else p[0], p[4], p[3])
        for p, a in zip(plans, layers.keep, strict=True)
    )
    return tuple(new), reports


def _run_host(layers: Layers, *, n_pe, m, policy, target, key, fold):
    words = None
    if policy == "random" and any(layers.keep):
        words = priorities.key_words(key, range(len(layers.masks)) if fold else None)
    new, reports = [], []
    for i, (mask, w, a) in enumerate(zip(*layers, strict=True)):
        loads, tgt, cap = plan_layer(mask, m, n_pe, target, np)
        tgt = tgt if a else loads
        if (tgt != loads).any():
            if policy == "magnitude":
                prio = priorities.magnitude_priorities(w, np)
            else:
                prio = priorities.hashed_priorities(words[i if fold else 0], mask.shape, np)
            mask = host_select.select_layer(mask, prio, tgt - loads, m, n_pe)
        new.append(mask)
        reports.append(report_layer(loads, tgt, cap, None if w is None else nonfinite(w, np), np))
    return tuple(new), tuple(reports)


def _run_expected(layers: Layers, costs, *, n_pe, m, policy, key, fold, backend):
    """The expected_work target (`expected.py`): one selection step per analysed layer; the
    reports from the counts before and after (`loads_after`: the new counts)."""
    xp = np if backend == "numpy" else jnp
    words = None
    if xp is np and policy == "random" and any(layers.keep):
        words = priorities.key_words(key, range(len(layers.masks)) if fold else None)
    kw = dict(n_pe=n_pe, m=m, policy=policy, xp=xp)
    new = list(layers.masks)
    for i, (mask, w, a) in enumerate(zip(*layers, strict=True)):
        if a:
            rkey = key if policy == "random" else None
            layer = jnp.int32(i) if fold and policy == "random" and xp is jnp else None
            word = None if words is None else words[i if fold else 0]
            new[i] = expected.select_layer(mask, w, costs[i], rkey, layer, words=word, **kw)
    if xp is jnp:
        plan, report = _plan_program(n_pe, m, "ceil_mean"), _report_program(n_pe, m)
    else:
        plan = functools.partial(_plan_body, n_pe=n_pe, m=m, target="ceil_mean", xp=np)
        report = functools.partial(report_layer, xp=np)
    reports = []
    for x, w, y in zip(layers.masks, layers.weights, new, strict=True):
        loads, _, _, bad, cap = plan(x, w)
        reports.append(report(loads, plan(y, None)[0], cap, bad))
    return tuple(new), tuple(reports)


def run_layers(
    layers: Layers, *, n_pe, m, policy, target, key, fold: bool, backend: str, costs=None
):
    """THE pipeline over checked layers: `(new_masks, reports)` in layer order.

    `fold`: layer `i` ranks with `fold_in(key, i)`, else with `key` itself. `backend="numpy"`
    takes numpy arrays and returns numpy arrays (nothing compiled). `costs`: per layer, the
    costs of target "expected_work" (None for the others).
    """
    if target == expected.EXPECTED_WORK:
        kw = dict(n_pe=n_pe, m=m, policy=policy, key=key, fold=fold, backend=backend)
        return _run_expected(layers, costs, **kw)
    run = _run_host if backend == "numpy" else _run_jax
    return run(layers, n_pe=n_pe, m=m, policy=policy, target=target, key=key, fold=fold)


# ---- the transform ------------------------------------------------------------------------------

Include = Callable[[str, Any], bool] | Collection[str] | None


def _included(include: Include, names, leaves) -> tuple[bool, ...]:
    """Which leaves are rebalanced: all (None), a predicate of `(name, leaf)`, or names."""
    if include is None:
        return (True,) * len(names)
    if callable(include):
        return tuple(bool(include(k, x)) for k, x in zip(names, leaves, strict=True))
    unknown = sorted(set(include) - set(names))
    if unknown:
        raise ValueError(f"include: no mask named {unknown[0]!r}; masks: {', '.join(names)}")
    return tuple(k in include for k in names)


def _host_arrays(xs, what: str):
    """numpy copies of the leaves for the host backend; a tracer is refused (under a trace the
    jax backend is the one that runs)."""
    if any(isinstance(x, jax.core.Tracer) for x in xs if x is not None):
        raise ValueError(f"backend: 'numpy' runs on the host, but the {what} are traced; use 'jax'")
    return tuple(None if x is None else np.asarray(x) for x in xs)


def _layers_of(masks, weights, policy: str, include: Include, backend: str):
    """`(names, treedef, Layers)` of a mask tree, every leaf and weight checked (ValueError
    naming it)."""
    names, leaves, treedef = trees.named_leaves(masks)
    if not leaves:
        raise ValueError("masks: no layers (expected a pytree of boolean hwio kernels)")
    for name, x in zip(names, leaves, strict=True):
        check_mask(x, f"masks[{name!r}]")
    wl: list[Any] = [None] * len(leaves)
    if weights is not None:
        wl = trees.leaves_like(masks, weights, "weights")
        for name, x, w in zip(names, leaves, wl, strict=True):
            check_weights(f"weights[{name!r}]", x, w)
    keep = _included(include, names, leaves)
    magnitude = policy == "magnitude"
    ranked = tuple(w if a and magnitude else None for w, a in zip(wl, keep, strict=True))
    xs = tuple(leaves)
    if backend == "numpy":
        xs, ranked = _host_arrays(xs, "masks"), _host_arrays(ranked, "weights")
    return names, treedef, Layers(xs, ranked, keep)


def _costs_of(masks, costs, names, layers: Layers, n_pe: int, m: PEMapping, target, backend):
    """The checked cost leaves of the analysed layers (None elsewhere), or None without costs."""
    check_target_costs(target, costs)
    if costs is None:
        return None
    leaves = trees.leaves_like(masks, costs, "costs")
    out = []
    for name, x, c, a in zip(names, layers.masks, leaves, layers.keep, strict=True):
        if not a:
            out.append(None)
            continue
        if c is None:
            raise ValueError(f"costs[{name!r}]: required for target='expected_work'")
        expected.check_costs(f"costs[{name!r}]", x, c, n_pe, m)
        out.append(c)
    return _host_arrays(out, "costs") if backend == "numpy" else tuple(out)


def _network_report(names, keep, reports, xp) -> NetworkReport:
    """The `NetworkReport` of per-layer reports, network figures over the analysed layers."""
    before = network_metrics([r.before for r, a in zip(reports, keep, strict=True) if a], xp)
    after = network_metrics([r.after for r, a in zip(reports, keep, strict=True) if a], xp)
    return NetworkReport(names, keep, reports, before, after)


def rebalance(
    masks: Any,
    weights: Any = None,
    key: Any = None,
    *,
    mapping: str = "output_channel",
    n_pe: int,
    target: str = "ceil_mean",
    policy: str = "magnitude",
    include: Include = None,
    backend: str = "jax",
    costs: Any = None,
) -> tuple[Any, NetworkReport]:
    """u-Ticket on a pytree of masks: moves non-zeros between the PEs of every group to the targets.

    Args:
      masks: any pytree of boolean hwio kernels (`[kh, kw, c_in, c_out]` or `[c_in, c_out]`);
        `None` leaves are not prunable.
      weights: a pytree with the masks' structure (params work: their extra leaves where the masks
        hold `None` are ignored), float kernels; the trained weights from before pruning, so the
        ones that just fell below the threshold come back first. Required for "magnitude".
      key: a `jax.random` key, required for "random"; leaf `i` ranks with `fold_in(key, i)`.
      mapping, n_pe: a registered mapping name (`MAPPINGS`); PEs per group (static).
      target: "ceil_mean" (every PE at min(cap, L*), L* = ceil(mean) without caps) or "keep_count"
        (group totals kept, loads within 1) of `targets.py`; "expected_work" (`expected.py`).
      policy: "magnitude" (regrow the largest `|w|`, drop the smallest) or "random".
      include: leaves to rebalance: None (all), a predicate `(name, mask) -> bool` or names ("/"-
        joined key paths, `uticket_jax.trees`); the others stay, out of the network figures.
      backend: "jax" (compiled; traceable) or "numpy" (on the host, nothing compiled, for one
        call in a fresh process; numpy arrays out); the same masks either way.
      costs: "expected_work" only (required there): like `weights`, float costs in `[0, 1]`
        broadcasting to each kernel, e.g. input-channel rates `[1, 1, c_in, 1]` / `[c_in, 1]`.

    Returns:
      `(new_masks, report)`: the masks in the input's structure, and a `NetworkReport`.

    Example:
      A dense layer on one group of 4 PEs (output-channel mapping: PE `j` holds column `j`). PE 0
      holds 6 non-zeros and the others 2, so the group takes 6 steps where 3 would do:

      >>> import jax.numpy as jnp
      >>> from uticket_jax import workload
      >>> mask = jnp.array([[1, 1, 1, 1]] * 2 + [[1, 0, 0, 0]] * 4, bool)  # [c_in, c_out]
      >>> weights = jnp.arange(24.0).reshape(6, 4)
      >>> new, report = workload.rebalance({"fc": mask}, {"fc": weights}, n_pe=4)
      >>> workload.pe_loads(new["fc"], 4).tolist()
      [[3, 3, 3, 3]]
      >>> float(report.before.utilization), float(report.after.utilization)
      (0.5, 1.0)
      >>> new["fc"][:, 0].astype(int).tolist()  # PE 0 kept its 3 largest weights
      [0, 0, 0, 1, 1, 1]
    """
    n_pe, m = check_setup(n_pe, mapping, policy, target, backend)
    check_policy_inputs(policy, weights, key)
    names, treedef, layers = _layers_of(masks, weights, policy, include, backend)
    cl = _costs_of(masks, costs, names, layers, n_pe, m, target, backend)
    kw = dict(n_pe=n_pe, m=m, policy=policy, target=target, key=key, backend=backend)
    new, reports = run_layers(layers, fold=True, costs=cl, **kw)
    report = _network_report(names, layers.keep, reports, np if backend == "numpy" else jnp)
    return jax.tree_util.tree_unflatten(treedef, new), report


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
    costs: Any = None,
) -> tuple[Any, RebalanceReport]:
    """u-Ticket on one layer (`rebalance` of a single kernel; `key` used as given, not folded),
    checked: non-finite weights are refused under the magnitude policy.

    Args:
      mask: boolean hwio kernel; weights: float array of its shape (required for "magnitude").
      n_pe, mapping, policy, target, backend: as `rebalance`.
      key: `jax.random` key, required for policy="random".
      costs: float per-weight costs broadcasting to the mask (target "expected_work" only).

    Returns:
      `(new_mask, report)`: the bool mask and its `RebalanceReport`.
    """
    n_pe, m = check_setup(n_pe, mapping, policy, target, backend)
    check_mask(mask)
    check_policy_inputs(policy, weights, key)
    check_target_costs(target, costs)
    if weights is not None:
        check_weights("weights", mask, weights)
    if costs is not None:
        expected.check_costs("costs", mask, costs, n_pe, m)
    xp = np if backend == "numpy" else jnp
    w = xp.asarray(weights) if policy == "magnitude" else None  # random never reads them
    layers = Layers((xp.asarray(mask),), (w,), (True,))
    cl = None if costs is None else (xp.asarray(costs),)
    kw = dict(n_pe=n_pe, m=m, policy=policy, target=target, key=key, backend=backend)
    new, reports = run_layers(layers, fold=False, costs=cl, **kw)
    if policy == "magnitude":
        check_finite(reports, ["weights"])
    return new[0], reports[0]
