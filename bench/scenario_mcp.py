"""Scenario `mcp`: MCP `tools/call` of an echo tool, agentgw against a direct session.

Up to three instances of bench/mcp_upstream.js (a, b, c) start, each on its own
port; `direct` loads a, `gateway-1` is agentgw with a as its one target, and
`gateway-3` is agentgw federating a, b and c (the tool is then `a_echo`). For
each system the harness opens one MCP session, finds the tool, checks that a
few calls echo their message, and hands the session to wrk
(bench/mcp_call.lua). The sessions are deleted before the processes stop.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.mcp_session import (
    McpError,
    McpSession,
    check_echo,
    close_session,
    list_tools,
    open_session,
)
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
    federates: tuple[str, ...]  # the upstreams agentgw federates; none: wrk goes to `a`
    tools: tuple[str, ...]  # the names the tool may have there, the first one listed wins


SYSTEMS = {
    "direct": _System((), ("echo",)),
    # One target needs no prefix, but a gateway may prefix anyway.
    "gateway-1": _System(("a",), ("echo", "a_echo")),
    "gateway-3": _System(("a", "b", "c"), ("a_echo",)),
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


def start_mcp(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    systems = {name: s for name, s in SYSTEMS.items() if name in wanted}
    needed = {"a"}.union(*(s.federates for s in systems.values()))
    upstreams: dict[str, Service] = {}
    for name in sorted(needed):
        upstreams[name] = start_upstream(name, placement.server_cpu)
        stack.callback(upstreams[name].stop)
    started = Started()
    for name, system in systems.items():
        try:
            if system.federates:
                federated = [upstreams[u] for u in system.federates]
                port = free_port()
                config = gateway_config(port, federated)
                service = start_gateway(_process_name(name), config, port, placement)
                stack.callback(service.stop)
            else:
                service = upstreams["a"]
            url = f"http://127.0.0.1:{service.port}/mcp"
            target, fact = open_target(stack, name, url, service, system.tools)
        except StartError as exc:
            started.failures.append(str(exc))
            continue
        print(f"{name}: {fact}", flush=True)
        started.targets.append(target)
        started.facts.append((f"session on {name}", fact))
    return started


def start_upstream(name: str, cpu: int | None) -> Service:
    node = shutil.which("node")
    if node is None:
        raise StartError("upstream failed to start: node is not on PATH")
    port = free_port()
    argv = [node, str(UPSTREAM_JS), str(port)]
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
    name: str, config: str, port: int, placement: Placement, *, module: str = "agentgw"
) -> Service:
    """Start `python -m <module> -c <config>` from the repository's root; `module`
    is agentgw, or a launcher in bench/ that takes the same arguments."""
    argv = [gateway_python(), "-m", module, "-c", config]
    return start_service(name, argv, port=port, cpu=placement.server_cpu, cwd=REPO)


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
        "MCP tools/call of an echo tool at c=1 and c=64: agentgw with 1 and with 3 "
        "federated targets vs direct to a Node MCP server"
    ),
    systems=tuple(SYSTEMS),
    concurrencies=(1, 64),
    start=start_mcp,
    load=(
        "POST of an MCP tools/call (~115-byte body) on one session per system, unique "
        "JSON-RPC ids, every response checked for a 200 with the echo (bench/mcp_call.lua)"
    ),
    upstream="bench/mcp_upstream.js (3 instances: a for direct and gateway-1; a, b, c for "
    "gateway-3)",
    comparisons=(("gateway-1", "direct"), ("gateway-3", "direct"), ("gateway-3", "gateway-1")),
)
