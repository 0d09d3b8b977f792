"""Measurements in, a Markdown report out: medians, spreads, ratios and process costs."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.wrk import WrkResult

MAX_ERROR_RATE = 0.001


@dataclass(frozen=True)
class Measurement:
    round: int
    system: str
    connections: int
    wrk: WrkResult
    wall_s: float
    cpu_s: float  # CPU time of the system's own process over the measured run

    @property
    def cpu_ms_per_1k(self) -> float:
        return self.cpu_s * 1e6 / self.wrk.requests if self.wrk.requests else float("nan")

    @property
    def core_share(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else float("nan")


@dataclass(frozen=True)
class Summary:
    system: str
    connections: int
    runs: tuple[Measurement, ...]

    @property
    def median(self) -> Measurement:
        """The round with the median throughput (the lower one of two middles)."""
        ranked = sorted(self.runs, key=lambda m: m.wrk.requests_per_s)
        return ranked[(len(ranked) - 1) // 2]

    def spread(self, key: Callable[[Measurement], float]) -> tuple[float, float]:
        values = [key(m) for m in self.runs]
        return min(values), max(values)

    @property
    def requests(self) -> int:
        return sum(m.wrk.requests for m in self.runs)

    @property
    def errors(self) -> int:
        return sum(m.wrk.errors for m in self.runs)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class RunInfo:
    title: str
    facts: tuple[tuple[str, str], ...]


def summarize(
    measurements: Sequence[Measurement], systems: Sequence[str], concurrencies: Sequence[int]
) -> list[Summary]:
    summaries = []
    for c in concurrencies:
        for system in systems:
            runs = tuple(m for m in measurements if m.system == system and m.connections == c)
            if runs:
                summaries.append(Summary(system, c, runs))
    return summaries


def error_failures(summaries: Sequence[Summary]) -> list[str]:
    return [
        f"{s.system} c={s.connections}: error rate {s.error_rate:.2%} "
        f"({s.errors:,} of {s.requests:,} requests) exceeds {MAX_ERROR_RATE:.1%}"
        for s in summaries
        if s.error_rate > MAX_ERROR_RATE
    ]


def render(
    info: RunInfo,
    summaries: Sequence[Summary],
    comparisons: Sequence[tuple[str, str]],
    processes: Mapping[str, str],
    peak_rss: Mapping[str, int],
    failures: Sequence[str],
    *,
    targets: Mapping[tuple[str, str], float] | None = None,
) -> str:
    """The Markdown report.

    Args:
        comparisons: (system, baseline) pairs, each getting a table of ratios.
        targets: for some of those pairs, the lowest req/s ratio asked for; the
            report says at which concurrencies it was met.
        processes: per system, the name of the process whose CPU and RSS are its cost.
        peak_rss: per system, that process's peak RSS in bytes.
    """
    parts = [f"# {info.title}", "", *(f"- {k}: {v}" for k, v in info.facts), ""]
    parts += _latency_table(summaries)
    for system, baseline in comparisons:
        target = (targets or {}).get((system, baseline))
        parts += _comparison_table(summaries, system, baseline, target)
    parts += _cost_table(summaries, processes, peak_rss)
    if failures:
        parts += ["## Failures", "", *(_failure_item(f) for f in failures)]
    return "\n".join(parts)


def _failure_item(failure: str) -> str:
    first, _, rest = failure.partition(": ")
    if "\n" not in rest:
        return f"- {failure}\n"
    return f"- {first}:\n\n  ```\n{textwrap.indent(rest, '  ')}\n  ```\n"


def _latency_table(summaries: Sequence[Summary]) -> list[str]:
    rows = [
        "## Throughput and latency",
        "",
        "Median round by requests/s; the ranges are min..max over all rounds.",
        "",
        "| system | c | req/s | req/s range | p50 | p50 range | p99 | p99 range | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        m = s.median.wrk
        rows.append(
            f"| {s.system} | {s.connections} | {m.requests_per_s:,.0f} "
            f"| {_range(s.spread(lambda r: r.wrk.requests_per_s), _rate)} "
            f"| {_time(m.p50_s)} | {_range(s.spread(lambda r: r.wrk.p50_s), _time)} "
            f"| {_time(m.p99_s)} | {_range(s.spread(lambda r: r.wrk.p99_s), _time)} "
            f"| {s.errors:,} of {s.requests:,} |"
        )
    return [*rows, ""]


def _comparison_table(
    summaries: Sequence[Summary], system: str, baseline: str, target: float | None
) -> list[str]:
    by_key = {(s.system, s.connections): s.median.wrk for s in summaries}
    rows = []
    verdicts = []
    for c in sorted({s.connections for s in summaries}):
        base, measured = by_key.get((baseline, c)), by_key.get((system, c))
        if base is None or measured is None:
            continue
        ratio = measured.requests_per_s / base.requests_per_s
        if target is not None:
            verdicts.append(f"{'met' if ratio >= target else 'missed'} at c={c} ({ratio:.2f})")
        rows.append(
            f"| {c} | {ratio:.2f} "
            f"| {_signed_time(measured.p50_s - base.p50_s)} "
            f"| {_signed_time(measured.p99_s - base.p99_s)} |"
        )
    if not rows:
        return []
    head = [
        f"## `{system}` against `{baseline}`",
        "",
        f"| c | {system}/{baseline} req/s | added p50 | added p99 |",
        "|--:|--:|--:|--:|",
    ]
    tail = []
    if verdicts:
        tail = [
            "",
            f"Target: {system}/{baseline} req/s of at least {target:.2f} (medians); "
            f"{', '.join(verdicts)}. Speed never fails the run.",
        ]
    return [*head, *rows, *tail, ""]


def _cost_table(
    summaries: Sequence[Summary], processes: Mapping[str, str], peak_rss: Mapping[str, int]
) -> list[str]:
    rows = [
        "## Process cost",
        "",
        "CPU is utime+stime of the system's own process over each measured run "
        "(median over rounds); for `direct` that process is the upstream, for a gateway "
        "system it is agentgw alone, not the upstreams behind it. wrk's share shows "
        "whether the load generator was the limit. "
        "Peak RSS is VmHWM at the end of the whole benchmark.",
        "",
        "| system | process | c | CPU ms / 1k req | its share of a core | wrk's share | peak RSS |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        process = processes.get(s.system, "?")
        cpu = statistics.median(m.cpu_ms_per_1k for m in s.runs)
        share = statistics.median(m.core_share for m in s.runs)
        wrk_share = statistics.median(m.wrk.cpu_s / m.wall_s for m in s.runs)
        rss = peak_rss.get(s.system)
        rss_text = f"{rss / 2**20:.1f} MiB" if rss is not None else "?"
        rows.append(
            f"| {s.system} | {process} | {s.connections} | {cpu:.1f} | {share:.0%} "
            f"| {wrk_share:.0%} | {rss_text} |"
        )
    return [*rows, ""]


def _range(bounds: tuple[float, float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(bounds[0])}..{fmt(bounds[1])}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _time(seconds: float) -> str:
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if abs(seconds) < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _signed_time(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + _time(abs(seconds))
