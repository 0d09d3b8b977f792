"""A PNG of a report: requests/s, p50 and p99 latency per system against concurrency.

Three panels side by side, every axis but concurrency on a log scale (the
systems span four orders of magnitude). One line per system, the median
round, with the min..max over rounds shaded on the requests/s panel. agentgw's
systems are solid lines, the peers dashed, `direct` (the upstream's ceiling)
dotted black, `floor` (the least a Trio + h11 relay does) dash-dotted grey. A
red ring marks a point whose error rate exceeded 0.1%.

The soak's PNG (`plot_soak`) has four panels against time: RSS, open fds,
Trio tasks and p99 latency, with the warm-up shaded and the upstream restarts
marked.

matplotlib is optional (the `bench` extra): it is imported when a plot is
drawn, on its Agg backend (no display needed), and without it a run says why
there is no plot and goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from bench.report import MAX_ERROR_RATE, Measurement, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_MARKERS = "osD^vP*Xh<>"
_DPI = 110


def _pyplot() -> ModuleType | None:
    """matplotlib's pyplot on the Agg backend, or None (said on stderr) without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(
            f"no plot: {exc.name or 'matplotlib'} is not installed "
            "(`make bench` installs it: pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return None
    return plt


def plot_summaries(summaries: Sequence[Summary], path: Path, *, title: str) -> Path | None:
    """Write the plot of `summaries` (as `summarize` returns them) to `path` as PNG.

    Returns:
        `path`, or None when matplotlib is not installed.
    """
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.lines import Line2D

    path.parent.mkdir(parents=True, exist_ok=True)
    systems = list(dict.fromkeys(s.system for s in summaries))
    concurrencies = sorted({s.connections for s in summaries})
    by_system = {name: [s for s in summaries if s.system == name] for name in systems}
    colors = plt.get_cmap("tab10").colors

    fig, axes = plt.subplots(1, 3, figsize=(16, 6.2), dpi=_DPI)
    panels: list[tuple[Axes, str, Callable[[Measurement], float], float]] = [
        (axes[0], "requests/s (higher is better)", lambda m: m.wrk.requests_per_s, 1.0),
        (axes[1], "p50 latency, ms (lower is better)", lambda m: m.wrk.p50_s, 1e3),
        (axes[2], "p99 latency, ms (lower is better)", lambda m: m.wrk.p99_s, 1e3),
    ]
    for n, name in enumerate(systems):
        style = _style(name, colors[n % len(colors)], _MARKERS[n % len(_MARKERS)])
        rows = sorted(by_system[name], key=lambda s: s.connections)
        xs = [s.connections for s in rows]
        for ax, _, value, scale in panels:
            ys = [value(s.median) * scale for s in rows]
            ax.plot(xs, ys, label=name, linewidth=1.8, markersize=6, **style)
            bad = [(x, y) for s, x, y in zip(rows, xs, ys, strict=True) if _has_errors(s)]
            if bad:
                ax.scatter(
                    [x for x, _ in bad],
                    [y for _, y in bad],
                    s=160,
                    facecolors="none",
                    edgecolors="red",
                    linewidths=1.8,
                    zorder=5,
                )
        low = [s.spread(_rate)[0] for s in rows]
        high = [s.spread(_rate)[1] for s in rows]
        axes[0].fill_between(xs, low, high, color=style["color"], alpha=0.12, linewidth=0)

    for ax, label, _, _ in panels:
        _axes(ax, label, concurrencies)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(_has_errors(s) for s in summaries):
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="none",
                markersize=11,
                markerfacecolor="none",
                markeredgecolor="red",
                markeredgewidth=1.8,
            )
        )
        labels.append(f"error rate > {MAX_ERROR_RATE:.1%}")
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=-(-len(labels) // 2) if len(labels) > 6 else len(labels),
        frameon=False,
        fontsize=10,
    )
    fig.suptitle(
        f"{title}: median round per system; shaded: requests/s min..max over rounds",
        fontsize=12,
    )
    rows_of_legend = 2 if len(labels) > 6 else 1
    fig.tight_layout(rect=(0, 0.04 + 0.045 * rows_of_legend, 1, 0.96))
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _rate(m: Measurement) -> float:
    return m.wrk.requests_per_s


def _has_errors(s: Summary) -> bool:
    return s.error_rate > MAX_ERROR_RATE


def _style(system: str, color: tuple[float, ...], marker: str) -> dict[str, Any]:
    if system == "direct":
        return {"color": "black", "linestyle": ":", "marker": "o"}
    if system == "floor":
        return {"color": "dimgrey", "linestyle": "-.", "marker": "s"}
    if system.startswith("gateway"):
        return {"color": color, "linestyle": "-", "marker": marker}
    return {"color": color, "linestyle": "--", "marker": marker}


def _axes(ax: Axes, label: str, concurrencies: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(concurrencies)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(_number))
    if len(concurrencies) == 1:
        c = concurrencies[0]
        ax.set_xlim(c / 2, c * 2)
    ax.set_xlabel("concurrent connections (wrk -c)")
    ax.set_title(label, fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="y", alpha=0.12)


def _number(value: float, _: object) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def plot_soak(
    times_s: Sequence[float],
    series: Sequence[tuple[str, Sequence[float | None]]],
    path: Path,
    *,
    title: str,
    warmup_s: float,
    restarts_s: Sequence[float],
) -> Path | None:
    """Write the soak's panels, one per (label, values) of `series` against
    `times_s` (None: not measured then), to `path` as PNG.

    Returns:
        `path`, or None when matplotlib is not installed.
    """
    plt = _pyplot()
    if plt is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # Seconds for a short run, minutes for a long one.
    scale, unit = (60.0, "minutes") if max(times_s, default=0) > 600 else (1.0, "seconds")
    xs = [t / scale for t in times_s]
    fig, axes = plt.subplots(
        len(series), 1, figsize=(12, 2.6 * len(series)), dpi=_DPI, sharex=True, squeeze=False
    )
    for ax, (label, values) in zip(axes[:, 0], series, strict=True):
        points = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), color="tab:blue", linewidth=1.5, marker=".")
            ax.set_ylim(0, max(v for _, v in points) * 1.15 or 1)
        else:
            ax.set_ylim(0, 1)
            ax.text(0.5, 0.5, "n/a", transform=ax.transAxes, ha="center", va="center")
        ax.axvspan(0, warmup_s / scale, color="grey", alpha=0.15, linewidth=0)
        for t in restarts_s:
            ax.axvline(t / scale, color="tab:red", linestyle=":", linewidth=1)
        ax.set_ylabel(label, fontsize=10)
        ax.grid(True, alpha=0.35)
    axes[-1, 0].set_xlim(0, max(xs, default=1))
    axes[-1, 0].set_xlabel(f"{unit} since the load started")
    fig.suptitle(f"{title}: grey, the warm-up; dotted red, an upstream restart", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
