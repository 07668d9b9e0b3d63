"""Plain per-group Python loops: the oracles of the workload model and the PE-array simulator.

Written straight from the definitions, one PE at a time, with numpy only, so the vectorized JAX
kernels in `uticket_jax.workload` and `uticket_jax.hardware` can be checked against them. Every
oracle walks the PEs through one loop, `pe_views`.
"""

from __future__ import annotations

import math

import numpy as np


def _dims(shape):
    if len(shape) == 4:
        return shape[0] * shape[1], shape[2], shape[3]
    return 1, shape[0], shape[1]


def pe_views(shape, n, mapping):
    """For every group, for every PE: the `(k, c_in, c_out)` index of its weights, or None.

    THE per-PE loop of the oracles: the index applies to a kernel viewed as `[K, c_in, c_out]`;
    `None` marks an idle PE (past `c_out`, or an empty input slice).
    """
    k, c_in, c_out = _dims(shape)
    groups = []
    if mapping == "output_channel":
        for g in range(math.ceil(c_out / n)):
            pes = []
            for j in range(n):
                o = g * n + j
                pes.append((slice(None), slice(None), o) if o < c_out else None)
            groups.append(pes)
    elif mapping == "input_split":
        s = math.ceil(c_in / n)
        for o in range(c_out):
            pes = []
            for j in range(n):
                lo, hi = j * s, min((j + 1) * s, c_in)
                pes.append((slice(None), slice(lo, hi), o) if lo < hi else None)
            groups.append(pes)
    else:
        raise ValueError(mapping)
    return groups


def pe_slices(shape, n, mapping):
    """For every group, for every PE: the list of hwio flat indices it holds (ascending)."""
    flat = np.arange(int(np.prod(shape))).reshape(_dims(shape))
    return [
        [sorted(flat[v].ravel().tolist()) if v is not None else [] for v in pes]
        for pes in pe_views(shape, n, mapping)
    ]


def loads_of(mask, n, mapping):
    """`[G, n]` numpy int loads."""
    m3 = np.asarray(mask).reshape(_dims(np.shape(mask)))
    return np.array(
        [
            [int(m3[v].sum()) if v is not None else 0 for v in pes]
            for pes in pe_views(np.shape(mask), n, mapping)
        ],
        np.int64,
    )


def metrics_of(loads, empty=None):
    """Layer figures from a `[G, n]` load table, one group at a time (`empty`: a layer's
    utilizations when no group has work)."""
    n = loads.shape[1]
    utils, norms = [], []
    latency = wasted = dynamic = 0
    for row in loads:
        total, mx = int(row.sum()), int(row.max())
        dynamic += total
        if mx == 0:
            continue
        mean = total / n
        utils.append(mean / mx)
        cm = math.ceil(total / n)
        norms.append(1.0 if n == 1 else (mx * (n - 1) - (mx - cm) * n) / (mx * (n - 1)))
        latency += mx
        wasted += sum(mx - int(x) for x in row)
    return {
        "utilization": float(np.mean(utils)) if utils else empty,
        "utilization_normalized": float(np.mean(norms)) if norms else empty,
        "latency": latency,
        "wasted": wasted,
        "dynamic": dynamic,
    }


def targets_of(loads, caps, target):
    """Per-PE targets, one group at a time, by scanning levels upward."""
    out = np.zeros_like(loads)
    for g in range(loads.shape[0]):
        row, cap = [int(x) for x in loads[g]], [int(c) for c in caps[g]]
        s = sum(row)

        def f(level, cap=cap):
            return sum(min(c, level) for c in cap)

        if target == "ceil_mean":
            level = 0
            while f(level) < s:
                level += 1
            out[g] = [min(c, level) for c in cap]
        else:
            level = 0
            while level < max(cap) and f(level + 1) <= s:
                level += 1
            t = [min(c, level) for c in cap]
            r = s - sum(t)
            cands = [j for j in range(len(cap)) if cap[j] > level]
            cands.sort(key=lambda j: (-row[j], j))
            for j in cands[:r]:
                t[j] += 1
            out[g] = t
    return out


def rebalance(mask, prio, n, mapping, target):
    """Rebalanced mask: per PE, regrow highest-`prio` pruned / drop lowest-`prio` active slots.

    `prio` is `|w|` (magnitude policy) or the random priorities; ties go to the lower flat index.
    """
    shape = np.shape(mask)
    flat = np.asarray(mask).ravel().copy()
    pr = np.asarray(prio, np.float32).ravel()
    groups = pe_slices(shape, n, mapping)
    loads = loads_of(mask, n, mapping)
    caps = np.array([[len(p) for p in pes] for pes in groups])
    tgt = targets_of(loads, caps, target)
    for g, pes in enumerate(groups):
        for j, idx in enumerate(pes):
            d = int(tgt[g, j] - loads[g, j])
            if d > 0:
                cand = [i for i in idx if not flat[i]]
                cand.sort(key=lambda i: (-pr[i], i))
                for i in cand[:d]:
                    flat[i] = True
            elif d < 0:
                cand = [i for i in idx if flat[i]]
                cand.sort(key=lambda i: (pr[i], i))
                for i in cand[:-d]:
                    flat[i] = False
    return flat.reshape(shape), loads, tgt


TERMS = ("accumulate", "weight_fetch", "idle", "leakage")


def simulator_oracle(masks, specs, cfg: dict, rates=None) -> dict:
    """The PE-array simulator for one config, by loops over layers, groups and PEs.

    Returns `{"layers": [dict], "network": dict}`, energies in J (float64).
    """
    n, T, clock = int(cfg["n_pe"]), int(cfg["timesteps"]), float(cfg["clock_hz"])
    layers = []
    for j, spec in enumerate(specs):
        f = metrics_of(loads_of(np.asarray(masks[spec.name], bool), n, cfg["mapping"]), math.nan)
        pix = spec.out_hw[0] * spec.out_hw[1]
        rate = float(rates[j]) if (rates is not None and cfg["activity_aware"]) else 1.0
        f["cycles"] = float(f["latency"] * pix * T)
        f["seconds"] = f["cycles"] / clock
        f["wasted_pe_cycles"] = float(f["wasted"] * pix * T)
        f["energy_accumulate"] = cfg["e_acc_pj"] * 1e-12 * f["dynamic"] * pix * T * rate
        f["energy_weight_fetch"] = cfg["e_fetch_pj"] * 1e-12 * f["dynamic"]
        f["energy_idle"] = cfg["e_idle_pj"] * 1e-12 * f["wasted_pe_cycles"]
        f["energy_leakage"] = cfg["leak_w"] * n * f["seconds"]
        f["energy_total"] = sum(f[f"energy_{t}"] for t in TERMS)
        layers.append(f)
    sel = [f for f, s in zip(layers, specs, strict=True) if s.analysed]
    net = {}
    for k in ("utilization", "utilization_normalized"):
        vals = [f[k] for f in sel if not math.isnan(f[k])]
        net[k] = float(np.mean(vals)) if vals else float("nan")
    for k in layers[0]:
        if k not in net:
            net[k] = sum(f[k] for f in sel)
    return {"layers": layers, "network": net}
