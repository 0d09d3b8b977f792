"""Where the answers to one client message go, and the client's SSE streams.

A Streamable HTTP POST answers with one JSON body, or turns into an SSE
stream as soon as anything comes before the response (progress, logging,
sampling) or the call is slow (keep-alive comments). Legacy SSE and WebSocket
clients get every message on their connection's one stream.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from agentgw.server.connection import ServerRequest
from agentgw.server.watch import wait_watched
from agentgw.wire.sse import encode_comment, encode_event

if TYPE_CHECKING:
    from agentgw.errors import HTTPError
    from agentgw.relay.context import RequestContext

Message = dict[str, Any]
T = TypeVar("T")
Headers = Sequence[tuple[bytes, bytes]]
JSON = b"application/json"
SSE_HEADERS: Headers = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))


def dumps(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


async def respond_error(ctx: RequestContext, exc: HTTPError, msg_id: Any) -> None:
    """An error as 2026-07-28 answers it: the request's id, and its status
    (400 or 404 for the client's errors, 5xx for the upstream's)."""
    ctx.record.error = exc.log_text
    message = exc.rpc_error(msg_id)
    await ctx.req.respond(exc.status, dumps(message), exc.headers, content_type=JSON)


async def respond_json(req: ServerRequest, message: Message, headers: Headers = ()) -> None:
    await req.respond(200, dumps(message), list(headers), content_type=JSON)


class Outbox:
    """Where the answers to one client message go; this one drops them
    (notifications and responses have nothing to send back)."""

    async def send(self, message: Message, *, final: bool) -> None:
        """Deliver one message; ``final`` for the response."""

    async def ping(self) -> None:
        """Keep an idle stream alive (nothing where there is none)."""


@attrs.define(eq=False)
class PostOutbox(Outbox):
    """A Streamable HTTP POST: a lone final answer goes out as JSON; anything
    before it turns the response into SSE."""

    req: ServerRequest
    headers: Headers = ()
    is_stream: bool = False

    async def _start_stream(self) -> None:
        if not self.is_stream:
            self.is_stream = True
            await self.req.send_head(200, [*SSE_HEADERS, *self.headers])

    async def send(self, message: Message, *, final: bool) -> None:
        if final and not self.is_stream:
            await respond_json(self.req, message, self.headers)
            return
        await self._start_stream()
        await self.req.send_data(encode_event(dumps(message).decode()))
        if final:
            await self.req.end()

    async def ping(self) -> None:
        await self._start_stream()
        await self.req.send_data(encode_comment("ping"))


@attrs.define(eq=False)
class ChannelOutbox(Outbox):
    """Legacy SSE and WebSocket: answers go to the connection's one stream."""

    send_channel: trio.MemorySendChannel[Message]

    async def send(self, message: Message, *, final: bool) -> None:
        try:
            await self.send_channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@attrs.define(eq=False)
class StreamWaits:
    """The waits of every idle server-to-client stream, so that a drain ends
    them at once (between two events, never inside a write)."""

    keepalive: float = 15.0
    is_draining: bool = False
    _waits: set[trio.CancelScope] = attrs.field(factory=set)

    def drain(self) -> None:
        self.is_draining = True
        for wait in list(self._waits):
            wait.cancel()

    async def serve_sse(
        self,
        req: ServerRequest,
        messages: trio.MemoryReceiveChannel[Message],
        first: bytes = b"",
    ) -> None:
        """Stream ``messages`` to the client as SSE, with keep-alive comments,
        until the channel ends, the client leaves or the gateway drains."""
        await req.send_head(200, list(SSE_HEADERS))
        if first:
            await req.send_data(first)

        async def pump() -> None:
            while not self.is_draining:
                try:
                    message = await self.wait(messages.receive)
                except trio.EndOfChannel:
                    return
                if message is not None:
                    await req.send_data(encode_event(dumps(message).decode()))
                elif not self.is_draining:
                    await req.send_data(encode_comment("ping"))

        await req.run_watched(pump)
        await req.end()

    async def wait(self, wait: Callable[[], Awaitable[T]]) -> T | None:
        """``await wait()``; None after a keep-alive interval, or at once
        when the gateway drains. ``wait`` must be safe to cancel."""
        with trio.move_on_after(self.keepalive) as scope:
            self._waits.add(scope)
            try:
                return await wait_watched(wait)
            finally:
                self._waits.discard(scope)
        return None
