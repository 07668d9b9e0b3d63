"""The shipped energy models, `horowitz45` and `sata` (see `hardware.energy` for the plug-in
interface and the counts, BUILD_NOTES.md "Energy models" for the constants' sources); importing
`hardware.energy` registers them."""

from __future__ import annotations

from typing import Any, NamedTuple

from uticket_jax.hardware.energy import (
    ConstantFlag,
    Counts,
    EnergyModel,
    register_energy_model,
)

_PJ = 1e-12
_NJ = 1e-9
_MW = 1e-3


# --- horowitz45: today's model ----------------------------------------------------------------


class Horowitz45(NamedTuple):
    """Constants of `horowitz45`: 45 nm CMOS at 0.9 V.

    e_acc_pj   = 0.1 pJ per accumulate: a 32-bit integer add, M. Horowitz, "Computing's energy
                 problem (and what we can do about it)", ISSCC 2014, Fig. 1.1.9 (45 nm, 0.9 V).
                 A spiking layer accumulates a weight for each input spike, no multiply.
    e_fetch_pj = 5.0 pJ per non-zero weight fetched: half of Horowitz's 10 pJ for a 64-bit read of
                 an 8 kB SRAM (same table), i.e. one 32-bit weight from a PE's local buffer.
    e_idle_pj  = 0.03 pJ per idle PE-cycle: MODELLING ASSUMPTION, not a measured figure. A stalled
                 PE of a lock-step group still clocks its registers; we price it as Horowitz's
                 8-bit add (0.03 pJ), i.e. ~30% of an active accumulate.
    leak_w     = 1e-5 W leakage per PE: MODELLING ASSUMPTION (10 uW for a 32-bit accumulator plus
                 a small register file in 45 nm); it enters as leak_w * n_pe * latency seconds.
    The clock (500 MHz, `EnergyModel.clock_hz`) is an assumption too.
    """

    e_acc_pj: float = 0.1
    e_fetch_pj: float = 5.0
    e_idle_pj: float = 0.03
    leak_w: float = 1e-5


def _horowitz45(counts: Counts, c: Horowitz45) -> dict[str, Any]:
    return {
        "accumulate": c.e_acc_pj * _PJ * counts.accumulates,
        "weight_fetch": c.e_fetch_pj * _PJ * counts.weights,
        "idle": c.e_idle_pj * _PJ * counts.pe_cycles_idle,
        "leakage": c.leak_w * counts.n_pe * counts.seconds,
    }


HOROWITZ45 = register_energy_model(
    EnergyModel(
        name="horowitz45",
        terms=("accumulate", "weight_fetch", "idle", "leakage"),
        needs=("accumulates", "weights", "pe_cycles_idle", "n_pe", "seconds"),
        defaults=Horowitz45(),
        energy=_horowitz45,
        clock_hz=500e6,
        flags=(
            ConstantFlag("e_acc_pj", "e_acc_pj", 1.0, "energy per accumulate, pJ"),
            ConstantFlag("e_fetch_pj", "e_fetch_pj", 1.0, "energy per weight fetch, pJ"),
            ConstantFlag("e_idle_pj", "e_idle_pj", 1.0, "energy per idle PE-cycle, pJ"),
            ConstantFlag("leak_uw", "leak_w", 1e-6, "leakage power per PE, microwatts"),
        ),
        doc={
            "e_acc_pj": "Horowitz ISSCC 2014 Fig. 1.1.9: 32-bit add, 45 nm",
            "e_fetch_pj": "half of Horowitz's 10 pJ 64-bit 8 kB SRAM read",
            "e_idle_pj": "ASSUMPTION: Horowitz's 8-bit add",
            "leak_w": "ASSUMPTION: 10 uW per PE",
        },
    )
)


# --- sata: SATA_Sim's inference model ---------------------------------------------------------


class Sata(NamedTuple):
    """Constants of `sata`, in SATA_Sim's units (mW, nJ per access, bits).

    Read from RuokaiYin/SATA_Sim (commit d447058): PE powers from
    `inference-energy-cal/results/lth/comp-stat.yaml` (`dpower.y` gated per operation, `dpower.n`
    ungated every cycle, `lpower` leakage every cycle), buffer and DRAM figures from
    `inference-energy-cal/results/lth/mem-stat.yaml` (CACTI), bit widths from
    `inference-energy-cal/archs/sata-config.yaml` (`act-prec`, `weight-prec`, `output-prec`).
    """

    mac_op_mw: float = 0.02511
    mac_ungated_mw: float = 0.01924
    mac_leak_mw: float = 6.2e-05
    lif_op_mw: float = 0.01886
    lif_ungated_mw: float = 0.05625
    lif_leak_mw: float = 8.4e-05
    spad_op_mw: float = 0.11241
    spad_ungated_mw: float = 0.21233
    spad_leak_mw: float = 0.000523
    wbuf_read_nj: float = 0.0286315
    wbuf_leak_mw: float = 24.9086
    ibuf_read_nj: float = 0.0110295
    ibuf_leak_mw: float = 6.25862
    obuf_write_nj: float = 0.012772
    obuf_leak_mw: float = 6.25862
    dram_nj: float = 0.468762
    act_bits: float = 1.0
    weight_bits: float = 8.0
    out_bits: float = 1.0


def _sata(counts: Counts, c: Sata) -> dict[str, Any]:
    acc, lif = counts.accumulates, counts.lif_updates
    pe_seconds = counts.n_pe * counts.seconds  # PE-seconds: every PE clocks every cycle
    op_mw = (c.mac_op_mw + c.spad_op_mw) * acc + c.lif_op_mw * lif  # mW x operations
    ungated_mw = c.mac_ungated_mw + c.lif_ungated_mw + c.spad_ungated_mw
    leak_mw = c.mac_leak_mw + c.lif_leak_mw + c.spad_leak_mw
    buffer_nj = (
        c.wbuf_read_nj * (c.weight_bits / 8) * counts.weight_buffer_reads
        + c.ibuf_read_nj * (c.act_bits / 8) * counts.input_buffer_reads
        + c.obuf_write_nj * (c.out_bits / 8) * counts.output_buffer_writes
    )
    dram_accesses = (
        (c.weight_bits / 8) * counts.dram_weight_reads
        + (c.act_bits / 8) * counts.dram_input_reads
        + (c.out_bits / 8) * counts.dram_output_writes
    )
    return {
        "compute_op": op_mw * _MW / counts.clock_hz,  # a gated power for one cycle per op
        "compute_ungated": ungated_mw * _MW * pe_seconds,
        "compute_leakage": leak_mw * _MW * pe_seconds,
        "buffer_dynamic": buffer_nj * _NJ,
        "buffer_leakage": (c.wbuf_leak_mw + c.ibuf_leak_mw + c.obuf_leak_mw) * _MW * counts.seconds,
        "dram": c.dram_nj * _NJ * dram_accesses,
    }


SATA = register_energy_model(
    EnergyModel(
        name="sata",
        terms=(
            "compute_op",
            "compute_ungated",
            "compute_leakage",
            "buffer_dynamic",
            "buffer_leakage",
            "dram",
        ),
        needs=(
            "accumulates",
            "lif_updates",
            "n_pe",
            "seconds",
            "clock_hz",
            "weight_buffer_reads",
            "input_buffer_reads",
            "output_buffer_writes",
            "dram_weight_reads",
            "dram_input_reads",
            "dram_output_writes",
        ),
        defaults=Sata(),
        energy=_sata,
        clock_hz=400e6,  # sata-config.yaml: clock-frequency 400 (MHz)
        offchip_terms=("dram",),
        doc={
            "mac_op_mw": "spike-MAC gated power per operation, mW (comp-stat.yaml)",
            "mac_ungated_mw": "spike-MAC ungated power per PE every cycle, mW",
            "mac_leak_mw": "spike-MAC leakage power per PE, mW",
            "lif_op_mw": "LIF gated power per update, mW",
            "lif_ungated_mw": "LIF ungated power per PE every cycle, mW",
            "lif_leak_mw": "LIF leakage power per PE, mW",
            "spad_op_mw": "scratchpad gated power per accumulate, mW",
            "spad_ungated_mw": "scratchpad ungated power per PE every cycle, mW",
            "spad_leak_mw": "scratchpad leakage power per PE, mW",
            "wbuf_read_nj": "weight buffer (144 KiB) read energy, nJ (mem-stat.yaml)",
            "wbuf_leak_mw": "weight buffer leakage power, mW",
            "ibuf_read_nj": "input buffer (32 KiB) read energy, nJ",
            "ibuf_leak_mw": "input buffer leakage power, mW",
            "obuf_write_nj": "output buffer (32 KiB) write energy, nJ",
            "obuf_leak_mw": "output buffer leakage power, mW",
            "dram_nj": "DRAM energy per access, nJ",
            "act_bits": "input spike width, bits (sata-config.yaml act-prec)",
            "weight_bits": "weight width, bits (weight-prec)",
            "out_bits": "output spike width, bits (output-prec)",
        },
    )
)
