"""What every MCP upstream transport shares: the inbox, errors, headers."""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from agentgw.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from agentgw.wire import jsonrpc

logger = logging.getLogger(__name__)

Message = dict[str, Any]

INBOX_SIZE = 1000
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
LOG_LINE_LIMIT = 1000


class TransportClosed(UpstreamError):
    """The upstream is gone: its process exited, its stream ended, its
    session expired, or the transport was closed."""


class UpstreamSessionGone(TransportClosed):
    """The upstream answered 404 to its session id: that session is over
    (it expired, or the server ended it). Nothing of the message was done."""


_PLAIN_ERRORS = (UpstreamError, UpstreamUnavailable, UpstreamTimeout, TransportClosed)


def named(target: str, exc: UpstreamError) -> UpstreamError:
    """The same kind of error, its message naming the target."""
    prefix = f"target {target}: "
    if exc.reason.startswith(prefix):
        return exc
    # Subclasses with other constructors (SSEError) become plain UpstreamErrors.
    kind = type(exc) if type(exc) in _PLAIN_ERRORS else UpstreamError
    return kind(prefix + exc.reason, status=exc.status, detail=exc.detail)


def session_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's (filtered) headers for every request of an upstream
    session: the client's protocol version is the session's business."""
    return [h for h in headers if h[0] != b"mcp-protocol-version"]


def encode(message: Message) -> bytes:
    return jsonrpc.dumps(message)


def decode(data: bytes | str) -> list[Message]:
    """The JSON-RPC messages in one JSON text (a message or a batch).

    Raises:
        ValueError: not JSON-RPC.
    """
    try:
        messages, _ = jsonrpc.parse_messages(data.encode() if isinstance(data, str) else data)
    except jsonrpc.JsonRpcError as exc:
        raise ValueError(exc.reason) from None
    return messages


def is_response_to(message: Message, request_id: object) -> bool:
    return jsonrpc.is_response(message) and message.get("id") == request_id


def error_response(request_id: Any, text: str) -> Message:
    """A JSON-RPC error answering ``request_id`` on the upstream's behalf."""
    return jsonrpc.make_error(request_id, jsonrpc.INTERNAL_ERROR, text)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(data: bytes | str, limit: int = LOG_LINE_LIMIT) -> str:
    """``data`` made safe for one log line: control characters escaped,
    truncated to ``limit`` characters."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class AnswerStream(Protocol):
    async def next(self) -> Message | None: ...

    def close(self) -> None: ...


@attrs.define(eq=False)
class Answer:
    """The messages that answer one request, read in the caller's task.

    ``messages`` were read already (a JSON answer); ``stream``, when there is
    one (an SSE answer), gives the rest, the response last. ``next`` is safe
    to cancel and call again: a caller may bound each wait. ``close`` when
    done or leaving: an exchange left unfinished is closed, never pooled.
    """

    messages: collections.deque[Message]
    stream: AnswerStream | None = None

    async def next(self) -> Message | None:
        """The next message, or None when there are no more."""
        if self.messages:
            return self.messages.popleft()
        if self.stream is not None:
            return await self.stream.next()
        return None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


@attrs.define(eq=False)
class Inbox:
    """The bounded, ordered channel of messages from one upstream.

    Producers block when it is full. ``close(reason)`` lets the consumer
    drain what was queued, then ``get`` raises ``TransportClosed(reason)``;
    producers blocked in ``put`` are released and their messages dropped.
    """

    _send: trio.MemorySendChannel[Message]
    _receive: trio.MemoryReceiveChannel[Message]
    reason: str | None = None
    is_session_gone: bool = False

    @classmethod
    def create(cls, size: int = INBOX_SIZE) -> Inbox:
        send, receive = trio.open_memory_channel[Message](size)
        return cls(send, receive)

    def __repr__(self) -> str:
        stats = self._receive.statistics()
        state = "open" if self.reason is None else f"closed ({self.reason})"
        return f"<Inbox {state} queued={stats.current_buffer_used}>"

    @property
    def is_closed(self) -> bool:
        return self.reason is not None

    def check_open(self) -> None:
        """Raises TransportClosed if the upstream is gone."""
        if self.reason is not None:
            raise self._closed()

    def _closed(self) -> TransportClosed:
        kind = UpstreamSessionGone if self.is_session_gone else TransportClosed
        return kind(self.reason or "transport closed")

    async def put(self, message: Message) -> bool:
        """Queue ``message``, waiting for room. False if closed."""
        try:
            await self._send.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def close(self, reason: str, *, is_session_gone: bool = False) -> None:
        """The first reason given wins."""
        if self.reason is None:
            self.reason = reason
            self.is_session_gone = is_session_gone
            self._send.close()

    async def get(self) -> Message:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed() from None


@asynccontextmanager
async def open_task_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a transport's background tasks.

    The body is the transport's user, so its exception passes through as
    itself rather than wrapped in an ExceptionGroup; background tasks
    handle their expected failures, so only bugs join it.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        context = exc.__context__
        try:
            raise exc
        finally:
            # Keep the group (which holds exc) out of exc's context.
            exc.__context__ = context
            del exc, context


def decode_event(data: str, target: str, log_prefix: str = "") -> list[Message]:
    """The JSON-RPC messages of one SSE event; a bad event is logged and
    skipped (an empty list), never fatal to the stream."""
    try:
        return decode(data)
    except ValueError as exc:
        logger.warning(
            "%starget %s sent an event that is not JSON-RPC (%s): %s",
            log_prefix,
            target,
            exc,
            printable(data, 200),
        )
        return []
