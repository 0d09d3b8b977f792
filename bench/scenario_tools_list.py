"""Scenario `tools-list`: MCP `tools/list` of an upstream with 500 tools.

bench/mcp_upstream.js runs with `--tools 500` (echo and echo_001..echo_499,
each with a six-property input schema: about 300 KB of JSON per list).
`direct` lists them on the upstream, `gateway` through agentgw with it as the
one target, `floor` through the floor relay. bench/loadgen.js runs closed
loops at c=1 and c=16, alternating the systems in every round, and checks
that every answer lists exactly 500 tools.
"""

from __future__ import annotations

from typing import Any

from bench import own_loop
from bench.base import RunOptions, Scenario
from bench.launch import open_target, session_args, start_mcp_upstream
from bench.mcp_session import McpError, close_session, list_tools, open_session
from bench.own_loop import Run, ms
from bench.systems import Service, StartError

TOOLS = 500
CONCURRENCIES = (1, 16)
WARMUP_S = 1
TIMEOUT_S = 10


def run(options: RunOptions, quick: bool) -> int:
    method = (
        f"{options.rounds} round(s); each round runs every system at c="
        f"{' and c='.join(map(str, CONCURRENCIES))}, alternating systems, closed loop, "
        f"{WARMUP_S} s warm-up then {options.duration_s} s measured per run"
    )
    return own_loop.run_own("tools-list", SCENARIO.summary, method, options, quick, _measure)


def _measure(run: Run) -> None:
    upstream = start_mcp_upstream("a", run.placement.server_cpu, "--tools", str(TOOLS))
    run.stack.callback(upstream.stop)
    systems: dict[str, tuple[Service, list[str]]] = {}
    for system in SCENARIO.systems:
        if not run.wants(system):
            continue
        service = own_loop.system_service(run, system, upstream)
        url = f"http://127.0.0.1:{service.port}/mcp"
        target, _ = open_target(run.stack, system, url, service, ("echo", "a_echo"))
        try:
            session = open_session(url)
            names = list_tools(session)
            close_session(session)
        except McpError as exc:
            raise StartError(f"{system}: tools/list failed: {exc}") from None
        if len(names) != TOOLS:
            raise StartError(f"{system}: tools/list gave {len(names)} tools, not {TOOLS}")
        prefixed = sum(1 for n in names if n.startswith("a_"))
        run.facts.append(
            (
                f"tools on {system}",
                f"{len(names)} listed ({prefixed} with the target prefix `a_`), e.g. "
                f"`{names[0]}`, `{names[-1]}`",
            )
        )
        systems[system] = (service, session_args(target))
    run.facts += [
        (
            "load",
            f"bench/loadgen.js: POST of tools/list on one session per system, unique ids, "
            f"every answer checked to list {TOOLS} tools",
        ),
        ("upstream", f"bench/mcp_upstream.js --tools {TOOLS}"),
    ]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_no in range(1, run.options.rounds + 1):
        for c in CONCURRENCIES:
            for system, (service, load_args) in systems.items():
                if not service.is_running():
                    continue
                r = _load(run, service, load_args, c)
                results.setdefault((system, c), []).append(r)
                lat = r["latency_ms"]
                print(
                    f"round {round_no} c={c:<2} {system:<8} {r['requests_per_s']:>8,.0f} req/s  "
                    f"p50 {ms(lat['p50'])}  p99 {ms(lat['p99'])}  errors {r['errors']} "
                    f"{r['errors_by_kind'] or ''}  (CPU {r['cpu_share']:.0%})",
                    flush=True,
                )
    rows = []
    for (system, c), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ranked = sorted(rs, key=lambda r: r["requests_per_s"])
        m = ranked[(len(ranked) - 1) // 2]
        errors = sum(r["errors"] for r in rs)
        total = sum(r["requests"] + r["errors"] for r in rs)
        run.check_rate(f"{system} c={c}", errors, total)
        cpu_ms = m["cpu_s_system"] * 1000 / m["requests"] if m["requests"] else float("nan")
        rows.append(
            [
                system,
                str(c),
                f"{m['requests_per_s']:,.0f}",
                f"{ranked[0]['requests_per_s']:,.0f}..{ranked[-1]['requests_per_s']:,.0f}",
                ms(m["latency_ms"]["p50"]),
                ms(m["latency_ms"]["p90"]),
                ms(m["latency_ms"]["p99"]),
                f"{cpu_ms:.2f} ms",
                f"{m['cpu_share']:.0%}",
                f"{errors:,} of {total:,}",
            ]
        )
    run.table(
        "tools/list of 500 tools",
        "Median round by req/s; range min..max over rounds. CPU per list: the system's own "
        "process (for `gateway`, agentgw alone, not the upstream behind it) over the "
        "measured run.",
        [
            "system",
            "c",
            "req/s",
            "req/s range",
            "p50",
            "p90",
            "p99",
            "CPU per list",
            "CPU share",
            "errors",
        ],
        rows,
    )
    for system, (service, _) in systems.items():
        if service.is_running():
            peak = own_loop.mib(own_loop.peak_rss_bytes(service))
            run.facts.append((f"peak RSS of {system}", peak))


def _load(run: Run, service: Service, session: list[str], c: int) -> dict[str, Any]:
    duration = run.options.duration_s
    args = [
        *session,
        "--method",
        "tools/list",
        "--expect-tools",
        str(TOOLS),
        "--mode",
        "closed",
        "--connections",
        str(c),
        "--duration",
        str(duration),
        "--warmup",
        str(WARMUP_S),
        "--timeout",
        str(TIMEOUT_S),
    ]
    cpu_before = service.cpu_seconds()
    timeout = duration + WARMUP_S + 2 * TIMEOUT_S + 30
    r: dict[str, Any] = own_loop.node_json("loadgen.js", args, run.placement.load_cpu, timeout)
    cpu = service.cpu_seconds() - cpu_before
    # Warm-up included: CPU per list over all lists of the run, share over its wall time.
    r["cpu_share"] = cpu / (duration + WARMUP_S)
    r["cpu_s_system"] = cpu * duration / (duration + WARMUP_S)
    if not service.is_running():
        run.fail(f"{service.name} exited during the benchmark: {service.output_tail()}")
    return r


SCENARIO = Scenario(
    name="tools-list",
    summary=(
        f"MCP tools/list of an upstream with {TOOLS} tools at c=1 and c=16: agentgw "
        "(1 target) vs direct and the floor relay"
    ),
    systems=("direct", "floor", "gateway"),
    run=run,
)
