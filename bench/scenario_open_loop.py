"""Scenario `open-loop`: MCP `tools/call` at fixed request rates, latency from
the intended send time (the wrk2 method, without coordinated omission).

One bench/mcp_upstream.js, one agentgw (one target) and the `floor` relay in
front of it, as `mcp`'s `direct`, `gateway-1` and `floor`. First a
closed-loop run at c=32 measures each system's throughput; the open-loop
rates are then 25%, 50% and 75% of the gateway's, and every system gets the
same absolute rates, alternating in every round.
bench/loadgen.js spreads each rate over up to 64 keep-alive connections and
checks every answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import own_loop
from bench.base import RunOptions, Scenario
from bench.launch import open_target, session_args, start_mcp_upstream
from bench.own_loop import Run, ms
from bench.systems import Service

CLOSED_CONNECTIONS = 32
OPEN_CONNECTIONS = 64
FRACTIONS = (0.25, 0.5, 0.75)
WARMUP_S = 1
TIMEOUT_S = 10


def run(options: RunOptions, quick: bool) -> int:
    fractions = ", ".join(f"{f:.0%}" for f in FRACTIONS)
    method = (
        f"closed loop at c={CLOSED_CONNECTIONS} for {options.duration_s} s per system, then "
        f"{options.rounds} round(s) of open-loop runs at {fractions} "
        f"of the gateway's closed-loop req/s, every rate against every system in turn, "
        f"{WARMUP_S} s warm-up then {options.duration_s} s measured per run"
    )
    return own_loop.run_own("open-loop", SCENARIO.summary, method, options, quick, _measure)


def _measure(run: Run) -> None:
    placement = run.placement
    upstream = start_mcp_upstream("a", placement.server_cpu)
    run.stack.callback(upstream.stop)
    services: dict[str, Service] = {}
    sessions: dict[str, list[str]] = {}
    for system in SCENARIO.systems:
        if not run.wants(system):
            continue
        service = own_loop.system_service(run, system, upstream)
        url = f"http://127.0.0.1:{service.port}/mcp"
        target, fact = open_target(run.stack, system, url, service, ("echo", "a_echo"))
        services[system] = service
        sessions[system] = session_args(target)
        run.facts.append((f"session on {system}", fact))
    run.facts += [
        ("load", "bench/loadgen.js: MCP tools/call of `echo` (~115-byte body), unique ids"),
        ("upstream", "bench/mcp_upstream.js"),
    ]

    closed: dict[str, dict[str, Any]] = {}
    for system, service in services.items():
        closed[system] = _load(run, system, service, sessions[system], "closed", 0)
    if "gateway" not in closed:
        base_system = next(iter(closed), None)
        if base_system is None:
            return
    else:
        base_system = "gateway"
    base = closed[base_system]["requests_per_s"]
    rates = [max(1, round(base * f)) for f in FRACTIONS]
    run.facts.append(
        ("rates", f"{', '.join(map(str, rates))} req/s ({base_system} closed loop: {base:,.0f})")
    )

    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_no in range(1, run.options.rounds + 1):
        for rate in rates:
            for system, service in services.items():
                if not service.is_running():
                    continue
                result = _load(run, system, service, sessions[system], "open", rate)
                runs.setdefault((system, rate), []).append(result)
                print(f"round {round_no}: {_line(system, result)}", flush=True)

    run.table(
        "Closed loop (calibration)",
        f"c={CLOSED_CONNECTIONS}, {run.options.duration_s} s; latency from send to answer.",
        ["system", "req/s", "p50", "p99", "max", "errors", "system CPU share"],
        [
            [
                system,
                f"{r['requests_per_s']:,.0f}",
                ms(r["latency_ms"]["p50"]),
                ms(r["latency_ms"]["p99"]),
                ms(r["latency_ms"]["max"]),
                f"{r['errors']:,}",
                f"{r['cpu_share']:.0%}",
            ]
            for system, r in closed.items()
        ],
    )
    rows = []
    for (system, rate), results in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        median = _median_by_p99(results)
        lat = median["latency_ms"]
        p99s = [r["latency_ms"]["p99"] for r in results if r["latency_ms"]["p99"] is not None]
        errors = sum(r["errors"] for r in results)
        requests = sum(r["requests"] + r["errors"] for r in results)
        run.check_rate(f"{system} at {rate} req/s", errors, requests)
        rows.append(
            [
                system,
                f"{rate:,}",
                f"{median['requests_per_s']:,.0f}",
                ms(lat["p50"]),
                ms(lat["p90"]),
                ms(lat["p99"]),
                f"{ms(min(p99s))}..{ms(max(p99s))}" if p99s else "-",
                ms(lat["max"]),
                ms(median["send_lag_ms"]["p99"]),
                f"{median['cpu_share']:.0%}",
                f"{errors:,} of {requests:,}",
            ]
        )
    run.table(
        "Open loop",
        "Latency from each request's intended send time on the schedule, so a stall "
        "counts for every request it delays. Median round by p99; the p99 range is "
        "min..max over rounds. Send lag p99: how late requests left against the "
        f"schedule (waiting for one of the {OPEN_CONNECTIONS} connections, or the load "
        "generator's own lateness). CPU share: the system's own process (for `gateway`, "
        "agentgw alone) over the measured run.",
        [
            "system",
            "rate",
            "achieved req/s",
            "p50",
            "p90",
            "p99",
            "p99 range",
            "max",
            "send lag p99",
            "CPU share",
            "errors",
        ],
        rows,
    )


def _load(
    run: Run, system: str, service: Service, session: list[str], mode: str, rate: int
) -> dict[str, Any]:
    duration = run.options.duration_s
    connections = CLOSED_CONNECTIONS if mode == "closed" else OPEN_CONNECTIONS
    args = [
        *session,
        "--mode",
        mode,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--warmup",
        str(WARMUP_S),
        "--timeout",
        str(TIMEOUT_S),
    ]
    if mode == "open":
        args += ["--rate", str(rate)]
    cpu_before = service.cpu_seconds()
    timeout = duration + WARMUP_S + 2 * TIMEOUT_S + 30
    result: dict[str, Any] = own_loop.node_json("loadgen.js", args, run.placement.load_cpu, timeout)
    # The process's CPU over the whole load (warm-up included), shared over its wall time.
    result["cpu_share"] = (service.cpu_seconds() - cpu_before) / (duration + WARMUP_S)
    if mode == "closed":
        print(f"closed loop: {_line(system, result)}", flush=True)
    if not service.is_running():
        run.fail(f"{service.name} exited during the benchmark: {service.output_tail()}")
    return result


def _median_by_p99(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ranked = sorted(results, key=lambda r: r["latency_ms"]["p99"] or 0.0)
    return ranked[(len(ranked) - 1) // 2]


def _line(system: str, r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    rate = f"rate {r['rate']:<6} " if r["rate"] else ""
    return (
        f"{system:<8} {rate}{r['requests_per_s']:>9,.0f} req/s  p50 {ms(lat['p50'])}  "
        f"p99 {ms(lat['p99'])}  max {ms(lat['max'])}  errors {r['errors']} "
        f"{r['errors_by_kind'] or ''}  (CPU {r['cpu_share']:.0%}, loadgen "
        f"{r['cpu_s'] / r['duration_s']:.0%})"
    )


SCENARIO = Scenario(
    name="open-loop",
    summary=(
        "MCP tools/call at fixed rates (25/50/75% of agentgw's closed-loop req/s), latency "
        "from intended send times: agentgw (1 target) vs direct and the floor relay"
    ),
    systems=("direct", "floor", "gateway"),
    run=run,
)
