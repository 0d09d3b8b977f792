"""Run one scenario and report it.

How this works: the scenario starts its processes once, each on a free port
on 127.0.0.1 (for `http`: a Node upstream, and agentgw proxying to it). With
taskset and 2 cores they run on core 0, while wrk and this harness run on
core 1. Before round 1 each system gets one untimed run to warm up its JIT and
allocator. Each round then loads every system at every concurrency,
alternating the systems (c=1: direct, gateway; c=64: direct, gateway), so
drift of the machine hits both alike. One load is a warm-up wrk run that is
thrown away, then the measured wrk run, around which the process's CPU time is
read from /proc. After the last round each process's peak RSS is read. Per
system and concurrency the round with the median throughput is reported, with
min..max over rounds so the noise shows. The report is printed and written to
bench/results/.

Processes are stopped on every way out (an ExitStack), Ctrl-C and SIGTERM
included. The exit status is 1 when a system failed to start or died, or an
error rate exceeded 0.1%; speed never fails a run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.report import Measurement, RunInfo, Summary, error_failures, render, summarize
from bench.scenarios import Placement, Scenario, Target
from bench.systems import StartError
from bench.wrk import WrkError, WrkResult, ensure_wrk, run_wrk, wrk_command

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRIME_S = 2


@dataclass(frozen=True)
class RunOptions:
    rounds: int
    duration_s: int
    warmup_s: int
    systems: tuple[str, ...] | None  # None: all of the scenario's
    pin: bool
    results_dir: Path = RESULTS_DIR


def run_scenario(scenario: Scenario, options: RunOptions) -> int:
    """Run `scenario`, print and write its report.

    Returns:
        The process exit status: 0, or 1 on a failure (never on speed).
    """
    systems = [s for s in scenario.systems if options.systems is None or s in options.systems]
    if not systems:
        _error(
            f"scenario {scenario.name} has none of the systems {', '.join(options.systems or ())}"
            f" (it has {', '.join(scenario.systems)})"
        )
        return 2
    try:
        wrk = ensure_wrk()
    except WrkError as exc:
        _error(str(exc))
        return 1
    placement = _placement(options.pin)
    print(f"bench {scenario.name}: {placement.describe()}", flush=True)
    with ExitStack() as stack:
        if placement.load_cpu is not None:
            stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))
            os.sched_setaffinity(0, {placement.load_cpu})
        try:
            started = scenario.start(stack, placement, systems)
        except StartError as exc:
            _error(str(exc))
            return 1
        for failure in started.failures:
            _error(failure)
        measurements, failures = _measure(wrk, scenario, started.targets, placement, options)
        peak_rss = _peak_rss(started.targets)
    processes = {t.system: t.service.name for t in started.targets}
    failures = [*started.failures, *failures]
    summaries = summarize(measurements, systems, scenario.concurrencies)
    failures += error_failures(summaries)
    if summaries:
        info = _run_info(scenario, options, placement, wrk, summaries, started.facts)
        report = render(
            info,
            summaries,
            scenario.comparisons,
            processes,
            peak_rss,
            failures,
            targets=scenario.targets,
        )
        print("\n" + report)
        path = _write_report(options.results_dir, scenario.name, report)
        print(f"written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if failures else 0


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _placement(pin: bool) -> Placement:
    cores = sorted(os.sched_getaffinity(0))
    if not pin or shutil.which("taskset") is None or len(cores) < 2:
        return Placement(server_cpu=None, load_cpu=None)
    return Placement(server_cpu=cores[0], load_cpu=cores[1])


def _measure(
    wrk: str,
    scenario: Scenario,
    targets: list[Target],
    placement: Placement,
    options: RunOptions,
) -> tuple[list[Measurement], list[str]]:
    measurements: list[Measurement] = []
    failures: list[str] = []
    live = list(targets)
    width = max((len(t.system) for t in targets), default=0)

    def drop(target: Target, exc: Exception | None) -> None:
        failures.append(_failure(target, exc))
        _error(failures[-1])
        live.remove(target)

    # A fresh process is slow at first (Node's JIT, Python's first allocations):
    # one untimed run each at the highest concurrency keeps that out of round 1.
    for target in list(live):
        try:
            _load(wrk, target, max(scenario.concurrencies), PRIME_S, placement)
        except (WrkError, OSError) as exc:
            drop(target, exc)
    for round_no in range(1, options.rounds + 1):
        for c in scenario.concurrencies:
            for target in list(live):
                try:
                    m = _measure_once(wrk, target, c, round_no, placement, options)
                except (WrkError, OSError) as exc:
                    drop(target, exc)
                    continue
                measurements.append(m)
                _print_progress(m, options.rounds, width)
                if not target.service.is_running():
                    drop(target, None)
    return measurements, failures


def _failure(target: Target, exc: Exception | None) -> str:
    service = target.service
    if not service.is_running():
        return f"{service.name} exited during the benchmark: {service.output_tail()}"
    return f"{target.system}: {exc}"


def _measure_once(
    wrk: str, target: Target, c: int, round_no: int, placement: Placement, options: RunOptions
) -> Measurement:
    _load(wrk, target, c, options.warmup_s, placement)
    cpu_before = target.service.cpu_seconds()
    started = time.monotonic()
    result = _load(wrk, target, c, options.duration_s, placement)
    wall_s = time.monotonic() - started
    cpu_s = target.service.cpu_seconds() - cpu_before if target.service.is_running() else 0.0
    return Measurement(round_no, target.system, c, result, wall_s, cpu_s)


def _load(wrk: str, target: Target, c: int, duration_s: int, placement: Placement) -> WrkResult:
    argv = wrk_command(
        wrk,
        target.url,
        connections=c,
        threads=_wrk_threads(c, placement),
        duration_s=duration_s,
        cpu=placement.load_cpu,
        script=target.script,
    )
    return run_wrk(argv, duration_s=duration_s, env=target.env)


def _wrk_threads(connections: int, placement: Placement) -> int:
    # Pinned to one core, a second wrk thread only competes with the first.
    if placement.load_cpu is not None:
        return 1
    return min(2, connections)


def _print_progress(m: Measurement, rounds: int, width: int) -> None:
    w = m.wrk
    print(
        f"round {m.round}/{rounds}  c={m.connections:<3} {m.system:<{width}}"
        f"{w.requests_per_s:>10,.0f} req/s  p50 {w.p50_s * 1e3:7.3f} ms"
        f"  p99 {w.p99_s * 1e3:7.3f} ms  errors {w.errors}"
        f"  ({m.system} CPU {m.core_share:.0%}, wrk CPU {w.cpu_s / m.wall_s:.0%})",
        flush=True,
    )


def _peak_rss(targets: list[Target]) -> dict[str, int]:
    peaks = {}
    for target in targets:
        with contextlib.suppress(OSError):
            peaks[target.system] = target.service.peak_rss_bytes()
    return peaks


def _run_info(
    scenario: Scenario,
    options: RunOptions,
    placement: Placement,
    wrk: str,
    summaries: Sequence[Summary],
    scenario_facts: Sequence[tuple[str, str]],
) -> RunInfo:
    now = datetime.datetime.now().astimezone()
    threads = sorted({_wrk_threads(c, placement) for c in scenario.concurrencies})
    facts = [
        ("when", now.strftime("%Y-%m-%d %H:%M %Z")),
        ("scenario", scenario.summary),
        ("machine", f"{_cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}"),
        ("placement", placement.describe()),
        (
            "method",
            f"{options.rounds} round(s); each round runs every system at every concurrency, "
            f"alternating systems; {options.warmup_s} s warm-up then {options.duration_s} s "
            f"measured per run",
        ),
        ("load", f"{_version([wrk, '-v'])}, -t{'/'.join(map(str, threads))}, {scenario.load}"),
        ("upstream", f"{scenario.upstream} on node {_version(['node', '--version'])}"),
        ("agentgw", _git_revision()),
        *scenario_facts,
    ]
    ceiling = [s for s in summaries if s.system == "direct"]
    if ceiling:
        best = max(ceiling, key=lambda s: s.median.wrk.requests_per_s)
        facts.append(
            (
                "upstream ceiling",
                f"{best.median.wrk.requests_per_s:,.0f} req/s (direct, c={best.connections})",
            )
        )
    return RunInfo(f"Benchmark `{scenario.name}`", tuple(facts))


def _write_report(results_dir: Path, scenario: str, report: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{datetime.date.today().isoformat()}-{scenario}.md"
    path.write_text(report)
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "?"


def _git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown revision"
    return revision + (" with uncommitted changes" if git("status", "--porcelain") else "")
