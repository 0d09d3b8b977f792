"""Upstream HTTP/1.1 connections and their pool.

How this works: the pool's bookkeeping is synchronous (take an idle
connection, put one back, evict the expired) and the I/O follows it, as in
httpcore. A connection goes back to the pool only when its exchange ended
cleanly: request and response both complete and h11 willing to reuse it.
Anything else (a client that went away, a timeout, a protocol error) closes
it. Before reuse, a connection that became readable while idle (the upstream
closed it, or sent garbage) is dropped.

An origin with TLS settings (``Origin.tls``, a ``ClientTLS`` built once when
the config was compiled) gets a TLS handshake right after the TCP connect,
under the same connect timeout and before any request byte; a failure is
``UpstreamUnavailable`` and never a plaintext retry. The TLS settings are
part of the pool key: origins with other settings never share a connection.

An ``Exchange`` is one request/response on one connection. A reused
connection that failed on the very first write of the request is retried
once on a new connection: not one byte left us, so the upstream cannot run
the request twice. Any later failure is never retried.

A response head is not fed to h11 until it is complete and has passed
``wire.http.check_response_head`` (the head limits of requests, one framing,
no obsolete folding), so h11 never parses what the gateway refuses, and an
upstream that is not speaking HTTP at all (an SSH banner) is refused at its
first bytes. Errors carry a generic ``reason`` for the client and the
upstream's address and the cause in ``detail``, for the log.
"""

from __future__ import annotations

import errno
import logging
import math
import select
import socket
import time
from collections.abc import AsyncGenerator, Callable
from typing import NamedTuple

import attrs
import h11
import trio

from agentgw.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from agentgw.server.watch import start_watching, watch_deadline
from agentgw.tls import ClientTLS, default_client_tls, open_tls
from agentgw.wire.http import (
    Headers,
    HeadLimits,
    check_response_head,
    check_response_head_start,
    fields_are_valid,
    find_head_end,
)

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536


class Origin(NamedTuple):
    """Where a pooled connection goes, and the pool key: (host, port), or
    (path, 0) for a Unix socket, and how to speak TLS there (None: plain)."""

    host: str
    port: int
    tls: ClientTLS | None = None


PROTOCOL_ERROR = "upstream protocol error"
UNAVAILABLE = "upstream unavailable"
TIMEOUT = "upstream timeout"


@attrs.frozen
class PoolStatistics:
    idle: int
    active: int
    opened: int
    reused: int


@attrs.define(eq=False)
class UpstreamConnection:
    origin: Origin
    stream: trio.abc.Stream  # the socket stream, or TLS over it
    raw: trio.SocketStream
    created_at: float = attrs.field(factory=time.monotonic)
    idle_since: float = attrs.field(factory=time.monotonic)
    requests: int = 0
    # h11 sees response heads only once checked against the pool's head
    # limits; its own limit bounds chunk-size lines and trailers.
    h11: h11.Connection = attrs.field(
        factory=lambda: h11.Connection(h11.CLIENT, max_incomplete_event_size=65536)
    )
    # Received bytes not yet given to h11: a response head still arriving or
    # just checked, and whatever came after it.
    unparsed: bytearray = attrs.field(factory=bytearray)

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.origin[0]}:{self.origin[1]} requests={self.requests}>"

    def has_expired(self, now: float, idle_timeout: float, max_lifetime: float) -> bool:
        return now - self.idle_since > idle_timeout or now - self.created_at > max_lifetime

    def is_readable(self) -> bool:
        """True if the idle socket has data or EOF waiting: not reusable."""
        if isinstance(self.stream, trio.SSLStream):
            # Bytes already read off the socket: decrypted, or still encrypted
            # in trio's buffer (a close_notify that came with the response).
            incoming = getattr(self.stream, "_incoming", None)
            if self.stream.pending() or (incoming is not None and incoming.pending):
                return True
        sock = self.raw.socket
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def is_reusable(self) -> bool:
        # Bytes after the end of the response would be read as the start of
        # the next one: such a connection is not reused.
        return (
            self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
            and not self.unparsed
            and not self.h11.trailing_data[0]
        )

    def close(self) -> None:
        self.raw.socket.close()


@attrs.define(eq=False)
class ConnectionPool:
    """Keep-alive connections per origin, bounded and expiring. ``tls`` is
    the trust for https URLs without TLS settings of their own (built on
    first use if not given)."""

    connect_timeout: float = 10.0
    idle_timeout: float = 90.0
    max_lifetime: float = 600.0
    max_idle_per_origin: int = 64
    tls: ClientTLS | None = None
    head_limits: HeadLimits = attrs.field(factory=HeadLimits)
    # Told of every new connection: its transport and how long it took (metrics).
    on_connect: Callable[[str, float], None] | None = None
    _idle: dict[Origin, list[UpstreamConnection]] = attrs.field(factory=dict)
    _active: int = 0
    _opened: int = 0
    _reused: int = 0

    def default_tls(self) -> ClientTLS:
        if self.tls is None:
            self.tls = default_client_tls()
        return self.tls

    def statistics(self) -> PoolStatistics:
        idle = sum(len(conns) for conns in self._idle.values())
        return PoolStatistics(idle, self._active, self._opened, self._reused)

    def take_idle(self, origin: Origin) -> UpstreamConnection | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.has_expired(now, self.idle_timeout, self.max_lifetime) or conn.is_readable():
                conn.close()
                continue
            self._reused += 1
            self._active += 1
            conn.h11.start_next_cycle()
            return conn
        return None

    def put_back(self, conn: UpstreamConnection) -> None:
        self._active -= 1
        conns = self._idle.setdefault(conn.origin, [])
        if not conn.is_reusable() or len(conns) >= self.max_idle_per_origin:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        self._active -= 1
        conn.close()

    def evict_expired(self) -> None:
        now = time.monotonic()
        for origin, conns in list(self._idle.items()):
            keep = []
            for conn in conns:
                if conn.has_expired(now, self.idle_timeout, self.max_lifetime):
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    async def serve_evictor(self, interval: float = 5.0) -> None:
        """Close expired idle connections now and then. Never returns."""
        while True:
            await trio.sleep(interval)
            self.evict_expired()

    async def connect(self, origin: Origin) -> UpstreamConnection:
        """A new connection to ``origin``, TLS handshake included.

        Raises:
            UpstreamUnavailable: refused, unreachable, or the TLS handshake
                failed (the certificate could not be verified...).
            UpstreamTimeout: no connection (and handshake) in time.
        """
        host, port, tls = origin
        unix = host.startswith("/")
        where = f"{host}:{port}"
        what = "connect"
        started = time.monotonic()
        with trio.move_on_after(self.connect_timeout) as scope:
            try:
                if unix:
                    raw = await trio.open_unix_socket(host)
                else:
                    raw = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                if _is_refused(exc) or unix:
                    detail = f"{where} refused the connection"
                else:
                    detail = f"{where} unreachable: {exc}"
                raise UpstreamUnavailable("upstream unavailable", detail=detail) from None
            if not unix:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream: trio.abc.Stream = raw
            if tls is not None:
                what = "TLS handshake"
                try:
                    stream = await open_tls(raw, tls, host, port)
                except BaseException as exc:
                    raw.socket.close()
                    if isinstance(exc, UpstreamUnavailable):
                        logger.warning("upstream %s", exc.detail)
                    raise
        if scope.cancelled_caught:
            raise UpstreamTimeout("upstream timeout", detail=f"{where}: {what} timed out")
        if self.on_connect is not None:
            kind = "unix" if unix else "tls" if tls is not None else "plaintext"
            self.on_connect(kind, time.monotonic() - started)
        self._opened += 1
        self._active += 1
        return UpstreamConnection(origin, stream, raw)

    def open_exchange(self, origin: Origin) -> Exchange:
        return Exchange(self, origin)

    def close_all(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _is_refused(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            return True
        if isinstance(exc, BaseExceptionGroup):
            return any(_is_refused(e) for e in exc.exceptions)
        exc = exc.__cause__
    return False


@attrs.frozen
class UpstreamResponse:
    status: int
    headers: Headers
    reason: bytes
    http_version: bytes


@attrs.define(eq=False)
class Exchange:
    """One request and its response on one upstream connection.

    Use as: ``send_head``, ``send_body`` (any times), ``end_body``,
    ``receive_response``, ``body()``; always ``release()`` in a finally.
    """

    pool: ConnectionPool
    origin: Origin
    conn: UpstreamConnection | None = None
    _released: bool = False
    _took_idle: bool = False

    async def connect(self) -> None:
        """Have the connection ready before ``send_head``, so that an origin
        that is not there fails before anything was read or sent.

        Raises:
            UpstreamUnavailable: refused or unreachable.
            UpstreamTimeout: the connect timed out.
        """
        if self.conn is None:
            conn = self.pool.take_idle(self.origin)
            self._took_idle = conn is not None
            self.conn = conn or await self._open()

    async def send_head(
        self, method: bytes, target: bytes, headers: Headers, body: bytes | None = None
    ) -> None:
        """Send the request head; with ``body``, the whole request in one
        write (then do not call ``send_body``/``end_body``).

        Raises:
            UpstreamError: the connection failed, or h11 refused the request.
        """
        try:
            # The method and target passed ``check_request_head`` (or come
            # from the config); the fields are checked here in one pass.
            request = h11.Request(
                method=method, target=target, headers=headers, _parsed=fields_are_valid(headers)
            )
        except h11.LocalProtocolError as exc:
            raise UpstreamError("cannot forward request", detail=str(exc)) from exc
        for attempt in (0, 1):
            conn: UpstreamConnection | None
            if attempt == 0 and self.conn is not None:  # from connect()
                conn, reused = self.conn, self._took_idle
            else:
                conn = self.pool.take_idle(self.origin) if attempt == 0 else None
                reused = conn is not None
            if conn is None:
                conn = await self._open()
            self.conn = conn
            conn.requests += 1
            try:
                data = conn.h11.send(request) or b""
                if body is not None:
                    if body:
                        data += conn.h11.send(h11.Data(data=body)) or b""
                    data += conn.h11.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError as exc:
                raise UpstreamError("cannot forward request", detail=str(exc)) from exc
            try:
                await _write_request(conn.stream, data)
                return
            except _NothingSent as exc:
                self._drop(conn)
                if not reused:
                    raise self._unavailable(f"cannot send the request: {exc}") from exc
                logger.debug("stale pooled connection to %s, retrying once", self._name)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # Some of the request may have reached the upstream: never resent.
                self._drop(conn)
                raise self._unavailable(
                    f"connection lost while sending the request: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(self) -> UpstreamConnection:
        try:
            return await self.pool.connect(self.origin)
        except UpstreamError as exc:
            if exc.detail is not None:
                raise
            # The client gets the generic text; the address goes to the log.
            kind = type(exc)
            reason = TIMEOUT if kind is UpstreamTimeout else UNAVAILABLE
            raise kind(reason, detail=exc.reason) from exc

    @property
    def _name(self) -> str:
        return f"{self.origin[0]}:{self.origin[1]}"

    def _unavailable(self, detail: str) -> UpstreamError:
        return UpstreamError(UNAVAILABLE, detail=f"{self._name}: {detail}")

    def _protocol_error(self, detail: str) -> UpstreamError:
        return UpstreamError(PROTOCOL_ERROR, detail=f"{self._name}: {detail}")

    def _drop(self, conn: UpstreamConnection) -> None:
        self.pool.discard(conn)
        self.conn = None

    def _live(self) -> UpstreamConnection:
        if self.conn is None:
            raise self._unavailable("no connection")
        return self.conn

    async def _send(self, event: h11.Data | h11.EndOfMessage) -> None:
        conn = self._live()
        try:
            data = conn.h11.send(event)
            if data:
                await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            detail = f"connection lost while sending the request body: {exc}"
            raise self._unavailable(detail) from exc
        except h11.LocalProtocolError as exc:
            raise UpstreamError("cannot forward request body", detail=str(exc)) from exc

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end_body(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _receive(
        self, conn: UpstreamConnection, timeout: float, deadline: float = math.inf
    ) -> bytes:
        idle_end = trio.current_time() + timeout
        limit = min(deadline, idle_end)
        while True:
            # A wait past the grace period watches the client (server.watch).
            watch_at = watch_deadline()
            with trio.move_on_at(min(limit, watch_at)):
                try:
                    return bytes(await conn.stream.receive_some(RECEIVE_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise self._unavailable(f"connection reset: {exc.__cause__ or exc}") from exc
            if trio.current_time() >= limit:
                break
            start_watching()
        what = "no whole response head" if deadline < idle_end else "nothing received"
        raise UpstreamTimeout(TIMEOUT, detail=f"{self._name}: {what} in {timeout:g}s")

    async def _next_event(self, timeout: float, deadline: float = math.inf) -> object:
        conn = self._live()
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._protocol_error(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            if conn.h11.their_state is h11.SEND_RESPONSE:
                await self._read_head(conn, timeout, deadline)
            elif conn.unparsed:
                conn.h11.receive_data(bytes(conn.unparsed))
                conn.unparsed.clear()
            else:
                conn.h11.receive_data(await self._receive(conn, timeout, deadline))

    async def _read_head(self, conn: UpstreamConnection, timeout: float, deadline: float) -> None:
        """Give h11 the next response head once it is whole and checked."""
        limits = self.pool.head_limits
        buf = conn.unparsed
        searched = 0
        while (end := find_head_end(buf, searched)) < 0:
            try:
                check_response_head_start(buf, limits)
            except UpstreamError as exc:
                raise self._protocol_error(exc.detail or exc.reason) from None
            searched = max(0, len(buf) - 3)
            data = await self._receive(conn, timeout, deadline)
            if not data:
                if buf:
                    raise self._protocol_error("connection closed inside the response head")
                conn.h11.receive_data(b"")  # h11 reports ConnectionClosed
                return
            buf += data
        head = bytes(buf[:end])
        try:
            check_response_head(head, limits)
        except UpstreamError as exc:
            raise self._protocol_error(exc.detail or exc.reason) from None
        del buf[:end]
        conn.h11.receive_data(head)

    async def receive_response(self, timeout: float) -> UpstreamResponse:
        """The response head, which must arrive whole within ``timeout``
        seconds; informational responses other than 101 are skipped (each
        one starts the wait again).

        Raises:
            UpstreamError: a reset, a close, or a head that is refused.
            UpstreamTimeout: no whole head in time.
        """
        while True:
            deadline = trio.current_time() + timeout
            event = await self._next_event(timeout, deadline)
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            if isinstance(event, h11.Response | h11.InformationalResponse):
                return UpstreamResponse(
                    event.status_code, list(event.headers), event.reason, event.http_version
                )
            if isinstance(event, h11.ConnectionClosed):
                raise self._unavailable("closed the connection without answering")
            raise self._protocol_error(f"unexpected {type(event).__name__}")

    async def next_chunk(self, idle_timeout: float) -> bytes | None:
        """The next piece of the response body, or None at its end. Safe to
        cancel and call again: nothing read is lost.

        Raises:
            UpstreamError: the upstream truncated the body or broke framing.
        """
        event = await self._next_event(idle_timeout)
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        if isinstance(event, h11.ConnectionClosed):
            raise self._protocol_error("closed the connection inside the body")
        raise self._protocol_error(f"unexpected {type(event).__name__}")  # pragma: no cover

    async def body(self, idle_timeout: float) -> AsyncGenerator[bytes, None]:
        """Yield the response body as it arrives.

        Raises:
            UpstreamError: the upstream truncated the body or broke framing.
        """
        while (chunk := await self.next_chunk(idle_timeout)) is not None:
            yield chunk

    def take_stream(self) -> tuple[trio.abc.Stream, bytes]:
        """Hand over the raw stream after a 101 (for a tunnel), with the
        bytes that came after the head."""
        conn = self._live()
        self.conn = None
        self._released = True
        self.pool._active -= 1
        return conn.stream, bytes(conn.h11.trailing_data[0]) + bytes(conn.unparsed)

    def release(self) -> None:
        """Return the connection to the pool if the exchange completed,
        else close it. Safe to call more than once."""
        if self._released or self.conn is None:
            return
        self._released = True
        self.pool.put_back(self.conn)
        self.conn = None


class _NothingSent(Exception):
    """The first write of a request failed: not one byte left us."""


async def _write_request(stream: trio.abc.Stream, data: bytes) -> None:
    """``send_all``, but a failure before any byte was written raises
    ``_NothingSent`` (a send either writes at least one byte or fails)."""
    if isinstance(stream, trio.SocketStream):
        try:
            sent = await stream.socket.send(data)
        except (OSError, trio.ClosedResourceError) as exc:
            raise _NothingSent(str(exc)) from exc
        view = memoryview(data)[sent:]
        if view:
            await stream.send_all(view)
        return
    await stream.send_all(data)
