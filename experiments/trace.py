r"""The spike trace of a ticket of an `experiments/lth.py` run: its analysed layers' inputs.

  python experiments/trace.py --workdir runs/lth_digits --round 11 --arm uticket --out trace.npz
  python experiments/sweep.py --masks runs/lth_digits/masks/round11_uticket.npz \
      --model digits_snn --spike_trace trace.npz      # spike-driven latency, utilization, energy

Rebuilds the stage's model from the run directory (config.json, weights/, variables/, masks/, as
`experiments/export.py` does), runs it in eval mode at the run's full `T` on the first --images
test images of the run's dataset, and writes --out: a compressed `.npz` with one bool array per
analysed layer (the convs but the first, among the run's prunable layers), keyed by kernel path as
in mask files, `[T, B, H, W, C_in]` for convs, `[T, B, C_in]` for dense layers
(`uticket_jax.models.record_inputs`; the pipeline records the same inputs for its spike-driven
columns). `--round` defaults to the run's last round; `--arm` is lth, uticket or dense (round 0).
Prints one JSON line: the file, the stage, each layer's shape and input spike rate.
Bad input (not a run directory, a stage the run does not have, a run written without weights or
variables, bad flags, an existing --out without --overwrite): one line on stderr, exit status 2,
nothing written.
"""

from __future__ import annotations

import json
import os

from absl import flags

from uticket_jax import checks, data, files
from uticket_jax.launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory (experiments/lth.py).")
_ROUND = flags.DEFINE_string("round", None, "Round to record (integer; default: the last).")
_ARM = flags.DEFINE_string("arm", "uticket", "Arm: lth, uticket, or dense (round 0).")
_OUT = flags.DEFINE_string("out", None, "Output trace file (.npz).")
_IMAGES = flags.DEFINE_string("images", "256", "Test images to record (the first N, >= 1).")
_BATCH = flags.DEFINE_string("batch_size", "256", "Images per forward pass (>= 1).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset files of the run's dataset (as experiments/lth.py takes them)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")


def _int(flag, minimum: int) -> int:
    try:
        value = int(flag.value)
    except (TypeError, ValueError):
        raise ValueError(f"--{flag.name}: expected an integer, got {flag.value!r}") from None
    checks.check_int(f"--{flag.name}", value, minimum=minimum)
    return value


def _check_flags() -> tuple[str, int | None, str, str, int, int]:
    if not _WORKDIR.value:
        raise ValueError("--workdir: required (the run's work directory)")
    if not _OUT.value:
        raise ValueError("--out: required (the trace file to write)")
    if _ARM.value not in ("lth", "uticket", "dense"):
        raise ValueError(f"--arm: got {_ARM.value!r}; allowed: lth, uticket, dense")
    round_ = None if _ROUND.value is None else _int(_ROUND, 0)
    images, batch = _int(_IMAGES, 1), _int(_BATCH, 1)
    out = _OUT.value
    if os.path.isdir(out):
        raise ValueError(f"--out: {out!r} is a directory; give a file name")
    if os.path.exists(out) and not _OVERWRITE.value:
        raise ValueError(f"--out: {out!r} exists; pass --overwrite to replace it")
    files.check_writable(out)
    return _WORKDIR.value, round_, _ARM.value, out, images, batch


def main() -> None:
    workdir, round_, arm, out, n, batch = _check_flags()
    from uticket_jax.interop import load_run_ticket, record_run_trace

    ticket = load_run_ticket(workdir, round_, arm)
    test = data.load_dataset(ticket.config["dataset"], data_dir=_DATA_DIR.value).test_images
    if n > test.shape[0]:
        raise ValueError(f"--images: must be in [1, {test.shape[0]}] (the test set), got {n}")
    trace = record_run_trace(ticket, test[:n], batch_size=batch)
    files.save_spike_trace(out, trace)
    rec = ticket.record
    layers = {k: {"shape": list(v.shape), "rate": float(v.mean())} for k, v in trace.items()}
    print(
        json.dumps(
            {"out": out, "round": int(rec["round"]), "arm": rec["arm"], "images": n}
            | {"timesteps": int(next(iter(trace.values())).shape[0]), "layers": layers}
        )
    )


if __name__ == "__main__":
    cli.run(main, name="trace.py")
