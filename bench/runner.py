"""Run one scenario and report it.

How this works: the scenario starts its processes once, each on a free port
on 127.0.0.1 (for `http`: a Node upstream, and agentgw proxying to it). With
taskset and 2 cores they run on core 0, while wrk and this harness run on
core 1. Before round 1 each system gets one untimed run to warm up its JIT and
allocator (not with --quick). Each round then loads every system at every concurrency,
alternating the systems (c=1: direct, gateway; c=64: direct, gateway), so
drift of the machine hits both alike. One load is a warm-up wrk run that is
thrown away, then the measured wrk run, around which the process's CPU time is
read from /proc. After each load the harness waits until the system is idle
again (a slow peer may still be working off requests that wrk gave up on), so
its backlog does not steal the core from the next system. After the last
round each process's peak RSS is read. Per
system and concurrency the round with the median throughput is reported, with
min..max over rounds so the noise shows. The report is printed and written to
bench/results/, with a PNG plot beside it (bench/plot.py) when matplotlib is
installed.

Processes are stopped on every way out (an ExitStack), Ctrl-C and SIGTERM
included. The exit status is 1 when a system failed to start or died, or an
error rate exceeded 0.1%; speed never fails a run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack

from bench.base import (
    LoadTarget,
    Placement,
    RunOptions,
    Scenario,
    choose_placement,
    git_revision,
    machine,
    now_text,
    result_path,
    shown,
    version,
    write_report,
)
from bench.plot import plot_summaries
from bench.report import Measurement, RunInfo, Summary, error_failures, render, summarize
from bench.systems import StartError
from bench.wrk import WrkError, WrkResult, ensure_wrk, run_wrk, wrk_command

PRIME_S = 2
# Idle: the system used less than this share of a core over one poll.
IDLE_SHARE = 0.05
IDLE_POLL_S = 0.1
IDLE_WAIT_MAX_S = 30.0


def run_scenario(scenario: Scenario, options: RunOptions, *, quick: bool = False) -> int:
    """Run `scenario`, print and write its report.

    Args:
        quick: run only the scenario's `quick_concurrencies`, if it has any.

    Returns:
        The process exit status: 0, or 1 on a failure (never on speed).
    """
    concurrencies = (
        scenario.quick_concurrencies
        if quick and scenario.quick_concurrencies
        else scenario.concurrencies
    )
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
    placement = choose_placement(options.pin)
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
        load_before = os.getloadavg()[0]
        measurements, failures = _measure(
            wrk, scenario, concurrencies, started.targets, placement, options, prime=not quick
        )
        load_after = os.getloadavg()[0]
        peak_rss = _peak_rss(started.targets)
    processes = {t.system: t.service.name for t in started.targets}
    failures = [*started.failures, *failures]
    summaries = summarize(measurements, systems, concurrencies)
    failures += error_failures(summaries)
    if summaries:
        machine_load = (
            f"load average (1 min) {load_before:.2f} before the first run, "
            f"{load_after:.2f} after the last (on 2 cores, this harness's own load is "
            "about 1 to 2: more means other work shared the machine)"
        )
        info = _run_info(
            scenario,
            concurrencies,
            options,
            placement,
            wrk,
            summaries,
            [("machine load", machine_load), *started.facts],
        )
        png = result_path(options.results_dir, scenario.name, ".png")
        plot = plot_summaries(summaries, png, title=info.title)
        report = render(
            info,
            summaries,
            scenario.comparisons,
            processes,
            peak_rss,
            failures,
            targets=scenario.targets,
            cost_comparisons=scenario.cost_comparisons,
            plot=plot.name if plot is not None else None,
        )
        print("\n" + report)
        path = write_report(options.results_dir, scenario.name, report)
        print(f"written to {shown(path)}" + (f" and {shown(plot)}" if plot else ""))
    for failure in failures:
        _error(failure.split("\n", 1)[0])
    return 1 if failures else 0


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _measure(
    wrk: str,
    scenario: Scenario,
    concurrencies: Sequence[int],
    targets: list[LoadTarget],
    placement: Placement,
    options: RunOptions,
    *,
    prime: bool = True,
) -> tuple[list[Measurement], list[str]]:
    measurements: list[Measurement] = []
    failures: list[str] = []
    live = list(targets)
    width = max((len(t.system) for t in targets), default=0)

    def drop(target: LoadTarget, exc: Exception | None) -> None:
        failures.append(_failure(target, exc))
        _error(failures[-1])
        live.remove(target)

    # A fresh process is slow at first (Node's JIT, Python's first allocations):
    # one untimed run each at the highest concurrency keeps that out of round 1
    # (not in a --quick smoke run).
    timeout_s = scenario.request_timeout_s
    for target in list(live) if prime else []:
        try:
            _load(wrk, target, max(concurrencies), PRIME_S, placement, timeout_s)
        except (WrkError, OSError) as exc:
            drop(target, exc)
        else:
            _wait_idle(target)
    for round_no in range(1, options.rounds + 1):
        for c in concurrencies:
            for target in list(live):
                try:
                    m = _measure_once(wrk, target, c, round_no, placement, options, timeout_s)
                except (WrkError, OSError) as exc:
                    drop(target, exc)
                    continue
                measurements.append(m)
                _print_progress(m, options.rounds, width)
                if not target.service.is_running():
                    drop(target, None)
                else:
                    _wait_idle(target)
    return measurements, failures


def _wait_idle(target: LoadTarget) -> None:
    """Wait (IDLE_WAIT_MAX_S at most) until the system's processes use less than
    IDLE_SHARE of a core over one poll."""
    service = target.service
    deadline = time.monotonic() + IDLE_WAIT_MAX_S
    before = service.cpu_seconds()
    while time.monotonic() < deadline and service.is_running():
        time.sleep(IDLE_POLL_S)
        now = service.cpu_seconds()
        if now - before < IDLE_SHARE * IDLE_POLL_S:
            return
        before = now


def _failure(target: LoadTarget, exc: Exception | None) -> str:
    service = target.service
    if not service.is_running():
        return f"{service.name} exited during the benchmark: {service.output_tail()}"
    return f"{target.system}: {exc}"


def _measure_once(
    wrk: str,
    target: LoadTarget,
    c: int,
    round_no: int,
    placement: Placement,
    options: RunOptions,
    timeout_s: int,
) -> Measurement:
    _load(wrk, target, c, options.warmup_s, placement, timeout_s)
    cpu_before = target.service.cpu_seconds()
    started = time.monotonic()
    result = _load(wrk, target, c, options.duration_s, placement, timeout_s)
    wall_s = time.monotonic() - started
    cpu_s = target.service.cpu_seconds() - cpu_before if target.service.is_running() else 0.0
    return Measurement(round_no, target.system, c, result, wall_s, cpu_s)


def _load(
    wrk: str, target: LoadTarget, c: int, duration_s: int, placement: Placement, timeout_s: int
) -> WrkResult:
    argv = wrk_command(
        wrk,
        target.url,
        connections=c,
        threads=_wrk_threads(c, placement),
        duration_s=duration_s,
        cpu=placement.load_cpu,
        script=target.script,
        timeout_s=timeout_s,
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


def _peak_rss(targets: list[LoadTarget]) -> dict[str, int]:
    peaks = {}
    for target in targets:
        with contextlib.suppress(OSError):
            peaks[target.system] = target.service.peak_rss_bytes()
    return peaks


def _run_info(
    scenario: Scenario,
    concurrencies: Sequence[int],
    options: RunOptions,
    placement: Placement,
    wrk: str,
    summaries: Sequence[Summary],
    scenario_facts: Sequence[tuple[str, str]],
) -> RunInfo:
    threads = sorted({_wrk_threads(c, placement) for c in concurrencies})
    facts = [
        ("when", now_text()),
        ("scenario", scenario.summary),
        ("machine", machine()),
        ("placement", placement.describe()),
        (
            "method",
            f"{options.rounds} round(s); each round runs every system at every concurrency, "
            f"alternating systems; {options.warmup_s} s warm-up then {options.duration_s} s "
            f"measured per run",
        ),
        (
            "load",
            f"{version([wrk, '-v'])}, -t{'/'.join(map(str, threads))}, "
            f"--timeout {scenario.request_timeout_s}s, "
            f"c={', '.join(map(str, concurrencies))}, {scenario.load}",
        ),
        ("upstream", f"{scenario.upstream} on node {version(['node', '--version'])}"),
        ("agentgw", git_revision()),
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
