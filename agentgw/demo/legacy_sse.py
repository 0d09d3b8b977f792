"""The demo server over the legacy HTTP+SSE transport (2024-11-05).

How this works: ``GET /sse`` opens a session and its one event stream, whose
first event (``endpoint``) names where to POST: ``/messages?sessionId=ID``.
Each POST carries one JSON-RPC message and gets 202; every answer, and every
message a call sends, goes out on the event stream as an event ``message``.
The session ends when the client closes the stream: its calls are cancelled.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio

from agentgw.demo.runner import CallRunner
from agentgw.demo.server import Answer, DemoSession, Start
from agentgw.demo.wire import JSON, SSE_KEEPALIVE, dumps, media_type
from agentgw.errors import ClientGone
from agentgw.server.connection import ServerRequest

logger = logging.getLogger(__name__)

MAX_QUEUED = 256  # messages waiting for a slow client
KEEPALIVE_SECONDS = 15.0
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


@attrs.define(eq=False)
class _Outbox:
    """The session's event stream, as every call's ``Sink``."""

    send_channel: trio.MemorySendChannel[JSON]

    async def send(self, message: JSON) -> None:
        try:
            await self.send_channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the stream is gone; the session's calls are being cancelled

    def hang_up(self) -> None:
        pass  # this transport cannot resume a stream

    def end(self) -> None:
        pass  # the stream belongs to the session, not to one call


@attrs.define(eq=False)
class _Session:
    core: DemoSession
    runner: CallRunner
    outbox: _Outbox


@attrs.define(eq=False)
class LegacySseApp:
    """``/sse`` and ``/messages`` for clients of the HTTP+SSE transport.

    Args:
        nursery: where calls run.
        max_sessions: open event streams at most (503 beyond).
    """

    nursery: trio.Nursery
    max_sessions: int = 1000
    sessions: dict[str, _Session] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<LegacySseApp sessions={len(self.sessions)}>"

    async def open_stream(self, req: ServerRequest) -> None:
        """``GET /sse``: a new session, until the client closes the stream."""
        if len(self.sessions) >= self.max_sessions:
            await req.respond(503, "too many sessions\n")
            return
        send, receive = trio.open_memory_channel[JSON](MAX_QUEUED)
        outbox = _Outbox(send)
        session_id = secrets.token_hex(16)
        async with trio.open_nursery() as calls:
            session = _Session(DemoSession(), CallRunner(calls, outbox.send), outbox)
            self.sessions[session_id] = session
            try:
                await req.send_head(200, SSE_HEADERS)
                await req.send_data(_event("endpoint", f"/messages?sessionId={session_id}"))
                await self._write(req, receive)
            finally:
                del self.sessions[session_id]
                send.close()
                receive.close()
                calls.cancel_scope.cancel()
        raise ClientGone("client closed the event stream")

    async def _write(self, req: ServerRequest, receive: trio.MemoryReceiveChannel[JSON]) -> None:
        """Write the session's messages until the client goes away."""
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await req.watch_disconnect()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            while True:
                with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                    message = await receive.receive()
                if idle.cancelled_caught:
                    await req.send_data(SSE_KEEPALIVE)
                else:
                    await req.send_data(_event("message", dumps(message).decode()))

    async def post(self, req: ServerRequest) -> None:
        """``POST /messages?sessionId=ID``: one message for that session."""
        session_id = parse_qs(req.query).get("sessionId", [""])[0]
        session = self.sessions.get(session_id)
        if session is None:
            await req.respond(404, "session not found\n")
            return
        if media_type(_content_type(req)) != "application/json":
            await req.respond(415, "Content-Type must be application/json\n")
            return
        body = await req.read_body()
        try:
            message: Any = json.loads(body)
        except ValueError:
            await req.respond(400, "the body is not JSON\n")
            return
        outcome = session.core.handle(message)
        await req.respond(202, "Accepted")
        if isinstance(outcome, Answer):
            await session.outbox.send(outcome.message)
        elif isinstance(outcome, Start):
            session.runner.start(outcome.call, outcome.effect, session.outbox)
        else:
            session.runner.apply(outcome)


def _content_type(req: ServerRequest) -> str | None:
    for name, value in req.headers:
        if name == b"content-type":
            return value.decode("latin-1")
    return None
