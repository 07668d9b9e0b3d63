"""Plain-loop oracle of the PE-array simulator: one config, loops over layers, groups and PEs.

Written from the model's definition (see `uticket_jax/hardware/simulator.py`), independently of
the vectorized code: loads are counted straight from the mask, in float64 / Python ints.
"""

from __future__ import annotations

import math

import numpy as np

TERMS = ("accumulate", "weight_fetch", "idle", "leakage")


def pe_loads(mask: np.ndarray, n: int, mapping: str) -> list[list[int]]:
    """Loads `[group][pe]` of one hwio (or dense) mask under `mapping`, by explicit loops."""
    if mask.ndim == 2:
        mask = mask[None, None]
    c_in, c_out = mask.shape[2], mask.shape[3]
    groups = []
    if mapping == "output_channel":
        for g in range(math.ceil(c_out / n)):
            row = []
            for j in range(n):
                o = g * n + j
                row.append(int(mask[:, :, :, o].sum()) if o < c_out else 0)
            groups.append(row)
    elif mapping == "input_split":
        s = math.ceil(c_in / n)
        for o in range(c_out):
            row = []
            for j in range(n):
                lo, hi = min(j * s, c_in), min((j + 1) * s, c_in)
                row.append(int(mask[:, :, lo:hi, o].sum()))
            groups.append(row)
    else:
        raise ValueError(mapping)
    return groups


def layer_oracle(mask, n, mapping):
    """Load-unit figures of one layer: dict of utilization(s), latency, wasted, dynamic."""
    utils, norms = [], []
    latency = wasted = dynamic = 0
    for loads in pe_loads(np.asarray(mask, bool), n, mapping):
        mx, total = max(loads), sum(loads)
        dynamic += total
        if mx == 0:
            continue
        mean = total / n
        utils.append(mean / mx)
        ceil_mean = -(-total // n)
        norms.append(1.0 if n == 1 else (mx * (n - 1) - (mx - ceil_mean) * n) / (mx * (n - 1)))
        latency += mx
        wasted += sum(mx - x for x in loads)
    return {
        "utilization": float(np.mean(utils)) if utils else float("nan"),
        "utilization_normalized": float(np.mean(norms)) if norms else float("nan"),
        "latency": latency,
        "wasted": wasted,
        "dynamic": dynamic,
    }


def oracle(masks, specs, cfg: dict, rates=None) -> dict:
    """Figures of one config: {"layers": [dict], "network": dict}, energies in J (float64)."""
    n, T, clock = int(cfg["n_pe"]), int(cfg["timesteps"]), float(cfg["clock_hz"])
    layers = []
    for j, spec in enumerate(specs):
        f = layer_oracle(masks[spec.name], n, cfg["mapping"])
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
