"""Results of a u-Ticket run: per-arm summary rows, the side-by-side table, and plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

from uticket_jax.pipeline.state import StageRecord

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARM_STYLE = {
    "dense": ("black", "s", "dense"),
    "lth": ("tab:red", "o", "LTH"),
    "uticket": ("tab:blue", "^", "u-Ticket"),
}


def summary_rows(records: Sequence[StageRecord]) -> list[dict[str, Any]]:
    """One flat row per stage record: accuracy, sparsity and the network hardware figures.

    Args:
      records: the pipeline's `StageRecord`s.

    Returns:
      The rows of `summary.json` / `summary.csv`, in record order.
    """
    rows = []
    for r in records:
        hw, act = r.hardware.plain, r.hardware.activity_aware
        rows.append(
            {
                "round": r.round,
                "arm": r.arm,
                "timesteps": r.timesteps,
                "sparsity": r.sparsity,
                "test_accuracy": r.test_accuracy,
                "best_test_accuracy": r.best_test_accuracy,
                "utilization": hw["utilization"],
                "utilization_normalized": hw["utilization_normalized"],
                "latency": hw["latency"],
                "wasted": hw["wasted"],
                "cycles": hw["cycles"],
                "seconds_hw": hw["seconds"],
                "energy_total": hw["energy_total"],
                "energy_activity_aware": act["energy_total"],
                **{f"energy_{k}": v for k, v in hw["energy"].items()},
                "regrown": None if r.rebalance is None else r.rebalance.regrown,
                "dropped": None if r.rebalance is None else r.rebalance.dropped,
                "wall_seconds": r.seconds,
            }
        )
    return rows


def _reduction(new: float | None, base: float | None) -> float | None:
    if new is None or not base:
        return None
    return 100.0 * (1.0 - new / base)


def paired_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pruning round, LTH beside u-Ticket, with u-Ticket's reductions in percent."""
    by_round: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["arm"]] = row
    out = []
    for rnd in sorted(k for k in by_round if k > 0):
        pair = by_round[rnd]
        lth, ut = pair.get("lth"), pair.get("uticket")
        out.append(
            {
                "round": rnd,
                "lth": lth,
                "uticket": ut,
                "latency_reduction_pct": _reduction(ut and ut["cycles"], lth and lth["cycles"]),
                "energy_reduction_pct": _reduction(
                    ut and ut["energy_total"], lth and lth["energy_total"]
                ),
                "energy_activity_aware_reduction_pct": _reduction(
                    ut and ut["energy_activity_aware"], lth and lth["energy_activity_aware"]
                ),
            }
        )
    return out


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The side-by-side table: per round, both arms' sparsity, accuracy, utilization, latency
    and energy, then u-Ticket's reductions over LTH (the paper's headline figures) of latency,
    energy, and energy with accumulates scaled by the measured input spike rates."""
    head = (
        f"{'rnd':>3} | {'arm':8} {'sparsity':>8} {'acc':>6} {'util':>6} {'util_n':>6}"
        f" {'cycles':>10} {'energy_J':>10}"
    )
    lines = [head + f" | {'lat_red':>7} {'en_red':>7} {'en_act_red':>10}", "-" * (len(head) + 29)]
    dense = [r for r in rows if r["arm"] == "dense"]
    for r in dense:
        lines.append(_arm_line(0, r) + " |")
    for pair in paired_rows(rows):
        for i, arm in enumerate(("lth", "uticket")):
            r = pair[arm]
            if r is None:
                continue
            tail = ""
            if i == 1 or pair["uticket"] is None:
                tail = (
                    f" {_f(pair['latency_reduction_pct'], '6.1f')}%"
                    f" {_f(pair['energy_reduction_pct'], '6.1f')}%"
                    f" {_f(pair['energy_activity_aware_reduction_pct'], '9.1f')}%"
                )
            lines.append(_arm_line(pair["round"], r) + " |" + tail)
    return "\n".join(lines)


def _arm_line(rnd: int, r: dict[str, Any]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:5.1f}%"  # noqa: E731
    return (
        f"{rnd:>3} | {r['arm']:8} {100 * r['sparsity']:7.2f}% {100 * r['test_accuracy']:5.1f}%"
        f" {pct(r['utilization']):>6} {pct(r['utilization_normalized']):>6}"
        f" {_f(r['cycles'], '10.4g')} {_f(r['energy_total'], '10.4g')}"
    )


def plot_run(rows: Sequence[dict[str, Any]], outdir: str) -> list[str]:
    """Accuracy, utilization, latency and energy against sparsity, one line per arm; PNG paths."""
    os.makedirs(outdir, exist_ok=True)
    panels = [
        ("accuracy_vs_sparsity.png", "test_accuracy", "test accuracy", False),
        ("utilization_vs_sparsity.png", "utilization", "PE utilization (mean/max)", False),
        ("latency_vs_sparsity.png", "cycles", "latency (cycles)", True),
        ("energy_vs_sparsity.png", "energy_total", "energy (J)", True),
    ]
    paths = []
    for fname, key, label, log in panels:
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
        for arm, (color, marker, name) in ARM_STYLE.items():
            pts = [(r["sparsity"], r[key]) for r in rows if r["arm"] == arm and r[key] is not None]
            if arm != "dense":
                pts = [(r["sparsity"], r[key]) for r in rows if r["arm"] == "dense"] + pts
            if not pts:
                continue
            xs, ys = zip(*sorted(pts), strict=True)
            style = "" if arm == "dense" else "-"
            ax.plot([100 * x for x in xs], ys, style, color=color, marker=marker, label=name)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(outdir, fname)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
