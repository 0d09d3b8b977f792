"""The Streamable HTTP transport, served: POST, GET and DELETE on the MCP
path, and the 2026-07-28 revision's session-less requests.

How this works: a POST without a session id is an ``initialize`` (a new
session, whose sealed token the answer carries) or a request of the
stateless revision; with one, the session is found (``relay/sessions.py``)
and the message dispatched (``relay/dispatch.py``), its answers going to a
``PostOutbox``. A GET holds the session's server-to-client stream; a DELETE
ends the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentgw.errors import (
    HEADER_MISMATCH,
    UNSUPPORTED_VERSION,
    ClientError,
    HTTPError,
    MethodNotFound,
)
from agentgw.mcp import versions
from agentgw.mcp.federation import McpRoute, call_name, stateless_version
from agentgw.mcp.mrtr import INPUT_METHODS
from agentgw.relay import mrtr, tasks
from agentgw.relay.context import RequestContext, UpstreamHeaders
from agentgw.relay.dispatch import Timeouts, dispatch, initialize
from agentgw.relay.outbox import (
    JSON,
    Outbox,
    PostOutbox,
    StatelessRevisionOutbox,
    dumps,
    respond_json,
)
from agentgw.relay.session import Message, RelaySession
from agentgw.wire.http import header_value

if TYPE_CHECKING:
    from agentgw.relay.endpoint import McpEndpoint


def _accepts(ctx: RequestContext, *kinds: bytes) -> bool:
    accept = (header_value(ctx.req.headers, b"accept") or b"").lower()
    return all(kind in accept for kind in kinds)


def _session_token(ctx: RequestContext) -> str | None:
    token = header_value(ctx.req.headers, b"mcp-session-id")
    return token.decode("latin-1") if token is not None else None


async def post(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    if not _accepts(ctx, b"application/json", b"text/event-stream"):
        raise ClientError("Accept must include application/json and text/event-stream", status=406)
    message = await ep.read_message(ctx.req)
    method = message.get("method")
    ctx.record.extra["mcp.method"] = str(method or "response")
    headers = ctx.mcp_headers(route.passthrough_targets)
    token = _session_token(ctx)
    if token is None and (
        method == "server/discover" or stateless_version(ctx.req.headers, message)
    ):
        await stateless_revision(ep, ctx, route, message, headers)
        return
    if token is None:
        if method == "initialize":
            await _initialize(ep, ctx, route, message, headers)
        elif route.stateful:
            raise ClientError("Mcp-Session-Id header is required")
        else:
            await _stateless(ep, ctx, route, message, headers)
        return
    session = await ep.directory.find(token, route)
    ctx.record.extra["mcp.session"] = session.sid[:8]
    await post_to_session(ep, ctx, session.route, session, message, headers)


async def _initialize(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
) -> None:
    session = await ep.directory.new(route)
    try:
        answer = await initialize(session, route, message, headers)
    except HTTPError as exc:
        session.close()
        ctx.record.error = exc.log_text
        await respond_json(ctx.req, exc.rpc_error(message.get("id")))
        return
    ctx.record.extra["mcp.session"] = session.sid[:8]
    token = ep.directory.token_for(session)
    await respond_json(ctx.req, answer, [(b"mcp-session-id", token.encode())])


async def post_to_session(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    message: Message,
    headers: UpstreamHeaders,
    outbox: Outbox | None = None,
) -> None:
    timeouts = ep.timeouts(ctx)
    if "id" not in message or "method" not in message:
        await dispatch(ctx, route, session, message, headers, Outbox(), timeouts)
        await ctx.req.respond(202, b"")
        return
    out = outbox or PostOutbox(ctx.req)

    async def work() -> None:
        await dispatch(ctx, route, session, message, headers, out, timeouts)

    await ctx.req.run_watched(work)


async def _stateless(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
) -> None:
    """``statefulMode: stateless`` (before 2026-07-28): a session for this
    one request, initialized on the client's behalf, then closed."""
    session = await ep.directory.new(route, ttl=60)
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": versions.INITIALIZE_VERSIONS[-1],
                "capabilities": {},
                "clientInfo": {"name": "agentgw", "version": "stateless"},
            },
        }
        await initialize(session, route, init, headers)
        await post_to_session(ep, ctx, route, session, message, headers)
    finally:
        session.close()


# ---------------------------------------------------------------- 2026-07-28


def _check_headers(ctx: RequestContext, method: str, message: Message) -> None:
    declared = header_value(ctx.req.headers, b"mcp-method")
    if declared is not None and declared.decode("latin-1") != method:
        raise ClientError("Mcp-Method header does not match the body", code=HEADER_MISMATCH)
    name = call_name(message)
    named = header_value(ctx.req.headers, b"mcp-name")
    if named is not None and name is not None and named.isascii():
        text = named.decode("ascii")
        if not text.startswith("=?") and text != name:
            raise ClientError("Mcp-Name header does not match the body", code=HEADER_MISMATCH)


async def stateless_revision(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
) -> None:
    """A request of the 2026-07-28 revision: no session; the upstreams,
    which may speak only older revisions, are reached through one shared
    session per route, and results are given the new shape."""
    method = str(message.get("method") or "")
    msg_id = message.get("id")
    version = stateless_version(ctx.req.headers, message)
    if method == "server/discover" and version != versions.STATELESS_REVISION:
        data = {"supported": [versions.STATELESS_REVISION], "requested": version}
        error = ClientError("unsupported protocol version", code=UNSUPPORTED_VERSION, data=data)
        await respond_json(ctx.req, error.rpc_error(msg_id))
        return
    try:
        _check_headers(ctx, method, message)
    except HTTPError as exc:  # answered here: the error names the request's id
        ctx.record.error = exc.log_text
        body = dumps(exc.rpc_error(msg_id))
        await ctx.req.respond(exc.status, body, exc.headers, content_type=JSON)
        return
    if msg_id is None or method in versions.REMOVED_IN_STATELESS:
        error = MethodNotFound(f"method {method!r} is not in 2026-07-28")
        await respond_json(ctx.req, error.rpc_error(msg_id))
        return
    outbox = StatelessRevisionOutbox(PostOutbox(ctx.req), method)
    timeouts = ep.timeouts(ctx)
    if tasks.is_about_tasks(message):  # to targets that speak 2026-07-28 (relay/tasks.py)
        relayed = False

        async def native() -> None:
            nonlocal relayed
            relayed = await tasks.relay(
                ep.natives, ep.flights, ctx, route, message, headers, outbox, timeouts
            )

        await ctx.req.run_watched(native)
        if relayed:
            return
    await _through_shared(ep, ctx, route, message, headers, outbox, timeouts)


async def _through_shared(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
    outbox: Outbox,
    timeouts: Timeouts,
) -> None:
    method = str(message.get("method") or "")
    msg_id = message.get("id")
    session = await ep.directory.shared(route, headers)
    if method == "server/discover":
        result = _discover(session)
        extensions = tasks.extensions_of(await ep.natives.get(route, headers))
        if extensions:
            result["capabilities"] = {**result["capabilities"], "extensions": extensions}
        await respond_json(ctx.req, {"jsonrpc": "2.0", "id": msg_id, "result": result})
        return
    if method in INPUT_METHODS:  # may take input_required rounds (relay/mrtr.py)

        async def work() -> None:
            await mrtr.call(ep.flights, ctx, route, session, message, headers, outbox, timeouts)

        await ctx.req.run_watched(work)
        return
    params = message.get("params")
    if isinstance(params, dict):
        message = {**message, "params": versions.strip_protocol_meta(params)}
    await post_to_session(ep, ctx, route, session, message, headers, outbox)


def _discover(session: RelaySession) -> dict[str, Any]:
    init = session.init_result or {}
    result: dict[str, Any] = {
        "supportedVersions": [versions.STATELESS_REVISION],
        "capabilities": init.get("capabilities", {}),
        "cacheScope": "private",
        "ttlMs": 0,
        "resultType": "complete",
    }
    if init.get("instructions"):
        result["instructions"] = init["instructions"]
    if isinstance(init.get("serverInfo"), dict):
        result["_meta"] = {versions.SERVER_INFO_META_KEY: init["serverInfo"]}
    return result


# ---------------------------------------------------------------- GET and DELETE


async def get(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    if not _accepts(ctx, b"text/event-stream"):
        raise ClientError("Accept must include text/event-stream", status=406)
    token = _session_token(ctx)
    if token is None:
        raise ClientError("Mcp-Session-Id header is required")
    session = await ep.directory.find(token, route)
    async with session.get_stream() as messages:
        await ep.streams.serve_sse(ctx.req, messages)


async def delete(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    token = _session_token(ctx)
    if token is None:
        raise ClientError("Mcp-Session-Id header is required")
    session = await ep.directory.find(token, route)
    session.close()
    await ctx.req.respond(200, b"")
