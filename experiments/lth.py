r"""The main job: lottery-ticket pruning of an SNN with and without u-Ticket, side by side.

  python experiments/lth.py                       # digits preset, both arms, ~minutes on 2 cores
  python experiments/lth.py --preset=vgg16_cifar10 --data_dir=~/data/cifar --workdir=runs/vgg
  python experiments/lth.py --workdir=runs/lth_digits --resume   # continue a killed run
  python experiments/lth.py --preset=fmnist --workdir=runs/fmnist  # Fashion-MNIST (Debian pkg)

Writes into --workdir: config.json, rounds.jsonl (one line per round and arm), masks/ (the
project's .npz mask files, one per round and arm, readable by experiments/sweep.py and
experiments/rebalance.py), weights/ (the trained kernels, same keys; --nosave_weights skips them),
spike_rates/ (per-layer input spike rates, for sweep.py --spike_rates), summary.json,
summary.csv, the plots (*.png) and checkpoints/ (orbax).
Every flag left unset takes the preset's value (see uticket_jax/presets.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
from absl import flags

from uticket_jax import cli, data, hostmem, lth, presets, report, results
from uticket_jax.checkpoint import Checkpointer
from uticket_jax.masks import save_mask_file, save_npz_atomic

_F = lth.LTHConfig()
_PRESET = flags.DEFINE_string("preset", "digits", f"One of {', '.join(presets.PRESETS)}.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Dataset files (needed for CIFAR and SVHN; Fashion-MNIST defaults to the Debian package's"
    " /usr/share/datasets/fashion-mnist).",
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/lth_digits", "Output directory.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its checkpoint.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Start afresh; earlier results move to WORKDIR/replaced-<time>/."
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
_SAVE_WEIGHTS = flags.DEFINE_bool(
    "save_weights", True, "Write each stage's trained kernels to WORKDIR/weights/ (.npz)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host runs)."
)

# Run settings: None means "the preset's value".
flags.DEFINE_string("dataset", None, f"One of {', '.join(data.DATASET_NAMES)}.")
flags.DEFINE_integer(
    "train_subset", None, "Train on a fixed, class-stratified subset of N images (0: all)."
)
flags.DEFINE_string("arch", None, "digits_snn, vgg16, resnet19 or fmnist_snn.")
flags.DEFINE_integer("timesteps", None, "Simulation steps T.")
flags.DEFINE_integer("epochs", None, "Training epochs per round.")
flags.DEFINE_integer("batch_size", None, "Global batch size.")
flags.DEFINE_string("optimizer", None, "sgd or adam.")
flags.DEFINE_float("lr", None, "Peak learning rate.")
flags.DEFINE_float("momentum", None, "SGD momentum.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay.")
flags.DEFINE_string("schedule", None, "cosine, step or constant.")
flags.DEFINE_integer("rounds", None, "Pruning rounds after the dense round 0.")
flags.DEFINE_float("prune_percent", None, "Percent of the surviving weights pruned per round.")
flags.DEFINE_string("scope", None, "global or layer magnitude pruning.")
flags.DEFINE_string("prunable", None, "conv_dense (every conv and dense kernel) or conv.")
flags.DEFINE_integer("rewind_epoch", None, "Rewind point (epochs of round 0; 0 = init).")
flags.DEFINE_list("arms", None, "Arms to run: lth,uticket (default both).")
flags.DEFINE_integer("n_pe", None, "PEs per group of the simulated array.")
flags.DEFINE_string("mapping", None, "output_channel or input_split.")
flags.DEFINE_string("policy", None, "Rebalance policy: magnitude or random.")
flags.DEFINE_string("target", None, "Rebalance target: ceil_mean or keep_count.")
flags.DEFINE_bool("et", None, "Early-time ticket: search rounds with a smaller T.")
flags.DEFINE_list("et_candidates", None, "Candidate T values of the early-time ticket.")
flags.DEFINE_float("et_threshold", None, "Normalized KL threshold of the early-time ticket.")
flags.DEFINE_bool("skip_first_layer", None, "Leave the first conv out of the hardware figures.")
flags.DEFINE_integer("seed", None, "Seed of init, data order, augmentation and rebalancing.")
flags.DEFINE_integer("eval_batch_size", None, "Rows per evaluation batch.")

FLAGS = flags.FLAGS
_CONVERT = {"arms": tuple, "et_candidates": lambda v: tuple(int(x) for x in v)}


def build_config() -> lth.LTHConfig:
    """Preset values, then every flag the user set; validated."""
    values = presets.get_preset(_PRESET.value)
    for field in dataclasses.fields(lth.LTHConfig):
        v = FLAGS[field.name].value
        if v is not None:
            try:
                values[field.name] = _CONVERT.get(field.name, lambda x: x)(v)
            except ValueError:
                raise ValueError(f"--{field.name}: expected integers, got {v}") from None
    cfg = lth.LTHConfig(**values)
    cfg.validate()
    return cfg


def _config_json(cfg: lth.LTHConfig) -> dict:
    return {"preset": _PRESET.value, **json.loads(json.dumps(dataclasses.asdict(cfg)))}


def _check_resume(workdir: str, cfg: lth.LTHConfig) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"--resume: {workdir} has no config.json; nothing to resume")
    with open(path) as f:
        stored = json.load(f)
    stored.pop("preset", None)
    now = _config_json(cfg)
    now.pop("preset")
    # A run written before a field existed ran with its default.
    defaults = json.loads(json.dumps(dataclasses.asdict(lth.LTHConfig())))
    stored = {**{k: defaults[k] for k in now if k not in stored}, **stored}
    diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"--resume: flags differ from the run in {workdir} ({', '.join(diff)}); pass the same"
            " flags, or use another --workdir"
        )


def main() -> None:
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    cfg = build_config()
    if _RESUME.value and _OVERWRITE.value:
        raise ValueError("--resume and --overwrite: choose one")
    dataset = data.load_dataset(cfg.dataset, data_dir=_DATA_DIR.value)
    if dataset.source is not None:
        print(f"{dataset.name}: read from {dataset.source}")
    data.check_train_subset(cfg.train_subset, dataset)  # before anything is written
    workdir = results.prepare_workdir(
        _WORKDIR.value, overwrite=_OVERWRITE.value, resume=_RESUME.value
    )
    if _RESUME.value:
        _check_resume(workdir, cfg)
    else:
        moved = results.set_aside(workdir)
        if moved:
            print(f"--overwrite: moved the earlier results to {moved}")
        results.write_json(os.path.join(workdir, "config.json"), _config_json(cfg))
    records = _run(cfg, dataset, workdir)
    _finish(records, workdir)


def _run(cfg, dataset, workdir):
    def on_stage_end(record, masks_flat, weights_flat, records):
        stem = f"round{record['round']:02d}_{record['arm']}"
        save_mask_file(os.path.join(workdir, "masks", f"{stem}.npz"), masks_flat)
        if _SAVE_WEIGHTS.value:
            save_npz_atomic(os.path.join(workdir, "weights", f"{stem}.npz"), weights_flat)
        results.write_json(
            os.path.join(workdir, "spike_rates", f"{stem}.json"), record["spike_rates"]
        )
        lines = "".join(json.dumps(results.jsonable(r)) + "\n" for r in records)
        results.write_text_atomic(os.path.join(workdir, "rounds.jsonl"), lines)

    start = time.perf_counter()
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        records = lth.run(
            cfg,
            dataset,
            checkpointer=ckpt,
            on_stage_end=on_stage_end,
            progress=_PROGRESS.value,
        )
    print(f"run finished in {time.perf_counter() - start:.1f} s (this process)")
    return records


def _finish(records, workdir):
    rows = report.summary_rows(records)
    pairs = report.paired_rows(rows)
    results.write_json(os.path.join(workdir, "summary.json"), {"rows": rows, "pairs": pairs})
    results.write_csv(os.path.join(workdir, "summary.csv"), rows)
    plots = report.plot_run(rows, workdir)
    print(report.format_table(rows))
    print(
        f"wrote {workdir}: config.json rounds.jsonl summary.json summary.csv masks/ weights/"
        " spike_rates/ checkpoints/"
    )
    print("plots: " + " ".join(os.path.basename(p) for p in plots))


if __name__ == "__main__":
    hostmem.reexec_with_hugepages()  # XLA:CPU's per-step buffers on huge pages
    cli.run(main, name="lth.py")
