"""Small matplotlib helpers for the project's figures (files only: Agg canvas, no pyplot state).

`line_plot` draws named series against a shared x axis; `sweep_plots` turns hardware-sweep rows
(`hardware.sweep_rows`) into the latency / energy / utilization vs `n_pe` figures.

They are on the cold path of `experiments/sweep.py`, so they are cheap to write: matplotlib is
imported on the first plot (the Agg canvas and `Figure` only, never pyplot), `sweep_plots` draws
its three PNGs on one reused figure, tick labels are plain text (the default log-axis labels are
mathtext, whose parser is slow to build: BUILD_NOTES.md), the margins are fixed (`tight_layout`
draws every figure once more to measure it) and the resolution is a modest `DPI`.
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from uticket_jax import files

FIGSIZE = (6.4, 4.2)  # inches
DPI = 100
_TITLE_PT = 8  # title font size, points


@functools.cache
def _matplotlib() -> tuple[Any, Any, Any]:
    """`(Figure, FigureCanvasAgg, matplotlib.ticker)`, imported once, on the first plot."""
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg, ticker


def new_figure() -> Any:
    """An empty `FIGSIZE` figure at `DPI` on an Agg canvas (for `line_plot(..., figure=)`)."""
    figure_cls, canvas_cls, _ = _matplotlib()
    fig = figure_cls(figsize=FIGSIZE, dpi=DPI)
    canvas_cls(fig)
    return fig


def line_plot(
    path: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    figure: Any = None,
) -> str:
    """Writes a PNG with one marked line per series `{label: (x, y)}`; returns `path`.

    None values in `y` (undefined figures) leave gaps. `logx` is a base-2 axis, `logy` a base-10
    one (linear when some value is not positive). `figure`: a figure to clear and draw on (from
    `new_figure`; several plots in a row then share one), None: a new one.
    """
    _, _, ticker = _matplotlib()
    fig = new_figure() if figure is None else figure
    fig.clear()
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        yy = [float("nan") if v is None else float(v) for v in y]
        ax.plot(list(x), yy, marker="o", markersize=3, label=label)
    logs = [(ax.xaxis, 2)] if logx else []
    if logx:
        ax.set_xscale("log", base=2)
    finite = [v for _, y in series.values() for v in y if v is not None]
    if logy and finite and min(finite) > 0:  # a log axis needs positive values
        ax.set_yscale("log")
        logs.append((ax.yaxis, 10))
    for axis, base in logs:  # plain-text labels: 1, 2, 4, ... and 1e-05 (no mathtext)
        axis.set_major_formatter(ticker.LogFormatter(base))
        axis.set_minor_formatter(ticker.LogFormatter(base, labelOnlyBase=False))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    lines = 0
    if title:
        wrapped = textwrap.fill(title, 80)
        lines = wrapped.count("\n") + 1
        ax.set_title(wrapped, fontsize=_TITLE_PT)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    # Fixed margins (no tight_layout): room for the tick labels, axis labels and title lines.
    height_pt = FIGSIZE[1] * 72
    top = 1 - (lines * 1.25 * _TITLE_PT + 10) / height_pt
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=min(0.96, top))
    save_figure(fig, path)
    return path


def save_figure(fig: Any, path: str) -> None:
    """Writes `fig` as PNG to `path` atomically, with the user's umask (`files.write_atomic`)."""
    files.write_atomic(path, lambda f: fig.savefig(f, format="png"))


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
    fig = new_figure()  # one figure, cleared for each plot
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
                figure=fig,
            )
        )
    return paths
