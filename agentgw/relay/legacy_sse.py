"""The legacy HTTP+SSE transport (MCP 2024-11-05), served.

How this works: ``GET .../sse`` opens a session that lives as long as the
stream; its first event names the endpoint to POST to
(``...?sessionId=<id>``). A POST there is answered 202 at once and its
message is handed to the stream's nursery, where it is dispatched; every
answer goes out on the stream. The stream is the session's lifetime, so the
work of its messages belongs to it rather than to the POST that carried them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from agentgw.errors import ClientGone, UpstreamUnavailable
from agentgw.mcp.federation import McpRoute, legacy_session_id
from agentgw.relay.calls import CHANNEL_SIZE, Message
from agentgw.relay.context import RequestContext, UpstreamHeaders
from agentgw.relay.dispatch import dispatch
from agentgw.relay.outbox import ChannelOutbox
from agentgw.relay.session import RelaySession
from agentgw.relay.sessions import session_not_found
from agentgw.wire.sse import encode_event

if TYPE_CHECKING:
    from agentgw.relay.endpoint import McpEndpoint

Work = tuple[RequestContext, Message, UpstreamHeaders]


@attrs.define(eq=False)
class LegacySession:
    session: RelaySession
    work: trio.MemorySendChannel[Work]


async def stream(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    session = await ep.directory.new(route)
    send, receive = trio.open_memory_channel[Message](CHANNEL_SIZE)
    work_send, work_receive = trio.open_memory_channel[Work](CHANNEL_SIZE)
    ep.legacy[session.sid] = LegacySession(session, work_send)
    endpoint = f"{ctx.req.path}?sessionId={session.sid}"
    ctx.record.extra["mcp.session"] = session.sid[:8]
    gone = False
    try:
        async with session.get_stream() as server_messages, trio.open_nursery() as nursery:

            async def forward_server_messages() -> None:
                async for message in server_messages:
                    await send.send(message)

            async def run_work() -> None:
                async for post_ctx, message, headers in work_receive:
                    timeouts = ep.timeouts(post_ctx)
                    outbox = ChannelOutbox(send)
                    nursery.start_soon(
                        dispatch, post_ctx, route, session, message, headers, outbox, timeouts
                    )

            nursery.start_soon(forward_server_messages)
            nursery.start_soon(run_work)
            try:
                await ep.streams.serve_sse(
                    ctx.req, receive, encode_event(endpoint, event="endpoint")
                )
            except ClientGone:  # re-raised outside the nursery, unwrapped
                gone = True
            nursery.cancel_scope.cancel()
    finally:
        ep.legacy.pop(session.sid, None)
        session.close()
    if gone:
        raise ClientGone("client disconnected")


async def post(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    sid = legacy_session_id(ctx.req.query)
    found = ep.legacy.get(sid)
    if found is None:
        raise session_not_found("no legacy SSE stream with this id")
    message = await ep.read_message(ctx.req)
    ctx.record.extra["mcp.method"] = str(message.get("method") or "response")
    ctx.record.extra["mcp.session"] = sid[:8]
    try:
        headers = ctx.mcp_headers(found.session.route.passthrough_targets)
        found.work.send_nowait((ctx, message, headers))
    except trio.WouldBlock:
        raise UpstreamUnavailable("too many messages in flight", status=503) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise session_not_found("the stream is closing") from None
    await ctx.req.respond(202, b"Accepted")
