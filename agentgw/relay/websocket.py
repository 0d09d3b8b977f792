"""MCP over WebSocket (agentgw's extension), served.

How this works: the upgrade is answered with wsproto, and the session lives
as long as the socket. One task writes every message of the session to the
socket; the reader dispatches each text message it receives in a task of the
connection's nursery, whose answers go to the writer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, TextMessage
from wsproto.events import Request as WsRequest

from agentgw.errors import ClientError
from agentgw.mcp.federation import McpRoute
from agentgw.relay.calls import CHANNEL_SIZE, Message
from agentgw.relay.context import RequestContext, UpstreamHeaders
from agentgw.relay.dispatch import dispatch
from agentgw.relay.outbox import ChannelOutbox
from agentgw.relay.session import RelaySession

if TYPE_CHECKING:
    from agentgw.relay.endpoint import McpEndpoint

RECEIVE_SIZE = 65536


async def serve(ep: McpEndpoint, ctx: RequestContext, route: McpRoute) -> None:
    req = ctx.req
    ws = WSConnection(ConnectionType.SERVER)
    ws.initiate_upgrade_connection(req.headers, req.target)
    request = next(iter(ws.events()), None)
    if not isinstance(request, WsRequest):
        raise ClientError("bad WebSocket upgrade")
    subprotocol = "mcp" if "mcp" in request.subprotocols else None
    accept = ws.send(AcceptConnection(subprotocol=subprotocol))
    req.record.status = 101
    stream, extra = req.take_stream()
    await stream.send_all(accept)
    session = await ep.directory.new(route)
    send, receive = trio.open_memory_channel[Message](CHANNEL_SIZE)
    headers = ctx.mcp_headers(route.passthrough_targets)
    try:
        async with session.get_stream() as server_messages, trio.open_nursery() as nursery:

            async def writer() -> None:
                try:
                    async for message in receive:
                        await stream.send_all(ws.send(TextMessage(json.dumps(message))))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()

            async def forward_server_messages() -> None:
                async for message in server_messages:
                    await send.send(message)

            nursery.start_soon(writer)
            nursery.start_soon(forward_server_messages)
            try:
                await _read(ep, ctx, ws, stream, extra, route, session, headers, send, nursery)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        session.close()


async def _read(
    ep: McpEndpoint,
    ctx: RequestContext,
    ws: WSConnection,
    stream: trio.abc.Stream,
    data: bytes,
    route: McpRoute,
    session: RelaySession,
    headers: UpstreamHeaders,
    send: trio.MemorySendChannel[Message],
    nursery: trio.Nursery,
) -> None:
    parts: list[str] = []
    size = 0
    timeouts = ep.timeouts(ctx)
    while True:
        if data:
            ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                parts.append(event.data)
                size += len(event.data)
                if size > ep.max_message:
                    await stream.send_all(ws.send(CloseConnection(code=1009)))
                    return
                if event.message_finished:
                    text, parts, size = "".join(parts), [], 0
                    try:
                        message = ep.parse_message(text.encode())
                    except ClientError as exc:
                        await send.send(exc.rpc_error(None))
                        continue
                    outbox = ChannelOutbox(send)
                    nursery.start_soon(
                        dispatch, ctx, route, session, message, headers, outbox, timeouts
                    )
            elif isinstance(event, Ping):
                await stream.send_all(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                await stream.send_all(ws.send(event.response()))
                return
        data = bytes(await stream.receive_some(RECEIVE_SIZE))
        if not data:
            return
