r"""u-Ticket rebalance of a mask file: every PE of a group ends with the same number of non-zeros.

Example (a VGG16 ticket, 16-PE groups, output-channel mapping; ~2 s on a 2-core CPU, JAX's
import included):
  python experiments/rebalance.py --masks runs/lth/masks.npz --weights runs/lth/weights.npz \
      --n_pe 16 --mapping output_channel --policy magnitude --target ceil_mean --out balanced.npz
Masks from PyTorch/SpikingJelly (`[c_out, c_in, kh, kw]`, linear `[out, in]`): add
`--layout oihw`; the output keeps the input's layout and layer order.
A NIR graph (any framework's export, or experiments/export.py's) can stand in for the masks:
  python experiments/rebalance.py --masks ticket.nir --n_pe 16 --out balanced.npz
its masks are the non-zero pattern of its conv and dense weights, and the magnitude policy ranks
those weights (so no --weights); layers are keyed by `param_path` metadata or node name, and
--out is a mask .npz in --layout (`uticket_jax.interop.import_nir`).

Prints one JSON report: {"layers": [{"name", "analysed", "before", "after", "regrown", "dropped",
"capped"}], "network": {"before", "after"}, "seconds": {...}}; before/after hold utilization,
utilization_normalized, latency, wasted, dynamic (load units = non-zero weights).
`--policy magnitude` needs `--weights` (the trained weights from before pruning); `--policy random`
uses `--seed`. `--backend numpy` (the default) rebalances on the host in numpy (only the random
policy's key derivation is compiled, one tiny program), which is what a single call in a fresh
process wants; `--backend jax` runs the compiled kernels (the LTH
pipeline's), which pay 10-20 s of XLA compilation first on VGG16. Both give the same masks.
Bad input (also NaN or infinite weights in a layer the magnitude policy ranks): one
line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

from uticket_jax.launch import signals

signals.install("rebalance.py", __name__)  # before the heavy imports: a Ctrl-C there is one line

import json
import os
import time

import jax
from absl import flags

from uticket_jax import checks, files
from uticket_jax.launch import cli
from uticket_jax.sparsity.masks import LAYOUTS, load_mask_file, load_weight_file, save_mask_file
from uticket_jax.workload import MAPPINGS, POLICIES, TARGETS, rebalance_network, report_to_json
from uticket_jax.workload.rebalance import BACKENDS

_MASKS = flags.DEFINE_string(
    "masks", None, "Mask .npz file (one array per prunable layer), or a NIR graph (.nir)."
)
_WEIGHTS = flags.DEFINE_string("weights", None, "Weights .npz (same keys); needed for magnitude.")
_LAYOUT = flags.DEFINE_string("layout", "hwio", f"Layout of the files: {', '.join(LAYOUTS)}.")
_N_PE = flags.DEFINE_string("n_pe", "16", f"PEs per group (integer in [1, {checks.MAX_N_PE}]).")
_MAPPING = flags.DEFINE_string("mapping", "output_channel", f"One of: {', '.join(MAPPINGS)}.")
_POLICY = flags.DEFINE_string("policy", "magnitude", f"One of: {', '.join(POLICIES)}.")
_TARGET = flags.DEFINE_string("target", "ceil_mean", f"One of: {', '.join(TARGETS)}.")
_SEED = flags.DEFINE_string(
    "seed", "0", f"Seed of the random policy (integer in [0, {checks.SEED_MAX}])."
)
_CONV_ONLY = flags.DEFINE_bool("conv_only", True, "Rebalance conv layers only (paper).")
_SKIP_FIRST = flags.DEFINE_bool("skip_first_layer", True, "Leave the first conv out (paper).")
_BACKEND = flags.DEFINE_string(
    "backend", "numpy", f"One of: {', '.join(BACKENDS)} (numpy: on the host; same masks)."
)
_OUT = flags.DEFINE_string("out", None, "Output mask .npz.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing --out file (only a mask .npz is ever replaced)."
)


def _choice(flag, allowed) -> str:
    if flag.value not in allowed:
        raise ValueError(f"--{flag.name}: got {flag.value!r}; allowed: {', '.join(allowed)}")
    return flag.value


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _check_paths() -> tuple[str, str, str | None]:
    if not _MASKS.value:
        raise ValueError("--masks: required (a mask .npz file)")
    if not _OUT.value:
        raise ValueError("--out: required (the output mask .npz file)")
    masks, out = _MASKS.value, _OUT.value
    if os.path.isdir(out):
        raise ValueError(f"--out: {out!r} is a directory; give the path of the output .npz file")
    if _same_file(out, masks):
        raise ValueError(f"--out: {out!r} is the input --masks file; choose another path")
    if _WEIGHTS.value and _same_file(out, _WEIGHTS.value):
        raise ValueError(f"--out: {out!r} is the --weights file; choose another path")
    if os.path.exists(out) and not _OVERWRITE.value:
        raise ValueError(f"--out: {out!r} exists; pass --overwrite to replace it")
    if os.path.exists(out) and not files.is_npz(out):
        raise ValueError(
            f"--overwrite: {out!r} is not an .npz array file; it is left alone: choose another"
            " --out"
        )
    return masks, out, _WEIGHTS.value


def _from_nir(path: str, weights_path: str | None) -> tuple[dict, dict]:
    """Masks (the non-zero pattern) and weights of a NIR graph's conv and dense layers."""
    if weights_path:
        raise ValueError("--weights: a NIR --masks file carries its weights; leave --weights out")
    from uticket_jax import interop  # NIR files only: the mask-file path never imports nir

    ticket = interop.import_nir(path, conv_only=_CONV_ONLY.value, skip_first=_SKIP_FIRST.value)
    return ticket.masks, ticket.weights


def _load(masks_path: str, weights_path: str | None, layout: str, policy: str):
    """The masks and weights: a NIR graph's, or the mask and weight files'."""
    if files.is_nir_file(masks_path):
        return _from_nir(masks_path, weights_path)
    if policy == "magnitude" and not weights_path:
        raise ValueError("--weights: required for --policy magnitude (or use --policy random)")
    masks = load_mask_file(masks_path, layout)
    return masks, load_weight_file(weights_path, layout) if weights_path else None


def _rebalance(masks, weights, policy, n_pe, mapping, target, seed, backend):
    return rebalance_network(
        masks,
        weights if policy == "magnitude" else None,
        n_pe=n_pe,
        mapping=mapping,
        policy=policy,
        target=target,
        key=jax.random.key(seed),
        conv_only=_CONV_ONLY.value,
        skip_first=_SKIP_FIRST.value,
        backend=backend,
    )


def run() -> dict:
    """Parses the flags, rebalances the masks, writes --out; returns the JSON report."""
    t0 = time.perf_counter()
    layout = _choice(_LAYOUT, LAYOUTS)
    mapping = _choice(_MAPPING, tuple(MAPPINGS))
    policy = _choice(_POLICY, POLICIES)
    target = _choice(_TARGET, TARGETS)
    backend = _choice(_BACKEND, BACKENDS)
    n_pe = checks.parse_int("--n_pe", _N_PE.value, minimum=1, maximum=checks.MAX_N_PE)
    seed = checks.parse_int("--seed", _SEED.value, minimum=0, maximum=checks.SEED_MAX)
    masks_path, out, weights_path = _check_paths()
    masks, weights = _load(masks_path, weights_path, layout, policy)
    files.check_writable(out)  # a read-only --out fails now, not after the work
    t_load = time.perf_counter()
    with cli.flag_errors("n_pe", "mapping", "policy", "target", "backend"):
        new, report = _rebalance(masks, weights, policy, n_pe, mapping, target, seed, backend)
    new = jax.block_until_ready(new)
    t_rebalance = time.perf_counter()
    out_json = report_to_json(report)
    save_mask_file(out, new, layout)
    _WROTE.append(out)
    t_end = time.perf_counter()
    out_json["seconds"] = {
        "load": round(t_load - t0, 4),
        "rebalance": round(t_rebalance - t_load, 4),
        "save": round(t_end - t_rebalance, 4),
        "total": round(t_end - t0, 4),
    }
    return out_json


_WROTE: list[str] = []  # --out, once written


def _on_stop(stop: signals.Stopped) -> str:
    done = f"after writing {_WROTE[0]}" if _WROTE else "before writing --out"
    return f" {done}; rerun with: {signals.resume_command(drop=(), add=())}"


def main() -> None:
    print(json.dumps(run()))


if __name__ == "__main__":
    cli.run(
        main,
        name="rebalance.py",
        on_stop=_on_stop,
    )
