"""Scenario `mcp`: MCP `tools/call` of an echo tool, agentgw against a direct
session and against the proxies a user would pick instead.

Up to three instances of bench/mcp_upstream.js (a, b, c) start, each on its own
port. `direct` loads a; `gateway-1` is agentgw with a as its one target,
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

import contextlib
import json
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers
from bench.mcp_session import (
    McpError,
    McpSession,
    check_echo,
    close_session,
    list_tools,
    open_session,
)
from bench.report import RatioTarget
from bench.scenario_http import gateway_python
from bench.scenarios import Placement, Scenario, Started, Target
from bench.systems import Service, StartError, free_port, start_service

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_JS = Path(__file__).with_name("mcp_upstream.js")
CALL_SCRIPT = Path(__file__).with_name("mcp_call.lua")

MESSAGE = "bench-echo"  # JSON-safe as it is: mcp_call.lua puts it in the body verbatim
CHECK_CALLS = 5


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
    "nginx": _System("nginx", ("echo",)),
    "gateway-1": _System("gateway", ONE_TARGET_TOOLS),
    "gateway-1-w2": _System("gateway", ONE_TARGET_TOOLS, gateway_args=("--workers", "2")),
    "gateway-3": _System("gateway", ("a_echo",), upstreams=("a", "b", "c")),
    "gateway-stdio": _System("gateway-stdio", ONE_TARGET_TOOLS, upstreams=()),
    "fastmcp": _System("fastmcp", ("echo",)),
    "mcp-proxy": _System("mcp-proxy", ("echo",), upstreams=()),
    "supergateway": _System("supergateway", ("echo",), upstreams=()),
}

GATEWAY_CONFIG = """\
binds:
- port: {port}
  address: 127.0.0.1
  listeners:
  - name: bench
    routes:
    - name: mcp{policies}
      backends:
      - mcp:
          targets:
{targets}
"""
GATEWAY_TARGET = """\
          - name: {name}
            mcp:
              host: http://127.0.0.1:{port}/mcp
"""
GATEWAY_STDIO_TARGET = """\
          - name: a
            stdio:
              cmd: {cmd}
              args: {args}
"""


def start_mcp(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    systems = {name: s for name, s in SYSTEMS.items() if name in wanted}
    needed = set().union(*(s.upstreams for s in systems.values()))
    upstreams: dict[str, Service] = {}
    for name in sorted(needed):
        upstreams[name] = start_upstream(name, placement.server_cpu)
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
    if system.kind == "gateway":
        port = free_port()
        config = gateway_config(port, [upstreams[u] for u in system.upstreams])
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
        config = GATEWAY_CONFIG.format(
            port=port,
            policies="",
            targets=GATEWAY_STDIO_TARGET.format(
                cmd=json.dumps(command[0]), args=json.dumps(command[1:])
            ).rstrip("\n"),
        )
        service = start_gateway(
            _process_name(name), config, port, placement, cost_excludes=(str(UPSTREAM_JS),)
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
        service = peers.start_mcp_proxy(stack, command, cpu, upstream_marker=str(UPSTREAM_JS))
        return service, f"mcp-proxy {peers.MCP_PROXY_VERSION} in front of `{' '.join(command)}`"
    if system.kind == "supergateway":
        command = stdio_upstream_command()
        service = peers.start_supergateway(stack, command, cpu, upstream_marker=str(UPSTREAM_JS))
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


def stdio_upstream_command() -> list[str]:
    """`node bench/mcp_upstream.js --stdio`, with absolute paths."""
    node = shutil.which("node")
    if node is None:
        raise StartError("the stdio upstream cannot start: node is not on PATH")
    return [node, str(UPSTREAM_JS), "--stdio"]


def start_upstream(name: str, cpu: int | None, *options: str) -> Service:
    """Start bench/mcp_upstream.js with `options` after its port (`--tools N`, `--sse`)."""
    node = shutil.which("node")
    if node is None:
        raise StartError("upstream failed to start: node is not on PATH")
    port = free_port()
    argv = [node, str(UPSTREAM_JS), str(port), *options]
    return start_service(f"upstream-{name}", argv, port=port, cpu=cpu)


def _process_name(system: str) -> str:
    return f"agentgw-{system.removeprefix('gateway-')}"


def gateway_config(
    port: int, upstreams: list[Service], policies: Mapping[str, Any] | None = None
) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` federating `upstreams`,
    with the route's `policies` (given as JSON, which YAML reads as it is)."""
    targets = "".join(
        GATEWAY_TARGET.format(name=u.name.removeprefix("upstream-"), port=u.port) for u in upstreams
    )
    route_policies = f"\n      policies: {json.dumps(policies)}" if policies else ""
    return GATEWAY_CONFIG.format(port=port, policies=route_policies, targets=targets.rstrip("\n"))


def start_gateway(
    name: str,
    config: str,
    port: int,
    placement: Placement,
    *,
    module: str = "agentgw",
    args: Sequence[str] = (),
    cost_excludes: tuple[str, ...] = (),
) -> Service:
    """Start `python -m <module> -c <config> <args>` from the repository's root;
    `module` is agentgw, or a launcher in bench/ that takes the same arguments.
    `cost_excludes` as for `Service`."""
    argv = [gateway_python(), "-m", module, "-c", config, *args]
    return start_service(
        name, argv, port=port, cpu=placement.server_cpu, cwd=REPO, cost_excludes=cost_excludes
    )


def open_target(
    stack: ExitStack,
    system: str,
    url: str,
    service: Service,
    tools: tuple[str, ...],
    *,
    authorization: str | None = None,
) -> tuple[Target, str]:
    """Open the session wrk will use, and check on it that the tool echoes.

    Args:
        authorization: the `Authorization` header the session and wrk send, if any.

    Returns:
        The target for the runner (the session's close is on `stack`), and a
        sentence for the report's header.

    Raises:
        StartError: the system did not answer as an MCP server with the tool.
    """
    try:
        session = open_session(url, authorization=authorization)
    except McpError as exc:
        message = f"{system}: MCP session failed to open at {url}: {exc}"
        raise StartError(with_exit(message, service)) from None
    stack.callback(_close_quietly, session)
    try:
        listed = list_tools(session)
        tool = next((t for t in tools if t in listed), None)
        if tool is None:
            raise StartError(
                f"{system}: tools/list has none of {', '.join(tools)}: {', '.join(listed)}"
            )
        check_echo(session, tool, MESSAGE, calls=CHECK_CALLS)
    except McpError as exc:
        raise StartError(with_exit(f"{system}: {exc}", service)) from None
    env = {
        "MCP_SESSION_ID": session.session_id,
        "MCP_PROTOCOL_VERSION": session.protocol_version,
        "MCP_TOOL": tool,
        "MCP_MESSAGE": MESSAGE,
    }
    if authorization is not None:
        env["MCP_AUTHORIZATION"] = authorization
    fact = (
        f"protocol {session.protocol_version}, calls `{tool}` of {len(listed)} tool(s) "
        f"listed; {CHECK_CALLS} calls echoed before the load"
    )
    return Target(system, url, service, script=CALL_SCRIPT, env=env), fact


def with_exit(message: str, service: Service) -> str:
    """`message`, and when `service` died: its first exception and the tail of its output."""
    # A request that crashed the process takes a moment to end it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.proc.wait(timeout=1)
    if service.is_running():
        return message
    cause = service.first_exception()
    exited = f"{service.name} exited" + (f" with {cause}" if cause else "")
    return f"{message}; {exited}; its output ends:\n{service.output_tail()}"


def _close_quietly(session: McpSession) -> None:
    with contextlib.suppress(McpError):
        close_session(session)


SCENARIO = Scenario(
    name="mcp",
    summary=(
        "MCP tools/call of an echo tool: agentgw (1 and 3 federated targets, 2 workers, "
        "a stdio target) vs direct, nginx, FastMCP, mcp-proxy and supergateway"
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
        "bench/mcp_upstream.js: HTTP instances a (direct, nginx, fastmcp, gateway-1, "
        "gateway-1-w2), a, b, c (gateway-3); `--stdio` spawned by mcp-proxy, supergateway "
        "and gateway-stdio"
    ),
    comparisons=(
        ("gateway-1", "direct"),
        ("gateway-1", "nginx"),
        ("gateway-1", "fastmcp"),
        ("gateway-1", "mcp-proxy"),
        ("gateway-1", "supergateway"),
        ("gateway-stdio", "mcp-proxy"),
        ("gateway-stdio", "supergateway"),
        ("gateway-3", "gateway-1"),
        ("gateway-1-w2", "gateway-1"),
    ),
    # The targets for gateway-1 against each system.
    targets={
        ("gateway-1", "direct"): RatioTarget(0.25, at=32),
        ("gateway-1", "nginx"): RatioTarget(0.35),
        ("gateway-1", "fastmcp"): RatioTarget(20),
        ("gateway-1", "mcp-proxy"): RatioTarget(5),
        ("gateway-1", "supergateway"): RatioTarget(5),
        ("gateway-1-w2", "gateway-1"): RatioTarget(1.7),
    },
)
