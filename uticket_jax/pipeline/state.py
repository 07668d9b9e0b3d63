"""The pipeline's state and records, typed: arrays in NamedTuples (checkpointed by orbax as a
pytree), progress and results in frozen dataclasses (checkpointed as JSON, written to
`rounds.jsonl`).

`RunState` holds arrays only: the train state of the stage in progress, the rewind point, and per
arm its latest masks and trained params. `Progress` holds where the run stands and what it
produced: stage and epoch counters, the stage's epoch history, the `StageRecord`s so far, the
early-time ticket's choice, the number of saves. Each record type has `to_json` (the same keys
and values as the files users read) and `from_json` (its exact inverse, for resuming).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

Tree = Any


class TrainArrays(NamedTuple):
    """The arrays of a `TrainState` (its model and optimizer are rebuilt from the config)."""

    step: Any
    params: Tree
    batch_stats: Tree
    opt_state: Tree

    @classmethod
    def of(cls, state: Any) -> TrainArrays:
        """The arrays of train state `state`."""
        return cls(state.step, state.params, state.batch_stats, state.opt_state)


class RewindPoint(NamedTuple):
    """The weights and BN statistics every pruning round starts from."""

    params: Tree
    batch_stats: Tree


class ArmState(NamedTuple):
    """An arm's latest round: its flat masks (network order), the params trained under them, and
    the firing rate of every input channel of every prunable layer measured on that trained net
    in its stage's last evaluation (`{path: [c_in] float32}`, all ones before any is measured;
    the costs of the `expected_work` rebalance target)."""

    masks: dict[str, Any]
    trained: Tree
    rates: dict[str, Any]


class RunState(NamedTuple):
    """Everything array-valued a resumed run needs."""

    train: TrainArrays
    rewind: RewindPoint
    arms: dict[str, ArmState]


@dataclasses.dataclass(frozen=True)
class RebalanceCounts:
    """Totals over the layers of one u-Ticket rebalance."""

    regrown: int
    dropped: int
    capped: int

    def to_json(self) -> dict[str, int]:
        """`{"regrown", "dropped", "capped"}`."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class HardwareFigures:
    """The simulator's figures of a stage at the run's hardware under its energy model, each the
    simulator's JSON `F` dict: plain, activity-aware (accumulates scaled by the input spike
    rates), plain per layer, and spike-driven (PEs skip zero inputs, priced from the inputs
    recorded on the first `images` test images: `{"images", "network": F, "layers": [...]}`;
    None when the run records no trace)."""

    energy_model: str
    plain: dict[str, Any]
    activity_aware: dict[str, Any]
    layers: list[dict[str, Any]]
    spike_driven: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """`{"energy_model", "network": plain, "activity_aware", "layers", "spike_driven"}` (the
        keys of `rounds.jsonl`)."""
        return {
            "energy_model": self.energy_model,
            "network": self.plain,
            "activity_aware": self.activity_aware,
            "layers": self.layers,
            "spike_driven": self.spike_driven,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HardwareFigures:
        """The inverse of `to_json` (records written before spike-driven figures: None)."""
        return cls(
            energy_model=d["energy_model"],
            plain=d["network"],
            activity_aware=d["activity_aware"],
            layers=d["layers"],
            spike_driven=d.get("spike_driven"),
        )


@dataclasses.dataclass(frozen=True)
class ETChoice:
    """The early-time ticket's choice: the `T` of the search rounds and the divergences seen."""

    timesteps: int
    normalized_kl: dict[int, float]
    threshold: float

    def to_json(self) -> dict[str, Any]:
        """`{"timesteps", "normalized_kl": {T: value}, "threshold"}`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ETChoice:
        """The inverse of `to_json` (JSON's string keys back to integers)."""
        kl = {int(k): float(v) for k, v in d["normalized_kl"].items()}
        return cls(timesteps=int(d["timesteps"]), normalized_kl=kl, threshold=d["threshold"])


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """The result of one stage (a line of `rounds.jsonl`)."""

    round: int
    arm: str
    timesteps: int
    train_images: int
    sparsity: float
    layer_sparsity: dict[str, float]
    test_accuracy: float
    best_test_accuracy: float
    train_loss: float
    spike_rates: dict[str, float]
    rebalance: RebalanceCounts | None
    hardware: HardwareFigures
    et: ETChoice | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The record as `rounds.jsonl` holds it (nested records as their JSON)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["rebalance"] = None if self.rebalance is None else self.rebalance.to_json()
        d["hardware"] = self.hardware.to_json()
        d["et"] = None if self.et is None else self.et.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StageRecord:
        """The inverse of `to_json`."""
        return cls(
            **{
                **d,
                "rebalance": None if d["rebalance"] is None else RebalanceCounts(**d["rebalance"]),
                "hardware": HardwareFigures.from_json(d["hardware"]),
                "et": None if d["et"] is None else ETChoice.from_json(d["et"]),
            }
        )


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands (the checkpoint's JSON part) and what it has produced."""

    stage: int = 0
    epoch: int = 0  # epochs the current stage has trained (its schedule epoch: + first_epoch)
    history: tuple[dict[str, float], ...] = ()
    records: tuple[StageRecord, ...] = ()
    et: ETChoice | None = None
    saves: int = 0
    stage_seconds: float = 0.0

    def replace(self, **changes: Any) -> Progress:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {
            "stage": self.stage,
            "epoch": self.epoch,
            "history": list(self.history),
            "records": [r.to_json() for r in self.records],
            "et": None if self.et is None else self.et.to_json(),
            "saves": self.saves,
            "stage_seconds": self.stage_seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Progress:
        """The inverse of `to_json`."""
        return cls(
            stage=d["stage"],
            epoch=d["epoch"],
            history=tuple(d["history"]),
            records=tuple(StageRecord.from_json(r) for r in d["records"]),
            et=None if d["et"] is None else ETChoice.from_json(d["et"]),
            saves=d["saves"],
            stage_seconds=d["stage_seconds"],
        )
