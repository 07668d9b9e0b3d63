"""Plain per-group Python loops: the oracles of the workload model and the PE-array simulator.

Written straight from the definitions, one PE at a time, so the vectorized JAX and numpy kernels in
`uticket_jax.workload` and `uticket_jax.hardware` can be checked against them. A mapping enters
only through its declaration, the assignment of every weight coordinate to `(group, PE)`
(`assignment_of`), so every registered mapping gets an oracle; every oracle walks the PEs through
one view, `pe_slices`.
"""

from __future__ import annotations

import math

import numpy as np

from uticket_jax.hardware import get_energy_model
from uticket_jax.workload import Coords, Hwio, get_mapping


def _dims(shape):
    if len(shape) == 4:
        return shape[0] * shape[1], shape[2], shape[3]
    return 1, shape[0], shape[1]


def _hwio(shape):
    return tuple(shape) if len(shape) == 4 else (1, 1, *shape)


def assignment_of(shape, n, mapping):
    """`(group, pe)` of every weight in hwio flat order, from the mapping's declaration alone.

    The mapping's `assign` is called with plain Python ints, one coordinate at a time, on small
    kernels; on large ones (benchmarks) once on numpy index grids (the same arithmetic).
    """
    m = get_mapping(mapping) if isinstance(mapping, str) else mapping
    kh, kw, c_in, c_out = _hwio(shape)
    dims = Hwio(kh, kw, c_in, c_out)
    if kh * kw * c_in * c_out <= 1 << 15:
        out = []
        for a in range(kh):
            for b in range(kw):
                for i in range(c_in):
                    for o in range(c_out):
                        g, p = m.assign(Coords(a, b, i, o), dims, n)
                        out.append((int(g), int(p)))
        return out
    grid = np.indices(dims, dtype=np.int64)
    g, p = m.assign(Coords(*grid), dims, n)
    g, p = (np.broadcast_to(x, dims).ravel().tolist() for x in (g, p))
    return list(zip(g, p, strict=True))


def pe_slices(shape, n, mapping):
    """For every group, for every PE: the list of hwio flat indices it holds (ascending).

    THE per-PE view of the oracles, built weight by weight from the mapping's assignment.
    """
    cells: dict[tuple[int, int], list[int]] = {}
    for flat, (g, p) in enumerate(assignment_of(shape, n, mapping)):
        assert g >= 0 and 0 <= p < n, (g, p, n)
        cells.setdefault((g, p), []).append(flat)
    groups = 1 + max(g for g, _ in cells)
    return [[cells.get((g, j), []) for j in range(n)] for g in range(groups)]


def loads_of(mask, n, mapping):
    """`[G, n]` numpy int loads."""
    flat = np.asarray(mask).ravel()
    return np.array(
        [[int(flat[idx].sum()) for idx in pes] for pes in pe_slices(np.shape(mask), n, mapping)],
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


TERMS = ("accumulate", "weight_fetch", "idle", "leakage")  # horowitz45's


def oracle_counts(mask, spec, n, mapping, T, clock, rate):
    """The counts of one layer (weight-stationary, one weight per PE-cycle), PE by PE."""
    k, c_in, c_out = _dims(np.shape(mask))
    pix = spec.out_hw[0] * spec.out_hw[1]
    loads = loads_of(np.asarray(mask, bool), n, mapping)
    busy = idle = latency = 0
    for row in loads:  # every group runs until its busiest PE is done
        mx = int(row.max())
        latency += mx
        for x in row:
            busy += int(x) * pix * T
            idle += (mx - int(x)) * pix * T
    nnz = int(np.asarray(mask, bool).sum())
    neurons = c_out * pix * T
    return {
        "n_pe": float(n),
        "clock_hz": clock,
        "cycles": float(latency * pix * T),
        "seconds": latency * pix * T / clock,
        "accumulates": nnz * pix * T * rate,
        "weights": float(nnz),
        "lif_updates": float(neurons),
        "pe_cycles_busy": float(busy),
        "pe_cycles_idle": float(idle),
        "weight_buffer_reads": float(nnz),
        "input_buffer_reads": float(busy),
        "output_buffer_writes": float(neurons),
        "dram_weight_reads": float(nnz),
        "dram_input_reads": float(c_in * pix * T),
        "dram_output_writes": float(neurons),
    }


def oracle_energy(model, c, k):
    """Energy by term (J) of counts `c` under `model` ("horowitz45" or "sata"), constants `k`."""
    if model == "horowitz45":
        return {
            "accumulate": k["e_acc_pj"] * 1e-12 * c["accumulates"],
            "weight_fetch": k["e_fetch_pj"] * 1e-12 * c["weights"],
            "idle": k["e_idle_pj"] * 1e-12 * c["pe_cycles_idle"],
            "leakage": k["leak_w"] * c["n_pe"] * c["seconds"],
        }
    per_cycle = c["seconds"] / c["cycles"] if c["cycles"] else 1.0 / c["clock_hz"]
    pe_cycles = c["n_pe"] * c["cycles"]  # every PE clocks every cycle
    out = {"compute_op": 0.0, "compute_ungated": 0.0, "compute_leakage": 0.0}
    for part, ops in (("mac", c["accumulates"]), ("spad", c["accumulates"]), ("lif", None)):
        ops = c["lif_updates"] if ops is None else ops
        out["compute_op"] += k[f"{part}_op_mw"] * 1e-3 * ops / c["clock_hz"]
        out["compute_ungated"] += k[f"{part}_ungated_mw"] * 1e-3 * pe_cycles * per_cycle
        out["compute_leakage"] += k[f"{part}_leak_mw"] * 1e-3 * pe_cycles * per_cycle
    width = {"w": k["weight_bits"] / 8, "i": k["act_bits"] / 8, "o": k["out_bits"] / 8}
    out["buffer_dynamic"] = 1e-9 * (
        k["wbuf_read_nj"] * width["w"] * c["weight_buffer_reads"]
        + k["ibuf_read_nj"] * width["i"] * c["input_buffer_reads"]
        + k["obuf_write_nj"] * width["o"] * c["output_buffer_writes"]
    )
    leak = k["wbuf_leak_mw"] + k["ibuf_leak_mw"] + k["obuf_leak_mw"]
    out["buffer_leakage"] = leak * 1e-3 * c["cycles"] * per_cycle
    out["dram"] = (
        k["dram_nj"]
        * 1e-9
        * (
            width["w"] * c["dram_weight_reads"]
            + width["i"] * c["dram_input_reads"]
            + width["o"] * c["dram_output_writes"]
        )
    )
    return out


def simulator_oracle(masks, specs, cfg: dict, rates=None, model="horowitz45", constants=None):
    """The PE-array simulator for one config, by loops over layers, groups and PEs.

    `constants`: the model's constants as a dict (default: the model's defaults).
    Returns `{"layers": [dict], "network": dict}`, energies in J (float64), each dict with the
    workload figures, `cycles`, `seconds`, `wasted_pe_cycles`, `counts`, `energy_terms`,
    `energy_total` and its split: `energy_dram` (sata's `dram` term; horowitz45 has none) and
    `energy_onchip` (the rest).
    """
    n, T, clock = int(cfg["n_pe"]), int(cfg["timesteps"]), float(cfg["clock_hz"])
    if constants is None:
        constants = get_energy_model(model).defaults._asdict()
    layers = []
    for j, spec in enumerate(specs):
        mask = np.asarray(masks[spec.name], bool)
        f = metrics_of(loads_of(mask, n, cfg["mapping"]), math.nan)
        rate = float(rates[j]) if (rates is not None and cfg["activity_aware"]) else 1.0
        c = oracle_counts(mask, spec, n, cfg["mapping"], T, clock, rate)
        f["cycles"], f["seconds"] = c["cycles"], c["seconds"]
        f["wasted_pe_cycles"] = c["pe_cycles_idle"]
        f["counts"] = c
        f["energy_terms"] = oracle_energy(model, c, constants)
        f["energy_total"] = sum(f["energy_terms"].values())
        f["energy_dram"] = f["energy_terms"].get("dram", 0.0)
        f["energy_onchip"] = sum(v for t, v in f["energy_terms"].items() if t != "dram")
        layers.append(f)
    sel = [f for f, s in zip(layers, specs, strict=True) if s.analysed]
    net = {}
    for k in ("utilization", "utilization_normalized"):
        vals = [f[k] for f in sel if not math.isnan(f[k])]
        net[k] = float(np.mean(vals)) if vals else float("nan")
    for k in ("latency", "wasted", "dynamic", "cycles", "seconds", "wasted_pe_cycles"):
        net[k] = sum(f[k] for f in sel)
    net["counts"] = {
        k: (v if k in ("n_pe", "clock_hz") else sum(f["counts"][k] for f in sel))
        for k, v in layers[0]["counts"].items()
    }
    net["energy_terms"] = {
        t: sum(f["energy_terms"][t] for f in sel) for t in layers[0]["energy_terms"]
    }
    for k in ("energy_total", "energy_dram", "energy_onchip"):
        net[k] = sum(f[k] for f in sel)
    return {"layers": layers, "network": net}
