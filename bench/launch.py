"""Start what several scenarios share: agentgw, the `floor` relay, the Node
upstreams, the OTLP sink; open and check the MCP session a load generator will
use; read agentgw's metrics and what the sink received.

Every process runs on a free port on 127.0.0.1, pinned to the systems' core
(the sink, which stands for a collector on another machine, to the load's),
and is returned once it answers HTTP; the caller registers its stop.

agentgw's configs put its readiness, stats and admin servers on free ports of
127.0.0.1 too (`gateway_settings`): with agentgateway's defaults the first
gateway of a run would take 0.0.0.0:15020 and 15021 and the next ones would
start without them, so systems that should differ in one setting would differ
in two.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from bench.base import BENCH, REPO, LoadTarget, Placement
from bench.certs import Certs
from bench.mcp_session import McpError, McpSession, check_echo, close_session, list_tools
from bench.mcp_session import open_session as open_mcp_session
from bench.systems import Service, StartError, free_port, start_service

HTTP_UPSTREAM_JS = BENCH / "upstream.js"
MCP_UPSTREAM_JS = BENCH / "mcp_upstream.js"
CALL_SCRIPT = BENCH / "mcp_call.lua"
OTLP_SINK_JS = BENCH / "otlp_sink.js"

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
config: {settings}
"""

MCP_GATEWAY_CONFIG = """\
binds:
- port: {port}
  address: 127.0.0.1
  listeners:
  - name: bench{listener}
    routes:
    - name: mcp{policies}
      backends:
      - mcp:
          targets:
{targets}
config: {settings}
"""
MCP_GATEWAY_TARGET = """\
          - name: {name}
            mcp:
              host: {scheme}://127.0.0.1:{port}/mcp
"""
HTTPS_LISTENER = """
    protocol: HTTPS
    tls: {tls}"""

# agentgw's servers besides the traffic ports (config.*Addr).
MANAGEMENT_KEYS = ("readinessAddr", "statsAddr", "adminAddr")
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


def gateway_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """agentgw's `config:` section: `settings`, and each of the readiness, stats and
    admin servers that `settings` does not place on a free port of 127.0.0.1."""
    free = {key: f"127.0.0.1:{free_port()}" for key in MANAGEMENT_KEYS}
    return {**free, **(settings or {})}


def http_gateway_config(
    port: int, upstream_port: int, *, settings: Mapping[str, Any] | None = None
) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` to a plain HTTP upstream.

    Args:
        settings: keys of the `config:` section (see `gateway_settings`).
    """
    return HTTP_GATEWAY_CONFIG.format(
        port=port, upstream_port=upstream_port, settings=json.dumps(gateway_settings(settings))
    )


def mcp_gateway_config(
    port: int,
    upstreams: Sequence[Service],
    policies: Mapping[str, Any] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    tls: Certs | None = None,
) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` federating `upstreams`
    (`https://` for those that serve HTTPS), with the route's `policies` (given as
    JSON, which YAML reads as it is).

    Args:
        settings: keys of the `config:` section (see `gateway_settings`).
        tls: the certificate of an HTTPS listener; None: plain HTTP.
    """
    targets = "".join(
        MCP_GATEWAY_TARGET.format(
            name=u.name.removeprefix("upstream-"), scheme=u.scheme, port=u.port
        )
        for u in upstreams
    )
    return _mcp_config(port, targets, policies, settings, tls)


def stdio_gateway_config(
    port: int, command: Sequence[str], *, settings: Mapping[str, Any] | None = None
) -> str:
    """agentgw's config: one route on 127.0.0.1:`port` with one stdio target, `a`."""
    target = MCP_GATEWAY_STDIO_TARGET.format(
        cmd=json.dumps(command[0]), args=json.dumps(list(command[1:]))
    )
    return _mcp_config(port, target, None, settings, None)


def _mcp_config(
    port: int,
    targets: str,
    policies: Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
    tls: Certs | None,
) -> str:
    listener = ""
    if tls is not None:
        listener = HTTPS_LISTENER.format(
            tls=json.dumps({"cert": str(tls.cert), "key": str(tls.key)})
        )
    return MCP_GATEWAY_CONFIG.format(
        port=port,
        listener=listener,
        policies=f"\n      policies: {json.dumps(policies)}" if policies else "",
        targets=targets.rstrip("\n"),
        settings=json.dumps(gateway_settings(settings)),
    )


def start_gateway(
    name: str,
    config: str,
    port: int,
    placement: Placement,
    *,
    module: str = "agentgw",
    args: Sequence[str] = (),
    cost_excludes: tuple[str, ...] = (),
    tls: ssl.SSLContext | None = None,
) -> Service:
    """Start `python -m <module> -c <config> <args>` from the repository's root;
    `module` is agentgw, or a launcher in bench/ that takes the same arguments.
    `cost_excludes` as for `Service`; `tls`, a client context that trusts its
    HTTPS listener, if it has one."""
    argv = [gateway_python(), "-m", module, "-c", config, *args]
    return start_service(
        name,
        argv,
        port=port,
        cpu=placement.server_cpu,
        cwd=REPO,
        cost_excludes=cost_excludes,
        tls=tls,
    )


def scrape_metrics(stats_addr: str) -> str | None:
    """The text of agentgw's `/metrics` at `stats_addr` (host:port), or None when it
    does not answer 200."""
    host, _, port = stats_addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return text if response.status == 200 else None


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets) in Prometheus text."""
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)\s*$"
    return sum(float(value) for value in re.findall(pattern, text, re.M))


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
    name: str, cpu: int | None, *options: str, port: int | None = None, tls: Certs | None = None
) -> Service:
    """Start bench/mcp_upstream.js as `upstream-<name>`, with `options` after its
    port (`--tools N`, `--sse`); on `port` when given (a restart), else a free one;
    serving HTTPS with the certificate of `tls` when given."""
    port = port or free_port()
    argv = [node(), str(MCP_UPSTREAM_JS), str(port), *options]
    if tls is None:
        return start_service(f"upstream-{name}", argv, port=port, cpu=cpu)
    argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    context = tls.client_context()
    return start_service(f"upstream-{name}", argv, port=port, cpu=cpu, tls=context)


def start_otlp_sink(cpu: int | None) -> Service:
    """bench/otlp_sink.js: an OTLP/HTTP collector at /v1/traces that counts the
    spans it gets and keeps nothing."""
    port = free_port()
    return start_service("otlp-sink", [node(), str(OTLP_SINK_JS), str(port)], port=port, cpu=cpu)


def sink_stats(sink: Service) -> dict[str, int]:
    """What the sink received: exports, bytes, spans, and spans by kind (server,
    client, other), and the exports it rejected.

    Raises:
        StartError: it did not answer.
    """
    conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
    try:
        conn.request("GET", "/stats")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise StartError(f"{sink.name}: GET /stats: {exc!r}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise StartError(f"{sink.name}: GET /stats: HTTP {response.status}")
    stats: dict[str, int] = json.loads(body)
    return stats


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
    An `https://` URL is trusted with the client context of `service`.

    Args:
        authorization: the `Authorization` header the session and the load send, if any.

    Returns:
        The target for the load (the session's close is on `stack`), and a
        sentence for the report's header.

    Raises:
        StartError: the system did not answer as an MCP server with the tool.
    """
    try:
        session = open_mcp_session(url, authorization=authorization, tls=service.tls)
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
