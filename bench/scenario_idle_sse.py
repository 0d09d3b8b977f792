"""Scenario `idle-sse`: what 10,000 idle sessions with an open GET stream cost agentgw.

One bench/mcp_upstream.js (it answers GET with 405: no upstream stream to
hold) and one agentgw with it as the one target, `maxConnections` raised
above the session count. The harness checks the echo on a session of its own
and deletes it. Then bench/sse_clients.js opens the sessions (`initialize`,
`notifications/initialized`, and a GET with `Accept: text/event-stream` kept
open on its own connection), and the harness reads agentgw's RSS, fds and TCP
sockets before and after, holds the streams idle, and finally sends agentgw
SIGTERM and times its exit with every stream open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bench import own_loop
from bench.base import RunOptions, Scenario
from bench.launch import (
    MESSAGE,
    mcp_gateway_config,
    start_gateway,
    start_mcp_upstream,
    with_exit,
)
from bench.mcp_session import McpError, check_echo, close_session, open_session
from bench.own_loop import NodeSession, Run, kib, mib
from bench.systems import StartError, free_port

SESSIONS = 10_000
QUICK_SESSIONS = 1_000
HOLD_S = 20  # longer than agentgw's 15 s SSE keep-alive, so a comment arrives
QUICK_HOLD_S = 3
PARALLEL = 32
MAX_CONNECTIONS = 15_000
TARGET_KIB = 24  # issue 10
DRAIN_WAIT_S = 120

# agentgw's own limits: MCP sessions are capped at 10,000 (not configurable);
# client connections at config.http.maxConnections, raised here.
LIMITS = {"http": {"maxConnections": MAX_CONNECTIONS}}


def run(options: RunOptions, quick: bool) -> int:
    sessions = QUICK_SESSIONS if quick else SESSIONS
    hold = QUICK_HOLD_S if quick else HOLD_S
    method = (
        f"{sessions:,} sessions opened {PARALLEL} at a time, each with its GET stream kept "
        f"open on its own connection; held idle {hold} s; then SIGTERM to agentgw with "
        f"every stream open"
    )
    return own_loop.run_own(
        "idle-sse",
        SCENARIO.summary,
        method,
        options,
        quick,
        lambda r: _measure(r, sessions, hold),
    )


def _measure(run: Run, sessions: int, hold_s: int) -> None:
    upstream = start_mcp_upstream("a", run.placement.server_cpu)
    run.stack.callback(upstream.stop)
    port = free_port()
    config = mcp_gateway_config(port, [upstream], settings=LIMITS)
    gateway = start_gateway("agentgw", config, port, run.placement)
    run.stack.callback(gateway.stop)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        check = open_session(url)
        check_echo(check, "echo", MESSAGE, calls=5)
        close_session(check)
    except McpError as exc:
        raise StartError(with_exit(f"gateway: {exc}", gateway)) from None
    limit = _fd_limit(gateway.proc.pid)
    run.facts += [
        ("load", "bench/sse_clients.js (one Node process, one connection per stream)"),
        ("upstream", "bench/mcp_upstream.js (GET /mcp answers 405: no upstream stream)"),
        (
            "agentgw limits",
            f"maxConnections {MAX_CONNECTIONS:,} (config.http), at most 10,000 MCP "
            f"sessions (built in), fd limit {limit}, connectionTerminationDeadline 5 s "
            "(default)",
        ),
    ]
    time.sleep(1)
    rss_before = own_loop.rss_bytes(gateway)
    fds_before = own_loop.open_fds(gateway)
    args = ["--url", url, "--sessions", str(sessions), "--parallel", str(PARALLEL)]
    clients = NodeSession("sse_clients.js", args, run.placement.load_cpu)
    run.stack.callback(clients.close)
    cpu_before = gateway.cpu_seconds()
    opened = clients.read(600 + sessions * 0.1)
    print(f"opened: {opened}", flush=True)
    open_cpu = gateway.cpu_seconds() - cpu_before
    failed = sessions - opened["open"]
    run.check_rate("sessions opened", failed, sessions, "failure")
    time.sleep(1)
    before_hold = clients.command("stats", 30)
    rss_open = own_loop.rss_bytes(gateway)
    fds_open = own_loop.open_fds(gateway)
    sockets = own_loop.tcp_sockets(gateway, upstream.port)
    idle_cpu = gateway.cpu_seconds()
    time.sleep(hold_s)
    idle_cpu = gateway.cpu_seconds() - idle_cpu
    held = clients.command("stats", 30)
    print(f"after {hold_s} s idle: {held}", flush=True)
    if held["open"] != opened["open"]:
        run.fail(f"streams closed while idle: {held}")
    rss_held = own_loop.rss_bytes(gateway)
    peak = own_loop.peak_rss_bytes(gateway)

    sigterm_at = time.time() * 1000
    started = time.monotonic()
    os.kill(gateway.proc.pid, signal.SIGTERM)
    try:
        gateway.proc.wait(timeout=DRAIN_WAIT_S)
        drain = f"{time.monotonic() - started:.2f} s (exit status {gateway.proc.returncode})"
    except subprocess.TimeoutExpired:
        drain = f"did not exit in {DRAIN_WAIT_S} s"
        run.fail(f"agentgw did not exit within {DRAIN_WAIT_S} s of SIGTERM")
    time.sleep(0.5)
    after = clients.command("stats", 30)
    print(f"after SIGTERM: {after}", flush=True)
    closed_in = f"{(after['last_close'] - sigterm_at) / 1000:.2f} s" if after["last_close"] else "-"

    per_session = (rss_open - rss_before) / max(1, opened["open"])
    verdict = "met" if per_session <= TARGET_KIB * 1024 else "missed"
    run.table(
        "Idle sessions with an open GET stream",
        "RSS is VmRSS of agentgw from /proc (before: after start and one checked session, "
        "deleted; after: 1 s after the last stream opened). fds are /proc/<pid>/fd entries; "
        "TCP sockets are agentgw's, split into those to the upstream and the rest (its "
        f"clients). Target: at most {TARGET_KIB} KiB per idle session: {verdict} "
        f"({kib(per_session)}; it never fails the run).",
        ["measure", "value"],
        [
            ["sessions opened", f"{opened['open']:,} of {sessions:,}"],
            [
                "failures",
                ", ".join(
                    f"{k}: {n} ({opened['failure_samples'].get(k, '')})"
                    for k, n in opened["failures"].items()
                )
                or "none",
            ],
            [
                "time to open them",
                f"{opened['open_s']:.1f} s ({opened['open'] / opened['open_s']:,.0f} "
                f"sessions/s; agentgw CPU {open_cpu:.1f} s)",
            ],
            ["RSS before", mib(rss_before)],
            ["RSS with the streams open", mib(rss_open)],
            [f"RSS after {hold_s} s idle", mib(rss_held)],
            ["peak RSS (VmHWM)", mib(peak)],
            ["RSS per session", f"**{kib(per_session)}**"],
            ["open fds before / after", f"{fds_before:,} / {fds_open:,}"],
            [
                "TCP sockets with the streams open",
                f"{sockets['clients']:,} from clients (the streams and the client's "
                f"{PARALLEL} keep-alive POST connections), {sockets['upstream']:,} to the "
                f"upstream, {sockets['listen']} listening",
            ],
            [f"agentgw CPU over {hold_s} s idle", f"{idle_cpu:.2f} s"],
            [
                f"keep-alive comments received during the {hold_s} s idle",
                f"{held['comments'] - before_hold['comments']:,} (since the first stream "
                f"opened: {held['comments']:,})",
            ],
            ["SIGTERM to exit", drain],
            [
                "streams after SIGTERM",
                f"{after['ended']:,} ended cleanly, {after['failed']:,} cut, "
                f"{after['open']:,} still open; the last closed {closed_in} after SIGTERM",
            ],
        ],
    )


def _fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


SCENARIO = Scenario(
    name="idle-sse",
    summary=(
        "10,000 idle MCP sessions through agentgw, each with an open GET stream: RSS per "
        "session, fds, time to open, drain on SIGTERM"
    ),
    systems=("gateway",),
    run=run,
)
