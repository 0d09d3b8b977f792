"""The Streamable HTTP client (MCP 2025-03-26 to 2025-11-25).

How this works: every ``send`` is one POST on its own pooled connection.
For a notification or a response the upstream answers 202 at once, and
``send`` waits for that. For a request, ``send`` reads the answer's head. A
JSON answer (the common case) is read at once and goes to the inbox, or
straight back to a caller that passed ``answers``: no task and no queue on
the hot path. An SSE answer (progress, server requests and finally the
response) is read on by a task of the transport's nursery, so many requests
are in flight at once. Whatever fails after the POST was written is
answered on the upstream's behalf with a JSON-RPC error for that request
id, so that no caller waits forever.

The client's ``Mcp-Protocol-Version`` goes on the initialize POST as it
came. The session id comes from the initialize response's
``Mcp-Session-Id``, the protocol version from its result; both go on every
later request. Once the
session is initialized, a task holds the standalone GET stream open (405:
the server has none). An SSE stream that ends early is resumed with a GET
and ``Last-Event-ID`` when the server gave event ids. A 404 while holding a
session id means the session expired: the transport closes. Closing the
transport DELETEs the session, best effort and bounded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager

import attrs
import trio

from agentgw.config.model import HttpTarget
from agentgw.errors import UpstreamError
from agentgw.mcp.versions import is_stateless_revision
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp._common import (
    Inbox,
    Message,
    TransportClosed,
    decode,
    decode_event,
    encode,
    error_response,
    forward_headers,
    is_response_to,
    open_task_nursery,
    printable,
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
AFTER_RESPONSE_GRACE = 5.0


@attrs.define(eq=False)
class _Stream:
    """What one SSE stream taught us: where to resume it, and whether the
    request it answers (if any) got its response."""

    request_id: object = None
    last_event_id: str | None = None
    retry: float = DEFAULT_RETRY
    answered: bool = False
    events: int = 0


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
        self,
        message: Message,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        answers: list[Message] | None = None,
    ) -> None:
        """Raises UpstreamError (TransportClosed once the session is gone)
        if the upstream did not take the message. Messages of a JSON answer
        go to ``answers`` when given, else to the inbox."""
        self.inbox.check_open()
        if headers:
            self._client_headers = forward_headers(headers)
        request = is_request(message)
        request_id = message.get("id")
        initialize = request and message.get("method") == "initialize"
        if initialize:
            self._initializing.add(request_id)
        if initialize:
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
        if request:
            read = await self._start_answer(ex, request_id)
            if answers is not None:
                answers.extend(read)
            else:
                for answer in read:
                    await self.inbox.put(answer)
        else:
            try:
                response = await receive_head(self.target, ex, SHORT_TIMEOUT)
                self._check_session(response.status)
                if not is_success(response):
                    status = response.status
                    raise UpstreamError(f"target {self.target}: upstream answered HTTP {status}")
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
        ):
            self._get_started = True
            self.nursery.start_soon(self._serve_get_stream)

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
            self.inbox.close(f"target {self.target}: session expired")
            raise TransportClosed(f"target {self.target}: session expired")

    def _note(self, message: Message) -> None:
        """Learn the protocol version from an initialize answer."""
        msg_id = message.get("id")
        if "method" not in message and msg_id in self._initializing:
            self._initializing.discard(msg_id)
            result = message.get("result")
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if isinstance(version, str):
                self.protocol_version = version

    async def _push(self, message: Message) -> None:
        self._note(message)
        await self.inbox.put(message)

    async def _start_answer(self, ex: Exchange, request_id: object) -> list[Message]:
        """Read the answer to the POSTed request ``request_id`` up to its head.
        A JSON body is read here and its messages returned; an SSE stream is
        handed to a task that reads it into the inbox. Never raises for what
        the upstream does: a failure becomes the request's error answer."""
        stream = _Stream(request_id)
        answers: list[Message] = []
        handed_over = False
        try:
            try:
                response = await self._receive_post_head(ex, stream)
                if response is not None and is_event_stream(response):
                    self.nursery.start_soon(self._read_answer, ex, stream)
                    handed_over = True  # the task releases the exchange
                    return answers
                if response is not None:
                    await self._read_json_answer(ex, stream, response, answers)
            finally:
                if not handed_over:
                    ex.release()
            if not stream.answered:
                answers.append(self._error(request_id, "upstream ended without a response"))
        except TransportClosed:
            pass  # the closed inbox tells the reader
        except UpstreamError as exc:
            logger.info("%s%s", self.log_prefix, exc.reason)
            if not stream.answered:
                answers.append(error_response(request_id, exc.reason))
        finally:
            if not handed_over:
                for answer in answers:
                    self._note(answer)
                self._initializing.discard(request_id)
        return answers

    async def _read_answer(self, ex: Exchange, stream: _Stream) -> None:
        """Read the SSE answer to a POSTed request into the inbox: never
        raises for what the upstream does."""
        request_id = stream.request_id
        try:
            try:
                await self._read_stream(ex, stream)
            finally:
                ex.release()
            while not stream.answered and stream.last_event_id is not None:
                if not await self._resume(stream):
                    break
            if not stream.answered:
                await self.inbox.put(
                    self._error(request_id, "upstream ended the stream without a response")
                )
        except TransportClosed:
            pass
        except UpstreamError as exc:
            logger.info("%s%s", self.log_prefix, exc.reason)
            if not stream.answered:
                await self.inbox.put(error_response(request_id, exc.reason))
        finally:
            self._initializing.discard(request_id)

    def _error(self, request_id: object, text: str) -> Message:
        return error_response(request_id, f"target {self.target}: {text}")

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
        self, ex: Exchange, stream: _Stream, response: UpstreamResponse, answers: list[Message]
    ) -> None:
        if not is_success(response):
            body = await read_body(self.target, ex, limit=65536)
            for message in _messages(body):
                if is_response_to(message, stream.request_id):
                    stream.answered = True
                    answers.append(message)
                    return
            summary = f": {printable(body, 200)}" if body else ""
            raise UpstreamError(
                f"target {self.target}: upstream answered HTTP {response.status}{summary}"
            )
        if media_type(response) != b"application/json":
            raise UpstreamError(
                f"target {self.target}: unexpected content type "
                f"{media_type(response).decode('latin-1')!r}"
            )
        body = await read_body(self.target, ex)
        if not body.strip():
            return
        try:
            messages = decode(body)
        except ValueError:
            raise UpstreamError(f"target {self.target}: response is not JSON-RPC")
        for message in messages:
            stream.answered = stream.answered or is_response_to(message, stream.request_id)
            answers.append(message)

    async def _read_stream(self, ex: Exchange, stream: _Stream) -> None:
        decoder = new_decoder()
        try:
            await self._read_events(ex, stream, decoder)
        finally:
            if decoder.last_event_id:
                stream.last_event_id = decoder.last_event_id
            if decoder.retry is not None:
                stream.retry = min(decoder.retry / 1000, MAX_RETRY)

    async def _read_events(self, ex: Exchange, stream: _Stream, decoder: SSEDecoder) -> None:
        deadline = math.inf
        async with aclosing(iter_events(self.target, ex, decoder)) as events:
            while True:
                event: SSEEvent | None = None
                with trio.move_on_at(deadline):
                    event = await anext(events, None)
                if event is None:
                    return
                if event.event != "message" or not event.data.strip():
                    continue
                stream.events += 1
                for message in decode_event(event.data, self.target, self.log_prefix):
                    if is_response_to(message, stream.request_id):
                        stream.answered = True
                        # The stream should end now; one that does not is
                        # dropped (and its connection closed) soon after.
                        deadline = trio.current_time() + AFTER_RESPONSE_GRACE
                    await self._push(message)

    async def _resume(self, stream: _Stream) -> bool:
        """Resume ``stream`` with a GET and Last-Event-ID. False if the
        server will not."""
        await trio.sleep(stream.retry)
        assert stream.last_event_id is not None
        resume = (b"last-event-id", stream.last_event_id.encode())
        ex = await start_request(
            self.pool, self.target, self.url, b"GET", self._headers(ACCEPT_SSE, resume)
        )
        try:
            response = await receive_head(self.target, ex, SHORT_TIMEOUT)
            self._check_session(response.status)
            if not is_success(response) or not is_event_stream(response):
                logger.info(
                    "%starget %s: cannot resume a stream (HTTP %d)",
                    self.log_prefix,
                    self.target,
                    response.status,
                )
                return False
            await self._read_stream(ex, stream)
            return True
        finally:
            ex.release()

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
                    await self._read_stream(ex, stream)
                    failures = 0 if stream.events > before else failures + 1
                finally:
                    ex.release()
            except TransportClosed:
                return
            except UpstreamError as exc:
                failures += 1
                logger.info("%sGET stream: %s", self.log_prefix, exc.reason)
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
                logger.debug("%sDELETE session: %s", self.log_prefix, exc.reason)


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
        )
        try:
            yield transport
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()
            nursery.cancel_scope.cancel()
