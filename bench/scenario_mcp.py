"""Scenario `mcp`: MCP `tools/call` of an echo tool, agentgw against a direct
session and against the proxies a user would pick instead.

Up to three instances of bench/mcp_upstream.js (a, b, c) start, each on its own
port. `direct` loads a; `floor` is bench/floor.py, the least a Trio + h11
relay does, in front of a; `gateway-1` is agentgw with a as its one target,
`gateway-1-w2` the same with `--workers 2`, and `gateway-3` agentgw federating
a, b and c (the tool is then `a_echo`). Three variants of `gateway-1` each
change one thing: `gateway-1-nometrics` turns metrics off (`statsAddr: off`),
`gateway-1-tracing` traces every request to bench/otlp_sink.js, a collector
that counts spans and keeps nothing, and `gateway-1-tls` serves HTTPS and
reaches its own HTTPS instance of the upstream (`tls`), with certificates of a
CA made for the run. `nginx` passes everything through to a,
and `fastmcp` is FastMCP's proxy of a. mcp-proxy and supergateway serve only
stdio servers: they, and `gateway-stdio` (agentgw with one stdio target, for
an agentgw row to compare them with), each spawn their own
`node bench/mcp_upstream.js --stdio`. The peers are installed on demand
(bench/peers.py). For each system the harness opens one MCP session, finds the
tool, checks that a few calls echo their message, and hands the session to
wrk (bench/mcp_call.lua). Every agentgw has its readiness, stats and admin
servers on free ports; where metrics are on, the harness checks that /metrics
counted the checked calls, and where tracing is on, that the sink got their
spans. The sessions are deleted before the processes stop.
A system that fails to install, start or answer is a failure of that system
alone: the others are measured.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import certs, peers
from bench.base import Placement, Scenario, Started
from bench.launch import (
    CHECK_CALLS,
    FLOOR_FACT,
    MCP_UPSTREAM_JS,
    mcp_gateway_config,
    metric_sum,
    open_target,
    scrape_metrics,
    sink_stats,
    start_floor,
    start_gateway,
    start_mcp_upstream,
    start_otlp_sink,
    stdio_gateway_config,
    stdio_upstream_command,
    with_exit,
)
from bench.report import AddedLatencyTarget, FairnessTarget, RatioTarget
from bench.systems import Service, StartError, free_port

# Issue 13: metrics on cost at most 5% of the throughput with them off.
METRICS_TARGET = 0.95
REQUESTS_METRIC = "agentgateway_requests_total"
# How long the harness waits for agentgw's counters and exported spans to catch up.
OBSERVE_WAIT_S = 10.0


@dataclass(frozen=True)
class _System:
    kind: str  # how it starts: see _start_system
    tools: tuple[str, ...]  # the names the tool may have there, the first one listed wins
    upstreams: tuple[str, ...] = ("a",)  # the HTTP upstreams it needs
    gateway_args: tuple[str, ...] = ()  # agentgw's arguments besides its config
    # agentgw only: metrics on (its own stats port) or off; every request traced
    # to the OTLP sink; HTTPS at the listener and to an HTTPS upstream of its own.
    metrics: bool = True
    tracing: bool = False
    tls: bool = False


@dataclass(frozen=True)
class _Launched:
    service: Service
    about: str = ""  # for the report's header
    # After the session is checked: more checks (StartError), and a sentence.
    check: Callable[[], str] | None = None
    # At the end, before the system stops: a fact for the report's header.
    tally: Callable[[], tuple[str, str]] | None = None


# One target needs no prefix, but a gateway may prefix anyway.
ONE_TARGET_TOOLS = ("echo", "a_echo")

SYSTEMS = {
    "direct": _System("direct", ("echo",)),
    "floor": _System("floor", ("echo",)),
    "nginx": _System("nginx", ("echo",)),
    "gateway-1": _System("gateway", ONE_TARGET_TOOLS),
    "gateway-1-nometrics": _System("gateway", ONE_TARGET_TOOLS, metrics=False),
    "gateway-1-tracing": _System("gateway", ONE_TARGET_TOOLS, tracing=True),
    "gateway-1-tls": _System("gateway", ("echo", "tls_echo"), upstreams=(), tls=True),
    "gateway-1-w2": _System("gateway", ONE_TARGET_TOOLS, gateway_args=("--workers", "2")),
    "gateway-3": _System("gateway", ("a_echo",), upstreams=("a", "b", "c")),
    "gateway-stdio": _System("gateway-stdio", ONE_TARGET_TOOLS, upstreams=()),
    "fastmcp": _System("fastmcp", ("echo",)),
    "mcp-proxy": _System("mcp-proxy", ("echo",), upstreams=()),
    "supergateway": _System("supergateway", ("echo",), upstreams=()),
}


def start_mcp(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    systems = {name: s for name, s in SYSTEMS.items() if name in wanted}
    needed = set().union(*(s.upstreams for s in systems.values()))
    upstreams: dict[str, Service] = {}
    for name in sorted(needed):
        upstreams[name] = start_mcp_upstream(name, placement.server_cpu)
        stack.callback(upstreams[name].stop)
    started = Started()
    for name, system in systems.items():
        print(f"{name}: starting", flush=True)
        try:
            launched = _start_system(stack, name, system, upstreams, placement)
            service = launched.service
            url = f"{service.scheme}://127.0.0.1:{service.port}/mcp"
            target, fact = open_target(stack, name, url, service, system.tools)
            if launched.check is not None:
                fact += "; " + launched.check()
        except StartError as exc:
            started.failures.append(str(exc))
            print(f"{name}: not measured: {str(exc).splitlines()[0]}", flush=True)
            continue
        print(f"{name}: {fact}", flush=True)
        started.targets.append(target)
        if launched.about:
            started.facts.append((name, launched.about))
        started.facts.append((f"session on {name}", fact))
        if launched.tally is not None:
            # The report is written after the processes stop, so a fact added
            # while the stack unwinds (this runs before `name` stops) is in it.
            stack.callback(_add_fact, started.facts, launched.tally)
    return started


def _add_fact(facts: list[tuple[str, str]], tally: Callable[[], tuple[str, str]]) -> None:
    facts.append(tally())


def _start_system(
    stack: ExitStack,
    name: str,
    system: _System,
    upstreams: Mapping[str, Service],
    placement: Placement,
) -> _Launched:
    """Start `system` (its stop on `stack`): the process wrk loads, and what the
    report says of it.

    Raises:
        StartError: it could not be installed or started.
    """
    cpu = placement.server_cpu
    a = upstreams.get("a")
    if system.kind == "direct" and a is not None:
        return _Launched(a)
    if system.kind == "floor" and a is not None:
        service = start_floor(a.port, placement)
        stack.callback(service.stop)
        return _Launched(service, FLOOR_FACT)
    if system.kind in ("gateway", "gateway-stdio"):
        return _start_gateway(stack, name, system, upstreams, placement)
    return _Launched(*_start_peer(stack, name, system, a, cpu))


def _start_peer(
    stack: ExitStack, name: str, system: _System, a: Service | None, cpu: int | None
) -> tuple[Service, str]:
    if system.kind == "nginx" and a is not None:
        service = peers.start_nginx(stack, a.port, cpu)
        return service, f"{peers.nginx_version()} passing through to upstream a"
    if system.kind == "fastmcp" and a is not None:
        service = peers.start_fastmcp(stack, f"http://127.0.0.1:{a.port}/mcp", cpu)
        return service, peers.fastmcp_description()
    if system.kind == "mcp-proxy":
        command = stdio_upstream_command()
        service = peers.start_mcp_proxy(stack, command, cpu, upstream_marker=str(MCP_UPSTREAM_JS))
        return service, f"mcp-proxy {peers.MCP_PROXY_VERSION} in front of `{' '.join(command)}`"
    if system.kind == "supergateway":
        command = stdio_upstream_command()
        service = peers.start_supergateway(
            stack, command, cpu, upstream_marker=str(MCP_UPSTREAM_JS)
        )
        return service, (
            f"supergateway {peers.SUPERGATEWAY_VERSION} --stateful in front of "
            f"`{' '.join(command)}`"
        )
    raise StartError(f"{name}: no way to start a system of kind {system.kind!r} here")


def _start_gateway(
    stack: ExitStack,
    name: str,
    system: _System,
    upstreams: Mapping[str, Service],
    placement: Placement,
) -> _Launched:
    """agentgw with the settings of `system`, and the checks that they are in force."""
    about: list[str] = []
    checks: list[Callable[[], str]] = []
    if system.gateway_args:
        about.append(f"agentgw started with `{' '.join(system.gateway_args)}`")
        if placement.server_cpu is not None:
            about.append(_WORKERS_NOTE)
    stats = f"127.0.0.1:{free_port()}" if system.metrics else "off"
    if not system.metrics:
        about.append("`config.statsAddr: off`: no metrics are served, none are observed")
    settings: dict[str, Any] = {"statsAddr": stats}
    sink = None
    if system.tracing:
        # A collector runs on another machine: the sink is on the load's core.
        sink = start_otlp_sink(placement.load_cpu)
        stack.callback(sink.stop)
        settings["tracing"] = {
            "otlpEndpoint": f"http://127.0.0.1:{sink.port}/v1/traces",
            "otlpProtocol": "http",
            "randomSampling": 1.0,
        }
        about.append(
            "agentgw traces every request (`config.tracing`: OTLP/HTTP, randomSampling "
            "1.0) to bench/otlp_sink.js on the load's core, which counts the spans and "
            "keeps nothing"
        )
    port = free_port()
    tls = None
    if system.kind == "gateway-stdio":
        command = stdio_upstream_command()
        config = stdio_gateway_config(port, command, settings=settings)
        about.append(f"agentgw with one stdio target: `{' '.join(command)}`")
    elif system.tls:
        tls = _make_certs(stack)
        upstream = start_mcp_upstream("tls", placement.server_cpu, tls=tls)
        stack.callback(upstream.stop)
        policies = {"backendTLS": {"root": str(tls.ca)}}
        config = mcp_gateway_config(port, [upstream], policies, settings=settings, tls=tls)
        about.append(
            "HTTPS at the listener and to the upstream `tls`, an instance of "
            f"bench/mcp_upstream.js serving HTTPS with node:https; {certs.describe()}; "
            "agentgw trusts the CA through the route's `backendTLS.root`, the harness "
            "trusts the CA, wrk verifies nothing"
        )
        checks.append(_tls_check(port, upstream.port, tls.client_context()))
    else:
        config = mcp_gateway_config(
            port, [upstreams[u] for u in system.upstreams], settings=settings
        )
    service = start_gateway(
        _process_name(name),
        config,
        port,
        placement,
        args=system.gateway_args,
        cost_excludes=(str(MCP_UPSTREAM_JS),) if system.kind == "gateway-stdio" else (),
        tls=tls.client_context() if tls is not None else None,
    )
    stack.callback(service.stop)
    if system.metrics:
        checks.append(lambda: _check_metrics(name, service, stats))
    tally = None
    if sink is not None:
        checks.append(lambda: _check_spans(name, service, sink))
        tally = lambda: _tally_spans(name, service, stats, sink)  # noqa: E731
    return _Launched(
        service,
        "; ".join(about),
        check=(lambda: "; ".join(check() for check in checks)) if checks else None,
        tally=tally,
    )


def _make_certs(stack: ExitStack) -> certs.Certs:
    directory = Path(tempfile.mkdtemp(prefix="bench-certs-"))
    stack.callback(shutil.rmtree, directory, ignore_errors=True)
    return certs.make_certs(directory)


def _tls_check(port: int, upstream_port: int, context: ssl.SSLContext) -> Callable[[], str]:
    """What a handshake of the harness (Python's ssl, as agentgw's) negotiates with
    agentgw's listener and with the upstream."""
    return lambda: (
        f"TLS with agentgw: {_handshake(port, context)}; "
        f"with the upstream: {_handshake(upstream_port, context)}"
    )


def _handshake(port: int, context: ssl.SSLContext) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                cipher = tls.cipher()
                return f"{tls.version()} {cipher[0] if cipher else '?'}"
    except OSError as exc:
        raise StartError(f"TLS handshake with 127.0.0.1:{port} failed: {exc}") from None


def _check_metrics(name: str, service: Service, stats: str) -> str:
    """agentgw's /metrics answers and counted the checked calls.

    Raises:
        StartError: it does not, within OBSERVE_WAIT_S.
    """
    deadline = time.monotonic() + OBSERVE_WAIT_S
    counted = 0.0
    while time.monotonic() < deadline:
        text = scrape_metrics(stats)
        counted = metric_sum(text, REQUESTS_METRIC) if text is not None else 0.0
        if counted >= CHECK_CALLS:
            return (
                f"metrics on: {REQUESTS_METRIC} at http://{stats}/metrics counted the "
                f"{counted:.0f} requests so far"
            )
        time.sleep(0.2)
    raise StartError(
        with_exit(
            f"{name}: {REQUESTS_METRIC} at http://{stats}/metrics counts {counted:.0f} "
            f"requests after {CHECK_CALLS} checked calls",
            service,
        )
    )


def _await_spans(sink: Service, server_spans: float) -> dict[str, int]:
    """The sink's counts once it has `server_spans` server spans, or after OBSERVE_WAIT_S."""
    deadline = time.monotonic() + OBSERVE_WAIT_S
    while True:
        stats = sink_stats(sink)
        if stats["server"] >= server_spans or time.monotonic() >= deadline:
            return stats
        time.sleep(0.2)


def _check_spans(name: str, service: Service, sink: Service) -> str:
    """The sink got a span for each checked call (the batch processor exports every
    second).

    Raises:
        StartError: it did not, within OBSERVE_WAIT_S.
    """
    stats = _await_spans(sink, CHECK_CALLS)
    if stats["server"] < CHECK_CALLS:
        raise StartError(
            with_exit(
                f"{name}: the OTLP sink got {stats['server']} server spans in "
                f"{OBSERVE_WAIT_S:.0f} s after {CHECK_CALLS} checked calls: {stats}",
                service,
            )
        )
    return f"tracing on: the sink got {stats['server']} server and {stats['client']} client spans"


def _tally_spans(name: str, service: Service, stats: str, sink: Service) -> tuple[str, str]:
    """Did every request of the run reach the collector as a span? A span that the
    batch processor dropped (its queue full) was not paid for in full."""
    key = f"spans of {name}"
    text = scrape_metrics(stats) if service.is_running() else None
    if text is None:
        return key, f"n/a: agentgw's /metrics at http://{stats}/metrics did not answer at the end"
    requests = metric_sum(text, REQUESTS_METRIC)
    try:
        got = _await_spans(sink, requests)
    except StartError as exc:
        return key, f"n/a: {exc}"
    share = got["server"] / requests if requests else float("nan")
    return key, (
        f"{got['server']:,} server spans for the {requests:,.0f} requests agentgw counted "
        f"({share:.1%}), {got['client']:,} client spans (upstream calls), {got['other']:,} "
        f"other; {got['exports']:,} exports, {got['bytes'] / 1e6:.1f} MB; "
        f"{got['rejected']} rejected by the sink"
    )


_WORKERS_NOTE = (
    "its workers share the systems' one core with the upstream (a 2-core machine: the "
    "other core runs wrk), so the ratio to gateway-1 shows what workers cost, not what "
    "a core each would gain"
)


def _process_name(system: str) -> str:
    return f"agentgw-{system.removeprefix('gateway-')}"


SCENARIO = Scenario(
    name="mcp",
    summary=(
        "MCP tools/call of an echo tool: agentgw (1 and 3 federated targets, 2 workers, "
        "a stdio target; metrics off, tracing on, TLS) vs direct, the floor relay, nginx, "
        "FastMCP, mcp-proxy and supergateway"
    ),
    systems=tuple(SYSTEMS),
    concurrencies=(1, 16, 32, 64, 256),
    quick_concurrencies=(1, 32),
    # FastMCP answers tens of calls a second: at c=256 a call waits seconds.
    request_timeout_s=10,
    start=start_mcp,
    load=(
        "POST of an MCP tools/call (~115-byte body) on one session per system, unique "
        "JSON-RPC ids, every response checked for a 200 with the echo (bench/mcp_call.lua)"
    ),
    upstream=(
        "bench/mcp_upstream.js: HTTP instances a (direct, floor, nginx, fastmcp, gateway-1 "
        "and its -nometrics, -tracing and -w2 variants), a, b, c (gateway-3); an HTTPS "
        "instance tls (gateway-1-tls); `--stdio` spawned by mcp-proxy, supergateway and "
        "gateway-stdio"
    ),
    comparisons=(
        ("gateway-1", "floor"),
        ("gateway-1", "direct"),
        ("gateway-1", "nginx"),
        ("gateway-1", "fastmcp"),
        ("gateway-1", "mcp-proxy"),
        ("gateway-1", "supergateway"),
        ("gateway-stdio", "mcp-proxy"),
        ("gateway-stdio", "supergateway"),
        ("gateway-3", "gateway-1"),
        ("gateway-1-w2", "gateway-1"),
        ("gateway-1", "gateway-1-nometrics"),
        ("gateway-1-tracing", "gateway-1"),
        ("gateway-1-tls", "gateway-1"),
        ("floor", "direct"),
    ),
    # What metrics, tracing and TLS cost agentgw per call (issues 13 and 9).
    cost_comparisons=(
        ("gateway-1", "gateway-1-nometrics"),
        ("gateway-1-tracing", "gateway-1"),
        ("gateway-1-tls", "gateway-1"),
    ),
    # Issue 10's targets, then issue 13's.
    targets=(
        RatioTarget("gateway-1", "mcp-proxy", 2.0, at=(32,)),
        RatioTarget("gateway-1", "supergateway", 2.0, at=(32,)),
        RatioTarget("gateway-1", "floor", 0.65, at=(32,)),
        AddedLatencyTarget("gateway-1", "direct", 0.35e-3, at=(1,)),
        FairnessTarget("gateway-1", 4.0, at=(256,)),
        RatioTarget("gateway-1", "gateway-1-nometrics", METRICS_TARGET),
    ),
)
