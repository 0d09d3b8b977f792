"""Scenario `mcp-auth`: MCP `tools/call` through agentgw with and without its security policies.

One bench/mcp_upstream.js (`a`) runs behind three agentgw processes that
differ only in the route's policies: `gateway` has none (the config of `mcp`'s
`gateway-1`); `gateway-jwt` has `jwtAuth` (strict, an inline JWKS) and
`mcpAuthorization` (the tool's name and a group claim), with the verifier's
token cache on, as agentgw builds it; `gateway-jwt-nocache` has the same
policies, started through bench/agentgw_nocache.py, which turns the cache off
(agentgw has no config key for it yet), so every call pays for an RSA
verification.

The harness generates an RSA 2048 key for the run, puts its public half in
the JWKS of the config, and signs one RS256 token (iss, aud, sub, groups
["bench"], exp in an hour). Every request to every system carries it as
`Authorization: Bearer <token>`, the `initialize`, the notification and the
sample calls included, so the three systems get the same bytes and differ
only in what the gateway does with them. Before the load, each system with
policies must refuse a request without a token (401) and a call with a
token that lacks the group (JSON-RPC error -32602): the policies measured
are the policies in force.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.agentgw_nocache import MARKER as NO_CACHE_MARKER
from bench.base import Placement, Scenario, Started
from bench.launch import (
    mcp_gateway_config,
    open_target,
    start_gateway,
    start_mcp_upstream,
    with_exit,
)
from bench.mcp_session import (
    CLIENT_INFO,
    PROTOCOL_VERSION,
    McpError,
    call_error,
    close_session,
    open_session,
    post,
)
from bench.report import RatioTarget
from bench.systems import Service, StartError, free_port
from bench.tokens import SigningKey

ISSUER = "https://idp.bench.invalid"
AUDIENCE = "agentgw-bench"
SUBJECT = "bench-client"
GROUP = "bench"
KID = "bench-rs256"
TOOLS = ("echo", "a_echo")  # one target needs no prefix, but a gateway may prefix anyway
INVALID_PARAMS = -32602  # what mcpAuthorization answers for a forbidden tool
TARGET_RATIO = 0.85  # issue 4: gateway-jwt at no less than 85% of gateway


@dataclass(frozen=True)
class _System:
    process: str
    has_policies: bool
    module: str = "agentgw"  # what `python -m` starts: agentgw or a launcher in bench/


SYSTEMS = {
    "gateway": _System("agentgw", has_policies=False),
    "gateway-jwt": _System("agentgw-jwt", has_policies=True),
    "gateway-jwt-nocache": _System(
        "agentgw-jwt-nocache", has_policies=True, module="bench.agentgw_nocache"
    ),
}


# Allow rules are OR-ed (any true allow allows): as two plain strings, the tool's
# name alone would let every valid token through and the group rule would never
# run. As a `require`, the group is checked on every call, then the tool's name.
RULES = ('mcp.tool.name == "echo"', {"require": f'"{GROUP}" in jwt.groups'})


def policies(jwks: str) -> dict[str, Any]:
    return {
        "jwtAuth": {"mode": "strict", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks},
        "mcpAuthorization": {"rules": list(RULES)},
    }


def start_mcp_auth(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    key = SigningKey.generate(KID)
    token = key.token(issuer=ISSUER, audience=AUDIENCE, subject=SUBJECT, groups=[GROUP])
    outsider = key.token(issuer=ISSUER, audience=AUDIENCE, subject=SUBJECT, groups=["other"])
    authorization = f"Bearer {token}"
    upstream = start_mcp_upstream("a", placement.server_cpu)
    stack.callback(upstream.stop)
    started = Started()
    started.facts += [
        (
            "token",
            f"RS256, signed once for the run with a fresh RSA {key.private_key.key_size}-bit "
            f"key (kid `{KID}`), {len(token)} bytes; every request to every system sends it "
            f"as `Authorization: Bearer <token>`",
        ),
        (
            "policies",
            f"on gateway-jwt and gateway-jwt-nocache, the route's "
            f"`{json.dumps(policies('<the JWKS of that key>'))}` (both rules run on every "
            "call); gateway has none",
        ),
        (
            "token cache",
            "on in gateway-jwt (agentgw's default size); off in gateway-jwt-nocache, which "
            "is started as `python -m bench.agentgw_nocache`: it wraps "
            "`agentgw.policy.jwt.Verifier.__init__` to pass `cache_size=0`, then runs "
            "`agentgw.cli.main` (agentgw has no config key for the cache yet)",
        ),
    ]
    for name, system in SYSTEMS.items():
        if name not in wanted:
            continue
        try:
            service = _start(name, system, upstream, key, placement)
            stack.callback(service.stop)
            url = f"http://127.0.0.1:{service.port}/mcp"
            target, fact = open_target(
                stack, name, url, service, TOOLS, authorization=authorization
            )
            if system.has_policies:
                tool = target.env["MCP_TOOL"]
                fact += "; " + _check_policies(name, url, service, tool, authorization, outsider)
        except StartError as exc:
            started.failures.append(str(exc))
            continue
        print(f"{name}: {fact}", flush=True)
        started.targets.append(target)
        started.facts.append((f"session on {name}", fact))
    return started


def _start(
    name: str, system: _System, upstream: Service, key: SigningKey, placement: Placement
) -> Service:
    port = free_port()
    config = mcp_gateway_config(
        port, [upstream], policies(key.jwks()) if system.has_policies else None
    )
    service = start_gateway(system.process, config, port, placement, module=system.module)
    if system.module == "bench.agentgw_nocache" and NO_CACHE_MARKER not in service.output():
        service.stop()
        raise StartError(
            f"{name}: {service.name} did not report its token cache off "
            f"({NO_CACHE_MARKER!r}): {service.output_tail()}"
        )
    return service


def _check_policies(
    name: str, url: str, service: Service, tool: str, authorization: str, outsider: str
) -> str:
    """Check that the gateway enforces its policies: `initialize` without a token and a
    call with a token outside the group (on a session of its own) are refused.

    Returns:
        A sentence for the report's header.

    Raises:
        StartError: one of them was let through.
    """
    params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
    request = {"jsonrpc": "2.0", "id": "no-token", "method": "initialize", "params": params}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    try:
        status, _, body = post(url, headers, request, "initialize without a token")
        if status != 401:
            raise StartError(
                f"{name}: initialize without a token got HTTP {status}, not 401: {body[:200]!r}"
            )
        session = open_session(url, authorization=authorization)
        try:
            outside = dataclasses.replace(session, authorization=f"Bearer {outsider}")
            error = call_error(outside, tool, "denied")
        finally:
            close_session(session)
    except McpError as exc:
        raise StartError(with_exit(f"{name}: {exc}", service)) from None
    if error.get("code") != INVALID_PARAMS:
        raise StartError(f"{name}: a call with a token outside group {GROUP!r} got {error}")
    return (
        f"refused without a token (HTTP 401, {body.decode(errors='replace').strip()!r}) "
        f"and with a token outside group {GROUP!r} (JSON-RPC {error.get('code')} "
        f"{error.get('message')!r})"
    )


SCENARIO = Scenario(
    name="mcp-auth",
    summary=(
        "MCP tools/call of an echo tool at c=1 and c=64 through agentgw: no policies vs "
        "jwtAuth + mcpAuthorization with the token cache on and off"
    ),
    systems=tuple(SYSTEMS),
    concurrencies=(1, 64),
    start=start_mcp_auth,
    load=(
        "POST of an MCP tools/call (~115-byte body) with `Authorization: Bearer <token>` on "
        "one session per system, unique JSON-RPC ids, every response checked for a 200 with "
        "the echo (bench/mcp_call.lua)"
    ),
    upstream="bench/mcp_upstream.js (one instance, behind all three gateways)",
    comparisons=(
        ("gateway-jwt", "gateway"),
        ("gateway-jwt-nocache", "gateway"),
        ("gateway-jwt", "gateway-jwt-nocache"),
    ),
    targets=(RatioTarget("gateway-jwt", "gateway", TARGET_RATIO),),
)
