"""Scenario `soak`: agentgw under mixed MCP traffic for a long time; does it
stay flat?

How this works: one bench/mcp_upstream.js `--sse` (so agentgw holds an
upstream GET stream per session) and agentgw with it as the one target, its
`config.statsAddr` on a free port. bench/soak_clients.js drives, on the
harness's core: `tools/call` in closed loop on 256 connections over 16 shared
sessions; 64 sessions with their GET stream open (and a call on each every
5 s, which finds a session that was lost); 10 times a second, a call of a
500 ms echo that the client leaves 50 ms after sending it. Every few
minutes the harness SIGKILLs the upstream, keeps it down a moment and starts
it again on the same port (its sessions are gone: agentgw's calls on them get
404, and the clients open new sessions). At each sample it asks the upstream
to push one notification to every stream, and reads agentgw's RSS and open
fds from /proc, its Trio task count (the gauge `agentgw_tasks` at
statsAddr/metrics, "n/a" while agentgw does not serve it), and the clients'
counts and latency percentiles since the last sample.

The report states, for RSS, fds and tasks, the growth over the window after
the warm-up (the last 20 minutes of the 30), as the rise of the least-squares
line through the window's samples relative to its value at the window's
start; the target is under 5%. It charts the four series against time.
Growth never fails the run; agentgw or the clients dying does, and so does
an error rate over 0.1% in the samples no restart disturbed.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import own_loop
from bench.base import RunOptions, Scenario, result_path
from bench.launch import (
    MESSAGE,
    mcp_gateway_config,
    start_gateway,
    start_mcp_upstream,
    with_exit,
)
from bench.mcp_session import McpError, check_echo, close_session, open_session
from bench.own_loop import NodeSession, Run, mib, ms
from bench.plot import plot_soak
from bench.systems import Service, StartError, free_port

DURATION_S = 1800
QUICK_DURATION_S = 60
WINDOW_S = 1200  # growth is measured over the last 20 minutes
CALLS = 256
SESSIONS = 16
STREAMS = 64
DEPARTURES_PER_S = 10
DELAY_MS = 500
LEAVE_AFTER_MS = 50
CALL_TIMEOUT_S = 10
RESTART_EVERY_S = 300
DOWN_S = 2.0  # how long the upstream stays down
GROWTH_TARGET = 0.05
# A sample whose interval began less than this after an upstream restart (or
# holds one) is disturbed: its errors are the restart's, and it is left out
# of the growth and of the error rate.
RECOVERY_S = 10.0
QUIET_S = 5  # after the load, before the last reading
UPSTREAM_OPTIONS = ("--sse",)


@dataclass(frozen=True)
class Plan:
    duration_s: int
    sample_s: float
    restart_every_s: float
    window_s: float

    @property
    def warmup_s(self) -> float:
        return self.duration_s - self.window_s


def plan(duration_s: int) -> Plan:
    """Samples every 10 s, restarts every 5 minutes, and growth over the last 20
    minutes; a short run (--quick) scales them down."""
    if duration_s >= 3 * RESTART_EVERY_S:
        return Plan(duration_s, 10.0, RESTART_EVERY_S, min(WINDOW_S, duration_s * 2 / 3))
    return Plan(duration_s, 2.0, max(10.0, duration_s / 3), duration_s * 2 / 3)


@dataclass(frozen=True)
class Sample:
    since_s: float  # the interval it covers, since the load started
    t_s: float
    rss: int
    fds: int
    tasks: float | None
    clients: dict[str, Any]  # soak_clients.js's sample
    restarted: bool  # disturbed by an upstream restart (see RECOVERY_S)


def growth(times: Sequence[float], values: Sequence[float | None], start: float) -> float | None:
    """The rise of the least-squares line through the (time, value) points from
    `start` on, from `start` to the last time, relative to the line's value at
    `start`; None with fewer than 3 points or a line at or below 0 there."""
    points = [(t, v) for t, v in zip(times, values, strict=True) if t >= start and v is not None]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    at_start = mean_v + slope * (start - mean_t)
    if at_start <= 0:
        return None
    return slope * (points[-1][0] - start) / at_start


def scrape_tasks(stats_port: int) -> float | None:
    """The gauge `agentgw_tasks` from agentgw's /metrics, or None when it has none."""
    conn = http.client.HTTPConnection("127.0.0.1", stats_port, timeout=2)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if response.status != 200:
        return None
    found = re.search(r"^agentgw_tasks(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", text, re.M)
    return float(found.group(1)) if found else None


class Upstream:
    """The upstream the soak kills and starts again on the same port."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self.service = start_mcp_upstream("a", cpu, *UPSTREAM_OPTIONS)
        self.port = self.service.port
        self.restarts: list[float] = []

    def restart(self, at_s: float, down_s: float) -> None:
        """SIGKILL it, wait `down_s`, start it on the same port.

        Raises:
            StartError: it did not start again within a few tries.
        """
        self.service.kill()
        self.restarts.append(at_s)
        time.sleep(down_s)
        for attempt in range(5):
            try:
                self.service = start_mcp_upstream("a", self.cpu, *UPSTREAM_OPTIONS, port=self.port)
                return
            except StartError:
                if attempt == 4:
                    raise
                time.sleep(1)

    def broadcast(self) -> None:
        """One notification to every open stream; best effort."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("POST", "/admin/broadcast?count=1&rate=1000")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.service.stop()


def run(options: RunOptions, quick: bool) -> int:
    p = plan(options.soak_s or (QUICK_DURATION_S if quick else DURATION_S))
    method = (
        f"{p.duration_s:,} s of load: tools/call in closed loop on {CALLS} connections over "
        f"{SESSIONS} sessions, {STREAMS} sessions with a GET stream open, "
        f"{DEPARTURES_PER_S} calls a second left {LEAVE_AFTER_MS} ms into a {DELAY_MS} ms "
        f"call; the upstream killed (SIGKILL) and started again every "
        f"{p.restart_every_s:g} s, down {DOWN_S:g} s; a sample every {p.sample_s:g} s; "
        f"growth over the last {p.window_s:g} s"
    )
    return own_loop.run_own("soak", SCENARIO.summary, method, options, quick, lambda r: _soak(r, p))


def _soak(run: Run, p: Plan) -> None:
    if not run.wants("gateway"):
        return
    upstream = Upstream(run.placement.server_cpu)
    run.stack.callback(upstream.stop)
    port, stats_port = free_port(), free_port()
    config = mcp_gateway_config(
        port, [upstream.service], settings={"statsAddr": f"127.0.0.1:{stats_port}"}
    )
    gateway = start_gateway("agentgw", config, port, run.placement)
    run.stack.callback(gateway.stop)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        check = open_session(url)
        check_echo(check, "echo", MESSAGE, calls=5)
        close_session(check)
    except McpError as exc:
        raise StartError(with_exit(f"gateway: {exc}", gateway)) from None
    has_tasks = scrape_tasks(stats_port) is not None
    run.facts += [
        ("load", "bench/soak_clients.js (one Node process, node:http)"),
        ("upstream", "bench/mcp_upstream.js --sse"),
        (
            "tasks",
            f"the gauge agentgw_tasks at http://127.0.0.1:{stats_port}/metrics (config.statsAddr)"
            if has_tasks
            else "n/a: agentgw serves no agentgw_tasks gauge at config.statsAddr yet",
        ),
    ]
    time.sleep(1)
    before = _reading(gateway, stats_port, upstream.port)
    args = [
        *("--url", url, "--calls", str(CALLS), "--sessions", str(SESSIONS)),
        *("--streams", str(STREAMS), "--departures", str(DEPARTURES_PER_S)),
        *("--delay-ms", str(DELAY_MS), "--leave-after-ms", str(LEAVE_AFTER_MS)),
        *("--timeout", str(CALL_TIMEOUT_S), "--message", MESSAGE),
    ]
    clients = NodeSession("soak_clients.js", args, run.placement.load_cpu)
    run.stack.callback(clients.close)
    ready = clients.read(120)
    print(f"soak: clients ready: {ready}", flush=True)
    cpu_before = gateway.cpu_seconds()
    samples = _drive(run, p, gateway, upstream, clients, stats_port)
    load_s = samples[-1].t_s if samples else 0.0
    cpu_s = gateway.cpu_seconds() - cpu_before if gateway.is_running() else float("nan")
    totals = clients.command("stop", CALL_TIMEOUT_S + 60)
    print(f"soak: clients stopped: {totals}", flush=True)
    time.sleep(QUIET_S)
    after: Reading | None = None
    if gateway.is_running():
        after = _reading(gateway, stats_port, upstream.port)
    else:
        run.fail(with_exit("agentgw exited during the soak", gateway))
    _report(run, p, samples, upstream.restarts, totals, ready)
    _report_process(run, before, after, cpu_s, load_s, gateway)


def _drive(
    run: Run,
    p: Plan,
    gateway: Service,
    upstream: Upstream,
    clients: NodeSession,
    stats_port: int,
) -> list[Sample]:
    samples: list[Sample] = []
    started = time.monotonic()
    next_sample = p.sample_s
    next_restart = p.restart_every_s
    while next_sample <= p.duration_s + 1e-9:
        now = time.monotonic() - started
        if next_restart < next_sample and next_restart < p.duration_s:
            time.sleep(max(0.0, next_restart - now))
            print(f"soak: {next_restart:,.0f} s: restarting the upstream", flush=True)
            upstream.restart(time.monotonic() - started, DOWN_S)
            next_restart += p.restart_every_s
            continue
        time.sleep(max(0.0, next_sample - now))
        since_s = samples[-1].t_s if samples else 0.0
        t_s = time.monotonic() - started
        got = clients.command("sample", 30)
        if not gateway.is_running():
            run.fail(with_exit(f"agentgw exited {t_s:,.0f} s into the soak", gateway))
            break
        sample = Sample(
            since_s=since_s,
            t_s=t_s,
            rss=own_loop.rss_bytes(gateway),
            fds=own_loop.open_fds(gateway),
            tasks=scrape_tasks(stats_port),
            clients=got,
            restarted=any(since_s - RECOVERY_S < r <= t_s for r in upstream.restarts),
        )
        samples.append(sample)
        upstream.broadcast()
        print(_progress(sample), flush=True)
        next_sample += p.sample_s
    return samples


def _progress(s: Sample) -> str:
    c = s.clients
    errors = sum(c["errors"].values())
    incidents = sum(c["incidents"].values())
    tasks = "n/a" if s.tasks is None else f"{s.tasks:,.0f}"
    return (
        f"soak: {s.t_s:7,.0f} s  calls {c['calls']:>7,}  errors {errors:>5,}  "
        f"incidents {incidents:>4,}  "
        f"p99 {ms(c['latency_ms']['p99'])}  RSS {mib(s.rss)}  fds {s.fds:,}  tasks {tasks}  "
        f"streams {c['streams_open']}" + ("  (upstream restarted)" if s.restarted else "")
    )


def _report(
    run: Run,
    p: Plan,
    samples: list[Sample],
    restarts: list[float],
    totals: dict[str, Any],
    ready: dict[str, Any],
) -> None:
    if not samples:
        run.fail("soak: no sample was taken")
        return
    times = [s.t_s for s in samples]
    start = samples[-1].t_s - p.window_s
    # Growth is read from the samples no restart disturbed: a restart drops and
    # reopens connections, a dip that is not a trend.
    calm = [not s.restarted for s in samples]
    series: list[tuple[str, list[float | None]]] = [
        ("RSS", [float(s.rss) if ok else None for s, ok in zip(samples, calm, strict=True)]),
        ("open fds", [float(s.fds) if ok else None for s, ok in zip(samples, calm, strict=True)]),
        ("Trio tasks", [s.tasks if ok else None for s, ok in zip(samples, calm, strict=True)]),
    ]
    rows = []
    for name, values in series:
        in_window = [v for t, v in zip(times, values, strict=True) if t >= start and v is not None]
        rise = growth(times, values, start)
        if rise is None or not in_window:
            rows.append([name, "n/a", "n/a", "n/a", "n/a", "not measured"])
            continue
        shown = mib if name == "RSS" else (lambda v: f"{v:,.0f}")
        verdict = "met" if rise < GROWTH_TARGET else "missed"
        rows.append(
            [
                name,
                shown(in_window[0]),
                shown(in_window[-1]),
                f"{shown(min(in_window))}..{shown(max(in_window))}",
                f"**{rise:+.1%}**",
                verdict if name != "Trio tasks" else f"{verdict} (reported, no target)",
            ]
        )
    run.table(
        "Growth after the warm-up",
        f"Over the last {p.window_s:,.0f} s of the {p.duration_s:,} s (the first "
        f"{p.warmup_s:,.0f} s are the warm-up). Growth: the rise of the least-squares line "
        "through the window's samples that no restart disturbed, over the window, relative "
        f"to its value at the window's start. Target: under {GROWTH_TARGET:.0%} for RSS and "
        "fds (it never fails the run).",
        ["measure", "window's first calm sample", "last", "range", "growth", "verdict"],
        rows,
    )
    plot_path = result_path(run.options.results_dir, "soak", ".png")
    plot = plot_soak(
        times,
        [
            ("RSS, MiB", [s.rss / 2**20 for s in samples]),
            ("open fds", [float(s.fds) for s in samples]),
            ("Trio tasks", [s.tasks for s in samples]),
            ("p99 latency, ms", [s.clients["latency_ms"]["p99"] for s in samples]),
        ],
        plot_path,
        title="agentgw soak",
        warmup_s=p.warmup_s,
        restarts_s=restarts,
    )
    if plot is not None:
        run.sections += [f"![RSS, fds, tasks and p99 against time]({plot.name})", ""]
    _report_traffic(run, p, samples, totals, ready)
    run.table(
        "Samples",
        f"One row per {p.sample_s:g} s: what the clients saw since the previous sample "
        "(calls answered and their latency, call errors, incidents, calls left mid-way, "
        "streams open, "
        "notifications received on them), and agentgw's RSS, open fds and tasks at the "
        f"sample. `*`: disturbed, the upstream restarted in it or less than {RECOVERY_S:g} s "
        "before it began.",
        [
            "t",
            "calls/s",
            "errors",
            "incidents",
            "p50",
            "p99",
            "max",
            "left",
            "streams",
            "events",
            "RSS",
            "fds",
            "tasks",
        ],
        [_sample_row(s, p.sample_s) for s in samples],
    )


def _kinds(counts: dict[str, int], empty: str = "0") -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(counts.items())) or empty


def _sample_row(s: Sample, sample_s: float) -> list[str]:
    c = s.clients
    lat = c["latency_ms"]
    return [
        f"{s.t_s:,.0f} s" + ("*" if s.restarted else ""),
        f"{c['calls'] / sample_s:,.0f}",
        _kinds(c["errors"]),
        _kinds(c["incidents"]),
        ms(lat["p50"]),
        ms(lat["p99"]),
        ms(lat["max"]),
        f"{c['departures']:,}",
        f"{c['streams_open']}",
        f"{c['events']:,}",
        mib(s.rss),
        f"{s.fds:,}",
        "n/a" if s.tasks is None else f"{s.tasks:,.0f}",
    ]


def _report_traffic(
    run: Run,
    p: Plan,
    samples: list[Sample],
    totals: dict[str, Any],
    ready: dict[str, Any],
) -> None:
    # The error rate that fails the run: calls in calm samples after the warm-up.
    checked = [s for s in samples if not s.restarted and s.since_s >= p.warmup_s]
    calls = sum(s.clients["calls"] for s in checked)
    errors = sum(sum(s.clients["errors"].values()) for s in checked)
    run.check_rate("soak, calls in calm samples after the warm-up", errors, calls + errors)
    disturbed = sum(sum(s.clients["errors"].values()) for s in samples if s.restarted)
    run.table(
        "Traffic",
        "Counted by bench/soak_clients.js over the whole load. Errors are calls that "
        "failed; incidents are the other failures (opening a session or a stream, a "
        "stream's probe call). Only call errors in calm samples after the warm-up count "
        "against the 0.1% that fails the run.",
        ["measure", "value"],
        [
            [
                "sessions and streams at the start",
                f"{ready['sessions']} call sessions, "
                f"{ready['streams_open']} of {STREAMS} streams open in {ready['open_s']:.1f} s",
            ],
            ["calls answered with the echo", f"{totals['calls']:,}"],
            ["call errors, by kind", _kinds(totals["errors"], "none")],
            [
                "call errors in calm samples after the warm-up",
                f"{errors:,} of {calls + errors:,}",
            ],
            ["call errors in samples a restart disturbed", f"{disturbed:,}"],
            ["incidents, by kind", _kinds(totals["incidents"], "none")],
            ["calls left mid-way", f"{totals['departures']:,}"],
            ["of those, answered before the client left", f"{totals['answered_before_leaving']:,}"],
            ["call sessions replaced (404 or a JSON-RPC error)", f"{totals['renewals']:,}"],
            ["streams reopened on a new session", f"{totals['reopened']:,}"],
            ["notifications received on the streams", f"{totals['events']:,}"],
            ["calls still in flight when the load stopped", f"{totals['in_flight']:,}"],
        ],
    )


@dataclass(frozen=True)
class Reading:
    rss: int
    fds: int
    tasks: float | None
    sockets: dict[str, int]  # own_loop.tcp_sockets: listening, to the upstream, clients

    def rows(self, when: str) -> list[list[str]]:
        s = self.sockets
        return [
            [f"RSS {when}", mib(self.rss)],
            [
                f"open fds {when}",
                f"{self.fds:,}: TCP sockets {s['upstream']:,} to the upstream, "
                f"{s['clients']:,} from clients, {s['listen']:,} listening",
            ],
            [f"tasks {when}", "n/a" if self.tasks is None else f"{self.tasks:,.0f}"],
        ]


def _reading(gateway: Service, stats_port: int, upstream_port: int) -> Reading:
    return Reading(
        rss=own_loop.rss_bytes(gateway),
        fds=own_loop.open_fds(gateway),
        tasks=scrape_tasks(stats_port),
        sockets=own_loop.tcp_sockets(gateway, upstream_port),
    )


def _report_process(
    run: Run,
    before: Reading,
    after: Reading | None,
    cpu_s: float,
    load_s: float,
    gateway: Service,
) -> None:
    rows = before.rows("before the load")
    if after is not None:
        rows += after.rows(f"{QUIET_S} s after the load (every session deleted)")
        rows.append(["peak RSS (VmHWM)", mib(own_loop.peak_rss_bytes(gateway))])
    if load_s > 0:
        rows.append(
            ["agentgw CPU over the load", f"{cpu_s:,.0f} s ({cpu_s / load_s:.0%} of a core)"]
        )
    run.table("agentgw before and after", "", ["measure", "value"], rows)


SCENARIO = Scenario(
    name="soak",
    summary=(
        f"30 minutes of MCP tools/call at c={CALLS} through agentgw, mixed with open GET "
        "streams, clients leaving mid-call and upstream restarts: RSS, fds, tasks and p99 "
        "against time (run only by name)"
    ),
    systems=("gateway",),
    run=run,
)
