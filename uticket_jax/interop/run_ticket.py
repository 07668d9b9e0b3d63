"""A ticket of an `experiments/lth.py` run, read back from its work directory and exported.

A run writes, per stage `roundRR_ARM` (round 0's arm is `dense`): `masks/` (the masks),
`weights/` (the trained kernels of the prunable layers) and `variables/` (the rest of the
trained variables: BN statistics, scales, shifts and biases), plus `config.json` (the model, the
dataset, the PE array) and `rounds.jsonl` (one record per finished stage: its `timesteps`,
accuracy, sparsity). Together they are the complete inference model of every stage.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import numpy as np

from uticket_jax import models
from uticket_jax.interop.nir_export import export_nir
from uticket_jax.interop.requires import nir
from uticket_jax.sparsity.masks import load_mask_file

# One image `(H, W, C)` of each dataset the pipeline trains on (`uticket_jax.data`).
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "svhn": (32, 32, 3),
    "fashion_mnist": (28, 28, 1),
    "fashion_mnist32": (32, 32, 1),
}


class RunTicket(NamedTuple):
    """One stage of a run, ready to export.

    Fields:
      model: the Flax model at the stage's `timesteps`.
      variables: `{"params", "batch_stats"}`, flat `{path: array}` dicts.
      masks: `{kernel path: bool hwio mask}` in network order.
      input_shape: one image `(H, W, C)`.
      config: the run's `config.json`.
      record: the stage's line of `rounds.jsonl`.
    """

    model: Any
    variables: dict[str, dict[str, np.ndarray]]
    masks: dict[str, np.ndarray]
    input_shape: tuple[int, int, int]
    config: dict[str, Any]
    record: dict[str, Any]


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: cannot read {path!r} ({e})") from None


def _records(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "rounds.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"--workdir: {workdir!r} has no rounds.jsonl (no finished stage yet)")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--workdir: cannot read {path!r} ({e})") from None


def stage_record(workdir: str, round_: int | None, arm: str) -> dict[str, Any]:
    """The `rounds.jsonl` record of `(round_, arm)` (`round_=None`: the run's last round).

    Raises:
      ValueError: naming `--round`/`--arm` and the stages the run has, when it has not that one.
    """
    records = _records(workdir)
    have = [(int(r["round"]), r["arm"]) for r in records]
    if round_ is None:
        round_ = max(r for r, _ in have)
    if (round_, arm) in have:
        return records[have.index((round_, arm))]
    rounds = sorted({r for r, _ in have})
    arms = sorted({a for _, a in have})
    raise ValueError(
        f"--round/--arm: the run in {workdir!r} has no stage round {round_} {arm}; it has rounds"
        f" {rounds[0]}-{rounds[-1]} of arms {', '.join(arms)} (round 0 is 'dense')"
    )


def _stage_file(workdir: str, folder: str, stem: str) -> str:
    path = os.path.join(workdir, folder, f"{stem}.npz")
    if not os.path.isfile(path):
        hint = (
            ""
            if folder == "masks"
            else " (runs with --nosave_weights, or made before"
            " variables/ was written, cannot be exported; rerun the stage)"
        )
        raise ValueError(f"--workdir: {workdir!r} has no {folder}/{stem}.npz{hint}")
    return path


def _npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an `.npz`, or a one-line ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"--workdir: {path!r} is not a readable .npz file ({e})") from None


def _rest(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`variables/` file -> (params, batch_stats), flat."""
    flat = _npz(path)
    params = {k[len("params/") :]: v for k, v in flat.items() if k.startswith("params/")}
    stats = {k[len("batch_stats/") :]: v for k, v in flat.items() if k.startswith("batch_stats/")}
    return params, stats


def load_run_ticket(workdir: str, round_: int | None = None, arm: str = "uticket") -> RunTicket:
    """The model, trained variables and masks of one stage of a run.

    Args:
      workdir: the run's `--workdir`.
      round_: the round (None: the run's last round).
      arm: "lth", "uticket", or "dense" (round 0).

    Returns:
      The `RunTicket`.

    Raises:
      ValueError: not a run directory, a stage the run does not have, or missing files.
    """
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"--workdir: {workdir!r} is not a run directory (no config.json)")
    config = _read_json(os.path.join(workdir, "config.json"), "--workdir")
    record = stage_record(workdir, round_, arm)
    stem = f"round{int(record['round']):02d}_{record['arm']}"
    masks = load_mask_file(_stage_file(workdir, "masks", stem))
    kernels = _npz(_stage_file(workdir, "weights", stem))
    params, stats = _rest(_stage_file(workdir, "variables", stem))
    params = {**kernels, **params}
    if config.get("dataset") not in IMAGE_SHAPES:
        raise ValueError(
            f"--workdir: config.json names an unknown dataset {config.get('dataset')!r}"
        )
    dense = [v for k, v in params.items() if k.endswith("/kernel") and v.ndim == 2]
    if not dense:
        raise ValueError(f"--workdir: {stem} has no classifier kernel")
    model = models.get_model(
        config["arch"], num_classes=int(dense[-1].shape[1]), timesteps=int(record["timesteps"])
    )
    variables = {"params": params, "batch_stats": stats}
    return RunTicket(model, variables, masks, IMAGE_SHAPES[config["dataset"]], config, record)


def export_run_ticket(
    workdir: str,
    round_: int | None = None,
    arm: str = "uticket",
    *,
    pooling: str = "if",
    firing: str = "strict",
) -> nir.NIRGraph:
    """One stage of a run as a NIR graph (`export_nir` with the run's PE array and records;
    `pooling` and `firing` as `export_nir` takes them).

    The graph's metadata adds the run's arch, dataset, round, arm, test accuracy and sparsity.
    """
    t = load_run_ticket(workdir, round_, arm)
    cfg, rec = t.config, t.record
    meta = {
        "arch": cfg["arch"],
        "dataset": cfg["dataset"],
        "round": int(rec["round"]),
        "arm": rec["arm"],
        "test_accuracy": float(rec["test_accuracy"]),
        "sparsity": float(rec["sparsity"]),
    }
    return export_nir(
        t.model,
        t.variables,
        t.masks,
        input_shape=t.input_shape,
        n_pe=int(cfg["n_pe"]),
        mapping=cfg["mapping"],
        pooling=pooling,
        firing=firing,
        skip_first=bool(cfg.get("skip_first_layer", True)),
        metadata=meta,
    )


def record_run_trace(
    ticket: RunTicket, images: np.ndarray, *, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """The spike trace of one stage of a run: its analysed layers' inputs over `images`.

    Recorded as the pipeline records it for its spike-driven figures: the run's model at the
    run's full `T` (`config.json`'s `timesteps`, the `T` every round is costed at), the analysed
    layers among its prunable ones (`models.analysed_paths` with the run's `skip_first_layer`).

    Args:
      ticket: from `load_run_ticket`.
      images: `[N, H, W, C]` images (e.g. the first N of the run's test set).
      batch_size: images per forward pass.

    Returns:
      `{kernel path: bool [T, N, H, W, C_in] or [T, N, C_in]}` (`models.record_inputs`).
    """
    from flax import traverse_util

    model = ticket.model.clone(
        timesteps=int(ticket.config.get("timesteps", ticket.model.timesteps))
    )
    variables = {
        k: traverse_util.unflatten_dict(dict(v), sep="/") for k, v in ticket.variables.items()
    }
    layers = models.analysed_paths(
        model,
        ticket.input_shape,
        among=ticket.masks,
        skip_first=bool(ticket.config.get("skip_first_layer", True)),
    )
    return models.record_inputs(model, variables, images, layers=layers, batch_size=batch_size)


def write_nir(path: str, graph: nir.NIRGraph) -> None:
    """Writes `graph` to `path` atomically (a reader never sees a half-written file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        nir.write(tmp, graph)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


__all__ = [
    "IMAGE_SHAPES",
    "RunTicket",
    "export_run_ticket",
    "load_run_ticket",
    "record_run_trace",
    "stage_record",
    "write_nir",
]
