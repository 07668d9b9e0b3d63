"""Fingerprints of the library's outputs, to check a refactor keeps them bit for bit.

  python -m benchmarks.output_hashes > hashes.json   # before and after a change, then compare

Prints ONE JSON line: for the VGG16 masks at 98 % (`vgg16_sparse(seed=0, sparsity=0.98)`), per
backend, mapping, policy and n_pe 8/16/32 (the 12 configurations, on both backends), the first 16
hex digits of SHA-256 over `rebalance_network`'s new masks (dtype, shape and bytes of every layer
in order), over its report's integers (loads before/after, regrown, dropped, capped) and over its
JSON report; and per simulator backend and energy model, over every figure of a 10-config sweep
(n_pe 4..64, both mappings).
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np

from uticket_jax import hardware, workload
from uticket_jax.workload.synthetic import vgg16_sparse


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def hashes() -> dict[str, object]:
    """`{config: [masks, report integers, report JSON]}` and `{sweep/...: figures}` digests."""
    masks, weights = vgg16_sparse(seed=0, sparsity=0.98)
    out: dict[str, object] = {}
    for backend in workload.BACKENDS:
        for mapping in ("output_channel", "input_split"):
            for policy in workload.POLICIES:
                for n_pe in (8, 16, 32):
                    new, rep = workload.rebalance_network(
                        masks,
                        weights if policy == "magnitude" else None,
                        n_pe=n_pe,
                        mapping=mapping,
                        policy=policy,
                        key=jax.random.key(0),
                        backend=backend,
                    )
                    fields = ("loads_before", "loads_after", "regrown", "dropped", "capped")
                    ints = [getattr(r, f) for r in rep.layers for f in fields]
                    text = json.dumps(workload.report_to_json(rep), sort_keys=True).encode()
                    out[f"{backend}/{mapping}/{policy}/{n_pe}"] = [
                        _digest(*[new[k] for k in masks]),
                        _digest(*ints),
                        hashlib.sha256(text).hexdigest()[:16],
                    ]
    specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=32)
    configs = hardware.config_grid(
        n_pe=[4, 8, 16, 32, 64], mapping=["output_channel", "input_split"]
    )
    for backend in hardware.BACKENDS:
        for model in ("horowitz45", "sata"):
            res = hardware.simulate_masks(
                masks, specs, configs, backend=backend, energy_model=model
            )
            out[f"sweep/{backend}/{model}"] = _digest(*jax.tree.leaves((res.layers, res.network)))
    return out


if __name__ == "__main__":
    print(json.dumps(hashes(), sort_keys=True))
