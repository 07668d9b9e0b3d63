"""Energy models of the PE-array simulator as plug-ins: counts in, energy by term out.

The simulator (`hardware.simulator`) turns masks into a typed `Counts` record per layer (the
operation, cycle and memory-access counts below); an `EnergyModel` turns a `Counts` record and its
constants (a NamedTuple of float arrays: scalars, or one value per config so the constants sweep
under `vmap`) into energies by term, in joules. Models are registered by name (`ENERGY_MODELS`,
`register_energy_model`, `get_energy_model`), like the PE mappings, and chosen with
`simulate(..., energy_model=NAME, energy_constants=...)`, `experiments/sweep.py --energy_model`
and the pipeline's `LTHConfig.energy_model`.

Counts (per layer; a network's are the sums over its analysed layers), under the simulator's
weight-stationary, lock-step dataflow (see BUILD_NOTES.md, "Energy models", for the assumptions)::

  n_pe                  PEs that clock every cycle (the config's `n_pe`; not summed)
  clock_hz              the config's clock (not summed)
  cycles, seconds       imbalance-aware latency: sum over groups of the busiest PE's load x P x T
  accumulates           non-zero weights x P x T (x the input spike rate when activity-aware)
  weights               non-zero weights
  lif_updates           output neurons x T = c_out x P x T
  pe_cycles_busy/_idle  PE-cycles with / without work; busy + idle = n_pe x cycles
  weight_buffer_reads   one per non-zero weight (loaded once into its PE, kept for all P and T)
  input_buffer_reads    one 1-bit spike read per busy PE-cycle (no reuse across a group's PEs)
  output_buffer_writes  one per output neuron and time step (= lif_updates)
  dram_weight_reads     one per non-zero weight
  dram_input_reads      c_in x P x T (the layer's input spikes once; "same" convs and dense layers)
  dram_output_writes    c_out x P x T (the layer's output spikes once)

Shipped models::

  horowitz45  45 nm, Horowitz ISSCC'14 accumulate / SRAM figures, an ASSUMED idle energy,
              leakage and clock; constants `e_acc_pj`, `e_fetch_pj`, `e_idle_pj`, `leak_w`
              (`Horowitz45`); terms accumulate, weight_fetch, idle, leakage.
  sata        SATA_Sim's published inference model (RuokaiYin/SATA_Sim, `inference-energy-cal/`):
              per PE a gated power per operation and an ungated and a leakage power every cycle
              for the spike-MAC, LIF and scratchpad, global-buffer dynamic energy per access and
              leakage every cycle, DRAM energy per access; terms compute_op, compute_ungated,
              compute_leakage, buffer_dynamic, buffer_leakage, dram.

A model's `energy` function uses only arithmetic operators, so it runs unchanged on jax arrays
inside the simulator's jitted kernel, on numpy float32 arrays in the simulator's numpy backend
(`simulate(..., backend="numpy")`) and on numpy float64 arrays (the SATA_Sim check); `apply_model`
and `total` are array-module-agnostic too.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

# Counts of one layer (or network); the simulator fills every field.
COUNT_FIELDS: tuple[str, ...] = (
    "n_pe",
    "clock_hz",
    "cycles",
    "seconds",
    "accumulates",
    "weights",
    "lif_updates",
    "pe_cycles_busy",
    "pe_cycles_idle",
    "weight_buffer_reads",
    "input_buffer_reads",
    "output_buffer_writes",
    "dram_weight_reads",
    "dram_input_reads",
    "dram_output_writes",
)
INTENSIVE_COUNTS = ("n_pe", "clock_hz")  # per config, not summed over layers


class Counts(NamedTuple):
    """The simulator's counts of a layer `[..., L]` or a network `[...]` (see the module doc)."""

    n_pe: Any
    clock_hz: Any
    cycles: Any
    seconds: Any
    accumulates: Any
    weights: Any
    lif_updates: Any
    pe_cycles_busy: Any
    pe_cycles_idle: Any
    weight_buffer_reads: Any
    input_buffer_reads: Any
    output_buffer_writes: Any
    dram_weight_reads: Any
    dram_input_reads: Any
    dram_output_writes: Any


class ConstantFlag(NamedTuple):
    """A command-line flag of one constant: `--flag` value x `scale` = the constant's value."""

    flag: str
    field: str
    scale: float
    help: str


@dataclasses.dataclass(frozen=True, eq=False)
class EnergyModel:
    """A named energy model: constants, the counts it needs and its energy-by-term function.

    Fields:
      name: registry name (`--energy_model`).
      terms: names of its energy terms, in the order they are summed.
      needs: the `Counts` fields its function reads.
      defaults: its constants, a NamedTuple of floats (the field names are the constants' names).
      energy: `(counts, constants) -> {term: joules}` with arithmetic operators only.
      clock_hz: the clock its constants were published for (the launchers' default clock).
      flags: the command-line flags of its constants (default: one flag per field, scale 1).
      doc: one line per constant: its source, or that it is an assumption.
      offchip_terms: the terms spent off the chip (DRAM); the others are on-chip energy
        (`onchip_energy`, `offchip_energy`). Default: none.
    """

    name: str
    terms: tuple[str, ...]
    needs: tuple[str, ...]
    defaults: Any
    energy: Callable[[Counts, Any], dict[str, Any]]
    clock_hz: float
    flags: tuple[ConstantFlag, ...] = ()
    doc: Mapping[str, str] = dataclasses.field(default_factory=dict)
    offchip_terms: tuple[str, ...] = ()

    def constant_flags(self) -> tuple[ConstantFlag, ...]:
        """The flags of its constants (`flags`, or one per constant field with scale 1).

        Returns:
          One `ConstantFlag` per constant.
        """
        if self.flags:
            return self.flags
        return tuple(
            ConstantFlag(f, f, 1.0, self.doc.get(f, f)) for f in type(self.defaults)._fields
        )


ENERGY_MODELS: dict[str, EnergyModel] = {}
#: The energy model of the simulator, the sweeps and the pipeline when none is named: `sata`,
#: whose constants are published measurements of the paper authors' accelerator (horowitz45's
#: saving rests on two assumed constants, idle energy and leakage). BUILD_NOTES.md, issue 24.
DEFAULT_ENERGY_MODEL = "sata"


def register_energy_model(model: EnergyModel, *, replace: bool = False) -> EnergyModel:
    """Adds `model` to `ENERGY_MODELS` after checking its declaration.

    Args:
      model: the model.
      replace: allow replacing a registered model of the same name.
    Returns:
      The model.
    """
    if not isinstance(model.name, str) or not model.name.isidentifier():
        raise ValueError(f"energy_model: name must be an identifier, got {model.name!r}")
    if model.name in ENERGY_MODELS and not replace:
        raise ValueError(f"energy_model: {model.name!r} is registered already (replace=True)")
    if not model.terms or len(set(model.terms)) != len(model.terms):
        raise ValueError(f"energy_model {model.name}: terms must be distinct, got {model.terms}")
    stray = [t for t in model.offchip_terms if t not in model.terms]
    if stray:
        raise ValueError(
            f"energy_model {model.name}: offchip_terms {stray} are not among its terms "
            f"{model.terms}"
        )
    missing = [c for c in model.needs if c not in COUNT_FIELDS]
    if missing:
        raise ValueError(
            f"energy_model {model.name}: needs counts {missing} the simulator does not provide; "
            f"allowed: {', '.join(COUNT_FIELDS)}"
        )
    if not hasattr(model.defaults, "_fields"):
        raise ValueError(f"energy_model {model.name}: defaults must be a NamedTuple of floats")
    validate_constants(model, model.defaults)
    ENERGY_MODELS[model.name] = model
    return model


def get_energy_model(model: str | EnergyModel) -> EnergyModel:
    """The registered model of that name (an `EnergyModel` is returned as is).

    Args:
      model: a name in `ENERGY_MODELS` or a model.
    Returns:
      The `EnergyModel`.
    """
    if isinstance(model, EnergyModel):
        return model
    if model not in ENERGY_MODELS:
        raise ValueError(
            f"energy_model: unknown {model!r}; allowed: {', '.join(sorted(ENERGY_MODELS))}"
        )
    return ENERGY_MODELS[model]


def validate_constants(model: EnergyModel, constants: Any) -> None:
    """Raises ValueError naming the constant when one is negative, not finite or misnamed.

    Args:
      model: the model the constants belong to.
      constants: a NamedTuple of the model's constant type (scalar or batch leaves).
    """
    want = type(model.defaults)._fields
    got = getattr(constants, "_fields", None)
    if tuple(got or ()) != tuple(want):
        raise ValueError(
            f"energy_constants: model {model.name} takes constants {list(want)}, got {got}"
        )
    for name, v in zip(want, constants, strict=True):
        arr = np.asarray(v, np.float64)
        if not (np.isfinite(arr).all() and (arr >= 0).all()):
            raise ValueError(f"{name}: must be finite and >= 0 (energy model {model.name})")


def make_constants(model: str | EnergyModel, **values: Any) -> Any:
    """The model's constants with some replaced; each value a scalar or a `[N]` sequence.

    Args:
      model: name or model.
      **values: constant name -> value(s).
    Returns:
      A NamedTuple of float32 arrays.
    """
    model = get_energy_model(model)
    fields = type(model.defaults)._fields
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"energy_constants: {unknown} are not constants of {model.name}; allowed: {fields}"
        )
    merged = model.defaults._replace(**values)
    out = type(model.defaults)(*(np.asarray(v, np.float32) for v in merged))
    validate_constants(model, out)
    return out


def constants_grid(model: str | EnergyModel, **lists: Sequence[float]) -> Any:
    """The Cartesian product of per-constant value lists (row-major in field order), `[M]`.

    Args:
      model: name or model.
      **lists: constant name -> list of values; the others keep their defaults.
    Returns:
      A NamedTuple of float32 `[M]` arrays.
    """
    model = get_energy_model(model)
    fields = type(model.defaults)._fields
    unknown = sorted(set(lists) - set(fields))
    if unknown:
        raise ValueError(
            f"energy_constants: {unknown} are not constants of {model.name}; allowed: {fields}"
        )
    axes = [list(np.atleast_1d(lists.get(f, getattr(model.defaults, f)))) for f in fields]
    for f, a in zip(fields, axes, strict=True):
        if not a:
            raise ValueError(f"{f}: empty list of values")
    cols = list(zip(*itertools.product(*axes), strict=True))
    return make_constants(model, **dict(zip(fields, cols, strict=True)))


def check_counts(model: EnergyModel, counts: Counts) -> None:
    """Raises ValueError when a count the model needs is missing (None) from `counts`.

    Args:
      model: the model.
      counts: a `Counts` record (fields the model does not need may be None).
    """
    missing = [c for c in model.needs if getattr(counts, c, None) is None]
    if missing:
        raise ValueError(
            f"counts: energy model {model.name} needs {missing}; give every count in "
            f"{list(model.needs)}"
        )


def energy_terms(model: str | EnergyModel, counts: Counts, constants: Any = None) -> dict:
    """Energy by term (J) of `counts` under `model` (outside the simulator, e.g. given counts).

    Args:
      model: name or model.
      counts: a `Counts` record of numbers or arrays (numpy float64 keeps float64).
      constants: the model's constants (default: its defaults).
    Returns:
      `{term: joules}` in the model's term order.
    """
    model = get_energy_model(model)
    constants = model.defaults if constants is None else constants
    validate_constants(model, constants)
    check_counts(model, counts)
    return apply_model(model, counts, constants)


def apply_model(model: EnergyModel, counts: Counts, constants: Any) -> dict:
    """The model's function, with its output checked against its declared terms.

    Args:
      model: the model.
      counts: the counts (jax or numpy arrays).
      constants: its constants.
    Returns:
      `{term: joules}` in the model's term order.
    """
    out = model.energy(counts, constants)
    if set(out) != set(model.terms):
        raise ValueError(
            f"energy_model {model.name}: its function returned terms {sorted(out)}, "
            f"declared {list(model.terms)}"
        )
    return {t: out[t] for t in model.terms}


def total(terms: Mapping[str, Any]) -> Any:
    """The sum of the terms, left to right in their order.

    Args:
      terms: `{term: joules}`.
    Returns:
      Their sum.
    """
    return sum(terms.values())


def offchip_energy(model: str | EnergyModel, terms: Mapping[str, Any]) -> Any:
    """The energy spent off the chip (DRAM): the sum of the model's `offchip_terms`.

    Args:
      model: name or model.
      terms: `{term: joules}` of that model (numbers or arrays).
    Returns:
      Their sum, in term order (0.0 for a model without off-chip terms).
    """
    model = get_energy_model(model)
    return sum((terms[t] for t in model.terms if t in model.offchip_terms), 0.0)


def onchip_energy(model: str | EnergyModel, terms: Mapping[str, Any]) -> Any:
    """The energy spent on the chip: the sum of the model's terms but its `offchip_terms`.

    Summed term by term (not the total less DRAM, which loses the digits of a small on-chip
    energy beside a large DRAM one in float32).

    Args:
      model: name or model.
      terms: `{term: joules}` of that model (numbers or arrays).
    Returns:
      Their sum, in term order; with `offchip_energy` it makes `total(terms)` up to rounding.
    """
    model = get_energy_model(model)
    return sum((terms[t] for t in model.terms if t not in model.offchip_terms), 0.0)


# The shipped models (horowitz45, sata) live in `energy_models` and register themselves there.
from uticket_jax.hardware.energy_models import (  # noqa: E402, F401 (re-exported, registers them)
    HOROWITZ45,
    SATA,
    Horowitz45,
    Sata,
)
