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

    def error_kinds(self) -> list[tuple[str, int]]:
        """The errors of all rounds by kind (wrk's socket error kinds, non-2xx,
        unexpected), largest first."""
        counts: dict[str, int] = {}
        for m in self.runs:
            for kind, n in m.wrk.error_kinds:
                counts[kind] = counts.get(kind, 0) + n
        return sorted(counts.items(), key=lambda kv: -kv[1])

    @property
    def cpu_per_request_s(self) -> float:
        """The system's CPU time per request, median over rounds."""
        return statistics.median(
            m.cpu_s / m.wrk.requests if m.wrk.requests else 0.0 for m in self.runs
        )

    def describe_errors(self) -> str:
        text = f"{self.errors:,} of {self.requests:,}"
        if self.errors:
            text += f" ({_kinds(self)})"
        return text


def _kinds(s: Summary) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in s.error_kinds()) or "none counted"


# ------------------------------------------------------------ targets
# What an issue asks of a scenario's numbers. Each gives, per concurrency it
# applies to, the measured value and whether it was met; the report's Targets
# table says met or missed with the numbers. None ever fails a run.


@dataclass(frozen=True)
class RatioTarget:
    """`system`/`baseline` median req/s of at least `ratio`, at each concurrency of
    `at` (empty: at every one where both were measured)."""

    system: str
    baseline: str
    ratio: float
    at: tuple[int, ...] = ()

    def what(self) -> str:
        return f"{self.system}/{self.baseline} req/s"

    def wanted(self) -> str:
        return f"at least {self.ratio:.2f}{_where(self.at)}"

    def points(self, summaries: Sequence[Summary]) -> list[tuple[int, str, bool]]:
        return [
            (c, f"{r:.2f}", r >= self.ratio)
            for c, r in _ratios(summaries, self.system, self.baseline)
            if _applies(self.at, c)
        ]


@dataclass(frozen=True)
class AddedLatencyTarget:
    """`system`'s median p50 at most `limit_s` above `baseline`'s, at each of `at`."""

    system: str
    baseline: str
    limit_s: float
    at: tuple[int, ...] = (1,)

    def what(self) -> str:
        return f"{self.system} p50 added over {self.baseline}"

    def wanted(self) -> str:
        return f"at most {_time(self.limit_s)}{_where(self.at)}"

    def points(self, summaries: Sequence[Summary]) -> list[tuple[int, str, bool]]:
        by_key = _medians(summaries)
        points = []
        for c in _concurrencies(summaries):
            base, measured = by_key.get((self.baseline, c)), by_key.get((self.system, c))
            if base is None or measured is None or not _applies(self.at, c):
                continue
            added = measured.p50_s - base.p50_s
            points.append((c, _signed_time(added), added <= self.limit_s))
        return points


@dataclass(frozen=True)
class FairnessTarget:
    """`system`'s median-round p99 at most `ratio` times its p50, at each of `at`:
    no connection starves while the others are served."""

    system: str
    ratio: float
    at: tuple[int, ...] = (256,)

    def what(self) -> str:
        return f"{self.system} p99/p50"

    def wanted(self) -> str:
        return f"at most {self.ratio:g}{_where(self.at)}"

    def points(self, summaries: Sequence[Summary]) -> list[tuple[int, str, bool]]:
        points = []
        for s in summaries:
            if s.system == self.system and _applies(self.at, s.connections):
                spread = fairness(s.median.wrk)
                points.append((s.connections, f"{spread:.1f}", spread <= self.ratio))
        return points


Target = RatioTarget | AddedLatencyTarget | FairnessTarget


def fairness(w: WrkResult) -> float:
    """p99 over p50: how far the slowest 1% are from the typical request."""
    return w.p99_s / w.p50_s if w.p50_s > 0 else float("inf")


def verdict(points: Sequence[tuple[int, str, bool]]) -> str:
    if not points:
        return "not measured"
    met = [c for c, _, ok in points if ok]
    if len(met) == len(points):
        return "met"
    if met:
        return f"met at c={', '.join(map(str, met))} only"
    return "missed"


def _where(at: tuple[int, ...]) -> str:
    return f" at c={' and c='.join(map(str, at))}" if at else ""


def _applies(at: tuple[int, ...], c: int) -> bool:
    return not at or c in at


def _medians(summaries: Sequence[Summary]) -> dict[tuple[str, int], WrkResult]:
    return {(s.system, s.connections): s.median.wrk for s in summaries}


def _concurrencies(summaries: Sequence[Summary]) -> list[int]:
    return sorted({s.connections for s in summaries})


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
    """One line per system and concurrency whose error rate over all rounds
    exceeds MAX_ERROR_RATE, naming the kinds of error, the most frequent first."""
    return [
        f"{s.system} c={s.connections}: error rate {s.error_rate:.2%} exceeds "
        f"{MAX_ERROR_RATE:.1%}: {s.errors:,} of {s.requests:,} requests over "
        f"{len(s.runs)} round(s) failed, by kind: {_kinds(s)}"
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
    targets: Sequence[Target] = (),
    cost_comparisons: Sequence[tuple[str, str]] = (),
    plot: str | None = None,
) -> str:
    """The Markdown report.

    Args:
        comparisons: (system, baseline) pairs, each getting a table of ratios.
        cost_comparisons: (system, baseline) pairs, each getting a table of what the
            system costs over the baseline: req/s, and CPU time per request.
        targets: what an issue asks of the numbers; the report says where each was met.
        processes: per system, the name of the process whose CPU and RSS are its cost.
        peak_rss: per system, that process's peak RSS in bytes.
        plot: the file name of the report's plot, beside it, if there is one.
    """
    parts = [f"# {info.title}", "", *(f"- {k}: {v}" for k, v in info.facts), ""]
    if plot is not None:
        parts += [f"![requests/s and latency per system and concurrency]({plot})", ""]
    parts += _throughput_matrix(summaries)
    parts += _latency_table(summaries)
    for system, baseline in comparisons:
        pair = [
            t
            for t in targets
            if isinstance(t, RatioTarget | AddedLatencyTarget)
            and (t.system, t.baseline) == (system, baseline)
        ]
        parts += _comparison_table(summaries, system, baseline, pair)
    for system, baseline in cost_comparisons:
        parts += _added_cost_table(summaries, system, baseline)
    parts += _targets_table(summaries, targets)
    parts += _cost_table(summaries, processes, peak_rss)
    if failures:
        parts += ["## Failures", "", *(_failure_item(f) for f in failures)]
    return "\n".join(parts)


def _failure_item(failure: str) -> str:
    first, _, rest = failure.partition(": ")
    if "\n" not in rest:
        return f"- {failure}\n"
    return f"- {first}:\n\n  ```\n{textwrap.indent(rest, '  ')}\n  ```\n"


def _throughput_matrix(summaries: Sequence[Summary]) -> list[str]:
    systems = list(dict.fromkeys(s.system for s in summaries))
    concurrencies = sorted({s.connections for s in summaries})
    if len(systems) < 2 or len(concurrencies) < 2:
        return []
    by_key = {(s.system, s.connections): s for s in summaries}
    rows = [
        "## Requests per second",
        "",
        "Median round; `n/a` where the system was not measured at that concurrency, "
        "`*` where its error rate exceeded 0.1% (see the errors column below).",
        "",
        "| system | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
        "|---|" + "--:|" * len(concurrencies),
    ]
    for system in systems:
        cells = []
        for c in concurrencies:
            s = by_key.get((system, c))
            if s is None:
                cells.append("n/a")
                continue
            mark = "*" if s.error_rate > MAX_ERROR_RATE else ""
            cells.append(f"{s.median.wrk.requests_per_s:,.0f}{mark}")
        rows.append(f"| {system} | " + " | ".join(cells) + " |")
    return [*rows, ""]


def _latency_table(summaries: Sequence[Summary]) -> list[str]:
    rows = [
        "## Throughput and latency",
        "",
        "Median round by requests/s; the ranges are min..max over all rounds. p99/p50 "
        "shows fairness: how far the slowest 1% of requests are from the typical one.",
        "",
        "| system | c | req/s | req/s range | p50 | p50 range | p90 | p99 | p99 range "
        "| p99/p50 | max | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        m = s.median.wrk
        rows.append(
            f"| {s.system} | {s.connections} | {m.requests_per_s:,.0f} "
            f"| {_range(s.spread(lambda r: r.wrk.requests_per_s), _rate)} "
            f"| {_time(m.p50_s)} | {_range(s.spread(lambda r: r.wrk.p50_s), _time)} "
            f"| {_time(m.p90_s)} "
            f"| {_time(m.p99_s)} | {_range(s.spread(lambda r: r.wrk.p99_s), _time)} "
            f"| {fairness(m):.1f} | {_time(m.max_s)} | {s.describe_errors()} |"
        )
    return [*rows, ""]


def _comparison_table(
    summaries: Sequence[Summary],
    system: str,
    baseline: str,
    targets: Sequence[RatioTarget | AddedLatencyTarget],
) -> list[str]:
    by_key = _medians(summaries)
    rows = []
    for c, ratio in _ratios(summaries, system, baseline):
        base, measured = by_key[(baseline, c)], by_key[(system, c)]
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
    for target in targets:
        points = target.points(summaries)
        if points:
            measured_text = ", ".join(
                f"{'met' if ok else 'missed'} at c={c} ({value})" for c, value, ok in points
            )
            tail += ["", f"Target: {target.what()} {target.wanted()} (medians); {measured_text}."]
    return [*head, *rows, *tail, ""]


def _added_cost_table(summaries: Sequence[Summary], system: str, baseline: str) -> list[str]:
    by_key = {(s.system, s.connections): s for s in summaries}
    rows = []
    for c in _concurrencies(summaries):
        base, measured = by_key.get((baseline, c)), by_key.get((system, c))
        if base is None or measured is None:
            continue
        base_rps, rps = base.median.wrk.requests_per_s, measured.median.wrk.requests_per_s
        base_cpu, cpu = base.cpu_per_request_s, measured.cpu_per_request_s
        added = cpu - base_cpu
        share = f" ({added / base_cpu:+.0%})" if base_cpu > 0 else ""
        rows.append(
            f"| {c} | {base_rps:,.0f} | {rps:,.0f} "
            f"| {rps / base_rps if base_rps > 0 else float('nan'):.2f} "
            f"| {_cpu_time(base_cpu)} | {_cpu_time(cpu)} "
            f"| {'+' if added >= 0 else '-'}{_cpu_time(abs(added))}{share} |"
        )
    if not rows:
        return []
    return [
        f"## What `{system}` costs over `{baseline}`",
        "",
        "Requests/s of the median rounds; CPU time per request of each system's own "
        "processes (the median over rounds, as in the process cost table), and the "
        "difference: what the system spends per request above the baseline.",
        "",
        f"| c | {baseline} req/s | {system} req/s | ratio | {baseline} CPU per request "
        f"| {system} CPU per request | added CPU per request |",
        "|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
    ]


def _cpu_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _ratios(summaries: Sequence[Summary], system: str, baseline: str) -> list[tuple[int, float]]:
    """(c, system/baseline median req/s) at every concurrency where both were measured."""
    by_key = _medians(summaries)
    ratios = []
    for c in _concurrencies(summaries):
        base, measured = by_key.get((baseline, c)), by_key.get((system, c))
        if base is not None and measured is not None and base.requests_per_s > 0:
            ratios.append((c, measured.requests_per_s / base.requests_per_s))
    return ratios


def _targets_table(summaries: Sequence[Summary], targets: Sequence[Target]) -> list[str]:
    rows = []
    for target in targets:
        points = target.points(summaries)
        measured = ", ".join(f"{value} (c={c})" for c, value, _ in points) or "n/a"
        rows.append(f"| {target.what()} | {target.wanted()} | {measured} | {verdict(points)} |")
    if not rows:
        return []
    return [
        "## Targets",
        "",
        "What an issue asks of the median rounds. Speed never fails the run.",
        "",
        "| measure | target | measured | verdict |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _cost_table(
    summaries: Sequence[Summary], processes: Mapping[str, str], peak_rss: Mapping[str, int]
) -> list[str]:
    rows = [
        "## Process cost",
        "",
        "CPU is utime+stime of the system's own processes over each measured run "
        "(median over rounds); for `direct` that is the upstream, for a proxy (agentgw "
        "or a peer) it is the proxy's process and the processes it started (workers), "
        "not the upstream behind it, be it an HTTP server or a stdio server the proxy "
        "spawned. wrk's share shows whether the load generator was the limit. "
        "Peak RSS is the sum of those processes' VmHWM at the end of the whole benchmark.",
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
