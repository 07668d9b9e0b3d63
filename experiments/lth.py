r"""The main job: lottery-ticket pruning of an SNN with and without u-Ticket, side by side.

  python experiments/lth.py                       # digits preset, both arms, ~minutes on 2 cores
  python experiments/lth.py --preset=vgg16_cifar10 --data_dir=~/data/cifar --workdir=runs/vgg
  python experiments/lth.py --workdir=runs/lth_digits --resume   # continue a killed run
  python experiments/lth.py --preset=fmnist   # Fashion-MNIST (Debian pkg), writes runs/lth_fmnist

Writes into --workdir: config.json, machine.json (the CPU, library versions and devices of each
start of the run; figures are bit-identical only on the same kind of machine), rounds.jsonl (one
line per round and arm), masks/ (the project's .npz mask files, one per round and arm, readable by
experiments/sweep.py and experiments/rebalance.py), weights/ (the trained kernels, same keys) and
variables/ (the rest of the trained variables: BN statistics, scales and shifts, biases; with
weights/ the complete model that experiments/export.py writes as NIR; --nosave_weights skips
both), spike_rates/ (per-layer input spike rates, for sweep.py
--spike_rates), summary.json, summary.csv, the plots (*.png) and checkpoints/ (orbax).
The run's settings are the fields of `LTHConfig` (uticket_jax/pipeline/config.py), one flag each,
generated from the field (name, type, help); every flag left unset takes the preset's value (see
uticket_jax/configs/).
"""

from __future__ import annotations

from uticket_jax.launch import signals

signals.install("lth.py", __name__)  # before the heavy imports: a Ctrl-C there is one line

import contextlib
import dataclasses
import json
import os
import time

from absl import flags

from uticket_jax import checks, configs, data, files
from uticket_jax import pipeline as lth
from uticket_jax.launch import cli, distributed, hostmem, lock, machine, report, results
from uticket_jax.launch import workdir as workdirs
from uticket_jax.sparsity.masks import save_mask_file, save_npz_atomic
from uticket_jax.training import loop
from uticket_jax.training.checkpoint import Checkpointer

_PRESET = flags.DEFINE_string("preset", "digits", f"One of {', '.join(configs.NAMES)}.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Dataset files (needed for CIFAR and SVHN; Fashion-MNIST defaults to the Debian package's"
    " /usr/share/datasets/fashion-mnist).",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/lth_PRESET).")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its checkpoint.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Start afresh; earlier results move to WORKDIR/replaced-<time>/."
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
_SAVE_WEIGHTS = flags.DEFINE_bool(
    "save_weights",
    True,
    "Write each stage's trained kernels to WORKDIR/weights/ and the rest of its variables (BN"
    " statistics, biases) to WORKDIR/variables/ (.npz).",
)
# One flag per LTHConfig field (name, type and help from the field); unset: the preset's value.
_SETTINGS = cli.define_config_flags(lth.LTHConfig, note="(default: the preset's value)")


def build_config() -> lth.LTHConfig:
    """The preset, then every flag the user set; validated."""
    cfg = cli.config_from_flags(configs.get(_PRESET.value), _SETTINGS)
    cfg.validate()
    return cfg


def _config_json(cfg: lth.LTHConfig) -> dict:
    return {"preset": _PRESET.value, **json.loads(json.dumps(dataclasses.asdict(cfg)))}


def _workdir() -> str:
    """`--workdir`, or `runs/lth_<preset>` when it is not given."""
    return _WORKDIR.value or os.path.join("runs", f"lth_{_PRESET.value}")


def _check_resume(path: str, cfg: lth.LTHConfig) -> None:
    stored = files.read_json(os.path.join(path, "config.json"), "--resume")
    if not isinstance(stored, dict):
        raise ValueError(f"--resume: {path}/config.json is not a run's configuration")
    stored.pop("preset", None)
    now = _config_json(cfg)
    now.pop("preset")
    diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"--resume: flags differ from the run in {path} ({', '.join(diff)}); pass the same"
            " flags, or use another --workdir"
        )


# What a SIGINT/SIGTERM handler needs to say where the run stopped (set as the run goes).
_RUN: dict = {"cfg": None, "workdir": None, "checkpointer": None}


def main() -> None:
    distributed.initialize()
    cfg = build_config()
    _RUN["cfg"] = cfg
    if _RESUME.value and _OVERWRITE.value:
        raise ValueError("--resume and --overwrite: choose one")
    # Every process must run the same configuration (checked on all of them at once).
    distributed.check_same_settings(
        {**_config_json(cfg), "resume": _RESUME.value, "workdir": _workdir()}
    )
    dataset = data.load_dataset(cfg.dataset, data_dir=_DATA_DIR.value)
    if dataset.source is not None and distributed.is_writer():
        print(f"{dataset.name}: read from {dataset.source}")
    # Checked before the work directory is touched, so a bad batch size or subset writes nothing.
    data.check_train_subset(cfg.train_subset, dataset)
    n_train = cfg.train_subset or dataset.train_images.shape[0]
    loop.check_batch_size(cfg.batch_size, n_train, loop.data_parallel(), "--batch_size")
    checks.check_total_steps(cfg.epochs, data.num_batches(n_train, cfg.batch_size), "--")
    path, held = distributed.together(lambda: _prepare(cfg))
    try:
        records = _run(cfg, dataset, path)
        if distributed.is_writer():
            _finish(records, path)
    except files.WriteError as e:  # a full disk: the run continues from its checkpoint
        raise files.WriteError(
            e.errno, f"{e}; make room, then resume with: {signals.resume_command()}"
        ) from None
    finally:
        if held is not None:
            held.release()


def _prepare(cfg: lth.LTHConfig) -> tuple[str, lock.WorkdirLock | None]:
    """The work directory, checked (on process 0 created, locked, with config.json) and lock."""
    path = os.path.abspath(_workdir())
    if not distributed.is_writer():
        if _RESUME.value:
            _check_resume(path, cfg)
        _RUN["workdir"] = path
        return path, None
    path, _ = workdirs.prepare(
        path, workdirs.LTH, flag="--workdir", overwrite=_OVERWRITE.value, resume=_RESUME.value
    )
    # Everything that can refuse a resume is read before the lock file is made or written.
    if _RESUME.value:
        _check_resume(path, cfg)
    starts = _machine_starts(path) if _RESUME.value else []
    held = lock.acquire(path)  # a second run here, fresh or --resume, is refused
    try:
        if held.taken_over():
            print(f"--workdir: {held.taken_over()}")
        if not _RESUME.value:
            moved = workdirs.set_aside(path)
            if moved:
                print(f"--overwrite: moved the earlier results to {moved}")
            results.write_json(os.path.join(path, "config.json"), _config_json(cfg))
        _record_machine(path, starts)
    except BaseException:
        held.release()
        raise
    _RUN["workdir"] = path
    return path, held


def _on_stop(stop: signals.Stopped) -> str:
    """Where the run stopped and the command that continues it (after "stopped by SIG...")."""
    if _RUN["workdir"] is None:
        return f" before the run started; nothing was written: rerun with: {_rerun()}"
    ckpt, cfg = _RUN["checkpointer"], _RUN["cfg"]
    meta = ckpt.last_meta if ckpt is not None else None
    if meta is None:
        where = "before its first checkpoint"
    else:
        prog = lth.Progress.from_json(meta)
        stages = cfg.stages()
        if prog.stage >= len(stages):
            where = f"after its last stage (checkpoint {prog.saves}), before the summary"
        else:
            rnd, arm = stages[prog.stage]
            done = f"before round {rnd} ({arm})"
            if prog.epoch:
                done = f"after {prog.epoch} epoch(s) of round {rnd} ({arm})"
            where = f"at checkpoint {prog.saves}, {done}"
    return f" {where}; resume with: {signals.resume_command()}"


def _rerun() -> str:
    return signals.resume_command(drop=(), add=())


def _machine_starts(path: str) -> list[dict]:
    """The machine entries of the run's earlier starts (WORKDIR/machine.json; none: [])."""
    path = os.path.join(path, "machine.json")
    if not os.path.exists(path):
        return []
    try:
        starts = files.read_json(path, "--resume")
    except ValueError:
        starts = None
    if not isinstance(starts, list) or not all(isinstance(s, dict) for s in starts):
        raise ValueError(
            f"--resume: {path} is not a list of machine entries; move it away to resume"
        )
    return starts


def _record_machine(workdir: str, starts: list[dict]) -> None:
    """Appends this start's `machine.describe()` to WORKDIR/machine.json and prints it.

    A resumed run also says which facts differ from the run's first start: its figures from
    here on are then not bit-identical to an uninterrupted run's.
    """
    now = machine.describe(resume=_RESUME.value)
    print(f"machine: {machine.summary(now)}")
    if starts:
        differ = machine.differences(starts[0], now)
        if differ:
            print(
                f"--resume: this machine differs from the run's first start ({', '.join(differ)});"
                " the stages run from here on may differ from an uninterrupted run in their last"
                " digits"
            )
    results.write_json(os.path.join(workdir, "machine.json"), [*starts, now])


@contextlib.contextmanager
def _saving():
    """A checkpoint save: SIGINT/SIGTERM held until it is complete (orbax writes from other
    threads), orbax's own error logs off stderr (a failed save comes back as one line)."""
    with signals.deferred(), cli.quiet_logs():
        yield


def _run(cfg, dataset, workdir):
    def on_stage_end(record, masks_flat, weights_flat, records, rest_flat):
        stem = f"round{record.round:02d}_{record.arm}"
        save_mask_file(os.path.join(workdir, "masks", f"{stem}.npz"), masks_flat)
        if _SAVE_WEIGHTS.value:
            save_npz_atomic(os.path.join(workdir, "weights", f"{stem}.npz"), weights_flat)
            save_npz_atomic(os.path.join(workdir, "variables", f"{stem}.npz"), rest_flat)
        results.write_json(os.path.join(workdir, "spike_rates", f"{stem}.json"), record.spike_rates)
        lines = "".join(json.dumps(results.jsonable(r.to_json())) + "\n" for r in records)
        results.write_text_atomic(os.path.join(workdir, "rounds.jsonl"), lines)

    start = time.perf_counter()
    writer = distributed.is_writer()  # process 0 alone writes files, logs and progress bars
    with Checkpointer(os.path.join(workdir, "checkpoints"), guard=_saving) as ckpt:
        _RUN["checkpointer"] = ckpt
        records = lth.run(
            cfg,
            dataset,
            checkpointer=ckpt,
            on_stage_end=on_stage_end if writer else None,
            progress=_PROGRESS.value and writer,
            log=print if writer else lambda line: None,
        )
    if writer:
        print(f"run finished in {time.perf_counter() - start:.1f} s (this process)")
    return records


def _finish(records, workdir):
    rows = report.summary_rows(records)
    pairs = report.paired_rows(rows)
    results.write_json(os.path.join(workdir, "summary.json"), {"rows": rows, "pairs": pairs})
    results.write_csv(os.path.join(workdir, "summary.csv"), rows, report.csv_columns(rows))
    plots = report.plot_run(rows, workdir)
    print(report.format_table(rows))
    print(
        f"wrote {workdir}: config.json rounds.jsonl summary.json summary.csv masks/ weights/"
        " variables/ spike_rates/ checkpoints/"
    )
    print("plots: " + " ".join(os.path.basename(p) for p in plots))


if __name__ == "__main__":
    hostmem.reexec_with_hugepages()  # XLA:CPU's per-step buffers on huge pages
    cli.run(main, name="lth.py", on_stop=_on_stop)
