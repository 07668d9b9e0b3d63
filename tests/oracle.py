"""Plain per-group Python loops of the workload model: the oracle for tests and benchmarks.

Written straight from the definitions (issue 3, DESIGN.md), one PE at a time, with numpy only, so
the vectorized JAX kernels in `uticket_jax.workload` can be checked against it.
"""

from __future__ import annotations

import math

import numpy as np


def _dims(shape):
    if len(shape) == 4:
        return shape[0] * shape[1], shape[2], shape[3]
    return 1, shape[0], shape[1]


def pe_slices(shape, n, mapping):
    """For every group, for every PE: the list of hwio flat indices it holds (ascending)."""
    k, c_in, c_out = _dims(shape)
    flat = np.arange(int(np.prod(shape))).reshape(k, c_in, c_out)
    groups = []
    if mapping == "output_channel":
        for g in range(math.ceil(c_out / n)):
            pes = []
            for j in range(n):
                o = g * n + j
                pes.append(sorted(flat[:, :, o].ravel().tolist()) if o < c_out else [])
            groups.append(pes)
    elif mapping == "input_split":
        s = math.ceil(c_in / n)
        for o in range(c_out):
            pes = []
            for j in range(n):
                lo, hi = j * s, min((j + 1) * s, c_in)
                pes.append(sorted(flat[:, lo:hi, o].ravel().tolist()) if lo < hi else [])
            groups.append(pes)
    else:
        raise ValueError(mapping)
    return groups


def loads_of(mask, n, mapping):
    """`[G, n]` numpy int loads."""
    shape = np.shape(mask)
    flat = np.asarray(mask).ravel()
    return np.array(
        [[int(flat[idx].sum()) for idx in pes] for pes in pe_slices(shape, n, mapping)], np.int64
    )


def metrics_of(loads):
    """Layer figures from a `[G, n]` load table, one group at a time."""
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
        "utilization": float(np.mean(utils)) if utils else None,
        "utilization_normalized": float(np.mean(norms)) if norms else None,
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
