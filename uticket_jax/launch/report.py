"""Results of a u-Ticket run: per-arm summary rows, the side-by-side table, and plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

from uticket_jax.launch import plots
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
      The rows of `summary.json` / `summary.csv`, in record order: the energy in total, on the
      chip (`energy_onchip`) and off it (`energy_dram`, the model's `offchip_terms`; None in
      records written before the split), and by term (also as `energy_terms`, {term: J}, for
      summary.json; CSV writers leave that one out, see `csv_columns`).
    """
    rows = []
    for r in records:
        hw, act = r.hardware.plain, r.hardware.activity_aware
        terms = hw["energy_terms"]
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
                "energy_model": r.hardware.energy_model,
                "energy_total": hw["energy_total"],
                "energy_onchip": hw.get("energy_onchip"),
                "energy_dram": hw.get("energy_dram"),
                "energy_activity_aware": act["energy_total"],
                **spike_columns(r),
                **{f"energy_{k}": v for k, v in terms.items()},
                "energy_terms": dict(terms),
                "regrown": None if r.rebalance is None else r.rebalance.regrown,
                "dropped": None if r.rebalance is None else r.rebalance.dropped,
                "wall_seconds": r.seconds,
            }
        )
    return rows


def spike_columns(record: StageRecord) -> dict[str, Any]:
    """A stage's spike-driven network figures as summary columns (None without a trace).

    Args:
      record: a `StageRecord`.
    Returns:
      `{"spike_utilization", "spike_latency_cycles", "spike_energy_j", "spike_trace_images"}`.
    """
    sd = record.hardware.spike_driven
    net = {} if sd is None else sd["network"]
    return {
        "spike_utilization": net.get("utilization"),
        "spike_latency_cycles": net.get("cycles"),
        "spike_energy_j": net.get("energy_total"),
        "spike_trace_images": None if sd is None else sd["images"],
    }


def csv_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The summary rows' columns for CSV: every key but the `energy_terms` dict.

    Args:
      rows: `summary_rows` output.
    Returns:
      Column names in first-seen order.
    """
    return [k for k in dict.fromkeys(k for r in rows for k in r) if k != "energy_terms"]


def saving_by_term(lth: dict[str, Any] | None, ut: dict[str, Any] | None) -> dict[str, float]:
    """Each energy term's share (%) of u-Ticket's energy saving over LTH (they add up to 100).

    Args:
      lth: LTH's summary row.
      ut: u-Ticket's summary row of the same round.
    Returns:
      `{term: percent of (LTH total - u-Ticket total)}`, largest first; empty when either row
      is missing or the totals are equal.
    """
    if not lth or not ut or not lth.get("energy_terms") or not ut.get("energy_terms"):
        return {}
    saving = lth["energy_total"] - ut["energy_total"]
    if not saving:
        return {}
    shares = {
        t: 100.0 * (v - ut["energy_terms"][t]) / saving for t, v in lth["energy_terms"].items()
    }
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


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
                "spike_latency_reduction_pct": _reduction(
                    ut and ut["spike_latency_cycles"], lth and lth["spike_latency_cycles"]
                ),
                "spike_energy_reduction_pct": _reduction(
                    ut and ut["spike_energy_j"], lth and lth["spike_energy_j"]
                ),
                "energy_saving_by_term_pct": saving_by_term(lth, ut),
            }
        )
    return out


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The side-by-side table: per round, both arms' sparsity, accuracy, utilization, latency
    and energy (in total, on the chip and in DRAM), weight-only and spike-driven (`sp_`: PEs skip
    zero inputs, from the recorded trace; `-` without one), then u-Ticket's reductions over LTH
    (the paper's headline figures) of latency, energy, energy with accumulates scaled by the
    measured input spike rates, and spike-driven latency, and the two energy terms that carry
    most of the saving (their shares).

    Args:
      rows: `summary_rows` output.
    Returns:
      The table, one line per row, headed by the energy model's name.
    """
    head = (
        f"{'rnd':>3} | {'arm':8} {'sparsity':>8} {'acc':>6} {'util':>6} {'util_n':>6}"
        f" {'cycles':>10} {'energy_J':>10} {'onchip_J':>10} {'dram_J':>10}"
        f" {'sp_util':>7} {'sp_cycles':>10} {'sp_energy_J':>11}"
    )
    tail = f" | {'lat_red':>7} {'en_red':>7} {'en_act_red':>10} {'sp_lat_red':>10}"
    tail += "  saving carried by"
    models = sorted({str(r.get("energy_model", "horowitz45")) for r in rows})
    lines = [f"energy model: {', '.join(models)}", head + tail, "-" * (len(head) + 59)]
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
                shares = list(pair["energy_saving_by_term_pct"].items())[:2]
                tail = (
                    f" {_f(pair['latency_reduction_pct'], '6.1f')}%"
                    f" {_f(pair['energy_reduction_pct'], '6.1f')}%"
                    f" {_f(pair['energy_activity_aware_reduction_pct'], '9.1f')}%"
                    f" {_f(pair['spike_latency_reduction_pct'], '9.1f')}%"
                    + "  "
                    + " ".join(f"{t} {v:.0f}%" for t, v in shares)
                )
            lines.append(_arm_line(pair["round"], r) + " |" + tail)
    return "\n".join(lines)


def _arm_line(rnd: int, r: dict[str, Any]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:5.1f}%"  # noqa: E731
    return (
        f"{rnd:>3} | {r['arm']:8} {100 * r['sparsity']:7.2f}% {100 * r['test_accuracy']:5.1f}%"
        f" {pct(r['utilization']):>6} {pct(r['utilization_normalized']):>6}"
        f" {_f(r['cycles'], '10.4g')} {_f(r['energy_total'], '10.4g')}"
        f" {_f(r.get('energy_onchip'), '10.4g')} {_f(r.get('energy_dram'), '10.4g')}"
        f" {pct(r.get('spike_utilization')):>7} {_f(r.get('spike_latency_cycles'), '10.4g')}"
        f" {_f(r.get('spike_energy_j'), '11.4g')}"
    )


def plot_run(rows: Sequence[dict[str, Any]], outdir: str) -> list[str]:
    """Accuracy, utilization, latency and energy against sparsity, one line per arm, and the
    energy by term of LTH and u-Ticket per round (`energy_terms_by_round.png`).

    Args:
      rows: `summary_rows` output.
      outdir: directory of the PNGs.
    Returns:
      The PNG paths.
    """
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
        plots.save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    terms_path = plot_energy_terms(rows, os.path.join(outdir, "energy_terms_by_round.png"))
    return paths + ([terms_path] if terms_path else [])


def plot_energy_terms(rows: Sequence[dict[str, Any]], path: str) -> str | None:
    """Stacked bars of the energy by term, LTH and u-Ticket side by side for every round, as
    fractions of that round's LTH total (energies fall by orders of magnitude over the rounds).

    Args:
      rows: `summary_rows` output.
      path: the PNG to write.
    Returns:
      `path`, or None when no row has energy terms.
    """
    pairs = [p for p in paired_rows(rows) if p["lth"] and p["lth"]["energy_total"]]
    scale = {p["round"]: p["lth"]["energy_total"] for p in pairs}
    bars = [(p["round"], arm, p[arm]) for p in pairs for arm in ("lth", "uticket") if p[arm]]
    bars = [b for b in bars if b[2].get("energy_terms")]
    if not bars:
        return None
    terms = list(dict.fromkeys(t for _, _, r in bars for t in r["energy_terms"]))
    rounds = sorted({rnd for rnd, _, _ in bars})
    fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * len(rounds) + 2), 3.8), dpi=120)
    colors = plt.get_cmap("tab10").colors
    for rnd, arm, r in bars:
        x = rounds.index(rnd) + (-0.2 if arm == "lth" else 0.2)
        bottom = 0.0
        for k, t in enumerate(terms):
            v = (r["energy_terms"].get(t) or 0.0) / scale[rnd]
            label = t if (rnd, arm) == bars[0][:2] else None
            ax.bar(
                x,
                v,
                0.38,
                bottom=bottom,
                color=colors[k % 10],
                label=label,
                hatch="" if arm == "lth" else "//",
                edgecolor="white",
            )
            bottom += v
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    ax.set_xlabel("round (left bar LTH, hatched bar u-Ticket)")
    ax.set_ylabel(f"energy / LTH's ({bars[0][2].get('energy_model', 'horowitz45')} model)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save_figure(fig, path)
    plt.close(fig)
    return path
