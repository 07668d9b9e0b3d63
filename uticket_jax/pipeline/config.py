"""What defines a run of the pipeline: `LTHConfig` (validated), its stages (`Stage`, `stage_at`).

`LTHConfig` has no defaults: a run's settings are always complete, and every field is set on
purpose by a preset (`uticket_jax.configs.get(name)`, one module per preset family) and then
overridden field by field (`dataclasses.replace`, or the launcher's flags). Each field's
`metadata["help"]` is its flag's help text: `experiments/lth.py` makes one flag per field, so a
new field needs one line here and one in each preset, nothing in the launchers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from uticket_jax import checks, models, workload
from uticket_jax import data as data_lib
from uticket_jax.hardware import energy as hw_energy
from uticket_jax.sparsity import pruning
from uticket_jax.training import step as train_lib

ARMS = ("lth", "uticket")
PRUNABLE = ("conv_dense", "conv")
RETRAIN = ("full", "rest")


def _setting(help_text: str) -> Any:
    """A config field (no default) whose flag help is `help_text`."""
    return dataclasses.field(metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class LTHConfig:
    """Everything that defines a run (a preset, then the launcher's flags); see `validate`."""

    dataset: str = _setting(f"Dataset: one of {', '.join(data_lib.DATASET_NAMES)}.")
    train_subset: int = _setting(
        "Train on a fixed, class-stratified subset of this many training images (0: all of"
        " them); the test set is always the whole one."
    )
    arch: str = _setting(f"Model: one of {', '.join(models.MODEL_NAMES)}.")
    timesteps: int = _setting("Simulation steps T.")
    epochs: int = _setting(
        "Epochs of the schedule: round 0 trains all of them, a pruning round as --retrain says."
    )
    batch_size: int = _setting("Global batch size.")
    optimizer: str = _setting(f"Optimizer: one of {', '.join(train_lib.OPTIMIZERS)}.")
    lr: float = _setting("Peak learning rate.")
    momentum: float = _setting("SGD momentum.")
    weight_decay: float = _setting("L2 weight decay.")
    schedule: str = _setting(f"Learning-rate schedule: one of {', '.join(train_lib.SCHEDULES)}.")
    rounds: int = _setting("Pruning rounds after the dense round 0.")
    prune_percent: float = _setting("Percent of the surviving weights pruned per round.")
    scope: str = _setting(f"Magnitude-pruning scope: one of {', '.join(pruning.SCOPES)}.")
    prunable: str = _setting("conv_dense (every conv and dense kernel) or conv.")
    rewind_epoch: int = _setting("Rewind point (epochs of round 0; 0 = init).")
    retrain: str = _setting(
        "How a pruning round retrains from the rewind point: full (all --epochs, a fresh"
        " schedule: the u-Ticket authors' code) or rest (epochs rewind_epoch..epochs-1, the"
        " schedule rewound with the weights: Frankle et al. 2020)."
    )
    arms: tuple[str, ...] = _setting("Arms to run, a comma list: lth,uticket or one of them.")
    n_pe: int = _setting("PEs per group of the simulated array.")
    mapping: str = _setting(f"PE mapping: one of {', '.join(workload.MAPPINGS)}.")
    energy_model: str = _setting(
        f"Energy model of the hardware figures: one of {', '.join(hw_energy.ENERGY_MODELS)}."
    )
    policy: str = _setting(f"Rebalance policy: one of {', '.join(workload.POLICIES)}.")
    target: str = _setting(
        f"Rebalance target: one of {', '.join(workload.REBALANCE_TARGETS)} (expected_work weighs"
        " each weight by its input channel's firing rate, measured on the arm's previous stage)."
    )
    et: bool = _setting("Early-time ticket: search rounds with a smaller T.")
    et_candidates: tuple[int, ...] = _setting("Candidate T values of the early-time ticket.")
    et_threshold: float = _setting("Normalized KL threshold of the early-time ticket.")
    skip_first_layer: bool = _setting("Leave the first conv out of the hardware figures.")
    seed: int = _setting("Seed of init, data order, augmentation and rebalancing.")
    eval_batch_size: int = _setting("Rows per evaluation batch.")
    eval_every: int = _setting(
        "Evaluate on the test set after every n-th epoch of a stage and always after its last"
        " (1: every epoch); the stage's accuracy and spike rates come from the last."
    )
    trace_images: int = _setting(
        "Test images (the first N) whose analysed-layer inputs are recorded after each stage for"
        " the spike-driven hardware figures (spike_* columns: PEs skip zero inputs); 0: off."
    )

    def validate(self) -> None:
        """Raises ValueError naming the field (as its flag) when a value is out of range.

        Every number is checked against the range its consumer holds (`uticket_jax.checks`):
        counts are int32, the seed 32 bits, floats finite; nothing is wrapped or found out late.
        """
        checks.check_run_sizes(
            "--",
            timesteps=self.timesteps,
            epochs=self.epochs,
            batch_size=self.batch_size,
            rounds=self.rounds,
            eval_batch_size=self.eval_batch_size,
            eval_every=self.eval_every,
        )
        checks.check_int("--n_pe", self.n_pe, minimum=1, maximum=checks.MAX_N_PE)
        checks.check_int("--train_subset", self.train_subset, minimum=0)
        checks.check_int("--trace_images", self.trace_images, minimum=0)
        checks.check_seed_value(self.seed, "--")
        checks.check_optimizer_settings(
            lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, prefix="--"
        )
        checks.check_float(
            "--prune_percent",
            self.prune_percent,
            minimum=0.0,
            maximum=100.0,
            open_min=True,
            open_max=True,
        )
        checks.check_int("--rewind_epoch", self.rewind_epoch, minimum=0)
        if not self.rewind_epoch < self.epochs:
            raise ValueError(
                f"--rewind_epoch: must be in [0, --epochs={self.epochs}), got {self.rewind_epoch}"
            )
        if not self.arms or any(a not in ARMS for a in self.arms):
            raise ValueError(
                f"--arms: {','.join(map(str, self.arms))!r}; allowed: lth, uticket, or both"
            )
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"--arms: {','.join(self.arms)!r} names an arm twice")
        if self.prunable not in PRUNABLE:
            raise ValueError(f"--prunable: unknown {self.prunable!r}; allowed: {PRUNABLE}")
        checks.check_int_tuple("--et_candidates", self.et_candidates)
        if self.et and not self.et_candidates:
            raise ValueError("--et_candidates: need positive timesteps")
        checks.check_float("--et_threshold", self.et_threshold, minimum=0.0, open_min=True)
        for name in ("et", "skip_first_layer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"--{name}: must be true or false, got {getattr(self, name)!r}")
        self._check_choices()

    def _check_choices(self) -> None:
        """Raises ValueError naming the flag when a named setting is not one of its registry's."""
        choices = {
            "dataset": data_lib.DATASET_NAMES,
            "arch": models.MODEL_NAMES,
            "optimizer": train_lib.OPTIMIZERS,
            "schedule": train_lib.SCHEDULES,
            "scope": pruning.SCOPES,
            "mapping": tuple(workload.MAPPINGS),
            "energy_model": tuple(hw_energy.ENERGY_MODELS),
            "policy": workload.POLICIES,
            "target": workload.REBALANCE_TARGETS,
            "retrain": RETRAIN,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{name}: unknown {getattr(self, name)!r}; allowed: {', '.join(allowed)}"
                )

    def stages(self) -> list[tuple[int, str]]:
        """`(round, arm)` of every stage in run order; round 0's arm is `dense`."""
        return [(0, "dense")] + [(r, a) for r in range(1, self.rounds + 1) for a in self.arms]

    def replace(self, **changes: Any) -> LTHConfig:
        """A copy with `changes` applied (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


class Stage(NamedTuple):
    """One stage of the run: its index, round, arm, the timesteps it trains with, its epochs.

    A stage trains epochs `first_epoch .. epochs-1` of the schedule: all of them, except a
    pruning round with `retrain="rest"`, which starts at `rewind_epoch`.
    """

    index: int
    round: int
    arm: str
    timesteps: int
    first_epoch: int


def stage_at(cfg: LTHConfig, index: int, et_timesteps: int | None) -> Stage:
    """The stage at `index`; search rounds (1..R-1) use the early-time `T` when one was chosen.

    Args:
      cfg: the run's configuration.
      index: position in `cfg.stages()`.
      et_timesteps: the early-time ticket's `T`, or None when none was chosen.

    Returns:
      The `Stage`.
    """
    rnd, arm = cfg.stages()[index]
    search = et_timesteps is not None and 0 < rnd < cfg.rounds
    first = cfg.rewind_epoch if cfg.retrain == "rest" and arm != "dense" else 0
    return Stage(index, rnd, arm, et_timesteps if search else cfg.timesteps, first)
