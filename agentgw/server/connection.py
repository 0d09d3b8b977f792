"""One client connection: an h11 loop with bounded reads.

How this works: each request cycle reads raw bytes until the head is complete
(within ``header_timeout``; the wait for the first byte of a later request is
``idle_timeout``), checks the raw head with ``wire.http.check_request_head``,
then feeds the bytes to a fresh ``h11.Connection``. An absolute-form
target's authority replaces the Host header (RFC 9112 section 3.2.2) and the
target becomes origin-form, so routing and the upstream see one host. Header
names with an underscore are dropped unless ``allowUnderscoreHeaders``. The
handler gets a ``ServerRequest`` to read the body from and write the response
to. After the cycle, bytes h11 did not consume (a pipelined request) seed the
next cycle.

Refusals close the connection after a short response. A response that cannot
be completed (``AbortResponse``) closes the socket without ending the message.
During a drain, idle connections are cancelled at once and busy ones finish
their current response with ``Connection: close``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal

import attrs
import h11
import trio

from agentgw.config.model import HttpLimits
from agentgw.errors import AbortResponse, ClientError, ClientGone
from agentgw.observability.access_log import AccessRecord, emit
from agentgw.server.watch import run_watched
from agentgw.wire.http import (
    Headers,
    HeadLimits,
    RequestHead,
    check_request_head,
    check_request_line_length,
    fields_are_valid,
    find_head_end,
    simple_response_headers,
    split_target,
    underscore_header_names,
)
from agentgw.wire.tls import ConnectionTLS

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from agentgw.observability.metrics import Metrics
    from agentgw.observability.tracing import Tracing

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


@attrs.define(eq=False)
class ServerRequest:
    """One request as the gateway's handler sees it.

    ``headers`` names are lowercase bytes. Read the body with ``body()``;
    answer with ``respond()`` or ``send_head()``/``send_data()``/``end()``.
    """

    method: str
    target: bytes
    path: str
    query: str
    http_version: str
    headers: Headers
    head: RequestHead
    client: tuple[str, int]
    record: AccessRecord
    _conn: ClientConnection
    _h11: h11.Connection
    body_bytes: int = 0
    status: int | None = None
    # What the client's TLS connection established (None: plain HTTP).
    tls: ConnectionTLS | None = None
    # The downstream span when tracing is on: the parent of upstream spans
    # (``observability.tracing.trace_upstream``).
    span: Span | None = None
    _body_done: bool = False
    _pending: bytes = b""
    # The body, read once already, for a second reader (``keep_body``).
    _kept: bytes | None = None

    @property
    def host(self) -> str:
        for name, value in self.headers:
            if name == b"host":
                return value.decode("latin-1")
        return ""

    @property
    def is_relayed(self) -> bool:
        """Whether a sibling worker relayed this request here."""
        return self._conn.is_internal

    def keep_body(self, body: bytes) -> None:
        """Keep the body that was read, so that ``body()`` gives it once
        more (to relay the request elsewhere after reading it)."""
        self._kept = body

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def tracing(self) -> Tracing | None:
        """The gateway's tracer, for upstream spans (``trace_upstream``)."""
        return self._conn.tracing

    @property
    def has_body(self) -> bool:
        return self.head.chunked or bool(self.head.content_length)

    @property
    def is_body_done(self) -> bool:
        return self._body_done or not self.has_body

    @property
    def is_response_started(self) -> bool:
        return self.status is not None

    @property
    def is_response_done(self) -> bool:
        return self._h11.our_state is h11.DONE

    async def body(self) -> AsyncGenerator[bytes, None]:
        """Yield the request body as it arrives.

        Raises:
            ClientError: 413 over the size limit, 408 on a slow body, 400 if
                the client closes mid-body.
        """
        if self._kept is not None:
            kept, self._kept = self._kept, None
            if kept:
                yield kept
            return
        conn = self._conn
        limit = conn.limits.max_body_bytes
        while not self._body_done:
            event = await conn.next_event(self._h11, timeout=conn.limits.body_timeout)
            if isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
                if limit is not None and self.body_bytes > limit:
                    raise ClientError("request body too large", status=413)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._body_done = True
            else:  # pragma: no cover - h11 yields nothing else here
                raise ClientError("unexpected request event")

    async def read_body(self) -> bytes:
        async with aclosing(self.body()) as body:
            return b"".join([chunk async for chunk in body])

    async def send_head(
        self, status: int, headers: Headers, reason: bytes = b"", *, flush: bool = True
    ) -> None:
        """Send the response head. With ``flush=False`` it waits to go out
        with the first body bytes, in one write."""
        if self._conn.is_draining:
            headers = [*headers, (b"connection", b"close")]
        self.status = status
        self.record.status = status
        response = h11.Response(
            status_code=status, headers=headers, reason=reason, _parsed=fields_are_valid(headers)
        )
        data = self._h11.send(response)
        if flush:
            await self._conn.send(data)
        else:
            self._pending = data or b""

    async def send_informational(self, status: int, headers: Headers) -> None:
        await self._conn.send(
            self._h11.send(h11.InformationalResponse(status_code=status, headers=headers))
        )

    async def send_data(self, data: bytes) -> None:
        if data and self.method != "HEAD":
            out = self._h11.send(h11.Data(data=data)) or b""
        else:
            out = b""
        if self._pending:
            out, self._pending = self._pending + out, b""
        await self._conn.send(out)

    async def end(self) -> None:
        out = self._h11.send(h11.EndOfMessage()) or b""
        if self._pending:
            out, self._pending = self._pending + out, b""
        await self._conn.send(out)

    async def respond(
        self,
        status: int,
        body: bytes | str = b"",
        headers: Headers | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        """Send a whole response in one write."""
        data = body.encode() if isinstance(body, str) else body
        all_headers = simple_response_headers(data, content_type)
        if headers:
            all_headers.extend(headers)
        await self.send_head(status, all_headers, reason_phrase(status), flush=False)
        await self.send_data(data)
        await self.end()

    async def watch_disconnect(self) -> None:
        """Return when the client closes its connection (never otherwise).

        Call only once the request body is done. Bytes that arrive meanwhile
        (a pipelined request) are kept for the next cycle.
        """
        conn = self._conn
        while True:
            if len(self._h11.trailing_data[0]) > conn.head_limits.max_head:
                await trio.sleep_forever()
            try:
                data = await conn.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self._h11.receive_data(bytes(data))

    async def run_watched(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work``; if the client closes its connection meanwhile, cancel
        it and raise ``ClientGone``. Call only once the request body is done.
        The client is watched only once the work takes a while
        (``server.watch``).
        """
        gone = await run_watched(self.watch_disconnect, self._conn.nursery, work)
        if gone and not self.is_response_done:  # leaving after the answer loses nothing
            raise ClientGone("client disconnected")

    def take_stream(self) -> tuple[trio.abc.Stream, bytes]:
        """Hand over the raw stream after a 101 response (for a tunnel)."""
        self._conn.is_tunnelled = True
        return self._conn.stream, bytes(self._h11.trailing_data[0])


Handler = Callable[[ServerRequest], Awaitable[None]]


@attrs.define(eq=False)
class ClientConnection:
    """Serves requests on one accepted stream until it closes."""

    stream: trio.abc.Stream
    client: tuple[str, int]
    gateway: str
    limits: HttpLimits
    handler: Handler
    log_format: Literal["text", "json"] = "text"
    tls: ConnectionTLS | None = None
    metrics: Metrics | None = None
    tracing: Tracing | None = None
    access_log: bool = True
    # A sibling worker's relayed requests: counted and traced there.
    is_internal: bool = False
    is_draining: bool = False
    is_idle: bool = True
    is_tunnelled: bool = False
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    head_limits: HeadLimits = attrs.field(init=False)
    _current: h11.Connection | None = None
    _buf: bytearray = attrs.field(factory=bytearray)
    _nursery: trio.Nursery | None = None

    def __attrs_post_init__(self) -> None:
        self.head_limits = HeadLimits.from_config(self.limits)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the connection is not serving"
        return self._nursery

    def __repr__(self) -> str:
        state = "idle" if self.is_idle else "busy"
        return f"<ClientConnection {self.client[0]}:{self.client[1]} {state}>"

    def start_drain(self) -> None:
        self.is_draining = True
        if self.is_idle:
            self.cancel_scope.cancel()

    async def serve(self) -> None:
        if self.metrics is not None and not self.is_internal:
            self.metrics.connection_opened(self.gateway, None)
        try:
            # The nursery holds the watchers of this connection's requests.
            async with trio.open_nursery() as self._nursery:
                with self.cancel_scope:
                    first = True
                    while await self._serve_one(first):
                        first = False
                self._nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self._end_streaming_response()
                await self.stream.aclose()

    async def send(self, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self.limits.idle_timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone("client connection closed") from exc
        if scope.cancelled_caught:
            raise ClientGone("client stopped reading")

    async def next_event(self, conn: h11.Connection, *, timeout: float) -> object:
        """The next h11 event, reading as needed (request body only)."""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ClientError("malformed request body", detail=str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            if conn.they_are_waiting_for_100_continue:
                await self.send(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            with trio.move_on_after(timeout) as scope:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise ClientGone("client connection closed") from exc
            if scope.cancelled_caught:
                raise ClientError("request body timeout", status=408)
            if not data:
                raise ClientGone("client closed the connection mid-body")
            conn.receive_data(bytes(data))

    async def _read_head(self, first: bool) -> bytes | None:
        """Bytes up to the end of the next head, or None to close quietly."""
        buf = self._buf
        if not buf.strip(b"\r\n"):
            wait = self.limits.header_timeout if first else self.limits.idle_timeout
            if not await self._receive_into(buf, trio.current_time() + wait):
                return None
        self.is_idle = False
        deadline = trio.current_time() + self.limits.header_timeout
        while (end := find_head_end(buf)) < 0:
            check_request_line_length(buf, self.head_limits)
            if len(buf) > self.head_limits.max_head:
                raise ClientError("request header block too large", status=431)
            if not await self._receive_into(buf, deadline):
                if trio.current_time() >= deadline:
                    raise ClientError("request header timeout", status=408)
                return None
        return bytes(buf[:end])

    async def _receive_into(self, buf: bytearray, deadline: float) -> bool:
        with trio.move_on_at(deadline):
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            buf += data
            return bool(data)
        return False

    async def _serve_one(self, first: bool) -> bool:
        """Serve one request cycle; True to keep the connection open."""
        start = time.monotonic()
        record = AccessRecord(gateway=self.gateway, src_addr=f"{self.client[0]}:{self.client[1]}")
        self.is_idle = True
        if self.is_draining:
            return False
        try:
            head_bytes = await self._read_head(first)
            if head_bytes is None:
                return False
            head = check_request_head(head_bytes, self.head_limits)
        except ClientError as exc:
            record.error = exc.log_text
            record.status = exc.status
            await self._refuse(exc)
            self._log(record, start)
            return False

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.head_limits.max_head)
        conn.receive_data(bytes(self._buf))
        self._buf.clear()
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            refusal = ClientError("malformed request", detail=str(exc))
            await self._refuse(refusal)
            record.status, record.error = 400, refusal.log_text
            self._log(record, start)
            return False
        assert isinstance(event, h11.Request)
        headers = [(n, v) for n, v in event.headers]
        target = event.target
        if head.authority is not None:
            headers = [(b"host", head.authority), *((n, v) for n, v in headers if n != b"host")]
            target = head.origin_target
        if not self.limits.allow_underscore_headers and (
            dropped := underscore_header_names(headers)
        ):
            names = ", ".join(name.decode("latin-1") for name in dropped)
            logger.debug("dropped request headers with an underscore: %s", names)
            headers = [(n, v) for n, v in headers if b"_" not in n]
        path, query = split_target(target)
        request = ServerRequest(
            method=event.method.decode("ascii"),
            target=target,
            path=path,
            query=query,
            http_version=event.http_version.decode("ascii"),
            headers=headers,
            head=head,
            client=self.client,
            tls=self.tls,
            record=record,
            conn=self,
            h11=conn,
        )
        record.method, record.path = request.method, path
        record.host, record.version = request.host, f"HTTP/{request.http_version}"
        if self.tracing is not None and not self.is_internal:
            request.span = self.tracing.start_request(request.headers)
        limit = self.limits.max_body_bytes
        self._current = conn
        completed = False
        try:
            if limit is not None and (head.content_length or 0) > limit:
                raise ClientError("request body too large", status=413)
            await self.handler(request)
            completed = True
        except ClientError as exc:
            record.error = exc.log_text
            if not request.is_response_started:
                record.status = exc.status
                await self._refuse(exc, conn)
            return False
        except (ClientGone, AbortResponse) as exc:
            record.error = str(exc)
            return False
        except Exception:
            # A bug. It costs this connection, never the gateway.
            logger.exception("request handler failed")
            record.error = "internal error"
            if not request.is_response_started:
                record.status = 500
                await self._refuse(ClientError("internal error", status=500), conn)
            return False
        finally:
            if not completed and record.error is None:
                record.error = "cancelled at drain deadline" if self.is_draining else "cancelled"
            self._log(record, start, request.span)
        if self.is_tunnelled:
            return False
        return await self._finish_cycle(conn)

    async def _finish_cycle(self, conn: h11.Connection) -> bool:
        if conn.our_state is not h11.DONE:
            return False
        if conn.their_state is h11.SEND_BODY:
            # The handler answered without reading the body: read and drop a
            # bounded amount so the connection can be reused, else close.
            dropped = 0
            try:
                while conn.their_state is h11.SEND_BODY and dropped < 1 << 20:
                    event = await self.next_event(conn, timeout=1.0)
                    if isinstance(event, h11.Data):
                        dropped += len(event.data)
            except (ClientError, ClientGone):
                return False
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        leftover, closed = conn.trailing_data
        if closed:
            return False
        self._buf = bytearray(leftover)
        return not self.is_draining

    async def _end_streaming_response(self) -> None:
        """At the drain deadline, end a started chunked response properly, so
        the client sees a complete stream rather than a reset."""
        conn = self._current
        if not self.is_draining or conn is None or conn.our_state is not h11.SEND_BODY:
            return
        try:
            await self.send(conn.send(h11.EndOfMessage()))
        except (h11.LocalProtocolError, ClientGone):
            pass

    async def _refuse(self, exc: ClientError, conn: h11.Connection | None = None) -> None:
        """Send a short error response and close gracefully."""
        body = f"{exc.reason}\n".encode()
        reason = reason_phrase(exc.status) or b"Error"
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (exc.status, reason, len(body))
        )
        if conn is not None and conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with trio.move_on_after(2):
            try:
                await self.stream.send_all(head + body)
                if isinstance(self.stream, trio.SocketStream):
                    await self.stream.send_eof()  # (TLS cannot half-close)
                # Linger: read and drop what the client still sends, so
                # closing does not reset the connection before it reads.
                with trio.move_on_after(0.5):
                    total = 0
                    while total < 1 << 20:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                        if not data:
                            break
                        total += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def _log(self, record: AccessRecord, start: float, span: Span | None = None) -> None:
        record.duration_ms = (time.monotonic() - start) * 1000
        if self.access_log:
            emit(record, self.log_format)
        if self.metrics is not None:
            self.metrics.observe(record, relayed=self.is_internal)
        if span is not None and self.tracing is not None:
            self.tracing.end_request(span, record)
