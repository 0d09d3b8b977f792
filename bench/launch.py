"""Start what several scenarios share: agentgw, the `floor` relay, the Node
upstreams; open and check the MCP session a load generator will use.

Every process runs on a free port on 127.0.0.1, pinned to the systems' core,
and is returned once it answers HTTP; the caller registers its stop.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from bench.base import BENCH, REPO, LoadTarget, Placement
from bench.mcp_session import McpError, McpSession, check_echo, close_session, list_tools
from bench.mcp_session import open_session as open_mcp_session
from bench.systems import Service, StartError, free_port, start_service

HTTP_UPSTREAM_JS = BENCH / "upstream.js"
MCP_UPSTREAM_JS = BENCH / "mcp_upstream.js"
CALL_SCRIPT = BENCH / "mcp_call.lua"

MESSAGE = "bench-echo"  # JSON-safe as it is: mcp_call.lua puts it in the body verbatim
CHECK_CALLS = 5

FLOOR_FACT = (
    "bench/floor.py, a Trio + h11 relay with agentgw's Python and pinning: one kept-alive "
    "upstream connection per client connection, whole messages forwarded, no routing, "
    "policy or logging"
)

HTTP_GATEWAY_CONFIG = """\
binds:
- port: {port}
  address: 127.0.0.1
  listeners:
  - name: bench
    routes:
    - name: upstream
      backends:
      - host: 127.0.0.1:{upstream_port}
"""

MCP_GATEWAY_CONFIG = """\
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
MCP_GATEWAY_TARGET = """\
          - name: {name}
            mcp:
              host: http://127.0.0.1:{port}/mcp
"""
MCP_GATEWAY_STDIO_TARGET = """\
          - name: a
            stdio:
              cmd: {cmd}
              args: {args}
"""


def gateway_python() -> str:
    """The repository's venv Python, which runs agentgw and `floor` alike."""
    venv_python = REPO / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise StartError("node is not on PATH")
    return found


# ------------------------------------------------------------ agentgw


def http_gateway_config(port: int, upstream_port: int) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` to a plain HTTP upstream."""
    return HTTP_GATEWAY_CONFIG.format(port=port, upstream_port=upstream_port)


def mcp_gateway_config(
    port: int, upstreams: Sequence[Service], policies: Mapping[str, Any] | None = None
) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` federating `upstreams`,
    with the route's `policies` (given as JSON, which YAML reads as it is)."""
    targets = "".join(
        MCP_GATEWAY_TARGET.format(name=u.name.removeprefix("upstream-"), port=u.port)
        for u in upstreams
    )
    route_policies = f"\n      policies: {json.dumps(policies)}" if policies else ""
    return MCP_GATEWAY_CONFIG.format(
        port=port, policies=route_policies, targets=targets.rstrip("\n")
    )


def stdio_gateway_config(port: int, command: Sequence[str]) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` with one stdio target, `a`."""
    target = MCP_GATEWAY_STDIO_TARGET.format(
        cmd=json.dumps(command[0]), args=json.dumps(list(command[1:]))
    )
    return MCP_GATEWAY_CONFIG.format(port=port, policies="", targets=target.rstrip("\n"))


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


# ------------------------------------------------------------ floor and upstreams


def start_floor(upstream_port: int, placement: Placement, name: str = "floor") -> Service:
    """bench/floor.py in front of 127.0.0.1:`upstream_port`, with agentgw's Python
    and pinning."""
    port = free_port()
    argv = [gateway_python(), "-m", "bench.floor", str(port), str(upstream_port)]
    return start_service(name, argv, port=port, cpu=placement.server_cpu, cwd=REPO)


def start_http_upstream(cpu: int | None) -> Service:
    """bench/upstream.js: every request answered with the same small JSON body."""
    port = free_port()
    return start_service("upstream", [node(), str(HTTP_UPSTREAM_JS), str(port)], port=port, cpu=cpu)


def start_mcp_upstream(
    name: str, cpu: int | None, *options: str, port: int | None = None
) -> Service:
    """Start bench/mcp_upstream.js as `upstream-<name>`, with `options` after its
    port (`--tools N`, `--sse`); on `port` when given (a restart), else a free one."""
    port = port or free_port()
    argv = [node(), str(MCP_UPSTREAM_JS), str(port), *options]
    return start_service(f"upstream-{name}", argv, port=port, cpu=cpu)


def stdio_upstream_command() -> list[str]:
    """`node bench/mcp_upstream.js --stdio`, with absolute paths."""
    return [node(), str(MCP_UPSTREAM_JS), "--stdio"]


# ------------------------------------------------------------ MCP sessions


def open_target(
    stack: ExitStack,
    system: str,
    url: str,
    service: Service,
    tools: tuple[str, ...],
    *,
    authorization: str | None = None,
) -> tuple[LoadTarget, str]:
    """Open the session a load generator will use, and check on it that the tool echoes.

    Args:
        authorization: the `Authorization` header the session and the load send, if any.

    Returns:
        The target for the load (the session's close is on `stack`), and a
        sentence for the report's header.

    Raises:
        StartError: the system did not answer as an MCP server with the tool.
    """
    try:
        session = open_mcp_session(url, authorization=authorization)
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
    return LoadTarget(system, url, service, script=CALL_SCRIPT, env=env), fact


def session_args(target: LoadTarget) -> list[str]:
    """The session of `target` as arguments of bench/loadgen.js."""
    env = target.env
    return [
        "--url",
        target.url,
        "--session",
        env["MCP_SESSION_ID"],
        "--protocol-version",
        env["MCP_PROTOCOL_VERSION"],
        "--tool",
        env["MCP_TOOL"],
        "--message",
        env["MCP_MESSAGE"],
    ]


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
