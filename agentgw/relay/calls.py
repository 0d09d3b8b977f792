"""A client request in flight to a target, as the relay reads it.

A Streamable HTTP target answers on the request's own exchange (``Answer``):
the call reads it directly, with no queue and no other task. Other targets
(stdio, SSE, WebSocket) answer through the transport's reader, which hands
the call its messages through the ``Pending``'s channel.

``Pending`` is the request's place in its session (its client id, progress
token, and a channel made on first use for what a transport's reader hands
it); ``Call`` is what ``RelaySession.request`` yields: ``next()`` gives the
request's messages, its response last, read in the caller's own task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from agentgw.errors import UpstreamUnavailable
from agentgw.server.watch import wait_watched
from agentgw.upstream.mcp.base import Answer

if TYPE_CHECKING:
    from agentgw.relay.session import RelaySession

Message = dict[str, Any]
Headers = Sequence[tuple[bytes, bytes]] | Callable[[str], Sequence[tuple[bytes, bytes]]]
"""The client's headers for upstreams, or a function giving them per target
(when one target passes the client's token on and another does not)."""
CHANNEL_SIZE = 256


def is_final(message: Message) -> bool:
    """A response (result or error), as opposed to a notification or a
    server-to-client request."""
    return "method" not in message


@attrs.define(eq=False)
class Pending:
    """A client request in flight to one target."""

    target: str
    client_id: Any
    progress_token: Any = None
    # Answered on its own exchange (Streamable HTTP): the target's other
    # messages are not routed to it.
    is_inline: bool = False
    # Its target's server-to-client requests come to it, even in a shared
    # session (an MRTR flight turns them into input_required rounds).
    takes_server_requests: bool = False
    _send: trio.MemorySendChannel[Message] | None = None
    _receive: trio.MemoryReceiveChannel[Message] | None = None

    def _channel(self) -> None:
        if self._send is None:
            self._send, self._receive = trio.open_memory_channel[Message](CHANNEL_SIZE)

    async def deliver(self, message: Message) -> bool:
        self._channel()
        assert self._send is not None
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def fail(self, message: Message) -> None:
        self._channel()
        assert self._send is not None
        try:
            self._send.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.close()

    async def receive(self) -> Message | None:
        """The next delivered message; None once the channel is closed."""
        self._channel()
        assert self._receive is not None
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    def close(self) -> None:
        if self._send is not None:
            self._send.close()
        if self._receive is not None:
            self._receive.close()


@attrs.define(eq=False)
class Call:
    """One client request in flight: ``next()`` gives its messages, the
    response last. ``next`` is safe to cancel and call again."""

    session: RelaySession
    target: str
    upstream_id: int
    pending: Pending
    answer: Answer | None = None
    is_answered: bool = False

    def next_nowait(self) -> Message | None:
        """The next message if it is here already (a JSON answer), else None."""
        answer = self.answer
        if answer is None or not answer.messages:
            return None
        message = answer.messages[0]
        if not is_final(message) or message.get("id") != self.upstream_id:
            return None  # ids to map, or more to come: next() does it
        answer.messages.popleft()
        self.session.settle(self.target, self.upstream_id)
        self.is_answered = True
        return {**message, "id": self.pending.client_id}

    async def next(self) -> Message:
        """The next message for the client (ids and tokens as the client
        knows them).

        Raises:
            UpstreamError: the target can give no response.
        """
        while self.answer is not None:
            message = await self.answer.next()
            if message is None:
                self.answer = None
                break
            out = await self.session.own_message(self, message)
            if out is not None:
                self.is_answered = is_final(out)
                return out
        if self.pending.is_inline:
            raise UpstreamUnavailable(
                f"target {self.target}: upstream unavailable", detail="the answer ended"
            )
        out = await wait_watched(self.pending.receive)
        if out is None:
            raise UpstreamUnavailable(
                f"target {self.target}: upstream unavailable", detail="no response"
            )
        self.is_answered = is_final(out)
        return out


def hashable(value: Any) -> Any:
    """A progress token as a dict key."""
    return value if isinstance(value, str | int | float | bool | None) else repr(value)
