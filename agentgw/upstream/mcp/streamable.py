"""The Streamable HTTP client (MCP 2025-03-26 to 2025-11-25).

How this works: every ``send`` is one POST on its own pooled connection.
For a notification or a response the upstream answers 202 at once, and
``send`` waits for that. For a request, ``send`` reads the answer's head and
returns an ``Answer``: a JSON answer (the common case) is read at once; an
SSE answer (progress, server requests and finally the response) is read by
the caller, in the caller's task, through ``Answer.stream``. So the answer
belongs to the request that asked for it: a caller that leaves closes the
exchange, and nothing reads on behind it. A stream that ends early is
resumed with a GET and ``Last-Event-ID`` when the server gave event ids.
Whatever fails after the POST was written becomes a JSON-RPC error for that
request id, so that no caller waits forever; its text is generic, and the
detail goes to the log.

The client's ``Mcp-Protocol-Version`` goes on the initialize POST as it
came. The session id comes from the initialize response's
``Mcp-Session-Id``, the protocol version from its result; both go on every
later request. Once the session is initialized, a task of the transport
holds the standalone GET stream open (405: the server has none); what comes
on it goes to the inbox that ``receive`` reads. A 404 while holding a session
id means the session expired: the transport closes, and ``send`` raises
``UpstreamSessionGone`` (the relay ends the client's session). Closing the transport
DELETEs the session, best effort and bounded.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager

import attrs
import trio

from agentgw.config.model import HttpTarget
from agentgw.errors import UpstreamError
from agentgw.mcp.versions import is_stateless_revision
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp._common import (
    MAX_MESSAGE_SIZE,
    Answer,
    Inbox,
    Message,
    TransportClosed,
    UpstreamSessionGone,
    decode,
    decode_event,
    encode,
    error_response,
    is_response_to,
    named,
    open_task_nursery,
    printable,
    session_headers,
)
from agentgw.upstream.mcp._http import (
    SHORT_TIMEOUT,
    STREAM_IDLE_TIMEOUT,
    Url,
    drain,
    http_url,
    is_event_stream,
    is_success,
    iter_events,
    media_type,
    new_decoder,
    read_body,
    receive_head,
    start_request,
)
from agentgw.upstream.mcp.hangup import hung_up
from agentgw.upstream.pool import ConnectionPool, Exchange, UpstreamResponse
from agentgw.wire.http import Headers, header_value
from agentgw.wire.jsonrpc import is_request
from agentgw.wire.sse import SSEDecoder, SSEEvent

logger = logging.getLogger(__name__)

ACCEPT_BOTH = (b"accept", b"application/json, text/event-stream")
ACCEPT_SSE = (b"accept", b"text/event-stream")
JSON = (b"content-type", b"application/json")
DELETE_TIMEOUT = 2.0
DEFAULT_RETRY = 1.0
MAX_RETRY = 30.0
MAX_RECONNECTS = 3


@attrs.define(eq=False)
class _Stream:
    """What one SSE stream taught us: where to resume it, and whether the
    request it answers (if any) got its response."""

    request_id: object = None
    last_event_id: str | None = None
    retry: float = DEFAULT_RETRY
    answered: bool = False
    events: int = 0

    def learn(self, decoder: SSEDecoder | JsonLines) -> None:
        if decoder.last_event_id:
            self.last_event_id = decoder.last_event_id
        if decoder.retry is not None:
            self.retry = min(decoder.retry / 1000, MAX_RETRY)


def _event_messages(
    event: SSEEvent, stream: _Stream, target: str, log_prefix: str
) -> list[Message]:
    if event.event != "message" or not event.data.strip():
        return []
    stream.events += 1
    messages = decode_event(event.data, target, log_prefix)
    for message in messages:
        if is_response_to(message, stream.request_id):
            stream.answered = True
    return messages


@attrs.define(eq=False)
class JsonLines:
    """A streamed JSON answer read as SSE: one ``message`` event per line.
    Some servers stream a long-lived answer (``subscriptions/listen``) as
    ``application/json`` with one message per line; ``_SseAnswer`` reads it
    with this in place of its SSE decoder. No event ids: never resumed."""

    max_line_bytes: int = MAX_MESSAGE_SIZE
    buffer: bytearray = attrs.field(factory=bytearray)
    last_event_id: str = ""
    retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        start = len(self.buffer)
        self.buffer += data
        end = self.buffer.rfind(b"\n", start)
        if end < 0:
            if len(self.buffer) > self.max_line_bytes:
                raise UpstreamError(f"a line larger than {self.max_line_bytes} bytes")
            return []
        lines = self.buffer[:end].split(b"\n")
        del self.buffer[: end + 1]
        return [_line_event(line) for line in lines if line.strip()]

    def finish(self) -> list[SSEEvent]:
        """The last line, if the body did not end with a line end."""
        last, self.buffer = self.buffer, bytearray()
        return [_line_event(last)] if last.strip() else []


def _line_event(line: bytes | bytearray) -> SSEEvent:
    return SSEEvent(data=line.decode("utf-8", "replace"))


@attrs.define(eq=False)
class _SseAnswer:
    """The SSE answer to one POSTed request, read by the caller: a state
    machine, so that ``next`` can be cancelled and called again. A stream
    the upstream drops before the response is resumed with Last-Event-ID
    (up to ``MAX_RECONNECTS`` times) when it gave event ids."""

    transport: StreamableTransport
    stream: _Stream
    ex: Exchange | None
    decoder: SSEDecoder | JsonLines = attrs.field(factory=new_decoder)
    queue: collections.deque[Message] = attrs.field(factory=collections.deque)
    resumes: int = 0
    is_done: bool = False

    async def next(self) -> Message | None:
        transport, stream = self.transport, self.stream
        while True:
            if self.queue:
                message = self.queue.popleft()
                transport._note(message)
                if stream.answered and not self.queue:
                    self.close()  # the response is the last word
                return message
            if self.is_done:
                return None
            try:
                if self.ex is None:
                    self.ex = await self._resume()
                    if self.ex is None:
                        return self._give_up(None)
                chunk = await self.ex.next_chunk(transport.idle_timeout)
            except TransportClosed as exc:
                return self._give_up(error_response(stream.request_id, exc.reason))
            except UpstreamError as exc:
                self._drop()
                if stream.last_event_id is None or self.resumes >= MAX_RECONNECTS:
                    return self._give_up(transport._failed(stream.request_id, exc))
                continue
            if chunk is None:  # the stream ended
                self._drop()
                if isinstance(self.decoder, JsonLines):
                    self._take(self.decoder.finish())
                if not stream.answered and stream.last_event_id is not None:
                    hung_up()  # the server asks its client to poll
                continue
            try:
                events = self.decoder.feed(chunk)
            except UpstreamError as exc:  # an oversized or broken event
                self.close()
                return self._give_up(transport._failed(stream.request_id, exc))
            self._take(events)

    def _take(self, events: list[SSEEvent]) -> None:
        stream, target = self.stream, self.transport.target
        for event in events:
            self.queue.extend(_event_messages(event, stream, target, self.transport.log_prefix))
        stream.learn(self.decoder)

    async def _resume(self) -> Exchange | None:
        stream = self.stream
        if stream.answered or stream.last_event_id is None or self.resumes >= MAX_RECONNECTS:
            return None
        self.decoder = new_decoder()
        ex = await self.transport.resume(stream, wait=self.resumes > 0)
        self.resumes += 1  # counted once it was tried (not when a wait was cut short)
        return ex

    def _give_up(self, message: Message | None) -> Message | None:
        self.close()
        if message is None and not self.stream.answered:
            exc = UpstreamError(
                "upstream protocol error", detail="the stream ended without a response"
            )
            message = self.transport._failed(self.stream.request_id, exc)
        if message is not None:
            self.transport._note(message)
        return message

    def _drop(self) -> None:
        if self.ex is not None:
            self.ex.release()
            self.ex = None

    def close(self) -> None:
        self.is_done = True
        self._drop()
        self.transport._initializing.discard(self.stream.request_id)


def _initialize_version(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """The client's ``Mcp-Protocol-Version`` for an initialize POST, as it
    came. A 2026-07-28 client has no initialize: its version does not
    describe the one the gateway sends on its behalf."""
    values = [v for n, v in headers if n.lower() == b"mcp-protocol-version"]
    if len(values) != 1 or is_stateless_revision(values[0].decode("latin-1")):
        return []
    return [(b"mcp-protocol-version", values[0])]


@attrs.define(eq=False)
class StreamableTransport:
    target: str
    url: Url
    pool: ConnectionPool
    nursery: trio.Nursery
    inbox: Inbox = attrs.field(factory=Inbox.create)
    session_id: str | None = None
    protocol_version: str | None = None
    log_prefix: str = ""
    # Set when the gateway stops rather than the session ending, so that
    # another replica can resume the upstream session.
    keep_upstream_session: bool = False
    # Hold the standalone GET stream (False where another process holds it).
    server_stream: bool = True
    # How long an SSE stream may stay silent before it is dropped.
    idle_timeout: float = STREAM_IDLE_TIMEOUT
    _client_headers: Headers = attrs.field(factory=list)
    _initializing: set[object] = attrs.field(factory=set)
    _get_started: bool = False

    def __repr__(self) -> str:
        return (
            f"<StreamableTransport {self.target} {self.url} "
            f"session={self.session_id} {self.inbox!r}>"
        )

    # ------------------------------------------------------------ the interface

    async def send(
        self, message: Message, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Answer | None:
        """Send one message; for a request, the ``Answer`` read from this
        POST (None when the upstream answered 202: the answer then comes on
        the GET stream, through ``receive``).

        Raises:
            UpstreamError: the upstream did not take the message
                (``TransportClosed`` once the session is gone).
        """
        self.inbox.check_open()
        if headers:
            self._client_headers = session_headers(headers)
        request = is_request(message)
        request_id = message.get("id")
        initialize = request and message.get("method") == "initialize"
        if initialize:
            self._initializing.add(request_id)
            post_headers = self._headers(ACCEPT_BOTH, JSON, with_version=False)
            post_headers += _initialize_version(headers)
        else:
            post_headers = self._headers(ACCEPT_BOTH, JSON)
        try:
            ex = await start_request(
                self.pool, self.target, self.url, b"POST", post_headers, encode(message)
            )
        except BaseException:
            self._initializing.discard(request_id)
            raise
        answer = None
        if request:
            answer = await self._start_answer(ex, request_id)
        else:
            try:
                response = await receive_head(self.target, ex, SHORT_TIMEOUT)
                self._check_session(response.status)
                if not is_success(response):
                    raise UpstreamError(
                        "upstream protocol error",
                        detail=f"target {self.target}: answered HTTP {response.status}",
                    )
                await drain(self.target, ex)
            finally:
                ex.release()
        # The standalone stream opens after the handshake (initialized sent).
        if (
            self.server_stream
            and not self._get_started
            and not initialize
            and self.is_initialized
            and not self._initializing
            and not self.inbox.is_closed
        ):
            self._get_started = True
            self.nursery.start_soon(self._serve_get_stream)
        return answer

    async def receive(self) -> Message:
        return await self.inbox.get()

    @property
    def is_initialized(self) -> bool:
        return self.session_id is not None or self.protocol_version is not None

    # ------------------------------------------------------------ requests

    def _headers(self, *own: tuple[bytes, bytes], with_version: bool = True) -> Headers:
        headers: Headers = list(own)
        if self.session_id is not None:
            headers.append((b"mcp-session-id", self.session_id.encode()))
        if self.protocol_version is not None and with_version:
            headers.append((b"mcp-protocol-version", self.protocol_version.encode()))
        headers.extend(self._client_headers)
        return headers

    def _check_session(self, status: int) -> None:
        if status == 404 and self.session_id is not None:
            self.inbox.close(f"target {self.target}: session expired", is_session_gone=True)
            raise UpstreamSessionGone(
                f"target {self.target}: upstream session expired",
                detail=f"target {self.target}: answered 404 to session {self.session_id}",
            )

    def _note(self, message: Message) -> None:
        """Learn the protocol version from an initialize answer."""
        msg_id = message.get("id")
        if "method" not in message and msg_id in self._initializing:
            self._initializing.discard(msg_id)
            result = message.get("result")
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if isinstance(version, str):
                self.protocol_version = version

    def _failed(self, request_id: object, exc: UpstreamError) -> Message:
        logger.info("%s%s", self.log_prefix, exc.log_text)
        return error_response(request_id, named(self.target, exc).reason)

    async def _start_answer(self, ex: Exchange, request_id: object) -> Answer | None:
        """Read the answer to the POSTed request ``request_id`` up to its head.
        A JSON body is read here; an SSE body is left for the caller to read
        (``Answer.stream``), in its own task. Never raises for what the
        upstream does: a failure becomes the request's error answer."""
        stream = _Stream(request_id)
        messages: collections.deque[Message] = collections.deque()
        handed_over = False
        try:
            try:
                response = await self._receive_post_head(ex, stream)
                if response is None:
                    return None
                if is_event_stream(response):
                    handed_over = True  # the answer releases the exchange
                    return Answer(messages, _SseAnswer(self, stream, ex))
                lines = await self._read_json_answer(ex, stream, response, messages)
                if lines is not None:
                    handed_over = True
                    return Answer(messages, _SseAnswer(self, stream, ex, lines))
            finally:
                if not handed_over:
                    ex.release()
            if not stream.answered:
                exc = UpstreamError("upstream protocol error", detail="no response in the answer")
                messages.append(self._failed(request_id, exc))
        except UpstreamSessionGone:
            raise  # nothing was done: the session, not the request, failed
        except TransportClosed as exc:
            messages.append(error_response(request_id, exc.reason))
        except UpstreamError as exc:
            if not stream.answered:
                messages.append(self._failed(request_id, exc))
        finally:
            if not handed_over:
                for message in messages:
                    self._note(message)
                self._initializing.discard(request_id)
        return Answer(messages)

    async def _receive_post_head(self, ex: Exchange, stream: _Stream) -> UpstreamResponse | None:
        """The head of a POST's answer; None when there is no body to read
        (202: the answer comes on the GET stream)."""
        response = await receive_head(self.target, ex, STREAM_IDLE_TIMEOUT)
        self._check_session(response.status)
        if stream.request_id in self._initializing:
            session_id = header_value(response.headers, b"mcp-session-id")
            if session_id:
                self.session_id = session_id.decode("latin-1")
        if response.status == 202:
            stream.answered = True
            return None
        return response

    async def _read_json_answer(
        self,
        ex: Exchange,
        stream: _Stream,
        response: UpstreamResponse,
        answers: collections.deque[Message],
    ) -> JsonLines | None:
        """Read a JSON answer into ``answers``. One whose first line is a
        whole message that is not the response is a stream of JSON lines:
        its complete lines go into ``answers``, and its decoder is returned,
        for the caller to read the rest."""
        if not is_success(response):
            body = await read_body(self.target, ex, limit=65536)
            for message in _messages(body):
                if is_response_to(message, stream.request_id):
                    stream.answered = True
                    answers.append(message)
                    return None
            summary = f": {printable(body, 200)}" if body else ""
            raise UpstreamError(
                "upstream protocol error",
                detail=f"target {self.target}: answered HTTP {response.status}{summary}",
            )
        kind = media_type(response)
        if kind != b"application/json":
            raise UpstreamError(
                "upstream protocol error",
                detail=f"target {self.target}: content type {kind.decode('latin-1')!r}",
            )
        chunks: list[bytes] = []
        size = 0
        first_line: list[Message] | None = None  # the messages of the body's first line
        while (chunk := await ex.next_chunk(SHORT_TIMEOUT)) is not None:
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_MESSAGE_SIZE:
                limit = MAX_MESSAGE_SIZE
                raise UpstreamError(f"target {self.target}: response larger than {limit} bytes")
            if first_line is None and b"\n" in chunk:
                head = b"".join(chunks)
                first_line = _messages(head[: head.index(b"\n")])
                if first_line and not any(is_response_to(m, stream.request_id) for m in first_line):
                    lines = JsonLines()
                    for event in lines.feed(head):
                        answers.extend(_event_messages(event, stream, self.target, self.log_prefix))
                    return lines
        body = b"".join(chunks)
        if not body.strip():
            return None
        try:
            messages = (
                first_line if first_line and not body[body.index(b"\n") :].strip() else decode(body)
            )
        except ValueError as exc:
            raise UpstreamError(
                "upstream protocol error", detail=f"target {self.target}: not JSON-RPC: {exc}"
            ) from None
        for message in messages:
            stream.answered = stream.answered or is_response_to(message, stream.request_id)
            answers.append(message)
        return None

    async def _read_stream(self, ex: Exchange, stream: _Stream) -> AsyncGenerator[Message, None]:
        """The messages of one SSE stream (the GET stream's); ``stream``
        learns its last event id and retry as they come."""
        decoder = new_decoder()
        try:
            async with aclosing(iter_events(self.target, ex, decoder, self.idle_timeout)) as events:
                async for event in events:
                    for message in _event_messages(event, stream, self.target, self.log_prefix):
                        yield message
        finally:
            stream.learn(decoder)

    async def resume(self, stream: _Stream, *, wait: bool = True) -> Exchange | None:
        """A GET resuming ``stream`` with Last-Event-ID, after its retry
        delay if ``wait``; None if the server will not resume it.

        The first resume after a hang-up goes at once: servers that close a
        stream to make the client poll may keep what comes meanwhile only
        for a client that is back (the conformance suite's server does);
        the retry delay spaces the attempts that follow."""
        assert stream.last_event_id is not None
        if wait:
            await trio.sleep(stream.retry)
        # The id is given up only once the server answered: a resume cut
        # short (cancelled) is tried again from the same point.
        resume = (b"last-event-id", stream.last_event_id.encode())
        ex = await start_request(
            self.pool, self.target, self.url, b"GET", self._headers(ACCEPT_SSE, resume)
        )
        try:
            response = await receive_head(self.target, ex, SHORT_TIMEOUT)
            stream.last_event_id = None
            self._check_session(response.status)
        except trio.Cancelled:
            ex.release()
            raise
        except BaseException:
            stream.last_event_id = None
            ex.release()
            raise
        if is_success(response) and is_event_stream(response):
            return ex
        ex.release()
        logger.info(
            "%starget %s: cannot resume a stream (HTTP %d)",
            self.log_prefix,
            self.target,
            response.status,
        )
        return None

    # ------------------------------------------------------------ the GET stream

    async def _serve_get_stream(self) -> None:
        """Hold the standalone GET stream open, reconnecting when it ends;
        never raises for what the upstream does."""
        stream = _Stream()
        failures = 0
        while not self.inbox.is_closed:
            headers = self._headers(ACCEPT_SSE)
            if stream.last_event_id is not None:
                headers.append((b"last-event-id", stream.last_event_id.encode()))
            try:
                ex = await start_request(self.pool, self.target, self.url, b"GET", headers)
                try:
                    response = await receive_head(self.target, ex, SHORT_TIMEOUT)
                    self._check_session(response.status)
                    if response.status == 405:
                        logger.debug("%starget %s has no GET stream", self.log_prefix, self.target)
                        return
                    if not is_success(response) or not is_event_stream(response):
                        logger.info(
                            "%starget %s refused the GET stream: HTTP %d",
                            self.log_prefix,
                            self.target,
                            response.status,
                        )
                        return
                    before = stream.events
                    async with aclosing(self._read_stream(ex, stream)) as messages:
                        async for message in messages:
                            await self.inbox.put(message)
                    failures = 0 if stream.events > before else failures + 1
                finally:
                    ex.release()
            except TransportClosed:
                return
            except UpstreamError as exc:
                failures += 1
                logger.info("%sGET stream: %s", self.log_prefix, exc.log_text)
            if failures >= MAX_RECONNECTS:
                logger.warning(
                    "%starget %s: GET stream keeps failing, giving up", self.log_prefix, self.target
                )
                return
            await trio.sleep(stream.retry * (2**failures if failures else 1))

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """DELETE the session, bounded and best effort."""
        self.inbox.close(f"target {self.target}: transport closed")
        if self.session_id is None or self.keep_upstream_session:
            return
        with trio.move_on_after(DELETE_TIMEOUT):
            try:
                ex = await start_request(
                    self.pool, self.target, self.url, b"DELETE", self._headers()
                )
                try:
                    response = await receive_head(self.target, ex, DELETE_TIMEOUT)
                    await drain(self.target, ex)
                finally:
                    ex.release()
                logger.debug(
                    "%starget %s: DELETE session: HTTP %d",
                    self.log_prefix,
                    self.target,
                    response.status,
                )
            except UpstreamError as exc:
                logger.debug("%sDELETE session: %s", self.log_prefix, exc.log_text)


def _messages(body: bytes) -> list[Message]:
    try:
        return decode(body)
    except ValueError:
        return []


@asynccontextmanager
async def open_streamable_transport(
    target: str,
    spec: HttpTarget,
    *,
    pool: ConnectionPool,
    tls: ClientTLS | None = None,
    session_id: str | None = None,
    protocol_version: str | None = None,
    log_prefix: str = "",
    server_stream: bool = True,
    idle_timeout: float | None = None,
) -> AsyncIterator[StreamableTransport]:
    """A Streamable HTTP client of ``spec``; nothing is sent until ``send``.

    Raises:
        UpstreamError: the URL is not http(s).
    """
    url = http_url(target, spec, tls, pool)
    async with open_task_nursery() as nursery:
        transport = StreamableTransport(
            target,
            url,
            pool,
            nursery,
            session_id=session_id,
            protocol_version=protocol_version,
            log_prefix=log_prefix,
            server_stream=server_stream,
            idle_timeout=idle_timeout or STREAM_IDLE_TIMEOUT,
        )
        try:
            yield transport
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()
            nursery.cancel_scope.cancel()
