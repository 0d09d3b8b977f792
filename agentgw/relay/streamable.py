"""The Streamable HTTP transport, served: POST, GET and DELETE on the MCP
path.

How this works: a POST without a session id is an ``initialize`` (a new
session, whose sealed token the answer carries) or a request of the
2026-07-28 revision, which ``relay/stateless.py`` serves; with one, the
session is found (``relay/sessions.py``) and the message dispatched
(``relay/dispatch.py``), its answers going to a ``ResumableOutbox``
(``relay/resume.py``). A GET holds the session's server-to-client stream,
or with ``Last-Event-ID`` resumes a stream the client lost; a DELETE ends
the session for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentgw.errors import ClientError, HTTPError
from agentgw.mcp import versions
from agentgw.mcp.federation import McpRoute
from agentgw.mcp.replay import has_resumable_streams, prefers_event_stream
from agentgw.mcp.stateless import is_stateless_request
from agentgw.relay import stateless
from agentgw.relay.calls import Message
from agentgw.relay.context import RequestContext, UpstreamHeaders
from agentgw.relay.dispatch import dispatch, initialize
from agentgw.relay.outbox import Outbox, PostOutbox, respond_json
from agentgw.relay.resume import ResumableOutbox, find_resumed, resumable_outbox, serve_log
from agentgw.relay.session import RelaySession
from agentgw.upstream.mcp.hangup import listening_for_hang_ups
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
    if is_stateless_request(ctx.req.headers, message, has_session=token is not None):
        await stateless.serve(ep, ctx, route, message, headers)
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
    if session.route is not route:
        # A reload changed the route: the session's own targets say which
        # of them get the caller's token.
        headers = ctx.mcp_headers(session.route.passthrough_targets)
    outbox = resumable_outbox(
        ctx.req,
        session.streams,
        ep.sse,
        session.sid[:8],
        session.protocol_version,
        prefers_event_stream(header_value(ctx.req.headers, b"accept")),
    )
    await post_to_session(ep, ctx, session.route, session, message, headers, outbox)


async def _initialize(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
) -> None:
    session = await ep.directory.new(route)
    try:
        timeout = ep.timeouts(ctx).first_reply
        answer = await initialize(session, route, message, headers, req=ctx.req, timeout=timeout)
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

    if not isinstance(out, ResumableOutbox):
        await ctx.req.run_watched(work)
        return
    try:
        with listening_for_hang_ups(out.hang_up_soon):
            await ctx.req.run_watched(work)
    finally:
        out.close()


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


# ---------------------------------------------------------------- GET and DELETE


async def get(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    if not _accepts(ctx, b"text/event-stream"):
        raise ClientError("Accept must include text/event-stream", status=406)
    token = _session_token(ctx)
    if token is None:
        raise ClientError("Mcp-Session-Id header is required")
    session = await ep.directory.find(token, route)
    sid = session.sid[:8]
    ctx.record.extra["mcp.session"] = sid
    last_event_id = header_value(ctx.req.headers, b"last-event-id")
    if last_event_id is not None:
        stream, after = find_resumed(session.streams, last_event_id)
        ctx.record.extra["mcp.resume"] = stream.log.key
        if not stream.is_get:  # the rest of a POST's answer
            await serve_log(ctx.req, stream, after, ep.streams, None, sid)
            return
    else:
        stream, after = session.streams.new(ep.sse, is_get=True), 0
    priming = b""
    if last_event_id is None and has_resumable_streams(session.protocol_version):
        priming = stream.log.priming(ep.sse.retry_ms)
    async with session.get_stream() as messages:
        await serve_log(ctx.req, stream, after, ep.streams, messages, sid, priming=priming)


async def delete(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    token = _session_token(ctx)
    if token is None:
        raise ClientError("Mcp-Session-Id header is required")
    session = await ep.directory.find(token, route)
    ep.directory.end(session)
    await ctx.req.respond(200, b"")
