"""Small matplotlib helpers for the project's figures (files only: Agg canvas, no pyplot state).

`line_plot` draws named series against a shared x axis; `sweep_plots` turns hardware-sweep rows
(`hardware.sweep_rows`) into the latency / energy / utilization vs `n_pe` figures.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def line_plot(
    path: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> str:
    """Writes a PNG with one marked line per series `{label: (x, y)}`; returns `path`.

    None values in `y` (undefined figures) leave gaps.
    """
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, (x, y) in series.items():
        yy = [float("nan") if v is None else float(v) for v in y]
        ax.plot(list(x), yy, marker="o", markersize=3, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    finite = [v for _, y in series.values() for v in y if v is not None]
    if logy and finite and min(finite) > 0:  # a log axis needs positive values
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(textwrap.fill(title, 80), fontsize=8)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


# (file stem, network field, axis label, log y)
SWEEP_FIGURES = (
    ("latency", "seconds", "latency (s)", True),
    ("energy", "energy_total", "energy (J)", True),
    ("utilization", "utilization", "utilization (mean/max load)", False),
)


def sweep_plots(rows: Sequence[Mapping[str, Any]], out_dir: str) -> list[str]:
    """Latency, energy and utilization against `n_pe`: one line per (masks file, mapping).

    Only the rows whose other config fields equal those of the first row are drawn (the base
    constants of a sweep over energy constants), so each line is a single curve.

    Args:
      rows: sweep rows `{"masks", "config": {...}, "network": {...}}`.
      out_dir: directory for `latency.png`, `energy.png`, `utilization.png`.
    Returns:
      The written paths.
    """
    if not rows:
        return []
    base = {k: v for k, v in rows[0]["config"].items() if k not in ("n_pe", "mapping")}
    lines: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for r in rows:
        cfg = r["config"]
        if any(cfg[k] != v for k, v in base.items()):
            continue
        lines.setdefault(f"{os.path.basename(r['masks'])} / {cfg['mapping']}", []).append(
            (cfg["n_pe"], r["network"])
        )
    consts = ", ".join(f"{k}={v:g}" for k, v in base.items() if isinstance(v, int | float))
    paths = []
    for stem, field, label, logy in SWEEP_FIGURES:
        series = {}
        for name, pts in lines.items():
            pts = sorted(pts, key=lambda p: p[0])
            series[name] = ([p[0] for p in pts], [p[1][field] for p in pts])
        paths.append(
            line_plot(
                os.path.join(out_dir, f"{stem}.png"),
                series,
                xlabel="PEs per group (n_pe)",
                ylabel=label,
                title=consts,
                logx=True,
                logy=logy,
            )
        )
    return paths
