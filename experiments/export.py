r"""A ticket of an `experiments/lth.py` run as a NIR graph, for SpikingJelly, snnTorch, hardware.

  python experiments/export.py --workdir runs/lth_digits --round 11 --arm uticket --out ticket.nir

Writes --out (NIR's HDF5 format, `nir.read` reads it): convolutions and the classifier with the
mask applied and batch norm folded in, LIF neurons in NIR's continuous-time form (their Euler step
with dt = 1 is ours), max pooling of spikes as SumPool2d + a firing node (`--pooling if`, the
default: an IF neuron, which SpikingJelly's importer reads; `--pooling threshold`: NIR's
Threshold), and in each layer's metadata its PE mapping, `n_pe` and PE loads
(`uticket_jax.interop.nir_export` says each node). NIR's LIF fires when `v > v_threshold`, ours
(and SpikingJelly's) when `v >= v_th`: `--firing strict` (the default) writes the float32 just
below `v_th`, exact for readers that follow NIR; `--firing inclusive` writes `v_th` itself, exact
for SpikingJelly, which compares with `>=` (its own exporter writes `v_th` too). Run it in another
framework with dt = 1 and the image at each of the `T` steps (graph metadata `timesteps`), e.g.
SpikingJelly's `import_from_nir(path, dt=1.0)`. `--round` defaults to the run's last round;
`--arm` is lth, uticket or dense (round 0). Prints one JSON line: the file, the stage, its layers.
Bad input (not a run directory, a stage the run does not have, a run written without weights or
variables): one line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from uticket_jax.interop import FIRINGS, POOLINGS, export_run_ticket, write_nir
from uticket_jax.launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory (experiments/lth.py).")
_ROUND = flags.DEFINE_string("round", None, "Round to export (integer; default: the last).")
_ARM = flags.DEFINE_string("arm", "uticket", "Arm: lth, uticket, or dense (round 0).")
_POOLING = flags.DEFINE_string("pooling", "if", "Node after each SumPool2d: if or threshold.")
_FIRING = flags.DEFINE_string(
    "firing",
    "strict",
    "How readers compare with the LIF's v_threshold: strict (NIR's v > v_threshold) or"
    " inclusive (v >= v_threshold, as SpikingJelly reads NIR).",
)
_OUT = flags.DEFINE_string("out", None, "Output NIR file.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")


def _round() -> int | None:
    if _ROUND.value is None:
        return None
    try:
        value = int(_ROUND.value)
    except ValueError:
        raise ValueError(f"--round: expected an integer, got {_ROUND.value!r}") from None
    if value < 0:
        raise ValueError(f"--round: must be >= 0, got {value}")
    return value


def _check_flags() -> tuple[str, int | None, str, str]:
    if not _WORKDIR.value:
        raise ValueError("--workdir: required (the run's work directory)")
    if not _OUT.value:
        raise ValueError("--out: required (the NIR file to write)")
    if _ARM.value not in ("lth", "uticket", "dense"):
        raise ValueError(f"--arm: got {_ARM.value!r}; allowed: lth, uticket, dense")
    if _POOLING.value not in POOLINGS:
        raise ValueError(f"--pooling: got {_POOLING.value!r}; allowed: {', '.join(POOLINGS)}")
    if _FIRING.value not in FIRINGS:
        raise ValueError(f"--firing: got {_FIRING.value!r}; allowed: {', '.join(FIRINGS)}")
    out = _OUT.value
    if os.path.isdir(out):
        raise ValueError(f"--out: {out!r} is a directory; give a file name")
    if os.path.exists(out) and not _OVERWRITE.value:
        raise ValueError(f"--out: {out!r} exists; pass --overwrite to replace it")
    return _WORKDIR.value, _round(), _ARM.value, out


def _summary(graph, out: str) -> dict:
    layers = []
    for name, node in graph.nodes.items():
        meta = node.metadata or {}
        if "param_path" not in meta:
            continue
        weight = np.asarray(node.weight)
        row = {"node": name, "param_path": meta["param_path"], "nonzero": int((weight != 0).sum())}
        row["weights"] = int(weight.size)
        if "loads" in meta:
            loads = np.asarray(meta["loads"])
            row.update(n_pe=int(meta["n_pe"]), mapping=meta["mapping"], max_load=int(loads.max()))
        layers.append(row)
    keys = ("arch", "dataset", "round", "arm", "timesteps", "test_accuracy", "sparsity")
    keys += ("pooling", "firing")
    return {"out": out, **{k: graph.metadata[k] for k in keys}, "layers": layers}


def main() -> None:
    workdir, round_, arm, out = _check_flags()
    graph = export_run_ticket(workdir, round_, arm, pooling=_POOLING.value, firing=_FIRING.value)
    write_nir(out, graph)
    print(json.dumps(_summary(graph, out)))


if __name__ == "__main__":
    cli.run(main, name="export.py")
