"""Scenario `mcp`: MCP `tools/call` of an echo tool, agentgw against a direct
session and against the proxies a user would pick instead.

Up to three instances of bench/mcp_upstream.js (a, b, c) start, each on its own
port. `direct` loads a; `floor` is bench/floor.py, the least a Trio + h11
relay does, in front of a; `gateway-1` is agentgw with a as its one target,
`gateway-1-w2` the same with `--workers 2`, and `gateway-3` agentgw federating
a, b and c (the tool is then `a_echo`). `nginx` passes everything through to a,
and `fastmcp` is FastMCP's proxy of a. mcp-proxy and supergateway serve only
stdio servers: they, and `gateway-stdio` (agentgw with one stdio target, for
an agentgw row to compare them with), each spawn their own
`node bench/mcp_upstream.js --stdio`. The peers are installed on demand
(bench/peers.py). For each system the harness opens one MCP session, finds the
tool, checks that a few calls echo their message, and hands the session to
wrk (bench/mcp_call.lua). The sessions are deleted before the processes stop.
A system that fails to install, start or answer is a failure of that system
alone: the others are measured.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

from bench import peers
from bench.base import Placement, Scenario, Started
from bench.launch import (
    FLOOR_FACT,
    MCP_UPSTREAM_JS,
    mcp_gateway_config,
    open_target,
    start_floor,
    start_gateway,
    start_mcp_upstream,
    stdio_gateway_config,
    stdio_upstream_command,
)
from bench.report import AddedLatencyTarget, FairnessTarget, RatioTarget
from bench.systems import Service, StartError, free_port


@dataclass(frozen=True)
class _System:
    kind: str  # how it starts: see _start_system
    tools: tuple[str, ...]  # the names the tool may have there, the first one listed wins
    upstreams: tuple[str, ...] = ("a",)  # the HTTP upstreams it needs
    gateway_args: tuple[str, ...] = ()  # agentgw's arguments besides its config


# One target needs no prefix, but a gateway may prefix anyway.
ONE_TARGET_TOOLS = ("echo", "a_echo")

SYSTEMS = {
    "direct": _System("direct", ("echo",)),
    "floor": _System("floor", ("echo",)),
    "nginx": _System("nginx", ("echo",)),
    "gateway-1": _System("gateway", ONE_TARGET_TOOLS),
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
            service, about = _start_system(stack, name, system, upstreams, placement)
            url = f"http://127.0.0.1:{service.port}/mcp"
            target, fact = open_target(stack, name, url, service, system.tools)
        except StartError as exc:
            started.failures.append(str(exc))
            print(f"{name}: not measured: {str(exc).splitlines()[0]}", flush=True)
            continue
        print(f"{name}: {fact}", flush=True)
        started.targets.append(target)
        if about:
            started.facts.append((name, about))
        started.facts.append((f"session on {name}", fact))
    return started


def _start_system(
    stack: ExitStack,
    name: str,
    system: _System,
    upstreams: Mapping[str, Service],
    placement: Placement,
) -> tuple[Service, str]:
    """Start `system` (its stop on `stack`): the process wrk loads, and what the
    report's header says of it ("" for nothing).

    Raises:
        StartError: it could not be installed or started.
    """
    cpu = placement.server_cpu
    a = upstreams.get("a")
    if system.kind == "direct" and a is not None:
        return a, ""
    if system.kind == "floor" and a is not None:
        service = start_floor(a.port, placement)
        stack.callback(service.stop)
        return service, FLOOR_FACT
    if system.kind == "gateway":
        port = free_port()
        config = mcp_gateway_config(port, [upstreams[u] for u in system.upstreams])
        service = start_gateway(
            _process_name(name), config, port, placement, args=system.gateway_args
        )
        stack.callback(service.stop)
        if not system.gateway_args:
            return service, ""
        about = f"agentgw started with `{' '.join(system.gateway_args)}`"
        if placement.server_cpu is not None:
            about += _WORKERS_NOTE
        return service, about
    if system.kind == "gateway-stdio":
        command = stdio_upstream_command()
        port = free_port()
        config = stdio_gateway_config(port, command)
        service = start_gateway(
            _process_name(name), config, port, placement, cost_excludes=(str(MCP_UPSTREAM_JS),)
        )
        stack.callback(service.stop)
        return service, f"agentgw with one stdio target: `{' '.join(command)}`"
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


_WORKERS_NOTE = (
    "; its workers share the systems' one core with the upstream (a 2-core machine: the "
    "other core runs wrk), so the ratio to gateway-1 shows what workers cost, not what "
    "a core each would gain"
)


def _process_name(system: str) -> str:
    return f"agentgw-{system.removeprefix('gateway-')}"


SCENARIO = Scenario(
    name="mcp",
    summary=(
        "MCP tools/call of an echo tool: agentgw (1 and 3 federated targets, 2 workers, "
        "a stdio target) vs direct, the floor relay, nginx, FastMCP, mcp-proxy and "
        "supergateway"
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
        "bench/mcp_upstream.js: HTTP instances a (direct, floor, nginx, fastmcp, gateway-1, "
        "gateway-1-w2), a, b, c (gateway-3); `--stdio` spawned by mcp-proxy, supergateway "
        "and gateway-stdio"
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
        ("floor", "direct"),
    ),
    # Issue 10's targets.
    targets=(
        RatioTarget("gateway-1", "mcp-proxy", 2.0, at=(32,)),
        RatioTarget("gateway-1", "supergateway", 2.0, at=(32,)),
        RatioTarget("gateway-1", "floor", 0.65, at=(32,)),
        AddedLatencyTarget("gateway-1", "direct", 0.35e-3, at=(1,)),
        FairnessTarget("gateway-1", 4.0, at=(256,)),
    ),
)
