"""The MCP endpoint of a route with an ``mcp`` backend.

How this works: ``handle`` checks what every MCP request must pass (the
DNS-rebinding rule of localhost servers) and sends the request to its
transport: Streamable HTTP (``relay/streamable.py``), legacy SSE
(``relay/legacy_sse.py``) or WebSocket (``relay/websocket.py``). Those find
or make the session (``relay/sessions.py``) and dispatch each message
(``relay/dispatch.py``), whose answers go to an outbox (``relay/outbox.py``).
A refusal anywhere is an error of ``agentgw.errors``; ``handle`` answers it
once, with its status and a JSON-RPC error body.
"""

from __future__ import annotations

import math
from contextlib import aclosing

import attrs

from agentgw.errors import ClientError, HTTPError
from agentgw.mcp.federation import McpRoute, is_localhost_request, legacy_session_id
from agentgw.mcp.mrtr import StateSealer
from agentgw.relay import legacy_sse, streamable, websocket
from agentgw.relay.calls import Message
from agentgw.relay.context import RequestContext
from agentgw.relay.dispatch import Timeouts
from agentgw.relay.mrtr import Flights
from agentgw.relay.outbox import JSON, StreamWaits, dumps
from agentgw.relay.resume import SseSettings
from agentgw.relay.sessions import SessionDirectory
from agentgw.relay.tasks import NativeSessions
from agentgw.server.connection import ServerRequest
from agentgw.wire import jsonrpc
from agentgw.wire.http import header_value, is_websocket_upgrade

MAX_MESSAGE = 4 << 20


@attrs.define(eq=False)
class McpEndpoint:
    directory: SessionDirectory
    streams: StreamWaits = attrs.field(factory=StreamWaits)
    # Bounds the wait for an upstream's first answer to a call, unless the
    # route's ``timeout.backendRequestTimeout`` says otherwise.
    response_timeout: float = 300.0
    max_message: int = MAX_MESSAGE
    legacy: dict[str, legacy_sse.LegacySession] = attrs.field(factory=dict)
    sse: SseSettings = attrs.field(factory=SseSettings)
    flights: Flights = attrs.field(init=False)
    natives: NativeSessions = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        sealer = StateSealer(self.directory.codec.key)
        self.flights = Flights(sealer, self.directory.manager, self.directory.ids.index)
        self.natives = NativeSessions(self.directory.manager, self.directory.pool)

    def start_drain(self) -> None:
        """End every server-to-client stream now, between two events."""
        self.streams.drain()

    def owner_of(self, req: ServerRequest, route: McpRoute) -> int | None:
        """The worker that must serve ``req``: the one holding the session it
        names (None: it names none). Every request of a session goes to its
        owner, which alone knows whether the session was ended."""
        ids = self.directory.ids
        if ids.index is None:
            return None
        legacy = req.method == "POST" and "sessionId=" in req.query
        token = header_value(req.headers, b"mcp-session-id")
        if token is not None:
            sid = self.directory.sid_of(token.decode("latin-1"))
            return None if sid is None else ids.owner_of(sid)
        if legacy:
            return ids.owner_of(legacy_session_id(req.query))
        return None

    def timeouts(self, ctx: RequestContext) -> Timeouts:
        policy = ctx.policies.timeout
        first = self.response_timeout
        whole = math.inf
        if policy is not None:
            if policy.backend_request_timeout is not None:
                first = policy.backend_request_timeout
            if policy.request_timeout is not None:
                whole = policy.request_timeout
        return Timeouts(first, whole, self.streams.keepalive)

    async def read_message(self, req: ServerRequest) -> Message:
        """The one JSON-RPC message a POST carries.

        Raises:
            ClientError: 415 not JSON, 413 too large, 400 not one message.
        """
        ctype = (header_value(req.headers, b"content-type") or b"").lower()
        if not ctype.startswith(JSON):
            raise ClientError("Content-Type must be application/json", status=415)
        if (req.head.content_length or 0) > self.max_message:
            raise ClientError("message too large", status=413)
        body = bytearray()
        async with aclosing(req.body()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > self.max_message:
                    raise ClientError("message too large", status=413)
        data = bytes(body)
        if self.directory.ids.index is not None:
            req.keep_body(data)  # an MRTR retry may be another worker's (app.py)
        return self.parse_message(data)

    def parse_message(self, body: bytes) -> Message:
        messages, batch = jsonrpc.parse_messages(body)
        if batch or len(messages) != 1:
            raise ClientError("batched messages are not supported")
        return messages[0]

    async def handle(self, ctx: RequestContext, route: McpRoute) -> None:
        req = ctx.req
        try:
            if route.dns_rebinding_protection and not is_localhost_request(req.headers):
                raise ClientError(
                    "MCP DNS rebinding protection: Host/Origin must be localhost,"
                    " 127.0.0.1 or [::1]",
                    status=403,
                )
            if is_websocket_upgrade(req.headers):
                await websocket.serve(self, ctx, route)
            elif req.method == "POST" and "sessionId=" in req.query:
                await legacy_sse.post(self, ctx, route)
            elif req.method == "POST":
                await streamable.post(self, ctx, route)
            elif req.method == "GET" and req.path.endswith("/sse"):
                await legacy_sse.stream(self, ctx, route)
            elif req.method == "GET":
                await streamable.get(self, ctx, route)
            elif req.method == "DELETE":
                await streamable.delete(self, ctx, route)
            else:
                raise ClientError(
                    f"method {req.method} not allowed",
                    status=405,
                    headers=[(b"allow", b"GET, POST, DELETE")],
                )
        except HTTPError as exc:
            if req.is_response_started:
                raise
            ctx.record.error = exc.log_text
            body = dumps(exc.rpc_error(None))
            await req.respond(exc.status, body, exc.headers, content_type=JSON)
