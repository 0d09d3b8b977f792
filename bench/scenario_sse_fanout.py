"""Scenario `sse-fanout`: notifications pushed to many sessions' GET streams.

For each session count N and each system, a fresh bench/mcp_upstream.js
`--sse` starts (and for `gateway` a fresh agentgw with it as the one target),
so no stream of an earlier run is still fed. bench/sse_clients.js opens N
sessions, each with its server-to-client stream (GET with `Accept:
text/event-stream`), and waits until the upstream holds N streams (through
the gateway: one upstream GET stream per session, opened by agentgw). Then
it tells the upstream to broadcast (POST /admin/broadcast): event 0 to every
stream at once, then the rest round-robin at a steady total rate. Every
event carries its sequence number and the upstream's write time.
"""

from __future__ import annotations

from typing import Any

from bench import own_loop
from bench.base import RunOptions, Scenario
from bench.launch import start_mcp_upstream
from bench.own_loop import NodeSession, Run, ms

SESSIONS = (100, 1000)
RATE = 1000  # events per second, all streams together
GRACE_S = 10
PARALLEL = 32


def run(options: RunOptions, quick: bool) -> int:
    method = (
        f"per session count ({', '.join(map(str, SESSIONS))}) and system: fresh processes, "
        f"N sessions opened {PARALLEL} at a time, then one broadcast: event 0 to every "
        f"stream at once, then events 1..K-1 round-robin at {RATE:,} events/s in total, "
        f"K chosen so that the broadcast lasts about {options.duration_s} s; events not "
        f"arrived {GRACE_S} s after the schedule's end count as lost"
    )
    return own_loop.run_own("sse-fanout", SCENARIO.summary, method, options, quick, _measure)


def _measure(run: Run) -> None:
    run.facts += [
        ("load", "bench/sse_clients.js (one Node process, one connection per stream)"),
        ("upstream", "bench/mcp_upstream.js --sse"),
    ]
    rows = []
    for n in SESSIONS:
        count = max(2, round(RATE * run.options.duration_s / n))
        for system in ("direct", "gateway"):
            if run.wants(system):
                result = _fanout(run, system, n, count)
                if result is not None:
                    rows.append(result)
    run.table(
        "Fan-out to GET streams",
        "Time to first event: from just before the harness tells the upstream to start "
        "until event 0 arrives on a session's stream (over the N sessions). Latency: "
        "arrival minus the upstream's write time, over every event. Events/s: events "
        "received over the time from the start until the last arrived. CPU is the "
        "process's utime+stime over the broadcast (for `gateway`, agentgw alone).",
        [
            "system",
            "sessions",
            "events",
            "open time",
            "first event p50",
            "p99",
            "max",
            "latency p50",
            "p99",
            "events/s",
            "lost",
            "CPU s",
            "CPU per 1k events",
            "upstream CPU s",
            "RSS after",
        ],
        rows,
    )


def _fanout(run: Run, system: str, n: int, count: int) -> list[str] | None:
    upstream = start_mcp_upstream(f"{system}-{n}", run.placement.server_cpu, "--sse")
    run.stack.callback(upstream.stop)
    service = own_loop.system_service(run, system, upstream)
    url = f"http://127.0.0.1:{service.port}/mcp"
    args = ["--url", url, "--sessions", str(n), "--parallel", str(PARALLEL)]
    args += ["--admin", f"http://127.0.0.1:{upstream.port}"]
    clients = NodeSession("sse_clients.js", args, run.placement.load_cpu)
    try:
        opened = clients.read(120 + n * 0.1)
        what = f"{system} with {n} sessions"
        print(f"{what}: {opened}", flush=True)
        if opened["open"] != n:
            run.fail(f"{what}: {opened['open']} of {n} streams opened: {opened['failures']}")
        held = clients.command(f"wait-upstream {opened['open']} 30", 60)
        if held["streams"] != opened["open"]:
            run.fail(f"{what}: the upstream holds {held['streams']} streams, not {opened['open']}")
        cpu = service.cpu_seconds()
        upstream_cpu = upstream.cpu_seconds()
        schedule_s = n * (count - 1) / RATE
        fan: dict[str, Any] = clients.command(f"fanout {count} {RATE} {GRACE_S}", schedule_s + 120)
        cpu = service.cpu_seconds() - cpu
        upstream_cpu = upstream.cpu_seconds() - upstream_cpu
        stats = clients.command("stats", 10)
    finally:
        clients.close()
    print(f"{what}: {fan}", flush=True)
    if not service.is_running():
        run.fail(f"{service.name} exited during the benchmark: {service.output_tail()}")
    rss = own_loop.rss_bytes(service) if service.is_running() else 0
    service.stop()
    upstream.stop()
    missing = fan["expected"] - fan["received"]
    run.check_rate(f"{what}: events", max(fan["lost"], missing), fan["expected"], "loss")
    if stats["failed"] or stats["ended"]:
        run.fail(f"{what}: streams ended during the run: {stats}")
    rate = fan["received"] / fan["elapsed_s"] if fan["elapsed_s"] else 0.0
    return [
        system,
        f"{n:,}",
        f"{fan['received']:,} of {fan['expected']:,}",
        f"{opened['open_s']:.2f} s",
        ms(fan["ttfe_ms"]["p50"]),
        ms(fan["ttfe_ms"]["p99"]),
        ms(fan["ttfe_ms"]["max"]),
        ms(fan["latency_ms"]["p50"]),
        ms(fan["latency_ms"]["p99"]),
        f"{rate:,.0f}",
        f"{fan['lost']:,} (+{fan['disorder']} out of order)",
        f"{cpu:.2f}",
        f"{cpu * 1e6 / fan['received']:.0f} ms" if fan["received"] else "-",
        f"{upstream_cpu:.2f}",
        own_loop.mib(rss),
    ]


SCENARIO = Scenario(
    name="sse-fanout",
    summary=(
        "notifications/message pushed by the upstream to 100 and 1,000 sessions' GET "
        "streams at a steady total rate: agentgw (1 target) vs direct"
    ),
    systems=("direct", "gateway"),
    run=run,
)
